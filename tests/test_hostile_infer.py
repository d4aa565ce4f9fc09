"""python infer.py over one case of every kind of bad input at once (tests/hostile_inputs.py): one bad
piece costs only itself. The submission has every row_id of test.csv in its order with values in
[0, 1]; each bad input is named exactly once in the end-of-run summary, under its kind; studies the
reader should handle are predicted, not given the prior."""
from __future__ import annotations

import io
import shutil
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pydicom
import pytest

from src import TARGETS
from src.inference.prior import label_prior

from hostile_inputs import (CASES, DISAGREEING_ROW, GOOD, GOOD_A, GOOD_B, MEMBERS, ONE_CORRUPT, READER_CASES, ROWS,
                            build_hostile_inputs)
from infer_helpers import run_infer

COLUMN = {t: i for i, t in enumerate(TARGETS)}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One run of infer.py's main path over the whole hostile fixture: its submission, log and summary."""
    inputs = build_hostile_inputs(tmp_path_factory.mktemp("hostile"))
    out = inputs["data_dir"].parent / "submission.csv"
    printed = io.StringIO()
    with redirect_stdout(printed):
        result = run_infer(inputs["data_dir"], inputs["runs_dir"], out, MEMBERS)
    submission = pd.read_csv(out, dtype={"row_id": str}, keep_default_na=False).set_index("row_id")["fractured"]
    return dict(inputs, result=result, log=result["log"], printed=printed.getvalue(), submission=submission,
                prior=label_prior(inputs["data_dir"])[0])


def rows_of(uid: str) -> list[str]:
    return [f"{uid}_{t}" for t in TARGETS]


def events_naming(log, subject: str) -> list[str]:
    """The kinds of every event in ``log`` about ``subject``, one entry per event."""
    return [kind for kind, items in log.events.items() for who, _ in items if who == subject]


def test_every_row_id_of_test_csv_is_written_once_in_its_order(hostile):
    expected = list(dict.fromkeys(row_id for row_id, _, _ in ROWS if row_id))  # a repeat once; no row_id, no row
    submission = hostile["submission"]
    assert list(submission.index) == expected
    assert submission.notna().all() and submission.between(0, 1).all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_bad_input_is_named_once_under_its_kind(hostile, case):
    assert events_naming(hostile["log"], case.subject) == [case.kind]
    summary_lines = [line for line in hostile["result"]["summary"].splitlines()
                     if line.strip().startswith(f"{case.subject}:")]
    assert len(summary_lines) == 1, hostile["result"]["summary"]


@pytest.mark.parametrize("case", [c for c in CASES if c.prior], ids=lambda c: c.name)
def test_what_cannot_be_predicted_gets_the_prior(hostile, case):
    submission, prior = hostile["submission"], hostile["prior"]
    if case.subject in submission.index:  # a row test.csv cannot explain: the mean label rate
        np.testing.assert_allclose(submission[case.subject], prior.mean())
    else:                                 # a study: its eight rows
        np.testing.assert_allclose(submission[rows_of(case.subject)].to_numpy(), prior)


def test_good_studies_and_a_corrupt_slice_are_predicted_by_the_remaining_models(hostile):
    submission, prior, log = hostile["submission"], hostile["prior"], hostile["log"]
    for uid in GOOD + [ONE_CORRUPT]:
        assert not np.allclose(submission[rows_of(uid)].to_numpy(), prior)
    assert log.count("member") == 0 and log.count("all_members") == 0  # the left-out pieces never reach a study
    assert not any(events_naming(log, uid) for uid in GOOD)
    assert "best.pt" in dict(log.events["left_out"])["broken"]  # the file, and why
    assert "cannot load" in dict(log.events["left_out"])["broken"]


def test_a_row_whose_columns_disagree_is_predicted_as_its_row_id_says(hostile):
    predictions = hostile["result"]["predictions"]
    value = hostile["submission"][DISAGREEING_ROW]         # row_id says GOOD_B C3; its columns say GOOD_A C5
    assert value == pytest.approx(predictions[GOOD_B][COLUMN["C3"]])
    assert value != pytest.approx(predictions[GOOD_A][COLUMN["C5"]])


@pytest.mark.parametrize("uid", list(READER_CASES.values()), ids=list(READER_CASES))
def test_studies_the_reader_should_handle_are_predicted(hostile, uid):
    """After the reader fix these read as usual; a skipped scout may be noted (``slices``), nothing more."""
    log = hostile["log"]
    assert set(events_naming(log, uid)) <= {"slices"}, log.summary(0, "")
    assert not np.allclose(hostile["submission"][rows_of(uid)].to_numpy(), hostile["prior"])


def test_the_reader_cases_hold_a_good_study_in_another_layout(hostile, tmp_path):
    """The reader cases are good studies in an unusual layout, not broken fixtures: put back in the usual
    layout (<study>/<n>.dcm, one size), each reads as a whole 14-slice study."""
    from src.data.dicom_reader import read_study

    images = hostile["data_dir"] / "test_images"
    for uid in READER_CASES.values():
        files = [p for p in (images / uid).rglob("*") if p.is_file()]
        usual = tmp_path / uid
        usual.mkdir()
        for path in files:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if header.Rows == 32:  # the scout is 16 x 16
                shutil.copy(path, usual / f"{header.InstanceNumber}.dcm")
        assert read_study(usual).n_slices == 14
