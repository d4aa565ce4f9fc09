"""A Kaggle-shaped test folder and runs folder holding one case of every kind of bad input inference meets.

Used by tests/test_hostile_infer.py. Studies are tiny (14 slices of 32 x 32) and written with the demo
generator's DICOM writer (src/synth/dicom_writer.py) through tests/infer_helpers.py, then mutated; the
runs are untrained tiny 3D CNNs in the training loop's format. Building it takes a few seconds.

Each case is a :class:`Case`: what it is, who the summary should name (a study UID, a row_id, a line,
a member), the fallback kind it should be named under, and whether its rows must be the prior.
``READER_CASES`` are studies the DICOM reader cannot read today but should (branch i16-data): they
must be predicted as usual, not fall back.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from src import TARGETS
from src.synth.dicom_writer import derived_uid, write_series

from infer_helpers import neck_volume, save_untrained_run, write_study

GOOD_A, GOOD_B = "1.2.826.9.11", "1.2.826.9.12"
ABSENT, UNNAMED, ONE_CORRUPT, ALL_GARBAGE = "1.2.826.9.13", "1.2.826.9.14", "1.2.826.9.15", "1.2.826.9.16"
BAD_UID = "../../etc"                              # a "study" that must never become a path
NO_EXTENSION, NESTED, SCOUT = "1.2.826.9.21", "1.2.826.9.22", "1.2.826.9.23"
UNKNOWN_TYPE_ROW = f"{GOOD_A}_C8"                  # prediction_type C8 does not exist
NOT_A_ROW_ID = "not-a-row-id"                      # not <StudyInstanceUID>_<prediction_type>
DISAGREEING_ROW = f"{GOOD_B}_C3"                   # its columns say GOOD_A, C5
REPEATED_ROW = f"{GOOD_A}_C1"                      # appears twice
MEMBERS = "members=[cnn3d, broken]"                # cnn3d: fold 0 good, fold 1 truncated; broken: truncated


@dataclass(frozen=True)
class Case:
    name: str
    subject: str        # what the summary names: a study UID, a row_id, "line N", a member or "member fold k"
    kind: str           # the FallbackLog kind it is named under
    prior: bool = False  # its study's rows (or its own row) are the label prior


def study_rows(uid: str) -> list[tuple[str, str, str]]:
    return [(f"{uid}_{t}", uid, t) for t in TARGETS]


def hostile_rows() -> list[tuple[str, str, str]]:
    """test.csv's rows (row_id, StudyInstanceUID, prediction_type) with every row-level hostile case."""
    rows = []
    for uid in (GOOD_A, GOOD_B, ABSENT, ONE_CORRUPT, ALL_GARBAGE, BAD_UID, NO_EXTENSION, NESTED, SCOUT):
        rows += study_rows(uid)
    rows[rows.index((DISAGREEING_ROW, GOOD_B, "C3"))] = (DISAGREEING_ROW, GOOD_A, "C5")
    return rows + [(UNKNOWN_TYPE_ROW, GOOD_A, "C8"), (NOT_A_ROW_ID, GOOD_A, "C1"), ("", GOOD_B, "C2"),
                   (REPEATED_ROW, GOOD_A, "C1")]


ROWS = hostile_rows()
EMPTY_ROW_LINE = 2 + ROWS.index(("", GOOD_B, "C2"))  # its line in test.csv; line 1 is the header


def write_hostile_images(images: Path, rng) -> None:
    """test_images: two good studies, then one mutated study per study-level case."""
    for uid in (GOOD_A, GOOD_B, UNNAMED, ONE_CORRUPT, NO_EXTENSION, NESTED, SCOUT):
        write_study(images, uid, neck_volume(rng))
    corrupt = images / ONE_CORRUPT / "5.dcm"
    corrupt.write_bytes(corrupt.read_bytes()[:600])
    (images / ALL_GARBAGE).mkdir()
    for i in range(1, 15):
        (images / ALL_GARBAGE / f"{i}.dcm").write_bytes(b"not a dicom file" * 10)
    for path in sorted((images / NO_EXTENSION).glob("*.dcm")):  # IM0001, IM0002, ...
        path.rename(path.with_name(f"IM{int(path.stem):04d}"))
    series = images / NESTED / derived_uid(NESTED, "series")  # <study>/<series>/*.dcm
    series.mkdir()
    for path in sorted((images / NESTED).glob("*.dcm")):
        path.rename(series / path.name)
    write_scout(images / SCOUT, SCOUT)


def write_scout(study_dir: Path, uid: str) -> None:
    """One extra 16 x 16 localiser image in its own series beside the study's 32 x 32 slices."""
    scout = np.full((1, 16, 16), -1000, dtype=np.int16)
    scout[0, 4:12, 6:10] = 700
    path, = write_series(study_dir, scout, study_uid=uid, slice_numbers=[99], z_positions=[-6.5],
                         pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = derived_uid(uid, "scout")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALISER"]
    ds.save_as(path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write_hostile_runs(runs: Path, data_dir: Path) -> None:
    """cnn3d with a good fold 0 and a truncated fold 1; "broken", a run whose only best.pt is truncated."""
    save_untrained_run(runs, "cnn3d", data_dir)
    truncate(save_untrained_run(runs, "cnn3d", data_dir, fold=1, seed=1) / "best.pt")
    shutil.copytree(runs / "cnn3d" / "fold0", runs / "broken" / "fold0")
    truncate(runs / "broken" / "fold0" / "best.pt")


def build_hostile_inputs(root: Path, seed: int = 0) -> dict:
    """Write ``root/kaggle`` (test.csv, test_images) and ``root/runs``; return their paths."""
    data_dir, runs = root / "kaggle", root / "runs"
    data_dir.mkdir(parents=True)
    write_hostile_images(data_dir / "test_images", np.random.default_rng(seed))
    pd.DataFrame(ROWS, columns=["row_id", "StudyInstanceUID", "prediction_type"]).to_csv(data_dir / "test.csv",
                                                                                         index=False)
    write_hostile_runs(runs, data_dir)
    return {"data_dir": data_dir, "runs_dir": runs}


CASES = [
    Case("study named in test.csv, absent from test_images", ABSENT, "absent", prior=True),
    Case("folder in test_images that test.csv does not name", UNNAMED, "unnamed_folder"),
    Case("study with one truncated slice", ONE_CORRUPT, "slices"),
    Case("study whose every file is garbage", ALL_GARBAGE, "unreadable", prior=True),
    Case("invalid UID in test.csv", BAD_UID, "bad_uid", prior=True),
    Case("unknown prediction_type", UNKNOWN_TYPE_ROW, "bad_row", prior=True),
    Case("row_id that is not <uid>_<type>", NOT_A_ROW_ID, "bad_row", prior=True),
    Case("empty row_id", f"line {EMPTY_ROW_LINE}", "bad_row"),
    Case("row_id disagreeing with its columns", DISAGREEING_ROW, "row_mismatch"),
    Case("repeated row_id", REPEATED_ROW, "repeated_row"),
    Case("member whose only best.pt is truncated", "broken", "left_out"),
    Case("one truncated fold of a member", "cnn3d fold 1", "left_out"),
]
READER_CASES = {
    "files without a .dcm extension (IM0001...)": NO_EXTENSION,
    "slices one folder down (<study>/<series>/*.dcm)": NESTED,
    "one extra scout slice of another size": SCOUT,
}
GOOD = [GOOD_A, GOOD_B]
