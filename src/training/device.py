"""Where and how a model runs: the device (one GPU per torchrun rank), cuDNN tuning, autocast, memory layout.

Used by the training loop (src/training/loop.py), validation (src/training/evaluate.py) and inference,
so a checkpoint is always predicted the way it was validated.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import distributed


def pick_device(cfg) -> torch.device:
    """cpu or cuda as configured; under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if cfg["device"] == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = cfg["device"]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if kind == "cuda":
        return torch.device("cuda", distributed.current().local_rank)
    return torch.device(kind)


def tune_backends(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution for the (fixed) input shapes; a no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast_for(cfg, device: torch.device):
    """bf16 autocast on GPU by default; CPU bf16 convolutions are slower than fp32, so fp32 there."""
    precision = cfg["precision"]
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return nullcontext


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() in (4, 5):
                value = value.contiguous(memory_format=torch.channels_last if value.dim() == 4 else torch.channels_last_3d)
        out[key] = value
    return out


def place_model(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """Move the model to ``device``, channels-last if configured (3D layout for models with 3D convolutions)."""
    model.to(device)
    if cfg["channels_last"]:
        has_3d = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model.to(memory_format=torch.channels_last_3d if has_3d else torch.channels_last)
    return model
