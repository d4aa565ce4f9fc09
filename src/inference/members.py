"""Trained runs loaded for prediction: every fold's ``best.pt`` of an ensemble member, ready on a device.

Called by the inference pipeline and the inference benchmark. Offline by construction: each model comes
from src/models/checkpoint.py's ``trained_model``, built from the config saved with its weights with
``pretrained=false`` (nothing is downloaded, ever), then given the weights of ``best.pt``, loaded with
``torch.load(weights_only=True)`` so a checkpoint from elsewhere cannot run code. A member's prediction for a study is the mean of its folds'
probabilities (and of the mirrored input's, with TTA), each fold run exactly as the training loop
validated it: the input its task builds from the same item builder (src/inference/inputs.py), the
training side's autocast (src/training/device.py). A fold whose ``best.pt`` cannot be used, or whose
task builds no inference input, is left out with a message naming the file and why; only a member
with no fold left fails to load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..config import ConfigError
from ..models.checkpoint import CheckpointError, trained_model
from ..runs import select_folds
from .fallbacks import one_line
from .inputs import InputSpec, input_spec, shifted_key


def load_fold_model(fold_dir: Path, device: torch.device):
    """(model in eval mode on ``device``, its config as a read-only DictConfig) from one fold folder."""
    model, config = trained_model(fold_dir, device)
    cfg = OmegaConf.create(config)
    OmegaConf.set_readonly(cfg, True)
    return model, cfg


@dataclass
class FoldModel:
    fold: int
    model: torch.nn.Module
    cfg: object
    input: InputSpec  # what it is fed

    @property
    def size(self) -> int:
        return self.input.size


@dataclass
class Member:
    """One ensemble member: a run's fold models and its weight in the ensemble."""

    run: str
    weight: float
    folds: list[FoldModel] = field(default_factory=list)
    left_out: list[tuple[int, str]] = field(default_factory=list)  # (fold, why) for folds that could not load

    @property
    def sizes(self) -> set[int]:
        return {f.size for f in self.folds}

    @property
    def inputs(self) -> list[InputSpec]:
        """The distinct inputs of its folds (one, unless folds were trained with other preprocessing)."""
        return list({f.input.key: f.input for f in self.folds}.values())

    @property
    def needs_localisation(self) -> bool:
        return any(f.input.needs_localisation for f in self.folds)

    @torch.no_grad()
    def predict(self, inputs: dict, device: torch.device, autocast, tta: bool = False, shifts=()) -> np.ndarray:
        """Eight probabilities (TARGETS order) for one study: the mean over folds and TTA views.

        ``inputs`` maps each input's key to its one-study batch (src/inference/inputs.py), or to the
        InputFailed that building it raised, which is raised here; ``autocast`` is the training side's
        (src/training/device.py ``autocast_for``). The views: the input, its slice-shift views for
        ``shifts`` that ``inputs`` holds (its task built them, and the pipeline took out those whose building
        failed: inputs.drop_failed_views), and, with ``tta``, the left-right mirror of each. Raises
        ValueError if a fold gives a non-finite output, so the caller can fall back.
        """
        probs = []
        for fold in self.folds:
            batches = [inputs[fold.input.key]] + [inputs[k] for k in (shifted_key(fold.input.key, s) for s in shifts)
                                                  if k in inputs]
            for batch in batches:
                if isinstance(batch, BaseException):
                    raise batch
            for view in batches + ([mirror(b) for b in batches] if tta else []):
                view = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in view.items()}
                with autocast():
                    logits = fold.model(view)["logits"]
                p = torch.sigmoid(logits.float()).cpu().numpy().reshape(-1)
                if p.shape != (8,) or not np.all(np.isfinite(p)):
                    raise ValueError(f"{self.run} fold {fold.fold} gave {p.shape} outputs, finite: {np.isfinite(p).all()}")
                probs.append(p)
        return np.mean(probs, axis=0)


def mirror(batch: dict) -> dict:
    """TTA: the left-right mirror of every image tensor (a task puts the patient's left-right on the last axis)."""
    return {k: (v.flip(-1) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}


class MemberLoadError(ConfigError):
    """No requested fold of a member could be loaded; the message names each file and why."""


def load_member(runs_dir: Path, run: str, weight: float, folds, device: torch.device, announce=print) -> Member:
    """Every requested fold of ``run`` that loads; ``member.left_out`` lists the others with why.

    Called by the inference pipeline's load_predictor. A fold whose best.pt cannot be used
    (truncated, not a checkpoint, weights that do not fit, a task inference cannot feed) costs only
    itself: it is announced and left out. Raises RunNotFoundError (listing the runs that exist) when
    the run or a requested fold is not there at all, which is a typo rather than a bad file, and
    MemberLoadError when no fold loads.
    """
    member = Member(run, float(weight))
    for fold, fold_dir in select_folds(runs_dir, run, folds).items():
        try:
            member.folds.append(load_fold(fold, fold_dir, device))
        except Exception as err:  # any broken file must cost this fold, not the run
            reason = (str(err) if isinstance(err, (ConfigError, CheckpointError))
                      else f"{Path(fold_dir) / 'best.pt'}: {one_line(err)}")
            member.left_out.append((fold, " ".join(reason.split())))
            announce(f"[members] {run} fold {fold} left out: {member.left_out[-1][1]}")
    if not member.folds:
        raise MemberLoadError("; ".join(reason for _, reason in member.left_out))
    n_params = sum(p.numel() for p in member.folds[0].model.parameters())
    announce(f"[members] {run}: folds {[f.fold for f in member.folds]}, model {member.folds[0].cfg['model']} "
             f"({n_params / 1e6:.2f} M parameters), weight {weight:.3f}, cache size {sorted(member.sizes)}")
    return member


def load_fold(fold: int, fold_dir: Path, device: torch.device) -> FoldModel:
    """One fold's model ready to predict; ConfigError naming the file when inference cannot use it."""
    model, cfg = load_fold_model(fold_dir, device)
    try:
        spec = input_spec(OmegaConf.to_container(cfg, resolve=True))
    except ValueError as err:  # ConfigError included: a model without a task, a task without inference
        raise ConfigError(f"{fold_dir}: {err}") from None
    return FoldModel(fold, model, cfg, spec)


def finite_probs(p: np.ndarray) -> bool:
    return p.shape == (8,) and all(math.isfinite(v) and 0 <= v <= 1 for v in p)
