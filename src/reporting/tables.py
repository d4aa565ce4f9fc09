"""Leaderboards from fold runs: pure pandas on already-read runs, so the arithmetic is testable alone.

Called by src/report.py (and its tests). The spread of fold scores is the sample standard deviation
(ddof=1, what W&B's group panels show); it is NaN for a single fold rather than a misleading 0.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import TARGETS, VERTEBRAE
from .runs import FoldRun


def _float(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _spread(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _by_experiment(runs: list[FoldRun], task: str) -> dict[str, list[FoldRun]]:
    groups: dict[str, list[FoldRun]] = {}
    for run in runs:
        if run.finished and run.task == task:
            groups.setdefault(run.experiment, []).append(run)
    return groups


def _planned_folds(runs: list[FoldRun]) -> int | None:
    planned = [r.config.get("n_folds") for r in runs if isinstance(r.config.get("n_folds"), int)]
    return max(planned) if planned else None


def classifier_leaderboard(runs: list[FoldRun]) -> pd.DataFrame:
    """One row per classifier experiment with at least one finished fold, best (lowest mean score) first.

    Columns: experiment, model, n_folds, n_folds_planned, folds, score_mean, score_std, score_min,
    score_max, prior_mean, n_val, best_epoch_mean, then ``logloss_<target>`` (mean over folds) per target.
    """
    rows = []
    for experiment, group in _by_experiment(runs, "classify").items():
        scores = [_float(r.metrics.get("score")) for r in group]
        row = {
            "experiment": experiment,
            "model": ", ".join(sorted({r.model for r in group})),
            "n_folds": len(group),
            "n_folds_planned": _planned_folds(group),
            "folds": [r.fold for r in group],
            "score_mean": _mean(scores),
            "score_std": _spread(scores),
            "score_min": min((s for s in scores if not math.isnan(s)), default=math.nan),
            "score_max": max((s for s in scores if not math.isnan(s)), default=math.nan),
            "prior_mean": _mean([_float(r.metrics.get("prior_score")) for r in group]),
            "n_val": int(sum(v for v in (_float(r.metrics.get("n_val")) for r in group) if not math.isnan(v))),
            "best_epoch_mean": _mean([_float(r.metrics.get("best_epoch")) for r in group]),
        }
        for target in TARGETS:
            row[f"logloss_{target}"] = _mean(
                [_float((r.metrics.get("per_target_logloss") or {}).get(target)) for r in group])
        rows.append(row)
    columns = ["experiment", "model", "n_folds", "n_folds_planned", "folds", "score_mean", "score_std",
               "score_min", "score_max", "prior_mean", "n_val", "best_epoch_mean",
               *[f"logloss_{t}" for t in TARGETS]]
    table = pd.DataFrame(rows, columns=columns)
    # NaN scores (a metrics.json without 'score') sink to the bottom; ties keep alphabetical order.
    return table.sort_values(["score_mean", "experiment"], na_position="last", kind="stable").reset_index(drop=True)


def _per_vertebra_dice(metrics: dict) -> dict[str, float]:
    """The localiser's per-vertebra dice, whatever its key (per_vertebra_dice, dice_per_vertebra, ...)."""
    for key, value in metrics.items():
        if isinstance(value, dict) and "dice" in key:
            return {v: _float(value.get(v)) for v in VERTEBRAE}
    return {v: _float(metrics.get(f"dice_{v}")) for v in VERTEBRAE}


def localiser_table(runs: list[FoldRun]) -> pd.DataFrame:
    """One row per localiser experiment, best (highest mean dice) first, with per-vertebra dice means."""
    rows = []
    for experiment, group in _by_experiment(runs, "localise").items():
        dice = [_float(r.metrics.get("dice")) for r in group]
        iou = [_float(r.metrics.get("slice_iou")) for r in group]
        row = {
            "experiment": experiment,
            "model": ", ".join(sorted({r.model for r in group})),
            "n_folds": len(group),
            "folds": [r.fold for r in group],
            "dice_mean": _mean(dice), "dice_std": _spread(dice),
            "slice_iou_mean": _mean(iou), "slice_iou_std": _spread(iou),
        }
        per_fold = [_per_vertebra_dice(r.metrics) for r in group]
        for vertebra in VERTEBRAE:
            row[f"dice_{vertebra}"] = _mean([d[vertebra] for d in per_fold])
        rows.append(row)
    columns = ["experiment", "model", "n_folds", "folds", "dice_mean", "dice_std", "slice_iou_mean",
               "slice_iou_std", *[f"dice_{v}" for v in VERTEBRAE]]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["dice_mean", "experiment"], ascending=[False, True], na_position="last",
                             kind="stable").reset_index(drop=True)


def fold_matrix(runs: list[FoldRun], task: str = "classify") -> pd.DataFrame:
    """Experiments x folds of the headline metric (score, or dice for localisers): shows whether a lead holds on every fold."""
    key = "score" if task == "classify" else "dice"
    cells = [(r.experiment, f"fold{r.fold}", _float(r.metrics.get(key)))
             for r in runs if r.finished and r.task == task]
    if not cells:
        return pd.DataFrame()
    frame = pd.DataFrame(cells, columns=["experiment", "fold", key])
    matrix = frame.pivot_table(index="experiment", columns="fold", values=key, aggfunc="first")
    return matrix[sorted(matrix.columns, key=lambda c: int(c[4:]))]


def unfinished(runs: list[FoldRun]) -> list[FoldRun]:
    return [r for r in runs if not r.finished]


def uneven_folds(table: pd.DataFrame) -> bool:
    """True when the experiments were scored on different folds, so their means cover different studies."""
    return len({tuple(f) for f in table["folds"]}) > 1 if len(table) else False


def mean_curve(histories: list[pd.DataFrame], column: str) -> pd.DataFrame:
    """``epoch, mean, low, high, n`` of ``column`` over the folds that reached each epoch."""
    parts = [h[["epoch", column]].dropna() for h in histories if h is not None and column in h.columns]
    if not parts:
        return pd.DataFrame(columns=["epoch", "mean", "low", "high", "n"])
    stacked = pd.concat(parts)
    grouped = stacked.groupby("epoch")[column]
    return pd.DataFrame({"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max(),
                         "n": grouped.count()}).reset_index()
