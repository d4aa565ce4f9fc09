"""A tiny labelled dataset for the training tests, written straight into the study cache format
(no DICOM, no prepare): train.csv, cached volumes with vertebra masks, a folds file and a
localisation table, so that every model and task of the registry can run a few steps on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src import TARGETS, VERTEBRAE
from src.data.cache import write_study

N_FOLDS = 5


def make_tiny_dataset(root: Path, n_studies: int = 10, slices: int = 14, size: int = 16, seed: int = 0) -> dict:
    """Write the dataset under ``root``; return the key=value overrides that point a config at it."""
    rng = np.random.default_rng(seed)
    data_dir, cache_dir = root / "data", root / "cache"
    data_dir.mkdir(parents=True, exist_ok=True)
    uids = [f"1.2.826.0.1.{1000 + i}" for i in range(n_studies)]
    labels = np.zeros((n_studies, len(TARGETS)), dtype=int)
    labels[:, 1:] = rng.random((n_studies, len(VERTEBRAE))) < 0.3
    labels[::2, 3] = 1  # half the studies fractured at C3, so every fold sees both classes overall
    labels[:, 0] = labels[:, 1:].max(axis=1)
    pd.DataFrame(labels, columns=TARGETS).assign(StudyInstanceUID=uids)[["StudyInstanceUID", *TARGETS]] \
        .to_csv(data_dir / "train.csv", index=False)
    pd.DataFrame({"StudyInstanceUID": uids, "fold": np.arange(n_studies) % N_FOLDS}).to_csv(root / "folds.csv", index=False)

    rows = []
    band = slices // len(VERTEBRAE)
    for i, uid in enumerate(uids):
        hu = rng.normal(0, 100, (slices, size, size)).astype(np.int16)
        mask = np.zeros(hu.shape, dtype=np.uint8)
        for v in range(len(VERTEBRAE)):
            z0, z1 = v * band, (v + 1) * band
            mask[z0:z1, 4:12, 4:12] = v + 1
            hu[z0:z1, 4:12, 4:12] += 700  # bone
            if labels[i, v + 1]:
                hu[z0:z1, 7:9, 4:12] -= 500  # a fracture cleft
            rows.append({"StudyInstanceUID": uid, "vertebra": VERTEBRAE[v], "slice_min": z0 + 1, "slice_max": z1,
                         "x0": 4, "y0": 4, "x1": 12, "y1": 12, "confidence": 1.0, "estimated": False})
        meta = {"slice_numbers": list(range(1, slices + 1)), "z": [float(-z) for z in range(slices)],
                "pixel_spacing": [1.0, 1.0], "original_shape": [size, size], "slice_spacing": 1.0, "skipped_files": []}
        write_study(cache_dir, "train_images", uid, hu, meta, mask=mask)
    pd.DataFrame(rows).to_csv(cache_dir / "localisation.csv", index=False)
    return {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "folds_dir": str(root / "folds_dir"),
            "runs_dir": str(root / "runs"), "localisation_table": str(cache_dir / "localisation.csv"),
            "folds_file": root / "folds.csv", "labels": labels, "uids": uids}


def overrides(tiny: dict, **extra) -> list[str]:
    """key=value strings for a small, quiet, CPU-only run on the tiny dataset."""
    base = {"data_dir": tiny["data_dir"], "cache_dir": tiny["cache_dir"], "folds_dir": tiny["folds_dir"],
            "runs_dir": tiny["runs_dir"], "localisation_table": tiny["localisation_table"],
            "n_folds": N_FOLDS, "fold": 0, "epochs": 1, "batch_size": 2, "num_workers": 0, "progress": False,
            "device": "cpu", "precision": "fp32", "wandb.mode": "disabled", "max_steps_per_epoch": 2,
            "compile": False, "resume": False, "pretrained": False,  # no test may need downloaded weights
            "explain_studies": 0}  # pictures are tested where they are the point (tests/test_explain.py)
    base.update(extra)
    return [f"{k}={_yaml(v)}" for k, v in base.items()]


def install_folds(tiny: dict) -> None:
    """Put the hand-made folds where ensure_folds looks (folds/<dataset>.csv), so no stratifier runs."""
    target = Path(tiny["folds_dir"]) / f"{Path(tiny['data_dir']).resolve().name}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(Path(tiny["folds_file"]).read_text())


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)
