"""The "classify" task for whole-volume models (the 3D CNN): each study is one item, its cached HU volume
resampled to a fixed shape, one channel per HU window, with the eight labels.

Resampling a 300-slice study on every epoch would dominate a CPU epoch, so each study is resampled once
into a derived cache beside the study cache, ``<cache_dir>/resampled/<D>x<H>x<W>/train_images/<uid>.npy``
(int16 HU, written atomically), before training starts. Windows and augmentation are applied per item.
Reads ``cfg.cnn3d.shape`` and the ``cfg.cnn3d.aug_*`` keys.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import TARGETS
from ..data.cache import load_study
from ..data.windows import apply_windows
from ..io_utils import atomic_path
from ..paths import check_uid
from . import register_task
from .classify import SPLIT, StudyClassificationTask


def resample_volume(hu: np.ndarray, shape) -> np.ndarray:
    """int16 HU (S, H, W) -> int16 HU of ``shape``: area averaging where every axis shrinks (no aliasing
    of thin cortical bone), trilinear where any axis grows."""
    shape = tuple(int(s) for s in shape)
    volume = torch.from_numpy(np.asarray(hu, dtype=np.float32))[None, None]
    shrink = all(o <= i for o, i in zip(shape, hu.shape))
    out = F.interpolate(volume, size=shape, mode="area") if shrink else \
        F.interpolate(volume, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].round().clamp(-32768, 32767).numpy().astype(np.int16)


def resampled_dir(cache_dir: Path, shape, split: str = SPLIT) -> Path:
    return Path(cache_dir) / "resampled" / "x".join(str(int(s)) for s in shape) / split


def ensure_resampled(cache_dir: Path, uids, shape, split: str = SPLIT, announce=print, progress: bool = True) -> Path:
    """Resample every study of ``uids`` not yet in the derived cache; return the derived folder."""
    folder = resampled_dir(cache_dir, shape, split)
    todo = [u for u in uids if not (folder / f"{check_uid(u)}.npy").exists()]
    if todo:
        announce(f"[resample] {len(todo)} studies to {'x'.join(map(str, shape))} into {folder} (once)")
        from tqdm import tqdm

        for uid in tqdm(todo, disable=not progress, desc="resample", unit="study"):
            hu = load_study(cache_dir, split, uid, with_mask=False).volume
            with atomic_path(folder / f"{uid}.npy", ".npy") as tmp:
                np.save(tmp, resample_volume(hu, shape))
    return folder


class VolumeDataset(torch.utils.data.Dataset):
    """One item per study: {"volume": (C, D, H, W) float32, "labels": (8,) float32}."""

    def __init__(self, folder: Path, frame: pd.DataFrame, windows, augment: dict | None = None):
        self.folder = Path(folder)
        self.study_uids = list(frame["StudyInstanceUID"])
        self.labels = frame[TARGETS].to_numpy(np.float32)
        self.windows = [list(w) for w in windows]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.study_uids)

    def __getitem__(self, index: int) -> dict:
        hu = np.load(self.folder / f"{self.study_uids[index]}.npy").astype(np.float32)
        if self.augment:
            hu = self.jitter(hu)
        volume = torch.from_numpy(np.asarray(apply_windows(hu, self.windows), dtype=np.float32))
        if self.augment and torch.rand(()) < self.augment["flip_lr"]:
            # left-right mirror of the patient; torch's RNG, so workers and resumed runs replay it
            volume = volume.flip(-1)
        return {"volume": volume.contiguous(), "labels": torch.tensor(self.labels[index])}

    def jitter(self, hu: np.ndarray) -> np.ndarray:
        """Small scanner-like intensity change: HU scaled by 1 +- scale and shifted by +- shift HU."""
        scale = 1 + self.augment["hu_scale"] * float(torch.randn(()))
        shift = self.augment["hu_shift"] * float(torch.randn(()))
        return hu * scale + shift


@register_task("classify")
class VolumeClassificationTask(StudyClassificationTask):
    def make_dataset(self, frame: pd.DataFrame, train: bool) -> VolumeDataset:
        c = self.cfg["cnn3d"]
        shape = list(c["shape"])
        folder = ensure_resampled(self.cache_dir, frame["StudyInstanceUID"], shape, announce=self.announce,
                                  progress=self.cfg["progress"])
        augment = {"flip_lr": c["aug_flip_lr"], "hu_scale": c["aug_hu_scale"], "hu_shift": c["aug_hu_shift"]} if train else None
        return VolumeDataset(folder, frame, self.cfg["windows"], augment)
