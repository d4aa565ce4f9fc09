"""The localiser's voxel labels of a study, kept small beside its cached volume for the mask channel.

The localisation table keeps one slice range and one box per vertebra; the localiser itself labels every
voxel. src/localisation/build.py keeps those labels for every cached study (segmented or not, train or
test) as ``predicted_labels.npy`` in the study's cache folder: uint8 (0 background, 1..7 C1..C7), every
slice of the volume, in-plane thinned by a whole stride so the longer side is at most
:data:`MAX_SIDE` pixels (a 512 px cache keeps 128 x 128: a sixteenth of the uint8 grid). The classifier's
mask channel (src/tasks/vertebra.py ``target_mask``) reads the slices it samples and scales them back to
its own volume's grid, whatever cache size that volume has; inference hands over the labels it has just
predicted in the same compact form (:func:`compact`), so training and inference see the same channel.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.cache import study_dir
from ..io_utils import atomic_path

FILE = "predicted_labels.npy"
MAX_SIDE = 128


def compact(labels: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """(D, H, W) labels -> (D, ~H/s, ~W/s) uint8: the centre pixel of every s x s block, s the smallest whole
    stride that brings the longer side to ``max_side`` or below (1: unchanged)."""
    labels = np.asarray(labels)
    stride = max(1, math.ceil(max(labels.shape[1:]) / max_side))
    start = stride // 2
    return np.ascontiguousarray(labels[:, start::stride, start::stride], dtype=np.uint8)


def save_labels(cache_dir: Path, split: str, uid: str, labels: np.ndarray) -> Path:
    """Write the compact labels of a cached study (atomically: a reader never sees half a file)."""
    target = study_dir(cache_dir, split, uid) / FILE
    with atomic_path(target, ".npy") as tmp:
        np.save(tmp, compact(labels))
    return target


def load_labels(cache_dir: Path, split: str, uid: str) -> np.ndarray | None:
    """The study's compact labels (memory-mapped), or None when the table was built without them."""
    path = study_dir(cache_dir, split, uid) / FILE
    return np.load(path, mmap_mode="r") if path.exists() else None


def missing_labels(cache_dir: Path, split: str, uids) -> list[str]:
    return [u for u in uids if not (study_dir(cache_dir, split, u) / FILE).exists()]


def labels_on_grid(labels: np.ndarray, positions: np.ndarray, shape: tuple) -> np.ndarray:
    """(N, H, W) uint8: the compact labels' slices at volume ``positions``, scaled by nearest neighbour to
    the in-plane size of a volume of ``shape`` (slices, H, W): each volume pixel takes the stored pixel
    whose block holds its centre (exact at stride 1; within a block otherwise)."""
    if labels.shape[0] != shape[0]:
        raise ValueError(f"predicted labels have {labels.shape[0]} slices, the volume {shape[0]}: "
                         f"they belong to another cache; rebuild the localisation table")
    picked = np.asarray(labels[np.asarray(positions, dtype=int)])
    rows = np.minimum(((np.arange(shape[1]) + 0.5) * picked.shape[1] / shape[1]).astype(int), picked.shape[1] - 1)
    cols = np.minimum(((np.arange(shape[2]) + 0.5) * picked.shape[2] / shape[2]).astype(int), picked.shape[2] - 1)
    return picked[:, rows][:, :, cols]
