"""An exponential moving average of the weights (``ema_decay``), the copy that is validated and saved.

Called by the training loop (src/training/loop.py) after every optimiser step. Validation scores of a
small model trained from scratch jump from epoch to epoch (one batch too many of one kind moves every
BatchNorm statistic); the average of the last few hundred steps' weights is smoother and usually
better calibrated, which the log loss rewards. BatchNorm running statistics are averaged with the
weights; integer buffers (the batch counters) are copied.

The decay ramps up from about 0.1 at the first step to ``decay`` (``min(decay, (1 + t) / (10 + t))``),
so the average does not remember the random initialisation for long.
"""
from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) to average (0 turns it off), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(getattr(model, "_orig_mod", model)).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights (the bare model, not a DDP wrapper)."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        source = getattr(model, "_orig_mod", model).state_dict()
        for name, average in self.model.state_dict().items():
            value = source[name]
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1.0 - decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])
