"""A new model is one model file plus one config file: nothing else in the repository changes.

The test writes both into temporary folders: a module registering a crop classifier on the existing
``vertebra`` task and a whole-volume model with a task of its own (imported by path, as if it were
src/models/<name>.py), and a configs folder holding the shipped configs plus one file per model, whose
settings section default.yaml does not know. Each model then trains and validates through the training
loop and predicts through infer.py's path, which must give each test study its out-of-fold row.
"""
from __future__ import annotations

import importlib.util
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import TARGETS
from src.config import CONFIG_DIR, ConfigError, load_config
from src.metric import to_wide

from fake_training_data import install_folds, make_tiny_dataset, overrides
from infer_helpers import cached_studies_as_dicom, infer

MODULE = '''
"""Two models in one file, each with its own settings section (configs/<name>.yaml declares it)."""
import numpy as np
import pandas as pd
import torch
from torch import nn

from src import TARGETS
from src.data.cache import load_study
from src.models.losses import competition_loss
from src.models.registry import model_settings, register_model
from src.tasks import register_task
from src.tasks.study_task import StudyClassificationTask
from src.tasks.volume import resample_volume


@register_model("toy_crops")
class ToyCrops(nn.Module):
    """A crop classifier: the vertebra task's crops, mean-pooled, one linear layer."""
    task = "vertebra"
    settings = "toy_crops"
    needs_localisation = True

    def __init__(self, cfg):
        super().__init__()
        c = cfg[self.settings]
        self.head = nn.Linear(len(cfg["windows"]) * (2 * c["neighbours"] + 1), c["outputs"])

    def forward(self, batch):
        features = batch["images"].mean(dim=(2, 4, 5))          # (B, 7, C)
        vertebrae = self.head(features).mean(dim=-1)             # (B, 7)
        logits = torch.cat([vertebrae.max(dim=1, keepdim=True).values, vertebrae], dim=1)
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = competition_loss(logits, batch["labels"])
        return out


def hu_profile(volume, settings):
    """A study as its HU profile head to feet: the item builder both the dataset and inference use."""
    hu = resample_volume(np.asarray(volume), (settings["depth"], 4, 4)).astype(np.float32)
    return torch.from_numpy(hu.mean(axis=(1, 2)) / 1000.0)


class ProfileDataset(torch.utils.data.Dataset):
    def __init__(self, cache_dir, frame, settings):
        self.cache_dir, self.settings = cache_dir, settings
        self.study_uids = list(frame["StudyInstanceUID"])
        self.labels = frame[TARGETS].to_numpy(np.float32)

    def __len__(self):
        return len(self.study_uids)

    def __getitem__(self, index):
        study = load_study(self.cache_dir, "train_images", self.study_uids[index], with_mask=False)
        return {"profile": hu_profile(study.volume, self.settings), "labels": torch.tensor(self.labels[index])}


@register_task("toy_profile")
class ProfileTask(StudyClassificationTask):
    def make_dataset(self, frame, train):
        return ProfileDataset(self.cache_dir, frame, self.settings)

    @classmethod
    def study_batch(cls, cfg, volume, meta, localisation, labels=None):
        return {"profile": hu_profile(volume, model_settings(cfg))[None]}


@register_model("toy_profile")
class ToyProfile(nn.Module):
    """A whole-study model with a task of its own."""
    task = "toy_profile"
    settings = "toy_profile"
    needs_localisation = False

    def __init__(self, cfg):
        super().__init__()
        self.head = nn.Linear(cfg[self.settings]["depth"], 8)

    def forward(self, batch):
        logits = self.head(batch["profile"])
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = competition_loss(logits, batch["labels"])
        return out
'''

