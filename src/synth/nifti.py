"""Vertebra label volumes as NIfTI files laid out exactly like the Kaggle ``segmentations/<UID>.nii``.

Called by src.synth.generate for the studies that get a mask. The convention (docs/data.md#mask-orientation),
which the mask reader is written against:

- array (nibabel ``dataobj``) of shape (cols, rows, slices); element [i, j, k] is the label of DICOM
  pixel (row = rows-1-j, col = i) on the k-th slice in ascending z (k = 0 at the feet);
- affine in RAS (DICOM is LPS, so x and y change sign): with column spacing dx, row spacing dy,
  origin (ox, oy) = ImagePositionPatient x, y, lowest slice z z_min and slice spacing dz,
  ``[[-dx, 0, 0, -ox], [0, dy, 0, -(oy + (rows-1)*dy)], [0, 0, dz, z_min], [0, 0, 0, 1]]``;
- uint8 labels 0 background, 1..7 C1..C7, 8..19 T1..T12; uncompressed ``.nii``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..io_utils import atomic_path


def nifti_array_and_affine(labels: np.ndarray, z_positions: Sequence[float], pixel_spacing: tuple[float, float],
                           origin_xy: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaggle-layout array and affine for ``labels`` (slices, rows, cols) given in any z order."""
    labels = np.asarray(labels)
    z = np.asarray(z_positions, dtype=np.float64)
    if labels.ndim != 3 or labels.shape[0] != len(z):
        raise ValueError(f"labels must be (slices, rows, cols) with one z per slice; got {labels.shape} and {len(z)} z")
    order = np.argsort(z, kind="stable")  # ascending z: feet first
    ascending = labels[order]
    rows = labels.shape[1]
    array = np.ascontiguousarray(ascending.transpose(2, 1, 0)[:, ::-1, :]).astype(np.uint8)
    dy, dx = pixel_spacing
    ox, oy = origin_xy
    dz = float(np.median(np.diff(z[order]))) if len(z) > 1 else 1.0
    affine = np.array([[-dx, 0.0, 0.0, -ox],
                       [0.0, dy, 0.0, -(oy + (rows - 1) * dy)],
                       [0.0, 0.0, dz, float(z[order][0])],
                       [0.0, 0.0, 0.0, 1.0]])
    return array, affine


def write_segmentation(path: Path, labels: np.ndarray, z_positions: Sequence[float], pixel_spacing: tuple[float, float],
                       origin_xy: tuple[float, float]) -> Path:
    """Write ``labels`` (slices, rows, cols, the DICOM grid) to ``path`` (.nii) atomically."""
    array, affine = nifti_array_and_affine(labels, z_positions, pixel_spacing, origin_xy)
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(np.uint8)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = Path(path)
    with atomic_path(path, ".nii") as tmp:
        nib.save(image, str(tmp))
    return path
