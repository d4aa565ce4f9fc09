"""Reading a checkpoint of this project's training loop: ``torch.load(weights_only=True)`` (tensors and plain
types only, so a file from elsewhere cannot run code), with one clear error naming the file when it is
missing, damaged or not ours. ``trained_model`` is the one way from a ``best.pt`` to a model ready to
predict (the localiser's table, inference); the training loop resumes with ``load_checkpoint`` and writes
checkpoints itself (src/training/checkpoint.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..runs import current_names, read_run_config
from .registry import build_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, damaged or not one of ours; the message names the file and the way on."""


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint {path}; train first (bash train.sh ...)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, "unsupported global": all mean the same here
        raise CheckpointError(f"{path}: cannot load it as a checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                              f"train that run again (overwrite=true moves it aside) or remove the file") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: holds no model weights (not a checkpoint of this project's training loop)")
    return state


def model_state(model: torch.nn.Module) -> dict:
    """State dict of the model itself, also when wrapped by torch.compile."""
    return getattr(model, "_orig_mod", model).state_dict()


def load_model_state(model: torch.nn.Module, state: dict) -> None:
    getattr(model, "_orig_mod", model).load_state_dict(state)


def trained_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, the resolved config it was trained with) from a ``best.pt`` or
    the fold folder holding one. The config is the checkpoint's own copy, else the folder's config.yaml,
    in today's names (src/runs.py); pretrained weights are switched off, since the trained ones replace
    them and nothing may be fetched. CheckpointError, naming the file, when any of it does not fit."""
    path = Path(path)
    path = path / "best.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    config = state.get("config")
    config = current_names(config) if isinstance(config, dict) else read_run_config(path.parent)
    if config is None:
        raise CheckpointError(f"{path}: neither it nor a config.yaml beside it holds the run's config; "
                              f"re-train the fold")
    config = dict(config, pretrained=False, pretrained_path=None)
    model = build_model(OmegaConf.create(config))
    try:
        load_model_state(model, state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes "
                              f"({' '.join(str(err).split())[:200]})") from None
    return model.to(device).eval(), config
