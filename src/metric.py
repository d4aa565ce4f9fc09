"""The competition metric and the tables it is computed on, as pure functions of arrays and frames.

Weighted multi-label log loss (docs/data.md#the-metric): per study, the eight binary log losses
(patient_overall, C1..C7) are weighted (vertebra: 1 negative / 2 positive; patient_overall:
7 negative / 14 positive), summed, divided by that study's sum of weights; the score is the mean over
studies. Used by src.score (the CLI), by every classifier's validation, and by the ensemble's weight fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import TARGETS

EPS = 1e-15
# Per target (in TARGETS order): weight when the label is 0, and when it is 1.
NEGATIVE_WEIGHTS = np.array([7.0] + [1.0] * 7)
POSITIVE_WEIGHTS = 2.0 * NEGATIVE_WEIGHTS


class SubmissionError(ValueError):
    """A submission or label table cannot be scored; the message names the offending rows."""


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Competition weight of every (study, target) cell, shape like ``labels`` (N, 8)."""
    labels = np.asarray(labels, dtype=float)
    return np.where(labels > 0.5, POSITIVE_WEIGHTS, NEGATIVE_WEIGHTS)


def binary_log_loss(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    probs = np.clip(np.asarray(probs, dtype=float), EPS, 1 - EPS)
    labels = np.asarray(labels, dtype=float)
    return -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))


def competition_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Weighted log loss of ``probs`` (N, 8) against ``labels`` (N, 8), columns in TARGETS order."""
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(TARGETS):
        raise SubmissionError(f"expected two (N, {len(TARGETS)}) arrays, got {labels.shape} and {probs.shape}")
    if len(labels) == 0:
        raise SubmissionError("no studies to score")
    return float(study_losses(labels, probs).mean())


def study_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each study's weighted log loss (N,), the terms :func:`competition_score` averages."""
    weights = sample_weights(labels)
    return (weights * binary_log_loss(labels, probs)).sum(axis=1) / weights.sum(axis=1)


