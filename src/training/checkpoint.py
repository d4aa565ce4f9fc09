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


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, damaged or not one of ours; the message names the file and the way on."""


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint {path}; train first (bash train.sh ...)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, "unsupported global": all mean the same here
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                              f"train that run again (overwrite=true moves it aside) or remove the file") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: holds no model weights (not a checkpoint of this project's training loop)")
    return state


def model_state(model: torch.nn.Module) -> dict:
    """State dict of the model itself, also when wrapped by torch.compile."""
    return getattr(model, "_orig_mod", model).state_dict()


def load_model_state(model: torch.nn.Module, state: dict) -> None:
    getattr(model, "_orig_mod", model).load_state_dict(state)
