"""Vertebra masks: ``segmentations/<UID>.nii`` put onto the study's DICOM grid, and per-slice vertebra presence.

Called by src.data.prepare (masks go into the cache beside the volume) and by the localiser's
tests. The NIfTI array is (columns, rows, slices) in RAS world space while DICOM is LPS, so read
naively it looks sagittal, mirrored and upside down (docs/data.md#mask-orientation). Two ways to undo that:

- ``affine``: every DICOM pixel (row, col) of every slice (ImagePositionPatient z) is taken from
  LPS to RAS, through the inverse NIfTI affine, to the nearest voxel. Right for studies stored
  head first and for those stored reversed. Used whenever the affine is axis-aligned and agrees
  with the stack (spacings, z range, voxel centres on the DICOM grid).
- ``kaggle``: the transform the competition's top teams used, ``nii.transpose(1, 0, 2)[::-1, :, ::-1]``
  on the slice-number-ordered stack. Only right when slice 1 is the head; used, with a warning,
  when the affine cannot be trusted.

Labels: 0 background, 1..7 C1..C7, 8.. thoracic.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .dicom_reader import Study

N_CERVICAL = 7
STANDARD_AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
# How far a DICOM pixel centre may sit from the nearest voxel centre (in voxels) before the two
# grids are called inconsistent: both come from the same scan, so they should coincide.
_GRID_TOLERANCE = 0.3
_SPACING_TOLERANCE = 0.05  # relative


class MaskError(ValueError):
    """A mask file cannot be matched to its study; the message names the file."""


def _labels_uint8(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == np.uint8:
        return labels
    if np.issubdtype(labels.dtype, np.floating):
        labels = np.rint(labels)
    return np.clip(labels, 0, 255).astype(np.uint8)


def _affine_index_maps(affine: np.ndarray, shape: tuple[int, int, int], study: Study) -> tuple[list, str | None]:
    """For each NIfTI voxel axis, (DICOM axis 0=slice 1=row 2=col, voxel index per position), or a reason not to trust it."""
    if not np.allclose(np.asarray(study.orientation, float), STANDARD_AXIAL, atol=1e-3):
        return [], f"DICOM orientation {tuple(np.round(study.orientation, 3))} is not plain axial"
    linear = np.asarray(affine, float)[:3, :3]
    translation = np.asarray(affine, float)[:3, 3]
    scale = np.abs(linear).max()
    if not np.isfinite(linear).all() or scale == 0:
        return [], "affine is singular or not finite"
    world_of_axis = []
    for axis in range(3):
        column = np.abs(linear[:, axis])
        big = np.flatnonzero(column > 1e-3 * scale)
        if len(big) != 1:
            return [], f"affine is not axis-aligned (voxel axis {axis} mixes world axes)"
        world_of_axis.append(int(big[0]))
    if sorted(world_of_axis) != [0, 1, 2]:
        return [], "affine maps two voxel axes onto one world axis"

    rows, cols = study.original_shape
    row_spacing, col_spacing = study.pixel_spacing
    ox, oy = study.origin_xy
    # RAS world coordinate along each world axis for each DICOM position (LPS -> RAS negates x and y)
    world = {
        0: (2, -(ox + col_spacing * np.arange(cols)), col_spacing),  # x varies with the column
        1: (1, -(oy + row_spacing * np.arange(rows)), row_spacing),  # y with the row
        2: (0, np.asarray(study.z, float), study.slice_spacing),  # z with the slice
    }
    maps = []
    for axis, world_axis in enumerate(world_of_axis):
        dicom_axis, coords, dicom_step = world[world_axis]
        step = linear[world_axis, axis]
        if dicom_step > 0 and abs(abs(step) - dicom_step) > _SPACING_TOLERANCE * dicom_step:
            return [], (f"voxel spacing {abs(step):.4g} mm along world axis {world_axis} differs from the "
                        f"DICOM spacing {dicom_step:.4g} mm")
        position = (coords - translation[world_axis]) / step
        index = np.rint(position)
        if np.abs(position - index).max() > _GRID_TOLERANCE:
            return [], f"voxel centres along world axis {world_axis} are off the DICOM grid"
        if index.min() < 0 or index.max() > shape[axis] - 1:
            return [], (f"DICOM positions along world axis {world_axis} fall outside the mask "
                        f"(voxel {index.min():.0f}..{index.max():.0f} of {shape[axis]})")
        maps.append((dicom_axis, index.astype(np.intp)))
    return maps, None


def _kaggle_transform(labels: np.ndarray, study: Study, source: str) -> np.ndarray:
    """The competition's shortcut: right when slice 1 is the head; maps by file number, not z."""
    rows, cols = study.original_shape
    every_number = set(int(n) for n in study.slice_numbers)
    for name in study.skipped_files:
        stem = Path(name).stem
        if stem.isdigit():
            every_number.add(int(stem))
    ordered = np.array(sorted(every_number))
    if labels.shape != (cols, rows, len(ordered)):
        raise MaskError(f"{source}: mask shape {labels.shape} does not match the study's "
                        f"{cols} columns x {rows} rows x {len(ordered)} slice files; the mask cannot be used")
    aligned = labels.transpose(1, 0, 2)[::-1, :, ::-1]  # (rows, cols, slice-number order)
    rank = np.searchsorted(ordered, study.slice_numbers)
    return np.ascontiguousarray(aligned[:, :, rank].transpose(2, 0, 1))


