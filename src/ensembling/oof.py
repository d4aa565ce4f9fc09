"""Out-of-fold predictions of ensemble members, read from their run folders and lined up on labels.

Called by src/ensembling/fit.py. Each member is a run name; its folds' ``oof.csv`` files (wide:
StudyInstanceUID + TARGETS, the fold's validation studies) are concatenated with the fold number
taken from the folder name. Members trained on different folds files, or with ``limit_studies``,
cover different studies: only the studies every member predicted are used, and the count left out
is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..metric import SubmissionError, to_wide
from ..runs import select_folds


@dataclass
class AlignedOof:
    """Every member's oof probabilities on the studies they share, with those studies' labels and folds."""

    members: list[str]
    study_uids: list[str]
    probs: np.ndarray   # (M, N, 8)
    labels: np.ndarray  # (N, 8)
    folds: np.ndarray   # (N,) the fold each study was held out in
    notes: list[str] = field(default_factory=list)


def member_oof(runs_dir: Path, run: str) -> pd.DataFrame:
    """One run's oof rows, all folds, with a ``fold`` column; a study in two folds keeps its first row."""
    frames = []
    for fold, path in select_folds(runs_dir, run, "all", needs="oof.csv").items():
        try:
            frame = to_wide(pd.read_csv(path / "oof.csv"))
        except (SubmissionError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise SubmissionError(f"{path / 'oof.csv'}: unusable ({err}); re-run that fold or leave the run out") from err
        frame["fold"] = fold
        frames.append(frame)
    oof = pd.concat(frames, ignore_index=True)
    return oof[~oof["StudyInstanceUID"].duplicated()].reset_index(drop=True)


def align_members(runs_dir: Path, runs: list[str], labels: pd.DataFrame) -> AlignedOof:
    """Line up the members' oof rows on the studies all of them predicted and ``labels`` knows."""
    if len(set(runs)) != len(runs):
        raise ValueError(f"a run is named twice in {runs}")
    labels = to_wide(labels).set_index("StudyInstanceUID")
    oofs = {run: member_oof(runs_dir, run).set_index("StudyInstanceUID") for run in runs}
    common = set(labels.index)
    for oof in oofs.values():
        common &= set(oof.index)
    notes = []
    for run, oof in oofs.items():
        dropped = len(oof) - len(common & set(oof.index))
        if dropped:
            notes.append(f"{run}: {dropped} of {len(oof)} oof studies left out (not predicted by every member or not labelled)")
    if not common:
        raise ValueError(f"the members {runs} share no labelled out-of-fold study; were they trained on the same data?")
    first = oofs[runs[0]]
    uids = sorted(common)
    folds = first.loc[uids, "fold"].to_numpy()
    for run in runs[1:]:
        if not np.array_equal(oofs[run].loc[uids, "fold"].to_numpy(), folds):
            notes.append(f"{run} held out some studies in a different fold than {runs[0]}; folds of {runs[0]} are used "
                         f"for the nested CV")
            break
    probs = np.stack([oofs[run].loc[uids, TARGETS].to_numpy(float) for run in runs])
    return AlignedOof(list(runs), uids, probs, labels.loc[uids, TARGETS].to_numpy(float), folds, notes)
