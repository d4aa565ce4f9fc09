"""Helpers shared by the inference tests (tests/test_infer.py, tests/test_hostile_infer.py,
tests/test_new_model.py): tiny DICOM studies written with the demo generator's writer
(src/synth/dicom_writer.py), cached training studies written back out as test DICOMs (parity checks),
tiny untrained run folders in the training loop's format, and one call of infer.py's main path with its
submission read back and checked."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

from src import TARGETS
from src.config import load_config
from src.synth.dicom_writer import write_series


def _load_infer_script():
    """infer.py sits at the repository root, outside any package: load it by path."""
    spec = importlib.util.spec_from_file_location("infer", Path(__file__).resolve().parents[1] / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer = _load_infer_script()

MODELS = {
    "cnn3d": ["cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1", "prepare.size=16"],
    "effnet_gru": ["effnet_gru.encoder=test_efficientnet", "effnet_gru.n_slices=3", "effnet_gru.neighbours=1",
                   "effnet_gru.crop_size=32", "effnet_gru.gru_hidden=8", "pretrained=false", "prepare.size=32"],
    "localiser": ["localiser.shape=[16,16,16]", "localiser.channels=[4,8]", "localiser.res_units=0", "prepare.size=32"],
}


def neck_volume(rng, slices=14, size=32) -> np.ndarray:
    hu = rng.normal(0, 60, (slices, size, size))
    hu[:, 10:22, 10:22] += 700  # a column of bone
    return hu.astype(np.int16)


def write_study(folder, uid, hu, reverse=False, numbers=None):
    n = len(hu)
    numbers = list(numbers) if numbers is not None else list(range(1, n + 1))
    z = [-float(i) for i in range(n)]
    if reverse:  # stored feet first: file 1 is the lowest slice
        numbers = numbers[::-1]
    write_series(folder / uid, hu, study_uid=uid, slice_numbers=numbers, z_positions=z, pixel_spacing=(0.5, 0.5),
                 slice_thickness=1.0)


def write_test_csv(path, uids):
    rows = [(f"{u}_{t}", u, t) for u in uids for t in TARGETS]
    pd.DataFrame(rows, columns=["row_id", "StudyInstanceUID", "prediction_type"]).to_csv(path, index=False)


def save_untrained_run(runs_dir, name, data_dir, extra=(), fold=0, seed=0):
    """A run folder in the training loop's format (config.yaml, best.pt with model + config) for a
    randomly initialised tiny model: enough to exercise inference without training."""
    from src.models.registry import build_model

    cfg = load_config([f"config={name}", f"data_dir={data_dir}",
                       *MODELS[name], *extra])
    torch.manual_seed(seed)
    model = build_model(cfg)
    folder = runs_dir / name / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"model": model.state_dict(), "config": plain, "model_name": cfg["model"], "epoch": 0}, folder / "best.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(plain))
    (folder / "metrics.json").write_text("{}")  # finished, as the training loop leaves a run
    return folder


def save_member_runs(runs_dir, data_dir) -> None:
    """The untrained runs the inference tests ensemble: effnet_gru and the localiser it needs (fold 0),
    cnn3d folds 0 and 1 (fold 1 from another seed)."""
    for name in ("effnet_gru", "localiser", "cnn3d"):
        save_untrained_run(runs_dir, name, data_dir)
    save_untrained_run(runs_dir, "cnn3d", data_dir, fold=1, seed=1)


def write_train_labels(path, n_studies: int, rng) -> None:
    """A train.csv of random labels (about 30% positive) for studies 1.2.3.0 .. 1.2.3.<n-1>."""
    labels = pd.DataFrame((rng.random((n_studies, 8)) < 0.3).astype(int), columns=TARGETS)
    labels.insert(0, "StudyInstanceUID", [f"1.2.3.{i}" for i in range(n_studies)])
    labels.to_csv(path, index=False)


def run_infer(data_dir, runs_dir, out, *extra):
    if not any(arg.startswith("members=") for arg in extra):
        extra = ("members=[effnet_gru,cnn3d]", *extra)  # both model families unless a test names its own
    return infer.main([f"data_dir={data_dir}", f"runs_dir={runs_dir}", f"output={out}", "progress=false",
                       "device=cpu", *extra])


def read_submission(path, data_dir) -> pd.DataFrame:
    sub = pd.read_csv(path)
    test = pd.read_csv(data_dir / "test.csv")
    assert list(sub["row_id"]) == list(test["row_id"])      # every row of test.csv, in its order
    assert sub["fractured"].between(0, 1).all() and sub["fractured"].notna().all()
    return sub.assign(uid=test["StudyInstanceUID"], target=test["prediction_type"]) \
        .pivot(index="uid", columns="target", values="fractured")[TARGETS]


def cached_studies_as_dicom(tiny, uids, out_dir):
    """The cached (already 16 px) volumes of ``uids`` written back out as Kaggle test DICOMs."""
    from src.data.cache import load_study

    for uid in uids:
        study = load_study(tiny["cache_dir"], "train_images", uid, mmap=False)
        write_series(out_dir / "test_images" / uid, np.asarray(study.volume), study_uid=uid,
                     slice_numbers=study.meta["slice_numbers"], z_positions=study.meta["z"],
                     pixel_spacing=tuple(study.meta["pixel_spacing"]), slice_thickness=1.0)
    write_test_csv(out_dir / "test.csv", uids)
