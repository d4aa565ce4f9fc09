"""Assemble everything the report shows from a runs folder: the one place that does the reading.

Called by src/report.py; tests call :func:`build_report` directly and check its tables against the
runs' metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import TARGETS

from .oof import labelled_oof, oof_cv
from .runs import EnsembleCV, FoldRun, find_ensemble_cv, find_runs
from .tables import classifier_leaderboard, fold_matrix, localiser_table, uneven_folds, unfinished
from .worst import level_counts, run_levels, with_pictures, worst_studies


@dataclass
class Report:
    runs_dir: Path
    runs: list[FoldRun]
    classifiers: pd.DataFrame          # classifier_leaderboard + oof_cv, oof_studies, oof_note
    localisers: pd.DataFrame
    classifier_folds: pd.DataFrame     # experiment x fold score
    localiser_folds: pd.DataFrame      # experiment x fold dice
    ensemble: EnsembleCV | None
    unfinished: list[FoldRun]
    notes: list[str] = field(default_factory=list)
    worst: dict[str, pd.DataFrame] = field(default_factory=dict)  # experiment -> its worst held-out studies
    level_summary: str = ""  # how many studies of the localisation table fail the level checks
    figures: dict[str, Path] = field(default_factory=dict)  # title -> PNG path, filled by the caller


def _in_order(matrix: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Rows of the per-fold matrix in leaderboard order, so both tables read top-down alike."""
    return matrix if matrix.empty else matrix.loc[[e for e in board["experiment"] if e in matrix.index]]


def build_report(runs_dir: Path, truth: Path | None = None) -> Report:
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir)
    table = classifier_leaderboard(runs)
    labels_cache: dict = {}
    scored, worst, notes, level_summary = [], {}, [], ""
    for experiment in table["experiment"]:
        group = [r for r in runs if r.experiment == experiment and r.finished and r.task == "classify"]
        scored.append(oof_cv(group, truth, labels_cache))
        oof, labels, _ = labelled_oof(group, truth, labels_cache)
        if oof is not None and labels is not None and len(oof):
            levels, why = run_levels(group[0].config)
            if why:
                notes.append(f"{experiment}: worst studies without level flags: {why}")
            elif not level_summary:
                level_summary = level_counts(levels)
            worst[experiment] = with_pictures(worst_studies(oof["StudyInstanceUID"].to_numpy(), labels,
                                                            oof[list(TARGETS)].to_numpy(float), levels=levels),
                                              group)
    table["oof_cv"] = [s.score for s in scored]
    table["oof_studies"] = [s.n_studies for s in scored]
    table["oof_note"] = [s.note for s in scored]
    localisers = localiser_table(runs)
    if uneven_folds(table):
        notes.append("experiments were scored on different folds, so their mean scores cover different "
                     "studies; compare them on the folds they share (table 'Score per fold').")
    return Report(
        runs_dir=runs_dir,
        runs=runs,
        classifiers=table,
        localisers=localisers,
        classifier_folds=_in_order(fold_matrix(runs, "classify"), table),
        localiser_folds=_in_order(fold_matrix(runs, "localise"), localisers),
        ensemble=find_ensemble_cv(runs_dir),
        unfinished=unfinished(runs),
        notes=notes,
        worst=worst,
        level_summary=level_summary,
    )
