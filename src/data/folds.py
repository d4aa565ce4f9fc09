"""Patient-level cross-validation folds (the command is src/folds.py: ``python -m src.folds``).

Writes ``folds/<dataset>.csv`` (StudyInstanceUID, fold). A study is one patient, so splitting by study
keeps a patient out of its own validation fold. Folds are stratified on all eight labels together
(iterative multilabel stratification, Sechidis et al. 2011, from the iterative-stratification
package): the rare vertebra labels (C3 at 3.6%) would otherwise swing widely between folds.
Training calls :func:`ensure_folds`, which makes the file on first use and reuses it after, so every
experiment on a dataset sees the same split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..io_utils import atomic_write_csv
from ..metric import SubmissionError, read_table
from ..paths import InvalidUID, check_uid, folds_path


class FoldsError(ValueError):
    """train.csv or the folds file cannot be used; the message names the file and what is wrong."""


def read_labels(data_dir: Path) -> pd.DataFrame:
    """train.csv with its UIDs and labels checked and the two broken studies (docs/data.md#traps) kept
    (callers filter). Called by ensure_folds and the classify task; FoldsError names what is wrong."""
    path = Path(data_dir) / "train.csv"
    try:
        labels = read_table(path, dtype={"StudyInstanceUID": str})
    except SubmissionError as err:
        raise FoldsError(str(err)) from None
    missing = {"StudyInstanceUID", *TARGETS} - set(labels.columns)
    if missing:
        raise FoldsError(f"{path}: missing column(s) {sorted(missing)} (expected StudyInstanceUID, {', '.join(TARGETS)})")
    try:
        labels["StudyInstanceUID"] = [check_uid(u, str(path)) for u in labels["StudyInstanceUID"].fillna("")]
    except InvalidUID as err:
        raise FoldsError(str(err)) from None
    dup = labels["StudyInstanceUID"][labels["StudyInstanceUID"].duplicated()]
    if len(dup):
        raise FoldsError(f"{path}: duplicate studies {list(dup[:5])}")
    _check_binary_labels(labels, path)
    return labels


def _check_binary_labels(labels: pd.DataFrame, path: Path) -> None:
    """Every label is 0 or 1: the stratifier and the loss would otherwise fail far from the cause."""
    for target in TARGETS:
        bad = ~pd.to_numeric(labels[target], errors="coerce").isin([0, 1])  # NaN and text are not labels
        if bad.any():
            row = labels[bad].iloc[0]
            raise FoldsError(f"{path}: column {target} holds {row[target]!r} for study {row['StudyInstanceUID']}; "
                             f"labels are 0 or 1")


def make_folds(labels: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each study a fold in 0..n_folds-1, stratified on the eight labels together."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if len(labels) < n_folds:
        raise FoldsError(f"{len(labels)} studies cannot be split into n_folds={n_folds} folds")
    # Sort first so the split depends on the studies, not on the CSV's row order.
    labels = labels.sort_values("StudyInstanceUID").reset_index(drop=True)
    y = labels[TARGETS].to_numpy(int)
    fold = np.full(len(labels), -1)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), y)):
        fold[val_idx] = k
    return pd.DataFrame({"StudyInstanceUID": labels["StudyInstanceUID"], "fold": fold})


def read_folds(path: Path) -> pd.DataFrame:
    """An existing folds file; FoldsError names it, says what is wrong and how to start again."""
    fix = "delete it to make new folds, or point folds_dir elsewhere"
    try:
        folds = read_table(path, dtype={"StudyInstanceUID": str})
    except SubmissionError as err:
        raise FoldsError(f"{err}; {fix}") from None
    missing = {"StudyInstanceUID", "fold"} - set(folds.columns)
    if missing:
        raise FoldsError(f"{path}: missing column(s) {sorted(missing)}; {fix}")
    if not pd.api.types.is_integer_dtype(folds["fold"]) or (folds["fold"] < 0).any():
        raise FoldsError(f"{path}: column fold holds {folds['fold'].iloc[0]!r}..., not fold numbers 0, 1, ...; {fix}")
    return folds


def ensure_folds(cfg, data_dir: Path, announce=print) -> pd.DataFrame:
    """Read folds/<dataset>.csv, making it first if absent; refuse a file that disagrees with train.csv."""
    path = folds_path(cfg, data_dir)
    labels = read_labels(data_dir)
    if path.exists():
        folds = read_folds(path)
        known = set(folds["StudyInstanceUID"])
        absent = [u for u in labels["StudyInstanceUID"] if u not in known]
        if absent:
            raise FoldsError(f"{path} lacks {len(absent)} studies of {data_dir}/train.csv (e.g. {absent[0]}); "
                             f"delete it to make new folds, or point folds_dir elsewhere")
        if folds["fold"].max() + 1 != cfg["n_folds"]:
            raise FoldsError(f"{path} has {folds['fold'].max() + 1} folds but n_folds={cfg['n_folds']}; "
                             f"delete it or set n_folds to match")
        return folds
    try:
        folds = make_folds(labels, cfg["n_folds"], cfg["seed"])
    except FoldsError as err:
        raise FoldsError(f"{Path(data_dir) / 'train.csv'}: {err}") from None
    atomic_write_csv(path, folds)
    announce(f"[folds] wrote {path}: {len(folds)} studies in {cfg['n_folds']} folds (seed {cfg['seed']})")
    return folds


def describe(labels: pd.DataFrame, folds: pd.DataFrame) -> str:
    merged = labels.merge(folds, on="StudyInstanceUID")
    table = merged.groupby("fold")[TARGETS].mean()
    table.insert(0, "studies", merged.groupby("fold").size())
    overall = merged[TARGETS].mean().to_frame("all").T
    overall.insert(0, "studies", len(merged))
    return pd.concat([table, overall]).round(3).to_string()
