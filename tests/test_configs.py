"""A smoke test for every experiment in configs/: it loads, its model builds, and it trains a few steps.

Parametrised over the files found at collection time, so a new configs/<name>.yaml is tested without
editing this file. Each model shrinks itself for the test through its ``smoke_overrides`` class
attribute (src/models/registry.py); the data is the tiny cached dataset of fake_training_data.py.
"""
import json
import math

import pytest

from fake_training_data import install_folds, make_tiny_dataset, overrides
from src.config import CONFIG_DIR, experiment_names, load_config
from src.models.registry import get_model_class
from src.train import main

EXPERIMENTS = experiment_names()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_tiny_dataset(tmp_path_factory.mktemp("smoke"))
    install_folds(data)
    return data


def test_the_experiments_are_found():
    assert "cnn3d" in EXPERIMENTS and "default" not in EXPERIMENTS and "infer" not in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_has_a_real_top_level_and_a_demo_section(name):
    """Each file sizes the real data at its top level and the demo under on_demo: both must survive edits
    (a lost top level once made the real-data default a 64 px demo model without any error)."""
    import yaml

    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert raw.get("inherit") and raw.get("model"), f"configs/{name}.yaml lost its top level"
    assert isinstance(raw.get("on_demo"), dict) and raw["on_demo"], f"configs/{name}.yaml has no on_demo section"


def test_default_experiment_is_gpu_sized_on_real_data_and_cpu_sized_on_the_demo(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("StudyInstanceUID\n")
    on_real = load_config([f"data_dir={real}"])
    on_demo = load_config([f"data_dir={tmp_path / 'none'}"])
    assert on_real.dataset_kind == "real" and on_demo.dataset_kind == "demo"
    assert on_real.effnet_gru.encoder == "tf_efficientnetv2_s" and on_real.pretrained
    assert on_real.effnet_gru.n_slices >= 15 and on_real.effnet_gru.crop_size >= 384
    assert on_demo.effnet_gru.crop_size < on_real.effnet_gru.crop_size and not on_demo.pretrained


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name, tiny):
    base = [f"config={name}"] + overrides(tiny, max_steps_per_epoch=2)
    model_cls = get_model_class(load_config(base).model)
    args = base + list(getattr(model_cls, "smoke_overrides", ()))
    metrics = main(args)
    cfg = load_config(args)
    folder = tiny["runs_dir"] + f"/{name}/fold0"
    saved = json.loads(open(f"{folder}/metrics.json").read())
    task_cls_monitor = next(iter(saved))  # the loop writes the monitored metric first
    assert math.isfinite(saved[task_cls_monitor]) and saved[task_cls_monitor] == pytest.approx(metrics[task_cls_monitor])
    assert cfg.experiment == name


def _repeated(own: dict, inherited: dict, prefix: str = ""):
    for key, value in own.items():
        if key in ("inherit", "on_demo", "model"):  # every file names its model, even the default's
            continue
        if isinstance(value, dict) and isinstance(inherited.get(key), dict):
            yield from _repeated(value, inherited[key], f"{prefix}{key}.")
        elif key in inherited and inherited[key] == value:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("name", experiment_names())
def test_an_experiment_file_declares_only_what_differs_from_its_parent(name):
    """Each default is declared once: a value repeated from default.yaml would silently stop following it."""
    from src.config import CONFIG_DIR, _read_yaml, load_experiment_file

    own = _read_yaml(CONFIG_DIR / f"{name}.yaml")
    inherited = load_experiment_file(own.get("inherit", "default"))
    assert list(_repeated(own, inherited)) == []
