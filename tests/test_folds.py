"""Patient folds: disjoint, complete, stratified on all labels, reproducible."""
import numpy as np
import pandas as pd
import pytest

from src import TARGETS
from src.data.folds import ensure_folds, make_folds

# The prevalence (docs/data.md#the-metric) of patient_overall, C1..C7 on the real train set.
PREVALENCE = [0.476, 0.072, 0.141, 0.036, 0.053, 0.080, 0.137, 0.195]


def fake_labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, 8)) < PREVALENCE).astype(int)
    frame = pd.DataFrame(y, columns=TARGETS)
    frame.insert(0, "StudyInstanceUID", [f"1.2.826.0.1.{1000 + i}" for i in range(n)])
    return frame


def test_every_study_once():
    labels = fake_labels()
    folds = make_folds(labels, 5, 42)
    assert sorted(folds["StudyInstanceUID"]) == sorted(labels["StudyInstanceUID"])
    assert not folds["StudyInstanceUID"].duplicated().any()
    assert set(folds["fold"]) == set(range(5))


def test_label_rates_within_tolerance():
    labels = fake_labels()
    merged = labels.merge(make_folds(labels, 5, 42), on="StudyInstanceUID")
    overall = merged[TARGETS].mean()
    for _, fold_rows in merged.groupby("fold"):
        # 80 studies a fold: stratification keeps each rate within 2.5 points of the whole (random splits
        # drift by twice that on the rare vertebrae).
        assert (fold_rows[TARGETS].mean() - overall).abs().max() <= 0.025
        assert abs(len(fold_rows) - 80) <= 2


def test_same_seed_same_folds_and_row_order_irrelevant():
    labels = fake_labels()
    a = make_folds(labels, 5, 7)
    b = make_folds(labels.sample(frac=1.0, random_state=3), 5, 7)
    pd.testing.assert_frame_equal(a, b)
    assert not make_folds(labels, 5, 8)["fold"].equals(a["fold"])


def test_ensure_folds_writes_once_and_checks(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    fake_labels(50).to_csv(data / "train.csv", index=False)
    cfg = {"folds_dir": str(tmp_path / "folds"), "n_folds": 5, "seed": 42}
    first = ensure_folds(cfg, data, announce=lambda *_: None)
    assert (tmp_path / "folds" / "mydata.csv").exists()
    pd.testing.assert_frame_equal(first, ensure_folds(cfg, data, announce=lambda *_: None))
    with pytest.raises(ValueError, match="n_folds"):
        ensure_folds(dict(cfg, n_folds=4), data)
    fake_labels(60).to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match="lacks 10 studies"):
        ensure_folds(cfg, data)


def test_bad_uid_in_train_csv_is_refused(tmp_path):
    frame = fake_labels(10)
    frame.loc[3, "StudyInstanceUID"] = "../../etc"
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        ensure_folds({"folds_dir": str(tmp_path), "n_folds": 5, "seed": 1}, tmp_path)


# ---- `python -m src.folds` on a train.csv it cannot use: one line naming it, exit code 2 ----

def folds_cli_error(tmp_path, capsys) -> str:
    """Run ``python -m src.folds``'s command line in-process on ``tmp_path/data``; return its one stderr line."""
    from src.folds import cli

    with pytest.raises(SystemExit) as info:
        cli([f"data_dir={tmp_path / 'data'}", f"folds_dir={tmp_path / 'folds'}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def write_train_csv(tmp_path, frame=None, raw: bytes | None = None):
    data = tmp_path / "data"
    data.mkdir()
    if raw is not None:
        (data / "train.csv").write_bytes(raw)
    else:
        frame.to_csv(data / "train.csv", index=False)
    return data / "train.csv"


@pytest.mark.parametrize("uid", ["../../etc", "abc", "1.2.3/4", ""])
def test_an_invalid_uid_is_one_line(tmp_path, capsys, uid):
    frame = fake_labels(12)
    frame["StudyInstanceUID"] = frame["StudyInstanceUID"].astype(object)
    frame.loc[4, "StudyInstanceUID"] = uid
    path = write_train_csv(tmp_path, frame)
    message = folds_cli_error(tmp_path, capsys)
    assert str(path) in message and "not a valid DICOM UID" in message


@pytest.mark.parametrize("drop", [["C3"], ["StudyInstanceUID"], TARGETS])
def test_missing_columns_are_one_line(tmp_path, capsys, drop):
    path = write_train_csv(tmp_path, fake_labels(12).drop(columns=drop))
    message = folds_cli_error(tmp_path, capsys)
    assert str(path) in message and "missing column" in message and drop[0] in message


@pytest.mark.parametrize("raw, said", [(b"", "empty"), (bytes(range(256)) * 4, "binary"),
                                       (b"StudyInstanceUID,C1\n\"1.2, 0\n", "CSV table")])
def test_an_unreadable_train_csv_is_one_line(tmp_path, capsys, raw, said):
    path = write_train_csv(tmp_path, raw=raw)
    message = folds_cli_error(tmp_path, capsys)
    assert str(path) in message and said in message


def test_labels_other_than_0_and_1_are_one_line(tmp_path, capsys):
    frame = fake_labels(12)
    frame["C4"] = frame["C4"].astype(object)
    frame.loc[2, "C4"] = "yes"
    path = write_train_csv(tmp_path, frame)
    message = folds_cli_error(tmp_path, capsys)
    assert str(path) in message and "C4" in message and "'yes'" in message


@pytest.mark.parametrize("n", [0, 3])
def test_too_few_studies_is_one_line(tmp_path, capsys, n):
    path = write_train_csv(tmp_path, fake_labels(n))
    message = folds_cli_error(tmp_path, capsys)
    assert str(path) in message and "n_folds=5" in message


def test_an_unusable_folds_file_names_it(tmp_path):
    from src.data.folds import FoldsError

    data = tmp_path / "mydata"
    data.mkdir()
    fake_labels(20).to_csv(data / "train.csv", index=False)
    (tmp_path / "folds").mkdir()
    cfg = {"folds_dir": str(tmp_path / "folds"), "n_folds": 5, "seed": 42}
    for raw, said in [(b"", "empty"), (b"StudyInstanceUID\n1.2.3\n", "missing column"),
                      (b"StudyInstanceUID,fold\n1.2.3,x\n", "fold")]:
        (tmp_path / "folds" / "mydata.csv").write_bytes(raw)
        with pytest.raises(FoldsError) as info:
            ensure_folds(cfg, data, announce=lambda *_: None)
        assert "mydata.csv" in str(info.value) and said in str(info.value) and "delete it" in str(info.value)


def test_python_m_src_folds_on_a_bad_uid_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    frame = fake_labels(12)
    frame.loc[0, "StudyInstanceUID"] = "../../etc"
    write_train_csv(tmp_path, frame)
    done = subprocess.run([sys.executable, "-m", "src.folds", f"data_dir={tmp_path / 'data'}",
                           f"folds_dir={tmp_path / 'folds'}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "'../../etc'" in done.stderr and "train.csv" in done.stderr


def test_making_folds_anew_keeps_the_previous_ones_beside_them(tmp_path, capsys):
    from src.folds import cli

    write_train_csv(tmp_path, fake_labels(30))
    folds_dir = tmp_path / "folds"
    args = [f"data_dir={tmp_path / 'data'}", f"folds_dir={folds_dir}"]
    cli(args + ["seed=1"])
    (path,) = folds_dir.glob("*.csv")
    first = path.read_bytes()
    cli(args + ["seed=1"])  # the same folds: nothing to keep
    assert "unchanged" in capsys.readouterr().out and list(folds_dir.glob("*.csv")) == [path]
    cli(args + ["seed=2"])
    (kept,) = [p for p in folds_dir.glob("*.csv") if p != path]
    assert kept.name.startswith(f"{path.stem}.before-") and str(kept) in capsys.readouterr().out
    assert kept.read_bytes() == first and path.read_bytes() != first
