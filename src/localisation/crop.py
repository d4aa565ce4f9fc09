"""The box around the cervical spine, where the localiser takes its second, closer look.

Most of a neck CT is not spine: on a 64^3 grid of the whole study a vertebra is a handful of voxels
tall and its arch one voxel thick, so boundaries, not the order of the vertebrae, limit the Dice. The
localiser therefore looks twice when ``localiser.refine_margin`` > 0 (src/localisation/predict.py):
at the whole study, to find C1..C7, then at the box around what it found, widened by that margin and
resampled to the same grid, two to three times finer along each axis. Training shows it both views
(src/localisation/dataset.py): whole studies, and with probability ``localiser.crop_prob`` a box
around the true spine widened by random margins drawn from ``localiser.crop_margin``, so that it knows
the boxes the first look will hand it.

A box is three (start, stop) pairs, stop exclusive, in (slices, rows, cols) array indices.
"""
from __future__ import annotations

import math

import numpy as np
import torch

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def foreground_box(labels: np.ndarray) -> Box | None:
    """The smallest box holding every labelled (non-zero) voxel; None if there is none."""
    labels = np.asarray(labels)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(labels.any(axis=others))
        if not len(hit):
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def scale_box(box: Box, from_shape, to_shape) -> Box:
    """The same region on another grid of the same field of view (outwards to whole voxels)."""
    out = []
    for (lo, hi), n_from, n_to in zip(box, from_shape, to_shape):
        factor = n_to / n_from
        out.append((max(0, math.floor(lo * factor)), min(int(n_to), math.ceil(hi * factor))))
    return tuple(out)


def widen_box(box: Box, shape, margins) -> Box:
    """``box`` grown on each side by a fraction of its own length, clipped to ``shape``. ``margins`` is one
    number for every side or a (3, 2) array: (before, after) for slices, rows and cols."""
    margins = np.broadcast_to(np.asarray(margins, dtype=float), (3, 2))
    out = []
    for (lo, hi), (before, after), n in zip(box, margins, shape):
        length = hi - lo
        out.append((max(0, int(round(lo - before * length))), min(int(n), int(round(hi + after * length)))))
    return tuple(out)


def random_margins(low: float, high: float) -> np.ndarray:
    """(3, 2) margins drawn uniformly from [low, high] with torch's generator (seeded per worker by the loop)."""
    return (low + (high - low) * torch.rand(3, 2)).numpy()


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    return tuple(slice(lo, hi) for lo, hi in box)


def box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(hi - lo for lo, hi in box)