CONFIGS = {
    "toy_crops": """
        inherit: default
        model: toy_crops
        toy_crops:             # declared here, not in default.yaml: the model's own section
          n_slices: 3
          neighbours: 1
          crop_size: 12
          margin: 0.2
          train_unit: study
          augment: 0.0
          outputs: 3
        on_demo:
          toy_crops:
            crop_size: 8
        """,
    "toy_profile": """
        inherit: default
        model: toy_profile
        toy_profile:
          depth: 7
        """,
}


@pytest.fixture(scope="module")
def new_models(tmp_path_factory):
    """The model module imported by path, and a configs folder with its two config files."""
    from src.models.registry import _MODELS
    from src.tasks import _TASKS

    root = tmp_path_factory.mktemp("new_model")
    (root / "toy_models.py").write_text(MODULE)
    spec = importlib.util.spec_from_file_location("toy_models", root / "toy_models.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    configs = root / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    for name, text in CONFIGS.items():
        (configs / f"{name}.yaml").write_text(textwrap.dedent(text))
    yield configs
    for name in ("toy_crops", "toy_profile"):  # the registries outlive the test: leave them as found
        _MODELS.pop(name, None)
    _TASKS.pop("toy_profile", None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_studies=10, slices=14, size=16)
    install_folds(data)
    return data


def test_a_new_section_is_checked_like_any_other(new_models, tiny):
    cfg = load_config(["config=toy_crops", *overrides(tiny), "toy_crops.crop_size=10"], config_dir=new_models)
    assert cfg.toy_crops.crop_size == 10 and cfg.toy_crops.n_slices == 3 and "task" not in cfg
    demo = load_config(["config=toy_crops", *overrides(tiny), "profile=demo"], config_dir=new_models)
    assert demo.toy_crops.crop_size == 8  # its on_demo section may set its keys too
    with pytest.raises(ConfigError, match="toy_crops.crop_sise"):
        load_config(["config=toy_crops", "toy_crops.crop_sise=10"], config_dir=new_models)
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config(["config=toy_crops", "toy_crops.crop_size=big"], config_dir=new_models)
    (new_models / "stray.yaml").write_text("inherit: default\ntoy_crops: {n_slices: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'toy_crops'"):  # only the model's own file declares it
        load_config(["config=stray"], config_dir=new_models)


@pytest.mark.parametrize("name", ["toy_crops", "toy_profile"])
def test_a_new_model_trains_validates_and_predicts_its_oof_rows(name, new_models, tiny, tmp_path):
    from src.folds import ensure_folds
    from src.models.registry import get_model_class, model_task
    from src.tasks import get_task_class
    from src.training import fit

    cfg = load_config([f"config={name}", *overrides(tiny, epochs=2), "prepare.size=16"], config_dir=new_models)
    task = get_task_class(model_task(get_model_class(cfg.model)))(
        cfg, tiny["data_dir"], tiny["cache_dir"], ensure_folds(cfg, tiny["data_dir"]), announce=lambda *_: None)
    folder = Path(tiny["runs_dir"]) / name / "fold0"
    metrics = fit(cfg, task, folder, announce=lambda *_: None)
    assert np.isfinite(metrics["score"]) and (folder / "metrics.json").exists()
    oof = pd.read_csv(folder / "oof.csv", dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")
    assert len(oof) == 2  # fold 0's two studies, one row each

    uids = list(oof.index)
    kaggle = tmp_path / "kaggle"
    cached_studies_as_dicom(tiny, uids, kaggle)
    out = tmp_path / "submission.csv"
    result = infer.main([f"data_dir={kaggle}", f"runs_dir={tiny['runs_dir']}", f"members=[{name}]", f"output={out}",
                         "progress=false", "device=cpu", "workers=1", f"localisation_table={tiny['localisation_table']}",
                         "localiser=no_localiser_trained", "tta=false", "tta_shifts=[]"])  # oof rows: the plain view
    assert not result["log"].events, result["summary"]
    got = to_wide(pd.read_csv(out)).set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy()
    np.testing.assert_allclose(got, oof.loc[uids, TARGETS].to_numpy(), rtol=0, atol=1e-6)
