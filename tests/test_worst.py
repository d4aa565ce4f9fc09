"""The worst held-out studies of a run (src/reporting/worst.py): loss, the targets that cost it, the level flag."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from src import TARGETS
from src.metric import competition_score
from src.reporting.markdown import worst_section
from src.reporting.worst import cell_losses, level_counts, worst_studies


def constructed_oof():
    """Three studies: one right, one with a fractured C4 predicted 0.01 (the costly mistake), one with an
    intact C3 predicted 0.95 and patient_overall a little off."""
    labels = np.zeros((3, 8))
    probs = np.full((3, 8), 0.05)
    labels[1, [0, 4]] = 1            # study b: patient_overall and C4 fractured
    probs[1, 0], probs[1, 4] = 0.9, 0.01
    probs[2, 3] = 0.95               # study c: C3 intact, predicted broken
    probs[2, 0] = 0.3
    return ["a", "b", "c"], labels, probs


def test_losses_add_up_to_the_score():
    uids, labels, probs = constructed_oof()
    cells = cell_losses(labels, probs)
    assert cells.sum(axis=1).mean() == pytest.approx(competition_score(labels, probs))


def test_worst_first_with_the_targets_that_cost_them_and_their_flags():
    uids, labels, probs = constructed_oof()
    levels = pd.DataFrame({"StudyInstanceUID": ["b"] * 7 + ["c"] * 7, "level_flag": [True] * 7 + [False] * 7,
                           "level_confidence": [0.05] * 7 + [0.9] * 7})
    worst = worst_studies(uids, labels, probs, n=2, levels=levels)
    assert list(worst["StudyInstanceUID"]) == ["b", "c"]
    assert worst["loss"].iloc[0] == pytest.approx(competition_score(labels[1:2], probs[1:2]))
    assert worst["costly"].iloc[0].startswith("C4 (1, p=0.01)")
    assert worst["costly"].iloc[1].startswith("C3 (0, p=0.95)")  # 1 x -ln 0.05 beats 7 x -ln 0.7
    assert list(worst["level_flag"]) == [True, False] and worst["level_confidence"].iloc[0] == 0.05
    total = cell_losses(labels, probs).sum()
    assert worst["share"].iloc[0] == pytest.approx(worst["loss"].iloc[0] / total)


def test_without_a_table_the_flags_are_unknown_and_the_report_says_so():
    uids, labels, probs = constructed_oof()
    worst = worst_studies(uids, labels, probs, n=3)
    assert worst["level_flag"].isna().all()
    text = worst_section(SimpleNamespace(worst={"effnet_gru": worst}))
    assert "### effnet_gru" in text and "| b |" in text and text.count("\n| ") == 4  # header + 3 studies
    assert set(TARGETS) >= {c.split(" (")[0] for c in worst["costly"].iloc[0].split("; ")}


def test_the_tables_flags_are_counted_once_per_study():
    levels = pd.DataFrame({"StudyInstanceUID": ["a"] * 7 + ["b"] * 7 + ["c"] * 7,
                           "level_flag": [True] * 7 + [False] * 14, "level_repaired": [False] * 14 + [True] * 7})
    assert level_counts(levels) == "2 of 3 studies of the localisation table fail the level checks, 1 of them repaired"


def test_each_worst_study_links_the_picture_its_fold_drew_or_the_command_that_draws_it(tmp_path):
    from src.reporting.worst import with_pictures

    uids, labels, probs = constructed_oof()
    folds = []
    for fold, held_out in ((0, ["a", "b"]), (1, ["c"])):
        path = tmp_path / "effnet_gru" / f"fold{fold}"
        (path / "explanations").mkdir(parents=True)
        pd.DataFrame({"StudyInstanceUID": held_out}).to_csv(path / "oof.csv", index=False)
        folds.append(SimpleNamespace(fold=fold, path=path))
    (folds[0].path / "explanations" / "b.png").write_bytes(b"png")
    worst = with_pictures(worst_studies(uids, labels, probs, n=2), folds)
    assert list(worst["fold"]) == [0, 1]
    assert worst["picture"].iloc[0] == folds[0].path / "explanations" / "b.png" and worst["picture"].iloc[1] is None
    text = worst_section(SimpleNamespace(worst={"effnet_gru": worst}), tmp_path / "report.md")
    assert "[png](effnet_gru/fold0/explanations/b.png)" in text
    assert "`python -m src.explain run=effnet_gru study=c fold=1`" in text
