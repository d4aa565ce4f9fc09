"""Run trained localisers on a study and turn their output into the study's seven table rows.

Called by src/localisation/build.py (every cached study of a dataset) and by inference (a test study
read straight from DICOM): ``load_localisers`` once, then ``localise_volume`` per study. Several models
(the fold models) are averaged in probability; each model is fed the study exactly as it was trained
(its own ``localiser.shape``, ``windows`` and ``refine_margin``, read from its checkpoint). With a
refine margin the models look twice: at the whole study, then at the box around the spine they found
(src/localisation/crop.py); the labels come back on the study's own grid either way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .crop import box_shape, box_slices, foreground_box, scale_box, widen_box
from .extents import extents_for, min_voxels
from .resample import model_input, probs_to_labels, resample_volume
from .table import study_rows


def load_localisers(checkpoints, device: str | torch.device = "cpu") -> list[torch.nn.Module]:
    """Localiser models from ``best.pt`` files (or run folders holding one), in eval mode on ``device``;
    each carries its resolved config as ``model.config``."""
    from ..models.checkpoint import trained_model

    models = []
    for path in checkpoints:
        model, config = trained_model(path, device)
        describe_for_prediction(model, config)
        model.source = str(Path(path) / "best.pt" if Path(path).is_dir() else path)
        model.config = config
        models.append(model)
    return models


def describe_for_prediction(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """Attach what prediction needs to know about how ``model`` was trained: its grid, its windows and
    whether it learned the second, closer look (``refine_margin``; 0 for checkpoints older than it)."""
    c = cfg["localiser"]
    model.input_shape = tuple(int(s) for s in c["shape"])
    model.windows = [list(w) for w in cfg["windows"]]
    model.refine_margin = float(c.get("refine_margin", 0.0)) if float(c.get("crop_prob", 0.0)) > 0 else 0.0
    return model


@torch.no_grad()
def predict_probs(models, volume: np.ndarray) -> torch.Tensor:
    """Mean class probabilities (8, D, H, W) of ``models`` on an int16 HU volume (slices, rows, cols)."""
    if not models:
        raise ValueError("predict_probs needs at least one model")
    shapes = {m.input_shape for m in models}
    if len(shapes) > 1:
        raise ValueError(f"localisers trained at different shapes {sorted(shapes)} cannot be averaged; "
                         f"pass models of one experiment")
    hu = resample_volume(np.asarray(volume), models[0].input_shape)
    total = None
    for model in models:
        device = next(model.parameters()).device
        x = model_input(hu, model.windows)[None].to(device)
        probs = torch.softmax(model({"volume": x})["logits"].float(), dim=1)[0].cpu()
        total = probs if total is None else total + probs
    return total / len(models)


def segment_study(models, volume: np.ndarray, first_probs: torch.Tensor | None = None) -> tuple[np.ndarray, dict]:
    """Vertebra labels (uint8, the volume's own grid: every slice, every cached pixel) and each vertebra's
    confidence. ``first_probs``: the first look's probabilities if already computed (validation has them).
    With a refine margin, the box around what the first look found is looked at again on the model grid,
    and only that box can hold labels."""
    volume = np.asarray(volume)
    probs = predict_probs(models, volume) if first_probs is None else torch.as_tensor(first_probs)
    margins = {float(getattr(m, "refine_margin", 0.0)) for m in models}
    if len(margins) > 1:
        raise ValueError(f"localisers with different refine margins {sorted(margins)} cannot be averaged")
    margin = margins.pop() if margins else 0.0
    found = foreground_box(probs.argmax(dim=0).numpy()) if margin > 0 else None
    if found is None:
        return probs_to_labels(probs, volume.shape)
    box = widen_box(scale_box(found, probs.shape[1:], volume.shape), volume.shape, margin)
    close_probs = predict_probs(models, volume[box_slices(box)])
    box_labels, confidence = probs_to_labels(close_probs, box_shape(box))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[box_slices(box)] = box_labels
    return labels, confidence


def localise_volume(models, volume: np.ndarray, meta: dict, cfg, study_uid: str | None = None, levels=None,
                    repair: bool = False, with_labels: bool = False):
    """The seven localisation rows of one study from its int16 HU volume (head to feet, as src.data.cache
    stores it) and meta (``slice_numbers``, ``original_shape``). With no models, or where a model finds
    nothing, vertebrae are estimated (``estimated`` True) rather than left out. With ``levels`` (the
    localiser's learned LevelRanges) the rows carry the level columns (src/localisation/levels.py), and
    with ``repair`` too a study that fails the checks is repaired where its labels allow. ``with_labels``:
    returns (rows, the voxel labels in compact form, src/localisation/stored_labels.py; None without models)."""
    uid = study_uid or meta.get("uid")
    if uid is None:
        raise ValueError("localise_volume needs the study's UID, in meta['uid'] or study_uid=")
    grid = tuple(int(s) for s in np.shape(volume))
    if models:
        labels, confidence = segment_study(models, volume)
    else:
        labels, confidence = np.zeros(grid, dtype=np.uint8), None
    extents = extents_for(labels, confidence, min_voxels(cfg, grid))
    if levels is None:
        rows = study_rows(uid, extents, meta, grid)
    else:
        from .levels import judge_extents, with_level_columns

        extents, check = judge_extents(labels if models else None, extents, float(meta["slice_spacing"]), levels, repair)
        rows = with_level_columns(study_rows(uid, extents, meta, grid), check)
        if check.repaired:
            from .levels import relabelled

            labels = relabelled(labels, extents)
    if not with_labels:
        return rows
    from .stored_labels import compact

    return rows, (compact(labels) if models else None)
