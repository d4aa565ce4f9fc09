"""What each fold model is fed, and building it from a test study's arrays.

Called by src/inference/members.py (which input each fold takes), src/inference/studies.py (the inputs
built in the reading processes, ahead of the models) and src/inference/pipeline.py (those that wait
for the localiser). A fold's input is decided by its task, the cache size it was trained at and the
preprocessing in its config (windows, the model's settings section); folds that share one (the folds
of a run, as a rule) share one built batch. The task builds it with ``study_batch`` (src/tasks), from
the same item builder its datasets use for validation, so a test study is fed exactly as a validation
study was (tests/test_infer.py's parity test checks it), and nothing is written to disk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml

from .fallbacks import one_line


class InputFailed(RuntimeError):
    """Building one input failed for one study; it costs only the members fed by it. Plain text, so
    that it crosses from a reading process intact whatever the original error was."""


@dataclass(frozen=True)
class InputSpec:
    key: str                   # what decides the input (task, size, preprocessing): equal keys, equal batches
    task: str                  # the registered task that builds it
    size: int                  # the cache size (prepare.size) of the volume it is built from
    needs_localisation: bool   # built after the localiser (the model's class says so)
    needs_labels: bool         # reads the localiser's voxel labels too (the task's wants_labels says so)
    cfg: dict                  # the plain config of a fold fed by it


def input_spec(cfg: dict) -> InputSpec:
    """The input of a fold trained with ``cfg`` (its resolved config, plain types). Raises ConfigError
    (src.models.registry) when the model declares no task or settings section, and ValueError when its
    task cannot build an inference batch."""
    from ..models.registry import get_model_class, model_settings, model_task
    from ..tasks import get_task_class

    model_cls = get_model_class(cfg["model"])
    task = model_task(model_cls)
    task_cls = get_task_class(task)
    if not hasattr(task_cls, "study_batch"):
        raise ValueError(f"model '{cfg['model']}' uses task '{task}', which builds no inference batch "
                         f"(a task's study_batch, src/tasks/__init__.py)")
    size = int(cfg["prepare"]["size"])
    decided_by = {"task": task, "size": size, "windows": cfg["windows"], "settings": model_settings(cfg)}
    needs_localisation = bool(getattr(model_cls, "needs_localisation", False))
    needs_labels = needs_localisation and bool(getattr(task_cls, "wants_labels", lambda _: False)(cfg))
    return InputSpec(yaml.safe_dump(decided_by, sort_keys=True), task, size, needs_localisation, needs_labels, cfg)


SHIFT_MARK = "\nshift: "


def shifted_key(key: str, shift: float) -> str:
    """Where :func:`build_inputs` puts an input's slice-shift view."""
    return f"{key}{SHIFT_MARK}{float(shift)}"


def drop_failed_views(inputs: dict) -> list[str]:
    """Take out of ``inputs`` each slice-shift view whose building failed while its plain input was built,
    so that it costs only itself: its members predict from the views left. Returns one line per view taken
    out. A failed plain input stays, and costs its members the study."""
    dropped = []
    for key in [k for k, v in inputs.items() if SHIFT_MARK in k and isinstance(v, InputFailed)]:
        plain, _, shift = key.partition(SHIFT_MARK)
        if not isinstance(inputs.get(plain), InputFailed):
            dropped.append(f"slice-shift view {shift} left out ({inputs.pop(key)}); its members used the other views")
    return dropped


def build_inputs(specs, volumes: dict[int, tuple[np.ndarray, dict]], localisation: pd.DataFrame | None,
                 labels: np.ndarray | None = None, shifts=()) -> dict:
    """``{spec.key: batch}`` for one study's ``volumes`` ({size: (volume, meta)}, src/inference/reading.py),
    or :class:`InputFailed` in place of a batch whose building raised: that costs only its members.
    ``localisation``: the study's rows; ``labels``: the localiser's compact voxel labels (or None).
    ``shifts`` (``tta_shifts``): for a task whose slices can move (``slice_shifts``), one more view per
    shift under :func:`shifted_key`, its sampled slices moved by that fraction of their spacing."""
    from ..tasks import get_task_class

    inputs = {}
    for spec in specs:
        task = get_task_class(spec.task)
        views = [(spec.key, {})] + [(shifted_key(spec.key, s), {"shift": float(s)})
                                    for s in (shifts if getattr(task, "slice_shifts", False) else ())]
        for key, shift in views:
            try:
                volume, meta = volumes[spec.size]
                inputs[key] = task.study_batch(spec.cfg, volume, meta, localisation, labels, **shift)
            except Exception as err:  # an odd study must cost its members' prediction, not the run
                inputs[key] = InputFailed(f"building the {spec.task} input: {one_line(err)}")
    return inputs
