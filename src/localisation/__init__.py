"""Stage 1 of the pipeline: find each vertebra C1..C7 in every study.

A 3D U-Net (src/models/localizer.py), trained on the studies that have masks through the one training
loop ("localize" task, src/localisation/task.py), labels the downsampled study; its labels, brought back
to every original slice, give each vertebra's slice range and box: the localisation table (src/localisation/
table.py, columns in shared/SPEC.md) that the per-vertebra classifier and inference read.

- ``python -m src.localize``: train the fold localisers that are missing, then (re)write the table
- :func:`ensure_localisation`: what src/train.py calls for a classifier that needs the table
- :func:`src.localisation.predict.localise_volume`: the table rows of one study (inference)

Modules: metrics (Dice, slice IoU), extents (labels -> vertebra boxes, estimates for missed ones), table
(boxes -> DICOM slice numbers and original pixels), resample (study slices <-> model grid), dataset, task,
predict, build, figures.
"""
from __future__ import annotations

import json
from pathlib import Path

LOCALIZER_EXPERIMENT = "localizer"
LOCALIZER_MODEL = "localizer"

# Keys of the calling experiment that the localiser must share: where the data, cache, folds, runs and
# table live, how folds are cut, and how runs are executed and logged.
SHARED_KEYS = ("data_dir", "demo.dir", "cache_dir", "folds_dir", "runs_dir", "localisation_table", "n_folds",
               "seed", "device", "num_workers", "progress", "profile", "wandb.mode", "wandb.dir", "wandb.project",
               "wandb.entity")


def localizer_config(cfg, cache_dir: Path | None = None):
    """configs/localizer.yaml with the calling experiment's shared settings (``SHARED_KEYS``)."""
    from ..config import load_config

    overrides = []
    for key in SHARED_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if key == "cache_dir" and cache_dir is not None:
            node = str(cache_dir)
        overrides.append(f"{key}={node if isinstance(node, str) else json.dumps(node)}")
    return load_config(overrides, default_experiment=LOCALIZER_EXPERIMENT)


def ensure_localisation(cfg, data_dir: Path, cache_dir: Path, announce=print) -> Path:
    """The localisation table's path, building it first if it is missing or lacks cached train studies:
    trains the localiser folds ``localizer.folds`` of configs/localizer.yaml that have no best.pt yet,
    then predicts every cached study."""
    from ..data.cache import cached_uids
    from ..folds import ensure_folds
    from ..paths import localisation_path
    from .build import build_table, train_missing_folds
    from .table import read_table

    path = localisation_path(cfg, cache_dir)
    if path.exists():
        lacking = set(cached_uids(cache_dir, "train_images")) - set(read_table(path)["StudyInstanceUID"])
        if not lacking:
            announce(f"[localisation] {path}: present for every cached study")
            return path
        announce(f"[localisation] {path} lacks {len(lacking)} cached studies: rebuilding it")
    else:
        announce(f"[localisation] no table at {path}: building it with configs/{LOCALIZER_EXPERIMENT}.yaml")
    # called with the localiser's own config (src.localize, tests): keep it; from a classifier: localizer.yaml
    loc_cfg = cfg if cfg["model"] == LOCALIZER_MODEL else localizer_config(cfg, cache_dir)
    folds = ensure_folds(loc_cfg, data_dir, announce=announce)
    train_missing_folds(loc_cfg, data_dir, cache_dir, folds, announce=announce)
    build_table(loc_cfg, data_dir, cache_dir, folds, announce=announce)
    return path
