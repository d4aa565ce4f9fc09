"""The held-out studies that cost a run the most: where its score goes, and whether a doubtful
localisation (src/localisation/levels.py) is behind it.

Log loss punishes a confident mistake far more than it rewards a right answer, so a handful of studies
can make most of a score. For each study of a run's out-of-fold rows this gives its loss (the study's
weighted log loss, whose mean over studies is the score), its share of the run's total, the targets that
cost the most (their weighted part of the study's loss, with label and prediction) and, from the
localisation table the run trained with, whether its levels were flagged, and the explanation picture a
fold's training drew of it (``<fold>/explanations/<uid>.png``, src/tasks/explanation.py), where there is
one. Called by src/reporting/build.py; the table is rendered by src/reporting/markdown.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..metric import binary_log_loss, sample_weights
from ..paths import localisation_path, locate_data_dir, resolve_cache_dir

COLUMNS = ["StudyInstanceUID", "loss", "share", "costly", "level_flag", "level_confidence"]


def cell_losses(labels, probs) -> np.ndarray:
    """(N, 8): each target's weighted part of its study's loss; a row sums to that study's loss."""
    labels = np.asarray(labels, dtype=float)
    weights = sample_weights(labels)
    return weights * binary_log_loss(labels, probs) / weights.sum(axis=1, keepdims=True)


def worst_studies(uids, labels, probs, n: int = 5, levels: pd.DataFrame | None = None,
                  n_targets: int = 2) -> pd.DataFrame:
    """The ``n`` studies with the highest loss, worst first (COLUMNS). ``costly``: the ``n_targets``
    targets that cost the most, as ``C4 (1, p=0.00) 2.30; ...``; ``levels``: the localisation table (or
    any frame with StudyInstanceUID, level_flag, level_confidence), else those columns are empty."""
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    cells = cell_losses(labels, probs)
    per_study = cells.sum(axis=1)
    order = np.argsort(-per_study, kind="stable")[:n]
    flags = {}
    if levels is not None and {"level_flag", "level_confidence"} <= set(levels.columns):
        first = levels.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")
        flags = {uid: (bool(first.at[uid, "level_flag"]), float(first.at[uid, "level_confidence"]))
                 for uid in first.index}
    rows = []
    for i in order:
        uid = str(uids[i])
        top = np.argsort(-cells[i], kind="stable")[:n_targets]
        costly = "; ".join(f"{TARGETS[t]} ({int(labels[i, t])}, p={probs[i, t]:.2f}) {cells[i, t]:.2f}" for t in top)
        flag, confidence = flags.get(uid, (None, None))
        rows.append({"StudyInstanceUID": uid, "loss": float(per_study[i]), "share": float(per_study[i] / per_study.sum()),
                     "costly": costly, "level_flag": flag, "level_confidence": confidence})
    return pd.DataFrame(rows, columns=COLUMNS)


def with_pictures(worst: pd.DataFrame, fold_runs) -> pd.DataFrame:
    """``worst`` with the ``fold`` that held each study out and its ``picture``: the explanation picture
    that fold's training drew (None where it drew none). ``fold_runs``: objects with ``fold`` and ``path``
    (the fold folder, holding oof.csv and explanations/)."""
    folds, pictures = {}, {}
    for run in fold_runs:
        oof = Path(run.path) / "oof.csv"
        if oof.exists():
            uids = pd.read_csv(oof, usecols=["StudyInstanceUID"], dtype=str)["StudyInstanceUID"]
            folds.update(dict.fromkeys(uids, int(run.fold)))
        pictures.update({png.stem: png for png in (Path(run.path) / "explanations").glob("*.png")})
    uids = [str(uid) for uid in worst["StudyInstanceUID"]]
    return worst.assign(fold=[folds.get(uid) for uid in uids], picture=[pictures.get(uid) for uid in uids])


def run_levels(config: dict) -> tuple[pd.DataFrame | None, str]:
    """The level columns of the localisation table a run trained with (from its config.yaml), or None and
    why not (no table any more, or one written before the level checks)."""
    from ..localisation.table import read_table

    try:
        data_dir = locate_data_dir(config)
        path = localisation_path(config, resolve_cache_dir(config, data_dir))
    except (KeyError, TypeError, FileNotFoundError) as err:
        return None, f"cannot tell where its localisation table is ({err})"
    if not Path(path).exists():
        return None, f"no localisation table at {path}"
    try:
        table = read_table(path)
    except ValueError as err:
        return None, str(err)
    if "level_flag" not in table.columns:
        return None, f"{path} has no level columns (rebuild it with `python -m src.localise`)"
    return table, ""


def level_counts(levels: pd.DataFrame) -> str:
    """One line on a localisation table's level columns: studies that fail the checks, repaired ones."""
    studies = levels.drop_duplicates("StudyInstanceUID")
    repaired = int(studies["level_repaired"].sum()) if "level_repaired" in studies else 0
    return (f"{int(studies['level_flag'].sum() + repaired)} of {len(studies)} studies of the localisation table "
            f"fail the level checks" + (f", {repaired} of them repaired" if repaired else ""))
