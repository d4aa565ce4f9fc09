"""Reading run folders: ``runs/<experiment>/fold<k>/`` as written by the training loop (src/training).

Called by src/report.py. Everything here is tolerant of half-finished work, because the report is
most useful while experiments are still running: a fold folder without ``metrics.json`` is listed as
unfinished, an unreadable file becomes a warning on the run, never an exception.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..runs import FINISHED_MARKER, ensemble_path, fold_dirs, read_ensemble



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
        """``localise`` or ``classify``, from what the run wrote: the headline metric decides.

        config.yaml's ``model`` is only a fallback, for a run that has written neither yet (the model
        class fixes the task; configs keep no ``task`` key, and an old one may be wrong).
        """
        for source in (self.metrics, None if self.history is None else dict.fromkeys(self.history.columns)):
            if source:
                if "score" in source:
                    return "classify"
                if "dice" in source:
                    return "localise"
        return "localise" if self.config.get("model") == "localiser" else "classify"

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))


@dataclass
class EnsembleCV:
    """The ensemble's nested CV as src.ensemble wrote it; ``score`` is None (and ``problem`` says why) when the
    file cannot be used."""

    path: Path
    score: float | None
    combine: str = ""
    members: list[str] = field(default_factory=list)
    per_fold: dict[str, float] = field(default_factory=dict)
    problem: str = ""
    calibration: dict = field(default_factory=dict)  # ensemble.json's ``calibration`` (src/ensembling/calibration.py)


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
    metrics_path = path / FINISHED_MARKER
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
        for fold, folder in fold_dirs(runs_dir, exp_dir.name).items():
            found.append(read_fold_run(folder, exp_dir.name, fold))
    found.sort(key=lambda r: (r.experiment, r.fold))
    return found


def find_ensemble_cv(runs_dir: Path) -> EnsembleCV | None:
    """The nested CV that ``python -m src.ensemble`` wrote to ``<runs_dir>/ensemble.json``, None when not fitted;
    a file that does not follow the schema (src.runs.read_ensemble) is reported, not guessed at."""
    path = ensemble_path(runs_dir)
    if not path.exists():
        return None
    try:
        data = read_ensemble(path)
    except ValueError as err:
        return EnsembleCV(path, None, problem=str(err))
    if "nested_cv" not in data:
        return EnsembleCV(path, None, problem="it holds weights but no nested CV (not fitted by `python -m src.ensemble`)")
    per_fold = data.get("spaces", {}).get(data["combine"], {}).get("nested_per_fold", {})
    calibration = data.get("calibration") if isinstance(data.get("calibration"), dict) else {}
    return EnsembleCV(path, float(data["nested_cv"]["score"]), data["combine"], list(data["members"]),
                      {str(k): v for k, v in per_fold.items() if isinstance(v, (int, float))}, calibration=calibration)
