"""How well a predicted vertebra label volume matches a true mask: per-vertebra Dice and slice-range IoU.

Called by the localiser's training task on held-out studies (src/localisation/task.py) and by the
tests on hand-made arrays. Both functions take label volumes on the same grid (slices, rows, cols),
labels 1..7 = C1..C7; anything else counts as background. A vertebra absent from both prediction and
truth has no score (NaN) and is left out of the means rather than counted as perfect or as zero.
"""
from __future__ import annotations

import math

import numpy as np

from .. import VERTEBRAE


def dice_per_vertebra(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each vertebra C1..C7 between two label volumes of the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be on the same grid")
    scores = {}
    for label, name in enumerate(VERTEBRAE, start=1):
        p, t = pred == label, truth == label
        total = int(p.sum()) + int(t.sum())
        scores[name] = 2.0 * int(np.logical_and(p, t).sum()) / total if total else math.nan
    return scores


def range_iou(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float:
    """IoU of two inclusive integer ranges (lo, hi); NaN if both are None, 0 if only one is."""
    if a is None and b is None:
        return math.nan
    if a is None or b is None:
        return 0.0
    overlap = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(overlap, 0) / union


def true_slice_ranges(truth: np.ndarray) -> dict[str, tuple[int, int] | None]:
    """First and last slice (axis 0, inclusive) holding each vertebra of a true mask, None if absent."""
    ranges = {}
    for label, name in enumerate(VERTEBRAE, start=1):
        slices = np.flatnonzero((truth == label).any(axis=(1, 2)))
        ranges[name] = (int(slices[0]), int(slices[-1])) if len(slices) else None
    return ranges


def slice_range_iou(pred_ranges: dict, truth_ranges: dict) -> dict[str, float]:
    """Per-vertebra IoU of predicted and true slice ranges (dicts vertebra -> (lo, hi) or None)."""
    return {name: range_iou(pred_ranges.get(name), truth_ranges.get(name)) for name in VERTEBRAE}


def nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan
