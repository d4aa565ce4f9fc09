"""PNG figures of the report (matplotlib, Agg backend: no display needed, works on a headless box).

Called by src/report.py. One colour per experiment, the same in every figure, in leaderboard order.
Each function takes already-read runs and writes one PNG atomically, returning its path.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .. import TARGETS  # noqa: E402
from ..io_utils import atomic_path  # noqa: E402
from .runs import FoldRun  # noqa: E402
from .tables import mean_curve  # noqa: E402


def colours(experiments: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(experiments) <= 10 else "tab20")
    return {exp: cmap(i % cmap.N) for i, exp in enumerate(experiments)}


def _save(fig, path: Path) -> Path:
    with atomic_path(Path(path), ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _group(runs: list[FoldRun], experiment: str, task: str) -> list[FoldRun]:
    return [r for r in runs if r.experiment == experiment and r.task == task and r.history is not None]


def plot_learning_curves(runs: list[FoldRun], experiments: list[str], path: Path, metric: str = "score",
                         task: str = "classify", reference: float | None = None) -> Path:
    """Validation ``metric`` and train loss per epoch: a thin line per fold, a bold line for the fold mean.

    Unfinished runs are drawn too (their history is what there is to see while they train).
    """
    palette = colours(experiments)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [(axes[0], metric, f"validation {metric}"), (axes[1], "train_loss", "train loss")]
    for ax, column, title in panels:
        for exp in experiments:
            group = _group(runs, exp, task)
            for run in group:
                if column in run.history.columns:
                    ax.plot(run.history["epoch"], run.history[column], color=palette[exp], alpha=0.25, lw=1,
                            ls="-" if run.finished else "--")
            curve = mean_curve([r.history for r in group], column)
            if len(curve):
                training = sum(not r.finished for r in group)
                label = f"{exp} ({len(group)} fold{'s' if len(group) != 1 else ''}"
                label += f", {training} still training)" if training else ")"
                ax.plot(curve["epoch"], curve["mean"], color=palette[exp], lw=2.2, marker="o", ms=3, label=label,
                        ls="--" if training == len(group) else "-")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if reference is not None and not math.isnan(reference):
        axes[0].axhline(reference, color="grey", ls="--", lw=1, label="label prior (mean over runs)")
    axes[0].legend(fontsize=8, loc="best")
    better = "lower" if metric == "score" else "higher"
    fig.suptitle(f"Learning curves: bold = mean over folds, thin = each fold ({better} {metric} is better)")
    fig.tight_layout()
    return _save(fig, path)


def plot_per_target(runs: list[FoldRun], experiments: list[str], path: Path) -> Path:
    """Grouped bars of the log loss per target (patient_overall, C1..C7), mean over folds, std as error bars."""
    palette = colours(experiments)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(len(experiments), 1)
    x = np.arange(len(TARGETS))
    for i, exp in enumerate(experiments):
        per_fold = [r.metrics.get("per_target_logloss") or {} for r in runs
                    if r.experiment == exp and r.finished and r.task == "classify"]
        values = np.array([[float(d.get(t, np.nan)) for t in TARGETS] for d in per_fold], dtype=float)
        if values.size == 0:
            continue
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(len(TARGETS))
        ax.bar(x + (i - (len(experiments) - 1) / 2) * width, mean, width, yerr=np.nan_to_num(std),
               color=palette[exp], capsize=2, label=exp, error_kw={"lw": 0.8})
    ax.set_xticks(x, TARGETS)
    ax.set_ylabel("log loss (lower is better)")
    ax.set_title("Log loss per target, mean over folds (error bar: std over folds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_fold_scores(runs: list[FoldRun], experiments: list[str], path: Path, metric: str = "score",
                     task: str = "classify", reference: float | None = None) -> Path:
    """One row per experiment (best at the top): a dot per fold, the mean with its std as a bar."""
    palette = colours(experiments)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(experiments) + 1.6))
    for i, exp in enumerate(experiments):
        values = [float(r.metrics.get(metric, np.nan)) for r in runs
                  if r.experiment == exp and r.finished and r.task == task]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            continue
        y = len(experiments) - 1 - i
        ax.scatter(values, [y] * len(values), color=palette[exp], alpha=0.6, s=22, zorder=3)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax.errorbar(np.mean(values), y, xerr=std, fmt="D", color="black", ms=6, capsize=4, zorder=4)
    if reference is not None and not math.isnan(reference):
        ax.axvline(reference, color="grey", ls="--", lw=1, label="label prior (mean over runs)")
        ax.legend(fontsize=8, loc="best")
    ax.set_yticks(range(len(experiments)), list(reversed(experiments)))
    ax.set_ylim(-0.6, len(experiments) - 0.4)
    better = "lower" if metric == "score" else "higher"
    ax.set_xlabel(f"{metric} per fold ({better} is better); diamond = mean ± std")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
