"""Reading a checkpoint of this project's training loop: ``torch.load(weights_only=True)`` (tensors and plain
types only, so a file from elsewhere cannot run code), with one clear error naming the file when it is
missing, damaged or not ours. Used by the training loop (resume, best.pt), the localiser's prediction
and inference; writing checkpoints is the loop's own (src/training/checkpoint.py).
"""
from __future__ import annotations

from pathlib import Path

import torch


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