def per_target_log_loss(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Unweighted mean log loss of each target, the figure W&B and the report plot per vertebra."""
    losses = binary_log_loss(labels, probs).mean(axis=0)
    return {t: float(v) for t, v in zip(TARGETS, losses)}


def per_target_auc(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ROC AUC per target; a target with a single class in ``labels`` is left out (not NaN)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    labels = np.asarray(labels)
    for j, target in enumerate(TARGETS):
        if len(np.unique(labels[:, j])) == 2:
            out[target] = float(roc_auc_score(labels[:, j], np.asarray(probs)[:, j]))
    return out


def prior_probs(train_labels: np.ndarray, n: int) -> np.ndarray:
    """The label prior as a constant: each target's rate in ``train_labels``, repeated for ``n`` studies."""
    rates = np.asarray(train_labels, dtype=float).mean(axis=0)
    return np.tile(rates, (n, 1))


def summarize(labels: np.ndarray, probs: np.ndarray, prior_labels: np.ndarray | None = None) -> dict:
    """Score, per-target log loss and AUC, and the prior's score on the same studies."""
    labels = np.asarray(labels, dtype=float)
    result = {
        "score": competition_score(labels, probs),
        "per_target_logloss": per_target_log_loss(labels, probs),
        "per_target_auc": per_target_auc(labels, probs),
        "n_studies": int(len(labels)),
    }
    reference = labels if prior_labels is None else prior_labels
    result["prior_score"] = competition_score(labels, prior_probs(reference, len(labels)))
    return result


# ---- tables: the Kaggle long format and the wide out-of-fold format ----

def read_table(path: Path | str, **read_csv_args) -> pd.DataFrame:
    """The CSV file ``path`` as a frame, or a SubmissionError naming the file and what is wrong with it
    (absent, a folder, empty, binary, not UTF-8, not a table) instead of pandas' traceback. Called by
    src.score for the truth and the submission, and by src.folds for train.csv and the folds file."""
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path}: no such file")
    if path.is_dir():
        raise SubmissionError(f"{path}: a folder, not a CSV file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as err:
        raise SubmissionError(f"{path}: cannot be read ({err.strerror})") from None
    if not head.strip():
        raise SubmissionError(f"{path}: empty file, not a CSV table with a header row")
    if b"\0" in head:  # no text file holds a NUL byte; pandas would report garbage columns or a decode error
        raise SubmissionError(f"{path}: binary file, not a CSV table")
    try:
        return pd.read_csv(path, **read_csv_args)
    except UnicodeDecodeError:
        raise SubmissionError(f"{path}: not UTF-8 text, not a CSV table") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise SubmissionError(f"{path}: not a CSV table ({reason})") from None


def long_to_wide(submission: pd.DataFrame) -> pd.DataFrame:
    """``row_id, fractured`` (row_id = <UID>_<target>) to one row per study with the eight target columns."""
    missing = {"row_id", "fractured"} - set(submission.columns)
    if missing:
        raise SubmissionError(f"long-format submission lacks column(s) {sorted(missing)}")
    check_rows(submission["row_id"].astype(str), submission["fractured"], "row_id")
    parts = submission["row_id"].astype(str).str.split("_", n=1, expand=True)  # UIDs hold no "_"
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise SubmissionError("row_id must look like <StudyInstanceUID>_<target>")
    bad = sorted(set(parts[1]) - set(TARGETS))
    if bad:
        raise SubmissionError(f"unknown prediction type(s) in row_id: {bad[:5]}")
    frame = pd.DataFrame({"StudyInstanceUID": parts[0], "target": parts[1], "fractured": submission["fractured"].astype(float)})
    wide = frame.pivot(index="StudyInstanceUID", columns="target", values="fractured")
    incomplete = wide[wide[TARGETS].isna().any(axis=1)] if set(TARGETS) <= set(wide.columns) else wide
    if len(incomplete) or not set(TARGETS) <= set(wide.columns):
        raise SubmissionError(f"studies lacking some of the 8 rows: {list(incomplete.index[:5])}")
    return wide[TARGETS].reset_index()


def wide_to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """One row per study and target, row_id = <UID>_<target>, in study order then TARGETS order."""
    rows = [(f"{uid}_{t}", float(p)) for uid, probs in zip(wide["StudyInstanceUID"], wide[TARGETS].to_numpy())
            for t, p in zip(TARGETS, probs)]
    return pd.DataFrame(rows, columns=["row_id", "fractured"])


def check_rows(keys: pd.Series, values: pd.Series, key_name: str) -> None:
    """Refuse duplicate keys, NaN and values outside [0, 1], naming the first offending rows."""
    dup = keys[keys.duplicated()]
    if len(dup):
        raise SubmissionError(f"duplicate {key_name}(s): {list(dup.unique()[:5])}")
    vals = pd.to_numeric(values, errors="coerce")
    nan = keys[vals.isna()]
    if len(nan):
        raise SubmissionError(f"missing or non-numeric prediction for {key_name}(s): {list(nan[:5])}")
    out = keys[(vals < 0) | (vals > 1)]
    if len(out):
        raise SubmissionError(f"prediction outside [0, 1] for {key_name}(s): {list(out[:5])}")


def to_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Accept either format and return the wide one (StudyInstanceUID + TARGETS), validated."""
    if "row_id" in frame.columns:
        return long_to_wide(frame)
    missing = {"StudyInstanceUID", *TARGETS} - set(frame.columns)
    if missing:
        raise SubmissionError(f"expected row_id/fractured or StudyInstanceUID + {TARGETS}; missing {sorted(missing)}")
    frame = frame[["StudyInstanceUID", *TARGETS]].copy()
    frame["StudyInstanceUID"] = frame["StudyInstanceUID"].astype(str)
    values = frame[TARGETS].apply(pd.to_numeric, errors="coerce")
    # The worst cell of each row: NaN if any is NaN, else whichever lies furthest outside [0, 1].
    worst = values.min(axis=1).where(values.max(axis=1) <= 1, values.max(axis=1)).where(values.notna().all(axis=1))
    check_rows(frame["StudyInstanceUID"], worst, "StudyInstanceUID")
    frame[TARGETS] = values
    return frame.reset_index(drop=True)


def align(truth: pd.DataFrame, prediction: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels and predictions for the studies of ``truth``, in its order; every study must be predicted."""
    truth = to_wide(truth)
    prediction = to_wide(prediction).set_index("StudyInstanceUID")
    absent = [uid for uid in truth["StudyInstanceUID"] if uid not in prediction.index]
    if absent:
        raise SubmissionError(f"{len(absent)} studies of the truth have no prediction, e.g. {absent[:5]}")
    uids = list(truth["StudyInstanceUID"])
    return truth[TARGETS].to_numpy(float), prediction.loc[uids, TARGETS].to_numpy(float), uids
