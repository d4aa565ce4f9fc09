"""The competition loss for training: weighted binary cross-entropy whose value IS the competition metric.

Used by every classifier's forward. Weights come from src.metric (vertebra 1 negative / 2 positive,
patient_overall 7 / 14); each study's weighted sum is divided by that study's own weight sum, then
averaged over studies, exactly as src.metric.competition_score does on probabilities. Logits are
clamped to the range the metric's probability clipping (1e-15) can express, so the two agree even for
saturated predictions; the clamp only stops gradients beyond |logit| = 34.5, where none are wanted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..metric import EPS, NEGATIVE_WEIGHTS, POSITIVE_WEIGHTS

LOGIT_LIMIT = math.log((1 - EPS) / EPS)


def competition_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-cell competition weight for (B, 8) labels in TARGETS order (soft labels count as positive above 0.5)."""
    neg = torch.as_tensor(NEGATIVE_WEIGHTS, dtype=torch.float32, device=labels.device)
    pos = torch.as_tensor(POSITIVE_WEIGHTS, dtype=torch.float32, device=labels.device)
    return torch.where(labels > 0.5, pos, neg)


def competition_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scalar weighted BCE over (B, 8) logits and labels; equals competition_score(labels, sigmoid(logits))."""
    if logits.shape != labels.shape or logits.shape[-1] != len(NEGATIVE_WEIGHTS):
        raise ValueError(f"competition_loss expects (B, {len(NEGATIVE_WEIGHTS)}) logits and labels, "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits = logits.float().clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    labels = labels.float()
    weights = competition_weights(labels)
    cell_loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    per_study = (weights * cell_loss).sum(dim=1) / weights.sum(dim=1)
    return per_study.mean()
