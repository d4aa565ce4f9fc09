"""Tasks: what a model trains on and how it is judged. The training loop (src/training/loop.py) asks the
task for everything data-shaped, and the model (src/models) for everything else, so neither a new model
nor a new task touches the loop.

Which task a run uses: the model class's ``task`` attribute (src/models/registry.py); the task reads
the model's own settings section, which the class names in ``settings``.
A task is a class registered with ``@register_task("name")`` in a module of this package and built as
``Task(cfg, data_dir, cache_dir, folds, announce=print)`` (``folds``: StudyInstanceUID, fold). It provides

- ``datasets() -> (train_dataset, val_dataset)`` for ``cfg.fold`` (honouring ``cfg.limit_studies``).
  Items are dicts of tensors; the validation dataset has ``study_uids`` (one per item, in item order)
  and is read in order, so the k-th output row belongs to its k-th study.
- ``collate``: the DataLoader collate function, or None for torch's default.
- ``monitor`` (a key of the metrics dict) and ``mode`` ("min" or "max"): what picks ``best.pt``.
- ``evaluate(outputs, val_dataset) -> (metrics, oof)``: ``outputs`` maps each tensor the model returned
  with a batch dimension (``"logits"`` at least) to the numpy array of all validation items. ``metrics``
  is a JSON-able dict holding ``monitor``; ``oof`` a DataFrame written as ``oof.csv``, or None.
  A task with ``needs_model = True`` is also given ``model=`` (the bare module, in train or eval mode,
  which it must leave as it found it) to run again on what the outputs show (the localiser's second look).
- ``figures(metrics, oof, val_dataset, out_dir) -> {name: png path}``: end-of-run plots (may return {}).
- optionally ``label_rates``: the training studies' label rates, handed to a model's
  ``init_label_prior(rates)`` if it has one.
- for inference, the class method ``study_batch(cfg, volume, meta, localisation, labels=None) -> batch``:
  one test study's arrays as the one-item batch its validation loader would give (src/inference calls
  it; ``labels`` are the localiser's compact voxel labels, src/localisation/stored_labels.py, or None),
  and optionally ``wants_labels(cfg) -> bool``: whether that batch reads ``labels`` at all (absent: no),
  so that the localiser hands them over only when a member will use them. A task whose items sample
  slices may set ``slice_shifts = True`` and take ``study_batch(..., shift=s)``: the same batch with its
  sampled slices moved by ``s`` times their spacing (``python infer.py tta_shifts=[...]``).

Registered here: ``volume`` (whole-volume classifiers, src/tasks/volume.py) and ``vertebra``
(per-vertebra crops, src/tasks/vertebra.py), both subclasses of
:class:`src.tasks.study_task.StudyClassificationTask`, which say how a study becomes an item; the
localiser registers ``localise`` with its own metrics (``dice``, ``slice_iou``; mode "max").
"""
from __future__ import annotations

from pathlib import Path

from ..registry import Registry

_REGISTRY = Registry("task", __name__, Path(__file__).parent)
_TASKS = _REGISTRY.classes
register_task = _REGISTRY.register


def get_task_class(name: str) -> type:
    failed = _REGISTRY.import_all() if name not in _TASKS else {}
    if name not in _TASKS:
        from ..config import ConfigError

        raise ConfigError(f"unknown task '{name}' (registered: {', '.join(sorted(_TASKS))}; tasks live in src/tasks/ "
                          f"or register from their model's module)" + (f"; failed to import: {failed}" if failed else ""))
    return _TASKS[name]
