"""Hounsfield units to network input: one channel per (center, width) window, scaled to [0, 1].

Called by the datasets and inference on int16 HU read from the cache. The cache keeps HU, not
windowed pixels, so any window (bone (400, 1800) by default, soft tissue, ...) is a config change,
not a re-run of prepare; a window costs a subtract, a multiply and a clip per voxel.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BONE = (400.0, 1800.0)


def _check(windows: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    checked = []
    for window in windows:
        if len(window) != 2:
            raise ValueError(f"a window is [center, width], got {window!r} (config key `windows`)")
        center, width = float(window[0]), float(window[1])
        if not width > 0:
            raise ValueError(f"window width must be positive, got {window!r} (config key `windows`)")
        checked.append((center, width))
    if not checked:
        raise ValueError("at least one window is needed (config key `windows`)")
    return checked


def apply_windows(hu, windows: Sequence[Sequence[float]] = (BONE,)):
    """``hu`` (any shape, numpy or torch) -> float32 (len(windows), *hu.shape) in [0, 1].

    Each channel maps ``center - width/2`` to 0 and ``center + width/2`` to 1, clipped outside.
    A torch tensor stays a tensor on its own device.
    """
    checked = _check(windows)
    try:
        import torch
    except ImportError:  # numpy-only use needs no torch
        torch = None
    if torch is not None and isinstance(hu, torch.Tensor):
        hu = hu.float()
        channels = [((hu - (c - w / 2)) / w).clamp_(0.0, 1.0) for c, w in checked]
        return torch.stack(channels)
    hu = np.asarray(hu)
    out = np.empty((len(checked),) + hu.shape, dtype=np.float32)
    for channel, (center, width) in zip(out, checked):
        # written into the preallocated channel: no float64 temporaries for a whole volume
        np.subtract(hu, np.float32(center - width / 2), out=channel, dtype=np.float32, casting="unsafe")
        channel *= np.float32(1.0 / width)
        np.clip(channel, 0.0, 1.0, out=channel)
    return out
