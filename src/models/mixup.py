"""Mixup of training items for the crop classifiers (src/models/effnet_gru.py calls it in its forward).

With probability ``prob`` a batch is mixed: each item's images become lam x its own + (1 - lam) x those of
another item of the batch (a random permutation), lam ~ Beta(alpha, alpha), and the loss becomes the same
mix of the losses against both items' targets. Mixing the losses rather than the labels keeps the
competition weights (2 for a fractured vertebra, 14 for a fractured patient) exact for each target.
Draws come from torch's global RNG, so a seeded run (and a resumed one, src/training) replays them.
"""
from __future__ import annotations

from typing import Callable

import torch


def draw_mix(batch_size: int, prob: float, alpha: float):
    """(lam, perm) for a batch to be mixed, or None (no mix: ``prob`` missed, or a batch of one).
    Drawn from torch's global RNG: ``torch.manual_seed`` fixes them."""
    if prob <= 0 or batch_size < 2:
        return None
    if float(torch.rand(())) >= prob:
        return None
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    return lam, torch.randperm(batch_size)


def mix(tensor: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam x ``tensor`` + (1 - lam) x ``tensor`` reordered by ``perm`` along the batch axis."""
    return lam * tensor + (1 - lam) * tensor[perm.to(tensor.device)]


def mixed_loss(loss: Callable[[dict], torch.Tensor], batch: dict, lam: float | None, perm: torch.Tensor | None) -> torch.Tensor:
    """``loss(batch)``, or with a mix: lam x loss against the batch's targets + (1 - lam) x loss against the
    partners' (every tensor of the batch reordered by ``perm``)."""
    if lam is None:
        return loss(batch)
    partner = {k: v[perm.to(v.device)] if torch.is_tensor(v) and v.ndim > 0 else v for k, v in batch.items()}
    return lam * loss(batch) + (1 - lam) * loss(partner)
