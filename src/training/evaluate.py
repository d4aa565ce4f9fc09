"""Validation: predict a loader's batches (gathered from every rank in one-process order) and let the task
judge them; and the same for any checkpoint (:func:`evaluate_checkpoint`). Called by the training loop
after every epoch and at the end, and by the tests that check best.pt reproduces the loop's figures.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from ..models.checkpoint import load_checkpoint, load_model_state
from ..models.registry import get_model_class
from . import distributed
from .device import autocast_for, pick_device, place_model, to_device
from .loaders import validation_loader


def judge(task, outputs: dict, val_set, model: torch.nn.Module):
    """``task.evaluate``, handed the (bare) model when the task needs to run it again (``needs_model``)."""
    if getattr(task, "needs_model", False):
        return task.evaluate(outputs, val_set, model=model)
    return task.evaluate(outputs, val_set)


def evaluate_checkpoint(cfg, task, checkpoint: Path) -> tuple[dict | None, pd.DataFrame | None]:
    """``task``'s validation fold predicted with a checkpoint's weights and judged, as :func:`fit` judges
    best.pt at the end. Under torchrun the prediction is shared out over the ranks and gathered; rank 0
    gets ``(metrics, oof)``, the others ``(None, None)``."""
    device = pick_device(cfg)
    model = get_model_class(cfg["model"])(cfg)
    load_model_state(model, load_checkpoint(checkpoint, map_location="cpu")["model"])
    place_model(model, cfg, device)
    _, val_set = task.datasets()
    loader = validation_loader(val_set, cfg, task, device)
    _, outputs = predict(model, loader, device, autocast_for(cfg, device), cfg["channels_last"])
    if not distributed.current().is_main:
        return None, None
    return judge(task, outputs, val_set, model)


@torch.no_grad()
def predict_batches(model, loader, device, autocast, channels_last: bool) -> list[tuple]:
    """One ``(first_index, loss_sum, n_with_loss, outputs)`` per batch, ``first_index`` counting items
    from the loader's start (or its batch sampler's first index): what distributed.merge_batches takes."""
    model.eval()
    firsts = [b[0] for b in loader.batch_sampler] if isinstance(loader.batch_sampler, list) else None
    done, results = 0, []
    for k, batch in enumerate(loader):
        batch = to_device(batch, device, channels_last)
        with autocast():
            out = model(batch)
        n = len(out["logits"])
        loss_sum, n_with_loss = (float(out["loss"]) * n, n) if "loss" in out else (0.0, 0)
        outputs = {key: value.float().cpu().numpy() for key, value in out.items()
                   if key != "loss" and isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n}
        results.append((firsts[k] if firsts is not None else done, loss_sum, n_with_loss, outputs))
        done += n
    return results


def predict(model, loader, device, autocast, channels_last: bool) -> tuple[float, dict]:
    """Mean loss over the items (NaN if the model gives none) and every batched output as one array per key.

    Under DDP ``loader`` holds this rank's share (distributed.batch_shards) and the result is gathered
    from all ranks, in one-process order, on every rank.
    """
    own = predict_batches(model, loader, device, autocast, channels_last)
    loss_sum, n_with_loss, outputs = distributed.gather_batches(own)
    return (loss_sum / n_with_loss if n_with_loss else math.nan), outputs
