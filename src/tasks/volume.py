"""The "volume" task for whole-volume models (the 3D CNN): each study is one item, its HU volume
resampled to a fixed shape, one channel per HU window, with the eight labels.

Resampling a 300-slice study on every epoch would dominate a CPU epoch, so for training and validation
each cached study is resampled once into a derived cache beside the study cache,
``<cache_dir>/resampled/<D>x<H>x<W>/train_images/<uid>.npy`` (int16 HU, written atomically), before
training starts; inference resamples a test study in memory with the same function. Windows and
augmentation are applied per item by :func:`volume_item`, for both. Reads the model's settings section
(``cfg.cnn3d`` for the 3D CNN): ``shape`` and the ``aug_*`` keys.
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
from ..models.registry import model_settings
from ..paths import check_uid
from . import register_task
from .study_task import SPLIT, StudyClassificationTask


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


def volume_item(hu: np.ndarray, windows, augment: dict | None = None) -> torch.Tensor:
    """(C, D, H, W) float32, one channel per HU window, from HU already resampled to the model's shape.

    ``augment`` (training: ``flip_lr``, ``hu_scale``, ``hu_shift``) draws from torch's RNG, so DataLoader
    workers and resumed runs replay it. Called by VolumeDataset and by the task's inference batch.
    """
    hu = np.asarray(hu).astype(np.float32)
    if augment:
        # small scanner-like intensity change: HU scaled by 1 +- scale and shifted by +- shift HU
        scale = 1 + augment["hu_scale"] * float(torch.randn(()))
        shift = augment["hu_shift"] * float(torch.randn(()))
        hu = hu * scale + shift
    volume = torch.from_numpy(np.asarray(apply_windows(hu, [list(w) for w in windows]), dtype=np.float32))
    if augment and torch.rand(()) < augment["flip_lr"]:
        volume = volume.flip(-1)  # left-right mirror of the patient
    return volume.contiguous()


class VolumeDataset(torch.utils.data.Dataset):
    """One item per study from the resampled cache: {"volume": (C, D, H, W) float32, "labels": (8,) float32}."""

    def __init__(self, folder: Path, frame: pd.DataFrame, windows, augment: dict | None = None):
        self.folder = Path(folder)
        self.study_uids = list(frame["StudyInstanceUID"])
        self.labels = frame[TARGETS].to_numpy(np.float32)
        self.windows = [list(w) for w in windows]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.study_uids)

    def __getitem__(self, index: int) -> dict:
        hu = np.load(self.folder / f"{self.study_uids[index]}.npy")
        return {"volume": volume_item(hu, self.windows, self.augment), "labels": torch.tensor(self.labels[index])}


@register_task("volume")
class VolumeClassificationTask(StudyClassificationTask):
    def make_dataset(self, frame: pd.DataFrame, train: bool) -> VolumeDataset:
        c = self.settings
        shape = list(c["shape"])
        folder = ensure_resampled(self.cache_dir, frame["StudyInstanceUID"], shape, announce=self.announce,
                                  progress=self.cfg["progress"])
        augment = {"flip_lr": c["aug_flip_lr"], "hu_scale": c["aug_hu_scale"], "hu_shift": c["aug_hu_shift"]} if train else None
        return VolumeDataset(folder, frame, self.cfg["windows"], augment)

    @classmethod
    def study_batch(cls, cfg, volume: np.ndarray, meta: dict, localisation: pd.DataFrame | None,
                    labels: np.ndarray | None = None) -> dict:
        """The validation item of a study not in the cache: resampled in memory, as ensure_resampled would."""
        hu = resample_volume(volume, list(model_settings(cfg)["shape"]))
        return {"volume": volume_item(hu, cfg["windows"])[None]}
