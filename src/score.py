"""``python -m src.score truth=LABELS submission=PREDICTIONS``: the competition metric from two CSV files.

Both files may be in the Kaggle long format (row_id, fractured) or the wide format
(StudyInstanceUID, patient_overall, C1..C7): train.csv, the demo's test_labels.csv, an oof.csv or a
submission.csv. Scores the studies of ``truth``; prints per-target log loss and AUC and the label
prior's score on the same studies for reference. The last line is ``score=<float>``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import TARGETS
from .config import parse_overrides, run_main
from .metric import SubmissionError, align, summarize

DEFAULTS = {"truth": "", "submission": "submission.csv"}


def score_files(truth_path: Path, submission_path: Path) -> dict:
    for path in (truth_path, submission_path):
        if not Path(path).exists():
            raise SubmissionError(f"{path}: no such file")
    labels, probs, _ = align(pd.read_csv(truth_path), pd.read_csv(submission_path))
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
        raise SystemExit("usage: python -m src.score truth=<labels csv> submission=<predictions csv>")
    try:
        result = score_files(Path(args["truth"]), Path(args["submission"]))
    except SubmissionError as err:
        raise SystemExit(f"cannot score {args['submission']} against {args['truth']}: {err}") from None
    print(format_summary(result))


if __name__ == "__main__":
    run_main(main)
