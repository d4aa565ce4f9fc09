"""Config loading: inheritance, demo scaling, and overrides that fail loudly on typos and wrong types."""
import pytest

from src.config import ConfigError, apply_overrides, load_config


def write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)


@pytest.fixture
def configs(tmp_path):
    write(tmp_path, "default", "data_dir: nowhere\nprofile: auto\nfold: 0\nlr: 0.001\nname: x\nopt: null\n"
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


# ---- every value checked: type element by element, null only where the default is null, ranges ----

def real_config(*args):
    """The shipped configs, demo side (no real data here), with ``args`` as overrides."""
    return load_config(list(args))


def one_line_error(call, *args):
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("arg, valid", [
    ("epochs=null", "integer"), ("epochs=-1", ">= 1"), ("epochs=0", ">= 1"), ("batch_size=0", ">= 1"),
    ("lr=0", "> 0"), ("lr=-0.001", "> 0"), ("n_folds=1", ">= 2"), ("fold=5", "0..4"), ("fold=-1", ">= 0"),
    ("windows=[1]", "list"), ("windows=[]", "at least 1"), ("windows=[[400]]", "[center, width] pair"),
    ("windows=[[400, 0]]", "width > 0"), ("windows=[[400, abc]]", "number"),
    ("cnn3d.widths=[]", "at least 1"), ("cnn3d.widths=[16, 0]", ">= 1"), ("cnn3d.shape=[64, 64]", "3 elements"),
    ("cnn3d.dropout=1.5", "< 1"), ("localiser.crop_prob=2", "<= 1"), ("localiser.folds=[7]", "0..4"),
    ("localiser.folds=[a]", "integer"), ("localiser.channels=[8]", "at least 2"), ("tags=[1]", "text"),
    ("precision=fp16", "auto, bf16, fp32"), ("device=gpu", "cuda"), ("prepare.splits=[../x]", "plain name"),
    ("experiment=../../x", "plain name"), ("experiment=a/b", "plain name"), ("data_dir=null", "text"),
    ("effnet_gru.patient_head=mean", "noisy_or"), ("wandb.mode=on", "offline"), ("prepare.size=-1", ">= 0"),
    ("demo.seg_fraction=1.2", "<= 1"), ("ema_decay=1", "< 1"),
])
def test_bad_values_are_refused_in_one_line(arg, valid):
    key, got = arg.split("=", 1)
    message = one_line_error(real_config, arg)
    assert f"'{key}" in message and valid in message, message
    assert "got" in message


@pytest.mark.parametrize("arg, check", [
    ("cache_dir=/tmp/somewhere", lambda c: c.cache_dir == "/tmp/somewhere"),
    ("cache_dir=null", lambda c: c.cache_dir is None),
    ("localisation_table=tables/loc.csv", lambda c: c.localisation_table == "tables/loc.csv"),
    ("pretrained_path=weights/enc.pth", lambda c: c.pretrained_path == "weights/enc.pth"),
    ("wandb.entity=2022", lambda c: c.wandb.entity == "2022"),
    ("windows=[[40.5, 400], [-50, 1800]]", lambda c: [list(w) for w in c.windows] == [[40.5, 400], [-50, 1800]]),
    ("localiser.folds=[0, 4]", lambda c: list(c.localiser.folds) == [0, 4]),
    ("tags=[baseline, v2]", lambda c: list(c.tags) == ["baseline", "v2"]),
    ("device=cuda:1", lambda c: c.device == "cuda:1"),
    ("experiment=my-exp_2", lambda c: c.experiment == "my-exp_2"),
    ("prepare.size=0", lambda c: c.prepare.size == 0),
    ("fold=4", lambda c: c.fold == 4),
    ("lr=1", lambda c: c.lr == 1.0 and isinstance(c.lr, float)),
])
def test_legitimate_values_still_pass(arg, check):
    assert check(real_config(arg))


def test_fold_is_checked_against_the_n_folds_it_comes_with():
    assert real_config("n_folds=10", "fold=7").fold == 7
    assert "0..2" in one_line_error(real_config, "n_folds=3", "fold=3")


@pytest.mark.parametrize("arg", ["data_dir=${oc.env:HOME}", "tags=['${oc.env:HOME}']", "wandb.entity=${experiment}",
                                 "effnet_gru.encoder=x${oc.env:HOME}"])
def test_interpolation_in_an_override_is_refused(arg):
    message = one_line_error(real_config, arg)
    assert "${" in message and arg.split("=")[0] in message


def test_omegaconfs_missing_mark_is_refused():
    assert "???" in one_line_error(real_config, "wandb.entity=???")


def test_interpolation_in_a_yaml_value_is_refused(configs):
    write(configs, "small", "inherit: default\nname: ${oc.env:HOME}\n")
    message = one_line_error(load_config, ["config=small"], "effnet_gru", configs)
    assert "small.yaml" in message and "'name'" in message and "${" in message


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "configs/cnn3d.yaml", "cnn3d.yaml", "a b", ""])
def test_config_names_are_plain_names(name):
    assert "plain name" in one_line_error(load_config, [f"config={name}"])


