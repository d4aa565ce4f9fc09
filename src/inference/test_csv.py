"""test.csv in, submission.csv out: the two ends of inference, and the checks between them.

Called by the inference pipeline (src/inference/pipeline.py). The submission has exactly the
``row_id``s of test.csv in its order, column ``fractured`` in [0, 1], no NaN; :func:`check_submission`
refuses anything else before a byte is written, and :func:`write_submission` writes atomically so a
crash never leaves a half-written submission.csv that looks finished.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..io_utils import atomic_write_csv
from ..metric import SubmissionError, check_rows


def read_test_csv(path: Path) -> pd.DataFrame:
    """test.csv as ``row_id, StudyInstanceUID, prediction_type`` (the last two derived from row_id if absent).

    A prediction type outside patient_overall/C1..C7 cannot be predicted: that is an error naming the row.
    Repeated row_ids are kept once, with a warning (a submission may not repeat a row_id).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no test.csv; point data_dir at the competition folder")
    test = pd.read_csv(path, dtype=str)
    if "row_id" not in test.columns:
        raise SubmissionError(f"{path}: no row_id column (expected row_id, StudyInstanceUID, prediction_type)")
    test["row_id"] = test["row_id"].str.strip()
    parts = test["row_id"].str.split("_", n=1, expand=True)  # UIDs hold no "_"; patient_overall does
    if parts.shape[1] != 2:
        raise SubmissionError(f"{path}: row_id must look like <StudyInstanceUID>_<prediction_type>")
    if "StudyInstanceUID" not in test.columns:
        test["StudyInstanceUID"] = parts[0]
    if "prediction_type" not in test.columns:
        test["prediction_type"] = parts[1]
    test["StudyInstanceUID"] = test["StudyInstanceUID"].str.strip()
    test["prediction_type"] = test["prediction_type"].str.strip()
    unknown = test.loc[~test["prediction_type"].isin(TARGETS), "row_id"]
    if len(unknown):
        raise SubmissionError(f"{path}: prediction_type must be one of {TARGETS}; rows {list(unknown[:5])}")
    repeated = test["row_id"].duplicated()
    if repeated.any():
        warnings.warn(f"{path}: {int(repeated.sum())} repeated row_id(s) (e.g. {test.loc[repeated, 'row_id'].iloc[0]}); "
                      f"each is predicted once", stacklevel=2)
        test = test[~repeated]
    return test[["row_id", "StudyInstanceUID", "prediction_type"]].reset_index(drop=True)


def study_order(test: pd.DataFrame) -> list[str]:
    """The studies of test.csv, each once, in the order they first appear."""
    return list(dict.fromkeys(test["StudyInstanceUID"]))


def build_submission(test: pd.DataFrame, predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """``row_id, fractured`` for every row of ``test``; ``predictions`` maps each study to its 8 probabilities."""
    column = {t: i for i, t in enumerate(TARGETS)}
    values = [float(predictions[uid][column[kind]])
              for uid, kind in zip(test["StudyInstanceUID"], test["prediction_type"])]
    return pd.DataFrame({"row_id": test["row_id"].to_numpy(), "fractured": values})


def check_submission(submission: pd.DataFrame, test: pd.DataFrame) -> None:
    """Raise SubmissionError unless ``submission`` is exactly test.csv's rows with valid probabilities."""
    if list(submission.columns) != ["row_id", "fractured"]:
        raise SubmissionError(f"submission columns are {list(submission.columns)}, expected ['row_id', 'fractured']")
    if len(submission) != len(test) or not np.array_equal(submission["row_id"].to_numpy(), test["row_id"].to_numpy()):
        expected, got = set(test["row_id"]), set(submission["row_id"])
        raise SubmissionError(f"submission rows differ from test.csv: {len(expected - got)} missing "
                              f"(e.g. {sorted(expected - got)[:3]}), {len(got - expected)} extra, or in another order")
    check_rows(submission["row_id"], submission["fractured"], "row_id")


def write_submission(submission: pd.DataFrame, test: pd.DataFrame, path: Path) -> Path:
    check_submission(submission, test)
    atomic_write_csv(Path(path), submission)
    return Path(path)
