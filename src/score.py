"""``python -m src.score truth=LABELS submission=PREDICTIONS``: the competition metric from two CSV files.

Both files may be in the Kaggle long format (row_id, fractured) or the wide format
(StudyInstanceUID, patient_overall, C1..C7): train.csv, the demo's test_labels.csv, an oof.csv or a
submission.csv. Scores the studies of ``truth``; prints per-target log loss and AUC and the label
prior's score on the same studies for reference. The last line is ``score=<float>``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from . import TARGETS
from .config import ConfigError, parse_overrides, run_main
from .metric import SubmissionError, align, read_table, summarize, to_wide

DEFAULTS = {"truth": "", "submission": "submission.csv"}


def read_wide(path: Path) -> pd.DataFrame:
    """One of the two files in the wide format; whatever is wrong with it is said with its name."""
    frame = read_table(path)
    try:
        return to_wide(frame)
    except SubmissionError as err:
        raise SubmissionError(f"{path}: {err}") from None


def score_files(truth_path: Path, submission_path: Path) -> dict:
    """The score of ``submission_path`` on the studies of ``truth_path``; SubmissionError names the file at fault."""
    truth, submission = read_wide(Path(truth_path)), read_wide(Path(submission_path))
    if truth.empty:
        raise SubmissionError(f"{truth_path}: no studies (a header and no rows)")
    try:
        labels, probs, _ = align(truth, submission)
    except SubmissionError as err:
        raise SubmissionError(f"cannot score {submission_path} against {truth_path}: {err}") from None
    return summarize(labels, probs)


def format_summary(result: dict) -> str:
    lines = [f"{'target':<16}{'log loss':>10}{'AUC':>8}"]
    for target in TARGETS:
        auc = result["per_target_auc"].get(target)
        auc_text = f"{auc:8.3f}" if auc is not None else f"{'-':>8}"
        lines.append(f"{target:<16}{result['per_target_logloss'][target]:10.4f}{auc_text}")
    lines.append(f"studies: {result['n_studies']}")
    lines.append(f"label prior (constant rates of these studies): {result['prior_score']:.4f}")
    lines.append(f"score={result['score']:.6f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_overrides(argv, DEFAULTS)
    if not args["truth"]:
        raise ConfigError("truth= names no file; usage: python -m src.score truth=<labels csv> submission=<predictions csv>")
    print(format_summary(score_files(Path(args["truth"]), Path(args["submission"]))))


def cli(argv: list[str] | None = None) -> None:
    """The command line: a file that cannot be scored is one line on stderr and exit code 2 (src.config.run_main)."""
    run_main(main, sys.argv[1:] if argv is None else argv, input_errors=(SubmissionError,))


if __name__ == "__main__":
    cli()
