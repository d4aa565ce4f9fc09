"""Config loading: inheritance, demo scaling, and overrides that fail loudly on typos and wrong types."""
import pytest

from src.config import ConfigError, apply_overrides, load_config


def write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)


@pytest.fixture
def configs(tmp_path):
    write(tmp_path, "default", "data_dir: nowhere\nfold: 0\nlr: 0.001\nname: x\nopt: null\n"
                               "model: {width: 8, layers: [1, 2]}\nflag: false\n")
    write(tmp_path, "small", "inherit: default\nmodel: {width: 4}\non_demo: {lr: 0.01}\n")
    write(tmp_path, "smaller", "inherit: small\nfold: 2\n")
    return tmp_path


def test_inheritance_chain(configs):
    cfg = load_config(["config=smaller"], config_dir=configs)
    assert cfg.fold == 2 and cfg.model.width == 4 and cfg.model.layers == [1, 2] and cfg.experiment == "smaller"


def test_on_demo_applies_without_real_data_and_cli_wins(configs):
    assert load_config(["config=small"], config_dir=configs).lr == 0.01
    assert load_config(["config=small", "lr=0.5"], config_dir=configs).lr == 0.5
    assert load_config(["config=small"], config_dir=configs).dataset_kind == "demo"


def test_on_demo_ignored_with_real_data(configs, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("StudyInstanceUID\n")
    cfg = load_config(["config=small", f"data_dir={real}"], config_dir=configs)
    assert cfg.lr == 0.001 and cfg.dataset_kind == "real"


def test_typo_names_the_closest_key(configs):
    with pytest.raises(ConfigError, match="'fodl'; did you mean fold"):
        load_config(["fodl=0"], default_experiment="small", config_dir=configs)


def test_nested_typo(configs):
    with pytest.raises(ConfigError, match="model.width"):
        load_config(["model.widht=3"], default_experiment="small", config_dir=configs)


@pytest.mark.parametrize("arg", ["fold=abc", "fold=1.5", "flag=3", "model.layers=7", "model=3", "lr=true"])
def test_wrong_types_are_refused(configs, arg):
    with pytest.raises(ConfigError, match=arg.split("=")[0]):
        load_config([arg], default_experiment="small", config_dir=configs)


def test_types_are_parsed(configs):
    cfg = load_config(["lr=1e-4", "fold=3", "flag=true", "model.layers=[3, 4]", "name=42", "opt=[1]"],
                      default_experiment="small", config_dir=configs)
    assert cfg.lr == pytest.approx(1e-4) and cfg.fold == 3 and cfg.flag is True
    assert list(cfg.model.layers) == [3, 4] and cfg.name == "42" and list(cfg.opt) == [1]
    assert isinstance(cfg.lr, float)


def test_int_promotes_to_float(configs):
    assert load_config(["lr=1"], default_experiment="small", config_dir=configs).lr == 1.0


def test_unknown_experiment_lists_the_known(configs):
    with pytest.raises(ConfigError, match="smal"):
        load_config(["config=smal"], config_dir=configs)


def test_experiment_file_may_not_invent_keys(configs):
    write(configs, "bad", "inherit: default\nfodl: 1\n")
    with pytest.raises(ConfigError, match="fold"):
        load_config(["config=bad"], config_dir=configs)


def test_not_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["fold"])


def test_apply_overrides_leaves_the_defaults_alone():
    defaults = {"a": {"b": 1}}
    assert apply_overrides(defaults, [("a.b", "2")]) == {"a": {"b": 2}}
    assert defaults == {"a": {"b": 1}}


def test_real_configs_load():
    cfg = load_config([])
    assert cfg.experiment == "effnet_gru" and cfg.fold == 0


def test_a_synthetic_data_dir_counts_as_demo(configs, tmp_path):
    synthetic = tmp_path / "copy_of_demo"
    synthetic.mkdir()
    (synthetic / "train.csv").write_text("StudyInstanceUID\n")
    (synthetic / "synth_summary.json").write_text("{}")
    cfg = load_config(["config=small", f"data_dir={synthetic}"], config_dir=configs)
    assert cfg.dataset_kind == "demo" and cfg.lr == 0.01
