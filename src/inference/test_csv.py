"""test.csv in, submission.csv out: the two ends of inference, and the checks between them.

Called by the inference pipeline (src/inference/pipeline.py). The submission has exactly the
``row_id``s of test.csv in its order (each once; a row without a row_id cannot be scored and is not
written), column ``fractured`` in [0, 1], no NaN; :func:`check_submission` refuses anything else
before a byte is written, and :func:`write_submission` writes atomically so a crash never leaves a
half-written submission.csv that looks finished. A row test.csv cannot explain never stops the run:
:func:`read_test_rows` names it for the summary and it gets a fallback value.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..io_utils import atomic_write_csv
from ..metric import SubmissionError, check_rows
from .fallbacks import one_line


ROW_ID_FORM = "<StudyInstanceUID>_<prediction_type>"


def read_test_rows(path: Path) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """``(rows, problems)`` from test.csv; only a file that is not a CSV with a row_id column is an error.

    Called by the inference pipeline. ``rows`` has ``row_id, StudyInstanceUID, prediction_type``, one
    per distinct row_id in test.csv's order. row_id is what Kaggle scores, so the study and type come
    from it; the columns are only checked against it. ``problems`` holds ``(kind, subject, detail)``
    for the FallbackLog (src/inference/fallbacks.py), one per row test.csv cannot fully explain:

    - ``bad_row``: row_id is not <uid>_<type> with a known type. The row stays, with an empty study
      and type (it gets the mean label rate); a row with no row_id at all is dropped, since Kaggle
      cannot score it and an unnamed row would make the submission invalid.
    - ``row_mismatch``: the StudyInstanceUID or prediction_type column disagrees with row_id (or is empty).
    - ``repeated_row``: a row_id seen before; it is written once (a submission may not repeat a row_id).
    """
    path = Path(path)
    frame = _read_csv(path)
    if "row_id" not in frame.columns:
        raise SubmissionError(f"{path}: no row_id column (its columns: {list(frame.columns)[:5]}); expected "
                              f"row_id, StudyInstanceUID, prediction_type as in the competition's test.csv")
    rows, problems, first_line, repeats = [], [], {}, defaultdict(list)
    for index, record in enumerate(frame.to_dict("records")):
        line = index + 2  # test.csv's own line number: the header is line 1, blank lines are kept
        row_id = _cell(record, "row_id")
        if not any(_cell(record, column) for column in record):
            continue  # a blank line: nothing to lose
        if not row_id:
            problems.append(("bad_row", f"line {line}", f"no row_id (its columns say {_cell(record, 'StudyInstanceUID')!r}, "
                                                        f"{_cell(record, 'prediction_type')!r}); not written, since "
                                                        f"Kaggle scores rows by row_id"))
        elif row_id in first_line:
            repeats[row_id].append(line)
        else:
            first_line[row_id] = line
            rows.append(_explain_row(row_id, record, problems))
    for row_id, lines in repeats.items():
        problems.append(("repeated_row", row_id, f"on lines {first_line[row_id]}, {', '.join(map(str, lines))}; "
                                                 f"written once, as line {first_line[row_id]} says"))
    return pd.DataFrame(rows, columns=["row_id", "StudyInstanceUID", "prediction_type"]), problems


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell of test.csv as a string ("" when empty); SubmissionError, one line, when it cannot be read."""
    if not path.is_file():
        raise SubmissionError(f"{path}: no test.csv file; point data_dir at the competition folder")
    try:
        # utf-8-sig: a byte-order mark would otherwise become part of the first column's name
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise SubmissionError(f"{path}: empty; expected the header row_id,StudyInstanceUID,prediction_type and "
                              f"one row per study and prediction type") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError) as err:
        raise SubmissionError(f"{path}: not a readable CSV file ({one_line(err, 200)}); expected the competition's "
                              f"test.csv (row_id,StudyInstanceUID,prediction_type)") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _cell(record: dict, column: str, default: str = "") -> str:
    """A cell as stripped text; a missing column gives ``default``, a missing cell (short line) ""."""
    if column not in record:
        return default
    value = record[column]
    return "" if value is None or value != value else str(value).strip()  # value != value: NaN


def _explain_row(row_id: str, record: dict, problems: list) -> tuple[str, str, str]:
    """``(row_id, study, type)`` from row_id, noting in ``problems`` what does not fit; called per distinct row."""
    uid, _, kind = row_id.partition("_")  # UIDs hold no "_"; patient_overall does
    if not uid or not kind:
        problems.append(("bad_row", row_id, f"row_id is not {ROW_ID_FORM}"))
        return row_id, "", ""
    if kind not in TARGETS:
        problems.append(("bad_row", row_id, f"prediction_type {kind!r} is not one of {', '.join(TARGETS)}"))
        return row_id, "", ""
    said = (_cell(record, "StudyInstanceUID", uid), _cell(record, "prediction_type", kind))
    if said != (uid, kind):
        problems.append(("row_mismatch", row_id, f"its columns say {said[0] or '(empty)'} {said[1] or '(empty)'}; "
                                                 f"predicted as row_id says"))
    return row_id, uid, kind


def read_test_csv(path: Path) -> pd.DataFrame:
    """test.csv's rows as :func:`read_test_rows` gives them, its problems as one warning (for callers
    without a FallbackLog, e.g. benchmarks/inference.py)."""
    test, problems = read_test_rows(path)
    if problems:
        kinds = sorted({kind for kind, _, _ in problems})
        warnings.warn(f"{path}: {len(problems)} row(s) test.csv cannot fully explain ({', '.join(kinds)}; e.g. "
                      f"{problems[0][1]}: {problems[0][2]})", stacklevel=2)
    return test


def study_order(test: pd.DataFrame) -> list[str]:
    """The studies of test.csv, each once, in the order they first appear (rows naming none left out)."""
    return [uid for uid in dict.fromkeys(test["StudyInstanceUID"]) if uid]


def build_submission(test: pd.DataFrame, predictions: dict[str, np.ndarray],
                     prior: np.ndarray | None = None) -> pd.DataFrame:
    """``row_id, fractured`` for every row of ``test``; ``predictions`` maps each study to its 8 probabilities.

    A row that names no study or type (a ``bad_row``) gets the mean of ``prior``'s rates: with its
    type unknown, the rate of a positive label over all targets is the best constant left. Without
    ``prior`` such a row is NaN, which check_submission refuses.
    """
    column = {t: i for i, t in enumerate(TARGETS)}
    unexplained = float(np.mean(prior)) if prior is not None else float("nan")
    values = [float(predictions[uid][column[kind]]) if uid and kind else unexplained
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
    """Check, then write atomically; an unwritable ``output`` is a SubmissionError naming it."""
    check_submission(submission, test)
    try:
        atomic_write_csv(Path(path), submission)
    except OSError as err:
        raise SubmissionError(f"{path}: cannot write the submission ({one_line(err, 200)}); choose another output=") from None
    return Path(path)