def align_mask(labels: np.ndarray, affine: np.ndarray, study: Study, source: str = "mask") -> tuple[np.ndarray, str]:
    """Put a NIfTI label array onto ``study``'s grid: ``(mask uint8 (S, rows, cols), method)``.

    ``method`` is ``"affine"`` or ``"kaggle"`` (the fallback, announced with a warning).
    """
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise MaskError(f"{source}: expected a 3-D label volume, got shape {labels.shape}")
    labels = _labels_uint8(labels)
    maps, reason = _affine_index_maps(affine, labels.shape, study)
    if reason is not None:
        warnings.warn(f"{source}: affine not used ({reason}); falling back to the Kaggle transform "
                      f"transpose(1, 0, 2)[::-1, :, ::-1], which assumes slice 1 is the head", stacklevel=2)
        return _kaggle_transform(labels, study, source), "kaggle"
    # each voxel axis depends on exactly one DICOM axis, so one open-mesh lookup does the whole volume
    by_dicom = {dicom_axis: (voxel_axis, index) for voxel_axis, (dicom_axis, index) in enumerate(maps)}
    order = [by_dicom[d][0] for d in (0, 1, 2)]  # voxel axes in (slice, row, col) order
    reordered = labels.transpose(order)
    mask = reordered[np.ix_(by_dicom[0][1], by_dicom[1][1], by_dicom[2][1])]
    return np.ascontiguousarray(mask), "affine"


def load_mask(nii_path: Path, study: Study) -> tuple[np.ndarray, str]:
    """Read ``nii_path`` with nibabel and align it: ``(mask, method)``; see :func:`align_mask`."""
    import nibabel as nib

    nii_path = Path(nii_path)
    try:
        image = nib.load(str(nii_path))
        labels = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises several types for a damaged file
        raise MaskError(f"{nii_path}: cannot read the NIfTI file ({type(err).__name__}: {err})") from err
    return align_mask(labels, image.affine, study, source=str(nii_path))


def read_mask(nii_path: Path, study: Study) -> np.ndarray:
    """The mask of ``study`` as uint8 (slices, rows, cols) on its head-to-feet DICOM grid."""
    return load_mask(nii_path, study)[0]


def vertebra_presence(mask: np.ndarray) -> np.ndarray:
    """(slices, 7) bool: which of C1..C7 appear on each slice of a (slices, H, W) label volume."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slices, H, W), got shape {mask.shape}")
    flat = mask.reshape(mask.shape[0], -1)
    return np.stack([(flat == label).any(axis=1) for label in range(1, N_CERVICAL + 1)], axis=1)
