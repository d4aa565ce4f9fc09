"""Level checks on a localisation (src/localisation/levels.py): a miscounted spine is flagged and gets a low
confidence, a correct one does not, and the repair puts the levels back on a constructed case."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from src import VERTEBRAE
from src.localisation.extents import extents_for
from src.localisation.levels import (FLAG_BELOW, LevelRanges, check_levels, components, judge_extents, learn_ranges,
                                     mask_ranges, repair_levels, with_level_columns)
from src.localisation.table import COLUMNS, LEVEL_COLUMNS, read_table, study_rows

SPACING = 1.0
HEIGHTS = {"C1": 9, "C2": 30, "C3": 15, "C4": 15, "C5": 16, "C6": 17, "C7": 17, "T1": 18}


def toy_spine(rng: np.random.Generator, top: int = 6) -> np.ndarray:
    """A true label volume (slices, 8, 8): C1's ring on the left columns of its slices, C2 starting two
    slices lower (its dens beside the ring), then C3..C7 and T1 (label 8), a two-slice disc between each."""
    h = {v: n + int(rng.integers(-1, 2)) for v, n in HEIGHTS.items()}
    labels = np.zeros((top + sum(h.values()) + 20, 8, 8), dtype=np.uint8)
    labels[top:top + h["C1"], :, :4] = 1
    start = top + 2
    labels[start:start + h["C2"], :, 4:] = 2
    labels[top + h["C1"]:start + h["C2"], :, :4] = 2
    start += h["C2"] + 2
    for k, v in enumerate(["C3", "C4", "C5", "C6", "C7", "T1"], start=3):
        labels[start:start + h[v]] = k
        start += h[v] + 2
    return labels


def cervical(labels: np.ndarray) -> np.ndarray:
    """What a correct localiser predicts from a true volume: thoracic labels are background."""
    return np.where(labels <= 7, labels, 0).astype(np.uint8)


def relabel(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = labels.copy()
    for old, new in mapping.items():
        out[labels == old] = new
    return cervical(out)


def ranges_of(predicted: np.ndarray) -> dict[str, tuple[int, int]]:
    return {v: e.slice_range for v, e in extents_for(predicted, None, 1).items()}


@pytest.fixture(scope="module")
def learned() -> LevelRanges:
    rng = np.random.default_rng(0)
    truths, predictions = [], []
    for _ in range(12):
        truth = mask_ranges(toy_spine(rng))
        truths.append((truth, SPACING))
        # the localiser is a slice out at either end now and then
        predictions.append({v: (lo + int(rng.integers(-1, 1)), hi + int(rng.integers(0, 2))) for v, (lo, hi) in truth.items()})
    return learn_ranges(truths, predictions)


# the miscounts: C2 spans C3 and every later label is one low (its C7 on T1); C4 skipped; C4 and C5 swapped
MERGE = {3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7}
SKIP = {4: 5, 5: 6, 6: 7, 7: 0}
SWAP = {4: 5, 5: 4}


def test_a_correct_spine_passes(learned):
    rng = np.random.default_rng(1)
    for _ in range(5):
        check = check_levels(ranges_of(cervical(toy_spine(rng))), SPACING, learned)
        assert not check.flagged, check.reasons
        assert check.confidence > FLAG_BELOW


@pytest.mark.parametrize("mapping,kind", [(MERGE, "merge"), (SKIP, "skip"), (SWAP, "swap")])
def test_a_miscounted_spine_is_flagged_with_low_confidence(learned, mapping, kind):
    labels = toy_spine(np.random.default_rng(2))
    correct = check_levels(ranges_of(cervical(labels)), SPACING, learned)
    wrong = check_levels(ranges_of(relabel(labels, mapping)), SPACING, learned)
    assert wrong.flagged and wrong.reasons, kind
    assert wrong.confidence < FLAG_BELOW < correct.confidence
    if kind == "swap":
        assert wrong.confidence == 0.0 and wrong.reasons[0].startswith("order")


def test_components_are_the_vertebrae_between_discs():
    labels = toy_spine(np.random.default_rng(3))
    truth = mask_ranges(labels)
    pieces = components(cervical(labels))
    assert pieces[0] == (truth["C1"][0], truth["C2"][1])  # C1 and C2 have no disc between them
    assert pieces[1:] == [truth[v] for v in VERTEBRAE[2:]]


def test_repair_restores_the_levels_of_a_miscounted_spine(learned):
    labels = toy_spine(np.random.default_rng(4))
    truth = mask_ranges(labels)
    wrong = relabel(labels, MERGE)  # what the localiser said: C2 over C3, its C7 on T1
    extents = extents_for(wrong, None, 1)
    fixed, check = judge_extents(wrong, extents, SPACING, learned, repair=True)
    assert check.repaired and not check.flagged
    assert {v: e.slice_range for v, e in fixed.items() if v != "C1"} == {v: truth[v] for v in VERTEBRAE[1:]}
    # without repair the same study is only flagged, its extents untouched
    kept, flagged = judge_extents(wrong, extents, SPACING, learned, repair=False)
    assert flagged.flagged and not flagged.repaired and kept == extents


def test_repair_gives_up_without_enough_components(learned):
    labels = relabel(toy_spine(np.random.default_rng(5)), MERGE)
    labels[labels >= 5] = 0  # the lower neck missing: too few vertebrae to count
    assert repair_levels(labels, ranges_of(labels), SPACING, learned) is None


def test_level_columns_follow_the_table_columns_and_read_back(tmp_path, learned):
    labels = cervical(toy_spine(np.random.default_rng(6)))
    extents = extents_for(labels, None, 1)
    meta = {"slice_numbers": list(range(1, labels.shape[0] + 1)), "original_shape": [8, 8]}
    rows = study_rows("1.2.3", extents, meta, labels.shape)
    _, check = judge_extents(labels, extents, SPACING, learned)
    table = with_level_columns(rows, check)
    assert list(table.columns) == COLUMNS + LEVEL_COLUMNS
    pd.testing.assert_frame_equal(table[COLUMNS], rows)  # the columns before them are untouched
    table.to_csv(tmp_path / "t.csv", index=False)
    back = read_table(tmp_path / "t.csv")
    assert list(back.columns) == COLUMNS + LEVEL_COLUMNS
    assert back["level_flag"].dtype == bool and not back["level_flag"].any()
    assert math.isclose(back["level_confidence"].iloc[0], check.confidence)


def test_ranges_file_round_trip_and_a_bad_one_named(tmp_path, learned):
    path = learned.to_json(tmp_path / "levels.json")
    assert LevelRanges.from_json(path) == learned
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        LevelRanges.from_json(tmp_path / "bad.json")


def test_inference_names_a_flagged_study_in_its_summary(tmp_path, learned):
    from src.inference.fallbacks import FallbackLog
    from src.inference.localiser import _level_ranges
    from src.inference.pipeline import record_levels

    labels = cervical(toy_spine(np.random.default_rng(7)))
    meta = {"slice_numbers": list(range(1, labels.shape[0] + 1)), "original_shape": [8, 8]}
    log = FallbackLog()
    for uid, predicted in (("1.1", labels), ("1.2", relabel(toy_spine(np.random.default_rng(7)), SWAP))):
        extents = extents_for(predicted, None, 1)
        _, check = judge_extents(predicted, extents, SPACING, learned)
        record_levels(log, uid, with_level_columns(study_rows(uid, extents, meta, predicted.shape), check))
    assert log.uids("levels") == ["1.2"]
    assert "levels (kept): 1 studies" in log.summary(2, "prior") and "flagged, levels kept" in log.summary(2, "prior")
    # the run's ranges travel with it: none there, no checks (said once); present, read back
    notes = []
    assert _level_ranges(tmp_path, {"localiser": {}}, notes.append) == (None, False) and "level checks off" in notes[0]
    learned.to_json(tmp_path / "levels.json")
    assert _level_ranges(tmp_path, {"localiser": {"repair_levels": True}}, notes.append) == (learned, True)
