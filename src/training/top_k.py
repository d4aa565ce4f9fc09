"""Top-k checkpoint averaging (``average_top_k`` > 1; 4th place averaged its 5 best epochs).

Called by the training loop (src/training/loop.py): after each validation :func:`keep_epoch` writes the
judged weights of that epoch under ``<run>/top_k/epoch<e>.pt`` while it is among the k best by the
monitored metric (a worse one is never written, one that drops out is deleted), so a resumed run still
has them. At the end :func:`average_into_best` moves the single best checkpoint to ``best_single.pt`` and
writes ``best.pt`` with the mean of the kept weights (and the best epoch's everything else): the
validation, oof.csv and inference then use the average. Floating tensors are averaged (BatchNorm's running
statistics too, a close stand-in for recomputing them); integer ones (``num_batches_tracked``) are the
best epoch's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..io_utils import atomic_torch_save, atomic_write_json
from ..models.checkpoint import load_checkpoint

FOLDER = "top_k"
INDEX = "index.json"
SINGLE = "best_single.pt"


def average_states(states: list[dict]) -> dict:
    """The element-wise mean of state dicts with the same keys; non-floating entries come from the first."""
    if not states:
        raise ValueError("no state dicts to average")
    out = {}
    for key, first in states[0].items():
        if torch.is_tensor(first) and first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(first.dtype)
        else:
            out[key] = first
    return out


def _index(run_folder: Path) -> dict:
    path = Path(run_folder) / FOLDER / INDEX
    return json.loads(path.read_text()) if path.exists() else {}


def keep_epoch(run_folder: Path, k: int, epoch: int, value: float, sign: int, state: dict) -> bool:
    """Keep this epoch's ``state`` if it is among the ``k`` best (``sign`` * value lower is better); True if kept."""
    folder = Path(run_folder) / FOLDER
    kept = {int(e): float(v) for e, v in _index(run_folder).items() if int(e) < epoch}  # a resume drops redone epochs
    ranked = sorted([*kept.items(), (epoch, float(value))], key=lambda item: (sign * item[1], item[0]))[:k]
    wanted = dict(ranked)
    folder.mkdir(parents=True, exist_ok=True)
    if epoch in wanted:
        atomic_torch_save(folder / f"epoch{epoch}.pt", {"model": state, "epoch": epoch, "value": float(value)})
    for old in set(kept) - set(wanted):
        (folder / f"epoch{old}.pt").unlink(missing_ok=True)
    atomic_write_json(folder / INDEX, {str(e): v for e, v in wanted.items()})
    return epoch in wanted


def average_into_best(run_folder: Path, best_path: Path) -> list[int]:
    """best.pt <- the mean of the kept epochs' weights (the best epoch's own file kept as best_single.pt).
    Returns the epochs averaged; [] (and nothing changed) with fewer than two kept."""
    run_folder, best_path = Path(run_folder), Path(best_path)
    epochs = sorted(int(e) for e in _index(run_folder))
    if len(epochs) < 2:
        return []
    single = run_folder / SINGLE
    if "averaged_epochs" not in load_checkpoint(best_path):  # a fresh best (a resumed run may have found one)
        shutil.copyfile(best_path, single)
    best = load_checkpoint(single)
    states = [load_checkpoint(run_folder / FOLDER / f"epoch{e}.pt")["model"] for e in epochs]
    atomic_torch_save(best_path, {**best, "model": average_states(states), "averaged_epochs": epochs})
    return epochs
