"""The preprocessed study cache: what src.prepare writes and every dataset reads.

Layout, one folder per study, written whole or not at all::

    <cache_dir>/<split>/<StudyInstanceUID>/
        volume.npy   int16 Hounsfield units, shape (slices, H, W), ordered head to feet
        mask.npy     uint8 vertebra labels on the same grid (0 background, 1..7 C1..C7, 8.. T1..), optional
        meta.json    see CachedStudy.meta
        predicted_labels.npy  the localiser's voxel labels, added when the localisation table is built
                              (src/localisation/stored_labels.py; not read here)

``split`` is the Kaggle image folder the study came from (``train_images`` or ``test_images``).
HU stay int16, not windowed: windows are cheap to apply on the fly (src.data.windows) and the cache
then serves every window and model. ``np.load(mmap_mode="r")`` makes a read touch only the slices
it needs. A study folder is built under a temporary name and renamed into place, so an interrupted
run never leaves a folder that looks finished.

meta.json keys: ``uid``, ``n_slices``, ``slice_numbers`` (the study's own DICOM file numbers, in
volume order), ``z`` (ImagePositionPatient z per volume slice, descending = head first),
``pixel_spacing`` ([row, col] mm in the original slice), ``original_shape`` ([rows, cols]),
``shape`` ([slices, H, W] as cached), ``slice_spacing`` (mm between volume slices),
``skipped_files`` (files of the study folder left out: unreadable, or not the kept series),
``skipped_reasons`` ({file: why}; only present when something was skipped), ``has_mask``.

Beside the study folders, ``<split>/.locks/`` holds the lock files (src/locks.py) that keep two
prepare runs off each other's work: ``<uid>.lock`` while a study is prepared and written,
``split.lock`` while the split's own files (skipped.json) are rewritten. Lock files are never
deleted (that would race with the next taker); a dot-folder, so nothing takes it for a study.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..locks import Busy, exclusive
from ..paths import InvalidUID, check_uid

VOLUME = "volume.npy"
MASK = "mask.npy"
META = "meta.json"
LOCKS = ".locks"


@dataclass
class CachedStudy:
    uid: str
    volume: np.ndarray  # int16 HU (S, H, W), head to feet
    meta: dict
    mask: np.ndarray | None = None  # uint8 labels (S, H, W) or None

    @property
    def slice_numbers(self) -> np.ndarray:
        return np.asarray(self.meta["slice_numbers"])


def study_dir(cache_dir: Path, split: str, uid: str) -> Path:
    return Path(cache_dir) / split / check_uid(uid)


def study_lock(cache_dir: Path, split: str, uid: str) -> Path:
    """The lock file held by whoever prepares and writes study ``uid`` (src.data.prepare's workers)."""
    return Path(cache_dir) / split / LOCKS / f"{check_uid(uid)}.lock"


def split_lock(cache_dir: Path, split: str) -> Path:
    """The lock file held while the split folder's own files (skipped.json, its temporaries) are written or cleaned.

    Its name has letters, so it can never be a study's (UIDs are digits and dots).
    """
    return Path(cache_dir) / split / LOCKS / "split.lock"


def is_cached(cache_dir: Path, split: str, uid: str) -> bool:
    return (study_dir(cache_dir, split, uid) / META).exists()


def cached_uids(cache_dir: Path, split: str) -> list[str]:
    root = Path(cache_dir) / split
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / META).exists())


def write_study(cache_dir: Path, split: str, uid: str, volume: np.ndarray, meta: dict,
                mask: np.ndarray | None = None) -> Path:
    """Write one study atomically; an existing finished folder is replaced."""
    target = study_dir(cache_dir, split, uid)
    target.parent.mkdir(parents=True, exist_ok=True)
    if volume.dtype != np.int16 or volume.ndim != 3:
        raise ValueError(f"{uid}: volume must be int16 (slices, H, W), got {volume.dtype} {volume.shape}")
    if mask is not None and mask.shape != volume.shape:
        raise ValueError(f"{uid}: mask shape {mask.shape} differs from volume {volume.shape}")
    meta = dict(meta, uid=uid, n_slices=int(volume.shape[0]), shape=list(volume.shape), has_mask=mask is not None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{uid}.", dir=target.parent))
    try:
        np.save(tmp / VOLUME, np.ascontiguousarray(volume))
        if mask is not None:
            np.save(tmp / MASK, np.ascontiguousarray(mask.astype(np.uint8)))
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_study(cache_dir: Path, split: str, uid: str, mmap: bool = True, with_mask: bool = True) -> CachedStudy:
    folder = study_dir(cache_dir, split, uid)
    if not (folder / META).exists():
        raise FileNotFoundError(f"study {uid} is not in the cache {folder.parent}; run `python -m src.prepare`")
    meta = json.loads((folder / META).read_text())
    mode = "r" if mmap else None
    volume = np.load(folder / VOLUME, mmap_mode=mode)
    mask = np.load(folder / MASK, mmap_mode=mode) if with_mask and (folder / MASK).exists() else None
    return CachedStudy(uid=uid, volume=volume, meta=meta, mask=mask)


def _unfinished_uid(path: Path) -> str | None:
    """The study UID of a folder :func:`write_study` left half built (``.<uid>.<random>``), or None for anything else."""
    if not path.name.startswith(".") or not path.is_dir():
        return None
    uid, dot, _ = path.name[1:].rpartition(".")  # mkdtemp's random part has no dot
    if not dot:
        return None
    try:
        return check_uid(uid)
    except InvalidUID:
        return None


def remove_stale_study_folders(cache_dir: Path, split: str) -> list[Path]:
    """Delete the study folders an interrupted writer left (``.<uid>.<random>/``); returns what was deleted.

    Called by src.data.prepare at the start of each split. A folder is only deleted while its
    study's lock is free, and under that lock: a folder whose study is locked is another prepare
    run's work in progress, not debris. Dot-folders that are not a study's (``.locks``) are left alone.
    """
    root = Path(cache_dir) / split
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        uid = _unfinished_uid(path)
        if uid is None:
            continue
        try:
            with exclusive(study_lock(cache_dir, split, uid), f"study {uid} in {root}"):
                shutil.rmtree(path, ignore_errors=True)
        except Busy:
            continue
        removed.append(path)
    return removed
