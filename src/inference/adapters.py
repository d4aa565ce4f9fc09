"""From one study in a scratch study cache to the batch a trained model was validated on, per task.

Called by src/inference/members.py. Each adapter builds a one-study batch with the task's own
validation dataset class reading the study from a scratch cache (src/inference/reading.py
``stage_study``): the 3D CNN's VolumeDataset after the task's own resampling step
(src/tasks/volume.py), the per-vertebra VertebraDataset with the study's localisation rows
(src/tasks/vertebra.py). So a test study gets the prediction its out-of-fold row would have had, by
construction (tests/test_infer.py checks it). A task with no adapter here is refused when its run is
loaded, not at the first study.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .. import TARGETS
from .reading import TEST_SPLIT


def _one_study_frame(uid: str) -> pd.DataFrame:
    """The frame a dataset is built from; labels are unknown at test time and unused by validation items."""
    return pd.DataFrame({"StudyInstanceUID": [uid], **{t: [0.0] for t in TARGETS}})


def volume_batch(cfg, cache_dir: Path, uid: str, localisation: pd.DataFrame | None) -> dict:
    """The "classify" task: the task's resampling into its derived cache, then VolumeDataset (no augmentation)."""
    from ..tasks.volume import VolumeDataset, ensure_resampled

    folder = ensure_resampled(cache_dir, [uid], list(cfg["cnn3d"]["shape"]), split=TEST_SPLIT,
                              announce=lambda *_: None, progress=False)
    item = VolumeDataset(folder, _one_study_frame(uid), cfg["windows"], None)[0]
    return {"volume": item["volume"][None]}


def vertebra_batch(cfg, cache_dir: Path, uid: str, localisation: pd.DataFrame | None) -> dict:
    """The "vertebra" task: VertebraDataset's validation item from the study's seven localisation rows;
    without rows, the task's own fallback (an even share of the study per vertebra, whole slice)."""
    from ..tasks.vertebra import TABLE_COLUMNS, VertebraDataset

    table = localisation if localisation is not None else pd.DataFrame(columns=TABLE_COLUMNS)
    dataset = VertebraDataset(cache_dir, [uid], table, cfg["effnet_gru"], cfg["windows"], split=TEST_SPLIT, train=False)
    return {"images": dataset[0]["images"][None]}


ADAPTERS = {"classify": volume_batch, "vertebra": vertebra_batch}
NEEDS_LOCALISATION = {"classify": False, "vertebra": True}


def mirror(batch: dict) -> dict:
    """Left-right mirror of every image tensor (the last axis is the patient's left-right in both tasks)."""
    return {k: (v.flip(-1) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}
