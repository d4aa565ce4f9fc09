"""Where each vertebra lies in a predicted label volume, and an estimate for those the model missed.

Called by src/localisation/predict.py (every study the localiser sees) and by the localiser task's
validation. Everything here works on one "study grid": every original slice (head to feet, as the cache
orders them) by rows by cols at some in-plane size, in array indices; src/localisation/table.py turns the
result into DICOM slice numbers and original pixels.

A vertebra's extent is the bounding box of the voxels the model gave its label, after dropping stray
specks: along each axis only the main run of slices/rows/columns is kept (small gaps allowed), so a
few mislabelled voxels far away do not stretch the box. A vertebra with fewer than ``min_voxels`` is
"not found" and is estimated from its neighbours (:func:`fill_missing`): its slice range from a linear
fit of the found vertebrae against a typical layout, squeezed between the found neighbours; its box
from the neighbours' boxes. With nothing found at all, the typical layout alone places all seven.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import VERTEBRAE

# Typical position of C1..C7 as fractions of a neck CT: (slice start, slice end) along the head-to-feet
# axis, then (row start, row end, col start, col end) in-plane; ends exclusive. Only used to place
# vertebrae the model did not find; the means over the 56 segmented studies of the demo dataset.
TYPICAL_LAYOUT = {
    "C1": (0.09, 0.15, 0.40, 0.63, 0.32, 0.68),
    "C2": (0.09, 0.27, 0.39, 0.70, 0.36, 0.64),  # the dens reaches up into the ring of C1
    "C3": (0.27, 0.36, 0.38, 0.63, 0.36, 0.64),
    "C4": (0.37, 0.46, 0.37, 0.64, 0.36, 0.64),
    "C5": (0.46, 0.55, 0.37, 0.65, 0.36, 0.64),
    "C6": (0.56, 0.65, 0.38, 0.68, 0.36, 0.64),
    "C7": (0.66, 0.76, 0.40, 0.75, 0.36, 0.64),
}


@dataclass(frozen=True)
class Extent:
    """Inclusive index ranges of one vertebra on a study grid."""

    slice_lo: int
    slice_hi: int
    row_lo: int
    row_hi: int
    col_lo: int
    col_hi: int
    confidence: float = 1.0
    estimated: bool = False

    @property
    def slice_range(self) -> tuple[int, int]:
        return self.slice_lo, self.slice_hi


def main_run(profile: np.ndarray, rel_threshold: float = 0.02, max_gap: int = 2) -> tuple[int, int] | None:
    """The (lo, hi) indices of the heaviest run of ``profile`` above ``rel_threshold`` x its peak, where
    runs closer than ``max_gap`` empty positions are joined. None if the profile is all zero."""
    profile = np.asarray(profile, dtype=float)
    peak = profile.max(initial=0.0)
    if peak <= 0:
        return None
    above = np.flatnonzero(profile >= max(rel_threshold * peak, np.finfo(float).tiny))
    breaks = np.flatnonzero(np.diff(above) > max_gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(above) - 1]])
    weights = [profile[above[s]:above[e] + 1].sum() for s, e in zip(starts, ends)]
    best = int(np.argmax(weights))
    return int(above[starts[best]]), int(above[ends[best]])


def find_extents(labels: np.ndarray, confidence: dict[str, float] | None = None, min_voxels: int = 1,
                 rel_threshold: float = 0.02, max_gap: int = 2) -> dict[str, Extent | None]:
    """Extent of each vertebra C1..C7 in a label volume (slices, rows, cols); None where not found."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (slices, rows, cols), got shape {labels.shape}")
    extents: dict[str, Extent | None] = {}
    for label, name in enumerate(VERTEBRAE, start=1):
        voxels = labels == label
        per_slice = voxels.sum(axis=(1, 2))
        z = main_run(per_slice, rel_threshold, max_gap)
        if z is None or per_slice[z[0]:z[1] + 1].sum() < max(min_voxels, 1):
            extents[name] = None
            continue
        core = voxels[z[0]:z[1] + 1]
        rows = main_run(core.sum(axis=(0, 2)), rel_threshold, max_gap)
        cols = main_run(core.sum(axis=(0, 1)), rel_threshold, max_gap)
        conf = 1.0 if confidence is None else float(confidence.get(name, 1.0))
        extents[name] = Extent(z[0], z[1], rows[0], rows[1], cols[0], cols[1], confidence=conf)
    return extents


