"""What a new training does with the run folder it is pointed at: start, resume, refuse, or move aside.

Called by :func:`src.training.loop.fit` (rank 0 only) before anything is written. The rules, so that
no finished or half-finished work is ever lost by running a command again:

- a run is **finished** once ``metrics.json`` exists: the loop writes it last, after oof.csv and the
  figures. A finished run is never trained over: a second training stops with a message naming the
  folder and the two ways on, ``resume=true`` (continue it, e.g. with more ``epochs``) or
  ``overwrite=true`` (move it aside to ``fold<k>.old-<time>`` and start over; nothing is deleted);
- an **unfinished** run (last.pt, no metrics.json: a killed or interrupted training) is resumed from
  last.pt, and the loop says so, provided it was started with the same settings; with other settings
  it stops and names the keys that differ;
- earlier work that cannot be resumed (best.pt or history.csv without last.pt) is moved aside.

The folder is locked while a training runs in it (``.fold<k>.lock`` beside it, src/locks.py), so two
trainings never write into one folder; temporaries a killed writer left are cleaned under that lock.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import flatten
from ..runs import FINISHED_MARKER, is_finished, read_run_config

WORK_FILES = ("last.pt", "best.pt", "history.csv", "oof.csv", FINISHED_MARKER)
# settings that may change between a run and its continuation without changing what it trains
RESUMABLE_CHANGES = {"resume", "overwrite", "epochs", "progress", "num_workers", "persistent_workers",
                     "save_every_epoch", "tags", "dataset_kind"}
RESUMABLE_PREFIXES = ("wandb.",)


class RunFolderError(RuntimeError):
    """The run folder holds work a new training must not touch; the message says how to go on."""


@dataclass(frozen=True)
class Start:
    """What :func:`plan_start` decided: ``resume`` from last.pt or not, and the line to print."""

    resume: bool
    message: str = ""


def lock_file(folder: Path) -> Path:
    """The lock of a run folder lives beside it, so moving the folder aside does not move its lock."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def move_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``<name>.old-<YYYYmmdd-HHMMSS>`` (a number appended if that exists too)."""
    folder = Path(folder)
    stem = f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = folder.with_name(stem), 1
    while target.exists():
        target, n = folder.with_name(f"{stem}-{n}"), n + 1
    folder.rename(target)
    return target


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring those a resume may change."""
    flat_saved, flat_current = flatten(saved), flatten(current)
    # a key only one side has was added to the code since, or removed from it (task:): not a change of settings
    keys = sorted(set(flat_saved) & set(flat_current))
    return [k for k in keys if flat_saved.get(k) != flat_current.get(k)
            and k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_PREFIXES)]


def plan_start(folder: Path, current_config: dict, resume: bool, overwrite: bool) -> Start:
    """Decide how a training starts in ``folder`` (see the module's rules); moves earlier work aside when
    ``overwrite`` is set or when it cannot be resumed; raises :class:`RunFolderError` otherwise."""
    folder = Path(folder)
    has_work = any((folder / name).exists() for name in WORK_FILES)
    if not has_work:
        return Start(False, f"[resume] nothing to resume in {folder}: starting from scratch" if resume else "")
    if overwrite:
        moved = move_aside(folder)
        return Start(False, f"[run] overwrite=true: the earlier run in {folder} was moved to {moved}")
    last = folder / "last.pt"
    if is_finished(folder):
        if resume and last.exists():
            return Start(True)
        score = _finished_score(folder)
        raise RunFolderError(
            f"{folder} holds a finished run{score}. To train it further: resume=true (with a larger epochs=); "
            f"to start again: overwrite=true (moves it to {folder.name}.old-<time>, nothing is deleted); "
            f"or train elsewhere with runs_dir= or another fold")
    if not last.exists():
        moved = move_aside(folder)
        return Start(False, f"[run] {folder} held an unfinished run without last.pt (nothing to resume from): "
                            f"moved to {moved}, starting from scratch")
    saved = read_run_config(folder)
    differs = changed_keys(saved, current_config) if saved is not None else []
    if differs and not resume:
        old, new = flatten(saved), flatten(current_config)
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differs[:5])
        raise RunFolderError(
            f"{folder} holds an unfinished run started with other settings ({shown}"
            f"{', ...' if len(differs) > 5 else ''}). To continue it with these settings anyway: resume=true; "
            f"to start again: overwrite=true (moves it aside, nothing is deleted)")
    if resume:
        return Start(True)
    return Start(True, f"[resume] {folder} holds an unfinished run (no {FINISHED_MARKER}): resuming it "
                       f"(overwrite=true starts over instead)")


def _finished_score(folder: Path) -> str:
    try:
        metrics = json.loads((folder / FINISHED_MARKER).read_text())
    except (OSError, ValueError):
        return ""
    for key in ("score", "dice"):
        if isinstance(metrics.get(key), (int, float)):
            return f" ({key} {metrics[key]:.4f})"
    return ""
