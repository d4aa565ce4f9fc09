"""Checkpoints (last.pt, best.pt) that load with ``torch.load(weights_only=True)``: tensors and plain types
only, so a checkpoint from elsewhere cannot run code. They carry everything a resumed run needs to
continue bit-for-bit: weights, optimiser and scheduler state, epoch, best score, and the torch, numpy
and python RNG states. Written atomically (src/io_utils.py): a kill mid-write leaves the old file.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_torch_save


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def save_checkpoint(path: Path, **content) -> None:
    atomic_torch_save(Path(path), content)
