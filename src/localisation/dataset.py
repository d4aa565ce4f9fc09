"""Training items for the localiser: a segmented study on the model grid, volume and vertebra mask.

Called by the "localise" task (src/localisation/task.py). Resampling a study and its mask from the
cache on every epoch would dominate a CPU epoch, so both are resampled once into derived caches beside
the study cache: HU in ``<cache_dir>/resampled/<D>x<H>x<W>/train_images/<uid>.npy`` (the same files the
3D CNN uses, src/tasks/volume.py) and labels in ``.../train_images_masks/<uid>.npy`` (uint8 0..7,
thoracic folded into background), each written atomically.

With probability ``crop["prob"]`` an item is instead a box around the study's true cervical spine, with
random margins, cut from the full-resolution cache and resampled to the model grid (src/localisation/crop.py
says why the localiser looks twice); the spine's box is found once per study and worker.

Augmentation happens on the model grid, where it is cheap: one random affine (in-plane rotation,
scale, shift) applied to volume and labels alike, a left-right mirror, and an HU jitter. Never an
up-down flip: the model may and should rely on the head being at slice 0.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import load_study
from ..io_utils import atomic_path
from ..paths import check_uid
from ..tasks.volume import ensure_resampled, resampled_dir
from .crop import box_slices, foreground_box, random_margins, widen_box
from .resample import cervical_labels, model_input, resample_mask, resample_volume

SPLIT = "train_images"


def mask_dir(cache_dir: Path, shape, split: str = SPLIT) -> Path:
    return resampled_dir(cache_dir, shape, split).parent / f"{split}_masks"


def ensure_resampled_masks(cache_dir: Path, uids, shape, split: str = SPLIT, announce=print) -> Path:
    """Resample the mask of every study of ``uids`` not yet in the derived mask cache; return its folder."""
    folder = mask_dir(cache_dir, shape, split)
    todo = [u for u in uids if not (folder / f"{check_uid(u)}.npy").exists()]
    if todo:
        announce(f"[localiser] resampling {len(todo)} masks to {'x'.join(map(str, shape))} into {folder} (once)")
    for uid in todo:
        study = load_study(cache_dir, split, uid)
        if study.mask is None:
            raise ValueError(f"study {uid} has no mask in the cache {cache_dir / split}; only segmented studies "
                             f"train the localiser (re-run `python -m src.prepare` if its segmentation is new)")
        with atomic_path(folder / f"{uid}.npy", ".npy") as tmp:
            np.save(tmp, resample_mask(study.mask, shape))
    return folder


def prepare_resampled(cache_dir: Path, uids, shape, announce=print, progress: bool = True) -> tuple[Path, Path]:
    """Both derived caches for ``uids``: (HU folder, mask folder)."""
    shape = [int(s) for s in shape]
    hu_folder = ensure_resampled(cache_dir, list(uids), shape, announce=announce, progress=progress)
    return hu_folder, ensure_resampled_masks(cache_dir, list(uids), shape, announce=announce)


def random_affine(volume: torch.Tensor, labels: torch.Tensor, scale: float, shift: float,
                  rotate_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine for a (C, D, H, W) volume and its (D, H, W) labels: in-plane rotation of up to
    ``rotate_deg``, isotropic zoom of up to +-``scale``, shift of up to +-``shift`` of each axis."""
    angle = math.radians(rotate_deg) * (2 * float(torch.rand(())) - 1)
    zoom = 1 + scale * (2 * float(torch.rand(())) - 1)
    offset = (shift * 2 * (2 * torch.rand(3) - 1)).tolist()  # affine_grid spans [-1, 1]: a fraction f is 2f
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # affine_grid's coordinates are (x=W, y=H, z=D); rotate in the x-y (axial) plane only
    theta = torch.tensor([[cos, -sin, 0.0, offset[0]],
                          [sin, cos, 0.0, offset[1]],
                          [0.0, 0.0, 1.0 / zoom, offset[2]]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, *volume.shape], align_corners=False)
    volume = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    labels = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[0, 0].to(torch.uint8)
    return volume, labels


class LocaliserDataset(torch.utils.data.Dataset):
    """One item per segmented study: {"volume": (C, D, H, W) float32, "labels": (D, H, W) uint8}.

    ``crop`` (training only): {"prob", "margin": (low, high), "cache_dir", "shape"} for spine-box items."""

    def __init__(self, hu_folder: Path, mask_folder: Path, study_uids, windows, augment: dict | None = None,
                 crop: dict | None = None):
        self.hu_folder, self.mask_folder = Path(hu_folder), Path(mask_folder)
        self.study_uids = list(study_uids)
        self.windows = [list(w) for w in windows]
        self.augment = augment
        self.crop = crop if crop and float(crop["prob"]) > 0 else None
        self._spine_boxes: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self.study_uids)

    def spine_crop(self, uid: str) -> tuple[np.ndarray, torch.Tensor]:
        """HU and labels on the model grid of a box around the study's true C1..C7, random margins."""
        study = load_study(self.crop["cache_dir"], SPLIT, uid)  # memory-mapped: only the box is read below
        if uid not in self._spine_boxes:
            self._spine_boxes[uid] = foreground_box(cervical_labels(study.mask))
        box = widen_box(self._spine_boxes[uid], study.mask.shape, random_margins(*self.crop["margin"]))
        shape = self.crop["shape"]
        region = box_slices(box)
        return resample_volume(study.volume[region], shape), torch.from_numpy(resample_mask(study.mask[region], shape))

    def __getitem__(self, index: int) -> dict:
        uid = self.study_uids[index]
        if self.crop and float(torch.rand(())) < float(self.crop["prob"]):
            hu, labels = self.spine_crop(uid)
            hu = hu.astype(np.float32)
        else:
            hu = np.load(self.hu_folder / f"{uid}.npy").astype(np.float32)
            labels = torch.from_numpy(np.load(self.mask_folder / f"{uid}.npy"))
        a = self.augment
        if a:
            hu = hu * (1 + a["hu_scale"] * float(torch.randn(()))) + a["hu_shift"] * float(torch.randn(()))
        volume = model_input(hu, self.windows)
        if a:
            if float(torch.rand(())) < a["p_affine"]:
                volume, labels = random_affine(volume, labels, a["scale"], a["shift"], a["rotate"])
            if float(torch.rand(())) < a["flip_lr"]:
                volume, labels = volume.flip(-1), labels.flip(-1)
        return {"volume": volume.contiguous(), "labels": labels.contiguous()}
