"""Reading run folders: ``runs/<experiment>/fold<k>/`` as written by the training loop (src/training).

Called by src/report.py. Everything here is tolerant of half-finished work, because the report is
most useful while experiments are still running: a fold folder without ``metrics.json`` is listed as
unfinished, an unreadable file becomes a warning on the run, never an exception.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

_FOLD_DIR = re.compile(r"^fold(\d+)$")
# Keys under which src.ensemble may store its nested cross-validated score (the brief allows either).
ENSEMBLE_KEYS = ("nested_cv", "ensemble_cv")


@dataclass
class FoldRun:
    """One fold of one experiment: what its folder holds, and what could not be read."""

    experiment: str
    fold: int
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict | None = None
    history: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def oof_path(self) -> Path:
        return self.path / "oof.csv"

    @property
    def task(self) -> str:
        """``localize`` or ``classify``, from what the run wrote: the headline metric decides.

        config.yaml's ``task`` is only a fallback: a model class may fix its own task (the localiser does)
        while the saved config keeps the default ``classify``.
        """
        for source in (self.metrics, None if self.history is None else dict.fromkeys(self.history.columns)):
            if source:
                if "score" in source:
                    return "classify"
                if "dice" in source:
                    return "localize"
        return "localize" if self.config.get("task") == "localize" else "classify"

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))


@dataclass
class EnsembleCV:
    """The ensemble's nested CV as src.ensemble wrote it; ``score`` is None when no number was recognised."""

    path: Path
    key: str
    score: float | None
    raw: Any


def _read_json(path: Path, problems: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{path.name} unreadable ({err}); treated as unfinished")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object; treated as unfinished")
        return None
    return data


def _read_config(path: Path, problems: list[str]) -> dict:
    if not path.exists():
        problems.append("no config.yaml (model and data folder unknown)")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        problems.append(f"config.yaml unreadable ({err})")
        return {}
    return data if isinstance(data, dict) else {}


def _read_history(path: Path, problems: list[str]) -> pd.DataFrame | None:
    if not path.exists():
        problems.append("no history.csv (no learning curve)")
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        problems.append(f"history.csv unreadable ({err})")
        return None
    if "epoch" not in frame.columns:
        problems.append("history.csv has no 'epoch' column (no learning curve)")
        return None
    return frame


def read_fold_run(path: Path, experiment: str, fold: int) -> FoldRun:
    problems: list[str] = []
    config = _read_config(path / "config.yaml", problems)
    metrics_path = path / "metrics.json"
    metrics = _read_json(metrics_path, problems) if metrics_path.exists() else None
    history = _read_history(path / "history.csv", problems)
    return FoldRun(experiment, fold, path, config, metrics, history, problems)


def find_runs(runs_dir: Path) -> list[FoldRun]:
    """Every ``<runs_dir>/<experiment>/fold<k>/`` folder, sorted by experiment then fold.

    Folders that hold no ``fold<k>`` subfolder (the report's own output, wandb/, an ensemble folder)
    are not experiments and are skipped.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder; pass runs=<folder holding <experiment>/fold<k>/>")
    found = []
    for exp_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        for fold_dir in sorted(exp_dir.iterdir()):
            match = _FOLD_DIR.match(fold_dir.name)
            if match and fold_dir.is_dir():
                found.append(read_fold_run(fold_dir, exp_dir.name, int(match.group(1))))
    found.sort(key=lambda r: (r.experiment, r.fold))
    return found


def _number_in(value: Any) -> float | None:
    """A score from whatever shape src.ensemble chose: a number, or a mapping with score/mean/cv."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in ("score", "mean", "cv", "nested_cv", "ensemble_cv", "ensemble"):
            if key in value:
                found = _number_in(value[key])
                if found is not None:
                    return found
    return None


def _search_key(data: Any, depth: int = 0) -> tuple[str, Any] | None:
    if not isinstance(data, dict) or depth > 2:
        return None
    for key in ENSEMBLE_KEYS:
        if key in data:
            return key, data[key]
    for value in data.values():
        hit = _search_key(value, depth + 1)
        if hit:
            return hit
    return None


def find_ensemble_cv(runs_dir: Path) -> EnsembleCV | None:
    """The first JSON file in ``runs_dir`` or ``runs_dir/ensemble*/`` holding a nested ensemble CV, else None."""
    runs_dir = Path(runs_dir)
    candidates = sorted(runs_dir.glob("*.json")) + sorted(runs_dir.glob("ensemble*/*.json"))
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        hit = _search_key(data)
        if hit:
            key, raw = hit
            return EnsembleCV(path, key, _number_in(raw), raw)
    return None