def min_voxels(cfg, grid_shape) -> int:
    """Fewest voxels on the study grid for a vertebra to count as found (``localiser.min_voxel_fraction``)."""
    return max(1, int(round(cfg["localiser"]["min_voxel_fraction"] * float(np.prod(grid_shape)))))


def _slice_fit(found: dict[str, Extent], n_slices: int, layout: dict) -> tuple[float, float]:
    """(offset, scale) mapping a layout fraction to a slice index, fitted on the found vertebrae."""
    fracs, slices = [], []
    for name, ext in found.items():
        fracs += [layout[name][0], layout[name][1]]
        slices += [ext.slice_lo, ext.slice_hi + 1]  # slice edges, to match the layout's exclusive ends
    if len(found) >= 2:
        scale, offset = np.polyfit(fracs, slices, 1)
        if scale > 0:  # a fit that runs feet to head means the detections disagree; use one vertebra instead
            return float(offset), float(scale)
    if found:
        name, ext = max(found.items(), key=lambda item: item[1].confidence)
        lo, hi = layout[name][:2]
        scale = (ext.slice_hi + 1 - ext.slice_lo) / max(hi - lo, 1e-6)
        return float(ext.slice_lo - scale * lo), float(scale)
    return 0.0, float(n_slices)


def fill_missing(extents: dict[str, Extent | None], grid_shape, layout: dict = TYPICAL_LAYOUT) -> dict[str, Extent]:
    """All seven vertebrae: the found ones unchanged, the others estimated and marked ``estimated``."""
    n_slices, n_rows, n_cols = (int(s) for s in grid_shape)
    found = {name: ext for name, ext in extents.items() if ext is not None}
    offset, scale = _slice_fit(found, n_slices, layout)
    out: dict[str, Extent] = {}
    for k, name in enumerate(VERTEBRAE):
        if found.get(name) is not None:
            out[name] = found[name]
            continue
        above = next((found[v] for v in reversed(VERTEBRAE[:k]) if v in found), None)
        below = next((found[v] for v in VERTEBRAE[k + 1:] if v in found), None)
        lo = int(round(offset + scale * layout[name][0]))
        hi = int(round(offset + scale * layout[name][1])) - 1
        # squeeze between the found neighbours: a vertebra cannot overlap the one above or below it
        if above is not None:
            lo = max(lo, above.slice_hi + 1)
            hi = max(hi, lo)
        if below is not None:
            hi = min(hi, below.slice_lo - 1)
            lo = min(lo, hi)
        if above is not None and below is not None and below.slice_lo - above.slice_hi <= 1:
            lo, hi = above.slice_hi, below.slice_lo  # neighbours touch: the best guess is their seam
        lo = int(np.clip(lo, 0, n_slices - 1))
        hi = int(np.clip(hi, lo, n_slices - 1))
        near = [e for e in (above, below) if e is not None]
        if near:
            box = np.mean([[e.row_lo, e.row_hi, e.col_lo, e.col_hi] for e in near], axis=0)
        else:
            r0, r1, c0, c1 = layout[name][2:]
            box = np.array([r0 * n_rows, r1 * n_rows - 1, c0 * n_cols, c1 * n_cols - 1])
        row_lo, row_hi = int(np.clip(round(box[0]), 0, n_rows - 1)), int(np.clip(round(box[1]), 0, n_rows - 1))
        col_lo, col_hi = int(np.clip(round(box[2]), 0, n_cols - 1)), int(np.clip(round(box[3]), 0, n_cols - 1))
        out[name] = Extent(lo, hi, row_lo, max(row_hi, row_lo), col_lo, max(col_hi, col_lo),
                           confidence=0.0, estimated=True)
    return out


def extents_for(labels: np.ndarray, confidence: dict[str, float] | None = None, min_voxels: int = 1,
                layout: dict = TYPICAL_LAYOUT) -> dict[str, Extent]:
    """find_extents then fill_missing: always seven extents."""
    return fill_missing(find_extents(labels, confidence, min_voxels), labels.shape, layout)