def test_inherit_names_a_plain_name(configs):
    write(configs, "climber", "inherit: ../default\n")
    message = one_line_error(load_config, ["config=climber"], "effnet_gru", configs)
    assert "climber.yaml" in message and "inherit" in message and "plain name" in message


# ---- the same checks on the values of YAML files, at load time, with the file named ----

@pytest.fixture
def shipped(tmp_path):
    """A copy of configs/ to break one file of at a time."""
    import shutil

    from src.config import CONFIG_DIR

    folder = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, folder)
    return folder


@pytest.mark.parametrize("text, key", [
    ("epochs: -1\n", "epochs"), ("epochs: null\n", "epochs"), ("windows: [1]\n", "windows"),
    ("cnn3d: {widths: []}\n", "cnn3d.widths"), ("experiment: ../../x\n", "experiment"),
    ("lr: fast\n", "lr"), ("cnn3d: 3\n", "cnn3d"), ("model: [a]\n", "model"),
])
def test_a_bad_yaml_value_names_the_file(shipped, text, key):
    (shipped / "broken.yaml").write_text("inherit: default\nmodel: cnn3d\n" + text)
    message = one_line_error(load_config, ["config=broken"], "effnet_gru", shipped)
    assert "broken.yaml" in message and f"'{key}" in message


def test_a_bad_on_demo_value_is_caught_even_on_real_data(shipped, tmp_path):
    (shipped / "broken.yaml").write_text("inherit: default\nmodel: cnn3d\non_demo:\n  cnn3d: {widths: []}\n")
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("StudyInstanceUID\n")
    message = one_line_error(load_config, ["config=broken", f"data_dir={real}"], "effnet_gru", shipped)
    assert "broken.yaml (on_demo)" in message and "'cnn3d.widths'" in message


def test_a_bad_default_names_default_yaml(shipped):
    path = shipped / "default.yaml"
    text = path.read_text()
    assert "\nepochs: 10\n" in text
    path.write_text(text.replace("\nepochs: 10\n", "\nepochs: 0\n"))
    message = one_line_error(load_config, ["config=cnn3d"], "effnet_gru", shipped)
    assert "default.yaml" in message and "'epochs'" in message


def test_every_rule_names_a_key_of_default_yaml_and_every_default_obeys_it():
    from src.config import CONFIG_DIR, EXPERIMENT_RULES, _flat_keys, load_experiment_file

    keys = _flat_keys(load_experiment_file("default", CONFIG_DIR))
    assert sorted(set(EXPERIMENT_RULES) - set(keys)) == []
    for name in ("default", "cnn3d", "effnet_gru", "localiser"):
        load_experiment_file(name, CONFIG_DIR)  # raises on a default that breaks its rule


def test_patient_head_choices_mirror_the_model():
    from src.config import EXPERIMENT_RULES
    from src.models.effnet_gru import PATIENT_HEADS

    assert tuple(EXPERIMENT_RULES["effnet_gru.patient_head"].choices) == tuple(PATIENT_HEADS)


# ---- small tools (parse_overrides): the same type checks on their own defaults ----

def test_tools_refuse_null_and_interpolation_but_keep_their_records():
    from src.config import parse_overrides

    defaults = {"inner_folds": 5, "members": [{"run": "a", "weight": 1.0}], "scratch": None, "out": "x"}
    assert "'inner_folds'" in one_line_error(parse_overrides, ["inner_folds=null"], defaults)
    assert "${" in one_line_error(parse_overrides, ["out=${oc.env:HOME}"], defaults)
    assert "${" in one_line_error(parse_overrides, ["members=[{run: '${oc.env:HOME}'}]"], defaults)
    # a list of records is checked by its reader (src/inference/settings.parse_members), not here
    assert parse_overrides(["members=[a, b]", "scratch=/tmp/s"], defaults)["members"] == ["a", "b"]
    assert parse_overrides(["out=42"], defaults)["out"] == "42"  # a text key takes the text as written
    assert "'out'" in one_line_error(parse_overrides, ["out=null"], defaults)  # but null is no text


def test_profile_forces_either_settings_whatever_the_data(configs, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("StudyInstanceUID\n")
    # the demo profile on real data: a small dataset of one's own, trained with the CPU-sized settings
    small = load_config(["config=small", f"data_dir={real}", "profile=demo"], config_dir=configs)
    assert small.lr == 0.01 and small.profile == "demo" and small.dataset_kind == "real"
    # the real profile on the demo: the full model on synthetic data (a GPU owner trying it)
    full = load_config(["config=small", "profile=real"], config_dir=configs)
    assert full.lr == 0.001 and full.profile == "real" and full.dataset_kind == "demo"
    assert load_config(["config=small"], config_dir=configs).profile == "demo"  # auto resolves, and says which


def test_profile_is_a_checked_key_of_the_real_defaults_and_dataset_kind_is_not_settable():
    assert load_config(["profile=real"]).profile == "real"
    with pytest.raises(ConfigError, match="profile"):
        load_config(["profile=gpu"])
    with pytest.raises(ConfigError, match="unknown config key 'dataset_kind'"):
        load_config(["dataset_kind=real"])
