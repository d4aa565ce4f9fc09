"""Render a :class:`~src.reporting.build.Report` as Markdown (written to runs/report.md and printed).

Called by src/report.py. Tables are built by hand: pandas' ``to_markdown`` needs ``tabulate``,
which the project does not otherwise depend on.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from .. import TARGETS, VERTEBRAE
from .build import Report


def _num(value, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}"


def _mean_std(mean, std) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return _num(mean) if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _folds(row) -> str:
    planned = row["n_folds_planned"] if "n_folds_planned" in row else None
    if planned is None or (isinstance(planned, float) and math.isnan(planned)):
        return str(row["n_folds"])
    return f"{row['n_folds']}/{int(planned)}"


def classifier_section(report: Report) -> str:
    board = report.classifiers
    if board.empty:
        return "## Classifiers\n\nNo finished classifier runs (no fold folder with metrics.json and a score)."
    rows = []
    for rank, row in enumerate(board.itertuples(index=False), start=1):
        r = row._asdict()
        gain = r["prior_mean"] - r["score_mean"]
        rows.append([rank, r["experiment"], r["model"], _folds(r), _mean_std(r["score_mean"], r["score_std"]),
                     f"{_num(r['score_min'])} – {_num(r['score_max'])}",
                     _num(r["oof_cv"]) + (f" ({r['oof_studies']})" if _num(r["oof_cv"]) != "-" else ""),
                     _num(r["prior_mean"]), _num(gain)])
    header = ["rank", "experiment", "model", "folds", "score (mean ± std)", "fold min – max",
              "oof CV (studies)", "prior", "gain over prior"]
    parts = ["## Classifiers, best first",
             "Score: the competition's weighted log loss on each held-out fold, lower is better; std is over "
             "folds (ddof=1). oof CV scores all folds' out-of-fold rows together. prior: the training folds' "
             "label rates as constant predictions on the same studies.",
             table(header, rows)]
    notes = [f"- {r.experiment}: oof CV {r.oof_note}" for r in board.itertuples() if r.oof_note]
    if notes:
        parts.append("\n".join(notes))
    per_target = [[r["experiment"], *[_num(r[f"logloss_{t}"]) for t in TARGETS]]
                  for r in (row._asdict() for row in board.itertuples(index=False))]
    parts += ["### Log loss per target (mean over folds, unweighted)", table(["experiment", *TARGETS], per_target)]
    parts += ["### Score per fold", _fold_table(report.classifier_folds)]
    return "\n\n".join(parts)


def _fold_table(matrix: pd.DataFrame) -> str:
    if matrix.empty:
        return "(none)"
    rows = [[exp, *[_num(v) for v in matrix.loc[exp]]] for exp in matrix.index]
    return table(["experiment", *matrix.columns], rows)


def ensemble_section(report: Report) -> str:
    ens = report.ensemble
    if ens is None:
        return "## Ensemble\n\nnot fitted (no ensemble.json in the runs folder; see `python -m src.ensemble`)."
    if ens.score is None:
        return f"## Ensemble\n\n`{ens.path.name}` is unusable: {ens.problem}"
    # src.ensemble's nested CV is a mean over held-out folds, so the fair single-model figure is the
    # best mean fold score, not the pooled oof CV.
    board = report.classifiers
    best = board["score_mean"].min() if not board.empty else math.nan
    line = (f"nested CV of {', '.join(ens.members)} ({ens.combine} space, `{ens.path.name}`): "
            f"**{_num(ens.score)}**")
    if not pd.isna(best):
        line += f"; best single experiment's mean fold score {_num(best)}"
    if ens.per_fold:
        line += "\n\nper fold: " + ", ".join(f"fold{k} {_num(v)}" for k, v in ens.per_fold.items())
    if ens.calibration:
        tried = ", ".join(f"{m} {_num(v)}" for m, v in ens.calibration.get("nested_cv", {}).items())
        line += (f"\n\ncalibration of the final probabilities, nested CV: {tried}; kept: "
                 f"{ens.calibration.get('method', 'none')}")
    return "## Ensemble\n\n" + line


def worst_section(report: Report, markdown_path: Path | None = None) -> str:
    """Each classifier's costliest held-out studies (src/reporting/worst.py), linked to their explanation
    pictures where training drew one (else the command that draws it)."""
    if not report.worst:
        return ""
    parts = ["## Worst held-out studies",
             "Per experiment, the out-of-fold studies with the highest loss (their mean over all studies is the "
             "oof CV); share: of the sum over all its studies; costly targets: label, prediction and the "
             "target's part of the loss; levels: whether the localisation failed the level checks "
             "(src/localisation/levels.py), with its level confidence; picture: what the model saw "
             "(crops, attention, reformats), or the command that draws it."]
    if getattr(report, "level_summary", ""):
        parts.append(report.level_summary + ".")
    for experiment, worst in report.worst.items():
        rows = []
        for r in worst.itertuples(index=False):
            levels = "-" if r.level_flag is None or pd.isna(r.level_flag) else (
                f"{'flagged' if r.level_flag else 'ok'} ({r.level_confidence:.2f})")
            picture = getattr(r, "picture", None)
            if picture is not None:
                link = os.path.relpath(picture, markdown_path.parent) if markdown_path else str(picture)
                shown = f"[png]({Path(link).as_posix()})"
            else:
                fold = getattr(r, "fold", None)
                shown = (f"`python -m src.explain run={experiment} study={r.StudyInstanceUID}"
                         + ("" if fold is None or pd.isna(fold) else f" fold={int(fold)}") + "`")
            rows.append([r.StudyInstanceUID, _num(r.loss, 3), f"{100 * r.share:.1f}%", r.costly, levels, shown])
        parts += [f"### {experiment}", table(["study", "loss", "share", "costly targets", "levels", "picture"], rows)]
    return "\n\n".join(parts)


def localiser_section(report: Report) -> str:
    board = report.localisers
    if board.empty:
        return ""
    rows = []
    for rank, row in enumerate(board.itertuples(index=False), start=1):
        r = row._asdict()
        rows.append([rank, r["experiment"], r["model"], r["n_folds"], _mean_std(r["dice_mean"], r["dice_std"]),
                     _mean_std(r["slice_iou_mean"], r["slice_iou_std"]), *[_num(r[f"dice_{v}"], 3) for v in VERTEBRAE]])
    header = ["rank", "experiment", "model", "folds", "dice", "slice IoU", *[f"dice {v}" for v in VERTEBRAE]]
    return "\n\n".join(["## Localisers, best first", "Higher is better.", table(header, rows),
                        "### Dice per fold", _fold_table(report.localiser_folds)])


def unfinished_section(report: Report) -> str:
    if not report.unfinished:
        return ""
    lines = ["## Unfinished runs (no metrics.json)"]
    for run in report.unfinished:
        epochs = "no history yet" if run.history is None or run.history.empty else f"{len(run.history)} epoch(s) logged"
        lines.append(f"- {run.experiment}/fold{run.fold}: {epochs}")
    return "\n".join(lines)


def problems_section(report: Report) -> str:
    lines = [f"- {note}" for note in report.notes]
    lines += [f"- {r.experiment}/fold{r.fold}: {p}" for r in report.runs for p in r.problems
              if r.finished or not p.startswith("no history.csv")]
    return "## Warnings\n\n" + "\n".join(lines) if lines else ""


def figures_section(report: Report, markdown_path: Path | None) -> str:
    if not report.figures:
        return ""
    lines = ["## Figures"]
    for title, path in report.figures.items():
        link = os.path.relpath(path, markdown_path.parent) if markdown_path else str(path)
        lines.append(f"![{title}]({Path(link).as_posix()})")
    return "\n\n".join(lines)


def render(report: Report, markdown_path: Path | None = None) -> str:
    n_done = sum(r.finished for r in report.runs)
    head = (f"# Experiment report\n\nFrom `{report.runs_dir}`: {len(report.runs)} fold runs, {n_done} finished, "
            f"{len(report.runs) - n_done} unfinished.")
    sections = [head, classifier_section(report), ensemble_section(report), worst_section(report, markdown_path),
                localiser_section(report),
                unfinished_section(report), problems_section(report), figures_section(report, markdown_path)]
    return "\n\n".join(s for s in sections if s) + "\n"
