"""The CV of an experiment's concatenated out-of-fold predictions, scored with src.metric.

Called by src/report.py. The mean of fold scores weights every fold equally; the score over all oof
rows weights every study equally and is what an ensemble fit on those rows will be compared with,
so the report shows both. Labels come from ``truth=`` when given, else from the run's own config
(``data_dir``, or the demo folder when that has no train.csv, as the training entry points do).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..metric import SubmissionError, competition_score, to_wide
from ..runs import run_labels
from .runs import FoldRun


@dataclass
class OofCV:
    score: float | None
    n_studies: int
    note: str = ""  # why the score is missing or partial


def labels_path_for(run: FoldRun) -> tuple[Path | None, str]:
    """train.csv of the data the run was trained on if it can still be found from here, else why not."""
    try:
        return run_labels(run.config), ""
    except (KeyError, TypeError) as err:
        return None, f"{run.experiment}/fold{run.fold}/config.yaml lacks {err}"
    except FileNotFoundError:
        return None, f"no train.csv in {run.config['data_dir']} (nor in the demo folder)"


def concatenated_oof(runs: list[FoldRun]) -> tuple[pd.DataFrame | None, list[str]]:
    """All folds' oof.csv rows in one wide frame; notes name the folds that had none or a bad one."""
    frames, notes = [], []
    for run in runs:
        if not run.oof_path.exists():
            notes.append(f"fold{run.fold} has no oof.csv")
            continue
        try:
            frames.append(to_wide(pd.read_csv(run.oof_path)))
        except (SubmissionError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            notes.append(f"fold{run.fold} oof.csv unusable ({err})")
    if not frames:
        return None, notes
    return pd.concat(frames, ignore_index=True), notes


def labelled_oof(runs: list[FoldRun], truth_path: Path | None = None,
                 _labels_cache: dict[Path, pd.DataFrame] | None = None) -> tuple[pd.DataFrame | None, np.ndarray | None, list[str]]:
    """The concatenated oof rows of ``runs`` (one experiment) that have labels, those labels (N, 8) in
    TARGETS order, and notes on what was left out; (None, None, notes) when nothing can be scored."""
    oof, notes = concatenated_oof(runs)
    if oof is None:
        return None, None, notes or ["no oof.csv"]
    duplicated = oof["StudyInstanceUID"].duplicated()
    if duplicated.any():
        # Two folds predicted the same study: the folds were not a partition (different fold files?).
        notes.append(f"{int(duplicated.sum())} studies appear in more than one fold; kept the first")
        oof = oof[~duplicated]
    path, why = (Path(truth_path), "") if truth_path else labels_path_for(runs[0])
    if path is None or not path.exists():
        notes.append(f"labels not found ({why or f'no {path}'}); pass truth=<train.csv>")
        return oof, None, notes
    cache = {} if _labels_cache is None else _labels_cache
    if path not in cache:
        cache[path] = to_wide(pd.read_csv(path)).set_index("StudyInstanceUID")
    labels = cache[path]
    known = oof["StudyInstanceUID"].isin(labels.index)
    if not known.all():
        notes.append(f"{int((~known).sum())} oof studies are not in {path.name}; left out")
        oof = oof[known]
    oof = oof.reset_index(drop=True)
    return oof, labels.loc[oof["StudyInstanceUID"], TARGETS].to_numpy(float), notes


def oof_cv(runs: list[FoldRun], truth_path: Path | None = None,
           _labels_cache: dict[Path, pd.DataFrame] | None = None) -> OofCV:
    """Score the concatenated oof rows of ``runs`` (one experiment) against their labels."""
    oof, truth, notes = labelled_oof(runs, truth_path, _labels_cache)
    if oof is None or truth is None or oof.empty:
        return OofCV(None, 0 if oof is None or truth is not None else len(oof), "; ".join(notes))
    score = competition_score(truth, oof[TARGETS].to_numpy(float))
    return OofCV(score, len(oof), "; ".join(notes))
