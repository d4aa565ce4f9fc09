"""Moving between a study's own slices and the localiser's fixed grid (``cfg.localiser.shape``).

Called by the localiser dataset (volumes and masks down to the model grid, once per study) and by the
predictor and the task (class probabilities back up to every original slice, where slice ranges are
measured). Down: HU by area averaging / trilinear (src.tasks.volume.resample_volume, shared with the
3D CNN), masks by nearest neighbour. Up: probabilities linearly along the slices, then bilinearly
in-plane to any size, a chunk of slices at a time so that a 600-slice study never holds all eight
classes at full size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import VERTEBRAE
from ..data.windows import apply_windows
from ..tasks.volume import resample_volume

N_CLASSES = len(VERTEBRAE) + 1  # background (thoracic vertebrae included) + C1..C7

__all__ = ["N_CLASSES", "resample_volume", "resample_mask", "model_input", "probs_to_labels"]


def cervical_labels(mask: np.ndarray) -> np.ndarray:
    """Mask labels with T1.. (8 and up) folded into background: the localiser only names C1..C7."""
    mask = np.asarray(mask)
    return np.where(mask <= len(VERTEBRAE), mask, 0).astype(np.uint8)


def resample_mask(mask: np.ndarray, shape) -> np.ndarray:
    """uint8 labels (S, H, W) -> uint8 labels of ``shape`` by nearest neighbour (pixel centres aligned)."""
    shape = tuple(int(s) for s in shape)
    labels = torch.from_numpy(cervical_labels(mask))[None, None].float()
    return F.interpolate(labels, size=shape, mode="nearest-exact")[0, 0].to(torch.uint8).numpy()


def model_input(hu_resampled: np.ndarray, windows) -> torch.Tensor:
    """(C, D, h, w) float32 in [0, 1], one channel per HU window, from HU already on the model grid."""
    return torch.from_numpy(apply_windows(np.asarray(hu_resampled, dtype=np.float32), windows))


def probs_to_labels(probs: torch.Tensor | np.ndarray, out_shape, chunk: int = 16) -> tuple[np.ndarray, dict[str, float]]:
    """Class probabilities (8, D, h, w) on the model grid -> argmax labels (S, H, W) uint8 on ``out_shape``
    and each vertebra's confidence: its mean probability over the model-grid voxels it wins (0 if none)."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    n_out, rows, cols = (int(s) for s in out_shape)
    depth = probs.shape[1]
    by_slice = probs.permute(1, 0, 2, 3).contiguous()  # (D, 8, h, w): a slice's classes lie together
    # source position of each output slice centre, as align_corners=False interpolation places it
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * depth / n_out - 0.5).clamp(0, depth - 1)
    lower = src.floor().long()
    upper = (lower + 1).clamp(max=depth - 1)
    frac = (src - lower).float().view(-1, 1, 1, 1)
    labels = np.empty((n_out, rows, cols), dtype=np.uint8)
    for start in range(0, n_out, chunk):
        idx = slice(start, min(start + chunk, n_out))
        part = torch.lerp(by_slice[lower[idx]], by_slice[upper[idx]], frac[idx])  # (c, 8, h, w)
        part = F.interpolate(part, size=(rows, cols), mode="bilinear", align_corners=False)
        # max().indices is argmax (the first of equal maxima) at a sixth of its CPU time over dim 1
        labels[idx] = part.max(dim=1).indices.to(torch.uint8).numpy()
    # confidence on the model grid: the same answer as on the fine grid, at a fraction of the cost
    best_prob, best = probs.max(dim=0)
    won_prob = torch.bincount(best.flatten(), weights=best_prob.flatten().double(), minlength=N_CLASSES)
    won_count = torch.bincount(best.flatten(), minlength=N_CLASSES).double().clamp(min=1)
    mean_prob = (won_prob / won_count).tolist()
    return labels, {name: float(mean_prob[k]) for k, name in enumerate(VERTEBRAE, start=1)}
