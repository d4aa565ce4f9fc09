"""``python -m src.report runs=runs/``: compare experiments from their run folders, with no W&B account.

Reads every ``runs/<experiment>/fold<k>/`` (config.yaml, metrics.json, history.csv, oof.csv) and an
ensemble fit's JSON if present, then writes a Markdown leaderboard (``runs/report.md``, also printed)
and PNG figures (``runs/report/``): learning curves overlaid per experiment, log loss per target, and
the score of every fold. Overrides: ``runs=`` the runs folder, ``out=`` the Markdown file,
``figures=`` the PNG folder, ``truth=`` a labels CSV for the oof CV (default: the runs' own
train.csv), ``plots=false`` to skip the figures. The work lives in src/reporting/.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import parse_overrides, run_main
from .io_utils import atomic_write_text
from .reporting.build import Report, build_report
from .reporting.markdown import render

DEFAULTS = {"runs": "runs", "out": "", "figures": "", "truth": "", "plots": True}


def draw_figures(report: Report, folder: Path) -> dict[str, Path]:
    """Write the report's PNGs into ``folder``; returns {title: path} for the figures drawn."""
    from .reporting import plots

    figures: dict[str, Path] = {}
    classifiers = list(report.classifiers["experiment"])
    # Unfinished classifier runs still have curves worth seeing; put them after the ranked ones.
    training = sorted({r.experiment for r in report.runs if r.task == "classify" and r.history is not None}
                      - set(classifiers))
    curve_experiments = classifiers + training
    prior = report.classifiers["prior_mean"].mean() if classifiers else math.nan
    if any(r.history is not None and r.task == "classify" for r in report.runs):
        figures["Learning curves"] = plots.plot_learning_curves(
            report.runs, curve_experiments, folder / "learning_curves.png",
            reference=None if np.isnan(prior) else float(prior))
    if classifiers:
        figures["Log loss per target"] = plots.plot_per_target(report.runs, classifiers, folder / "per_target_logloss.png")
        figures["Score per fold"] = plots.plot_fold_scores(
            report.runs, classifiers, folder / "fold_scores.png", reference=None if np.isnan(prior) else float(prior))
    localisers = list(report.localisers["experiment"])
    if any(r.history is not None and r.task == "localise" for r in report.runs):
        training = sorted({r.experiment for r in report.runs if r.task == "localise" and r.history is not None}
                          - set(localisers))
        figures["Localiser learning curves"] = plots.plot_learning_curves(
            report.runs, localisers + training, folder / "localiser_curves.png", metric="dice", task="localise")
    if localisers:
        figures["Localiser dice per fold"] = plots.plot_fold_scores(
            report.runs, localisers, folder / "localiser_fold_dice.png", metric="dice", task="localise")
    return figures


def make_report(runs_dir: Path, out: Path | None = None, figures: Path | None = None, truth: Path | None = None,
                plots: bool = True) -> tuple[Report, str]:
    """Build, draw and write the report; returns it and its Markdown text. Tests and other code call this."""
    runs_dir = Path(runs_dir)
    out = Path(out) if out else runs_dir / "report.md"
    report = build_report(runs_dir, truth)
    if plots and report.runs:
        report.figures = draw_figures(report, Path(figures) if figures else runs_dir / "report")
    text = render(report, out)
    atomic_write_text(out, text)
    return report, text


def main(argv: list[str]) -> None:
    args = parse_overrides(argv, DEFAULTS)
    runs_dir = Path(args["runs"])
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir}: no such folder; train something first (bash train.sh fold=0) "
                         f"or pass runs=<folder holding <experiment>/fold<k>/>")
    truth = Path(args["truth"]) if args["truth"] else None
    if truth is not None and not truth.exists():
        raise SystemExit(f"truth={truth}: no such file (a train.csv-style labels table)")
    out = Path(args["out"]) if args["out"] else runs_dir / "report.md"
    report, text = make_report(runs_dir, out, args["figures"] or None, truth, args["plots"])
    print(text)
    print(f"[report] wrote {out}" + (f" and {len(report.figures)} figure(s) in "
                                     f"{next(iter(report.figures.values())).parent}" if report.figures else ""))


if __name__ == "__main__":
    run_main(main)
