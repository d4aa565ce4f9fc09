"""The competition metric against hand-worked cases, and the two table formats against each other."""
import math

import numpy as np
import pandas as pd
import pytest

from src import TARGETS
from src.metric import SubmissionError, competition_score, long_to_wide, to_wide, wide_to_long
from src.score import main as score_main


def test_constant_half_is_ln2():
    labels = np.random.default_rng(0).integers(0, 2, size=(50, 8))
    assert competition_score(labels, np.full(labels.shape, 0.5)) == pytest.approx(math.log(2), abs=1e-12)


def test_all_correct_is_near_zero():
    labels = np.random.default_rng(1).integers(0, 2, size=(20, 8)).astype(float)
    assert competition_score(labels, labels) < 1e-12


def test_two_studies_worked_by_hand():
    # Study A: patient positive, C1 positive, others negative. Predict 0.8 for patient, 0.5 for C1, 0.1 elsewhere.
    # Weights: patient 14, C1 2, six negatives 1 each -> 22.
    # Loss: 14*-ln 0.8 + 2*-ln 0.5 + 6*-ln 0.9
    a_labels = [1, 1, 0, 0, 0, 0, 0, 0]
    a_probs = [0.8, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    a = (14 * -math.log(0.8) + 2 * -math.log(0.5) + 6 * -math.log(0.9)) / 22
    # Study B: all negative; predict 0.3 for patient, 0.2 for every vertebra. Weights 7 + 7*1 = 14.
    b_labels = [0] * 8
    b_probs = [0.3] + [0.2] * 7
    b = (7 * -math.log(0.7) + 7 * -math.log(0.8)) / 14
    score = competition_score(np.array([a_labels, b_labels]), np.array([a_probs, b_probs]))
    assert score == pytest.approx((a + b) / 2, rel=1e-12)


def test_clipping_keeps_certain_mistakes_finite():
    labels = np.ones((1, 8))
    score = competition_score(labels, np.zeros((1, 8)))
    assert math.isfinite(score) and score == pytest.approx(-math.log(1e-15), rel=1e-6)


def _wide(uids, probs):
    frame = pd.DataFrame(probs, columns=TARGETS)
    frame.insert(0, "StudyInstanceUID", uids)
    return frame


def test_long_and_wide_agree(tmp_path):
    rng = np.random.default_rng(2)
    uids = [f"1.2.3.{i}" for i in range(6)]
    truth = _wide(uids, rng.integers(0, 2, size=(6, 8)))
    pred = _wide(uids, rng.uniform(0.01, 0.99, size=(6, 8)))
    long = wide_to_long(pred).sample(frac=1.0, random_state=0)  # row order must not matter
    back = long_to_wide(long).set_index("StudyInstanceUID").loc[uids].reset_index()
    np.testing.assert_allclose(back[TARGETS].to_numpy(), pred[TARGETS].to_numpy())
    truth.to_csv(tmp_path / "truth.csv", index=False)
    pred.to_csv(tmp_path / "wide.csv", index=False)
    long.to_csv(tmp_path / "long.csv", index=False)
    results = []
    for name in ("wide.csv", "long.csv"):
        from src.score import score_files

        results.append(score_files(tmp_path / "truth.csv", tmp_path / name)["score"])
    assert results[0] == pytest.approx(results[1], rel=1e-12)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.drop(index=3), "lacking"),
    (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate"),
    (lambda f: f.assign(fractured=f["fractured"].where(f.index != 5, np.nan)), "missing"),
    (lambda f: f.assign(fractured=f["fractured"].where(f.index != 2, 1.5)), "outside"),
])
def test_bad_long_submissions_name_the_rows(mutate, message):
    uids = ["1.2.3.1", "1.2.3.2"]
    long = wide_to_long(_wide(uids, np.full((2, 8), 0.3)))
    with pytest.raises(SubmissionError, match=message):
        long_to_wide(mutate(long).reset_index(drop=True))


def test_bad_wide_values_are_refused():
    frame = _wide(["1.2.3.1", "1.2.3.2"], np.full((2, 8), 0.3))
    frame.loc[1, "C4"] = -0.1
    with pytest.raises(SubmissionError, match="1.2.3.2"):
        to_wide(frame)


def test_cli_prints_score_last(tmp_path, capsys):
    uids = [f"1.2.3.{i}" for i in range(4)]
    labels = _wide(uids, np.eye(4, 8, dtype=int))
    labels.to_csv(tmp_path / "truth.csv", index=False)
    wide_to_long(_wide(uids, np.full((4, 8), 0.5))).to_csv(tmp_path / "sub.csv", index=False)
    score_main([f"truth={tmp_path / 'truth.csv'}", f"submission={tmp_path / 'sub.csv'}"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("score=")
    assert float(out[-1].split("=")[1]) == pytest.approx(math.log(2), abs=1e-6)
    assert any(line.startswith("label prior") for line in out)


def test_cli_missing_study_is_an_error(tmp_path, capsys):
    uids = ["1.2.3.1", "1.2.3.2"]
    _wide(uids, np.zeros((2, 8), dtype=int)).to_csv(tmp_path / "truth.csv", index=False)
    _wide(uids[:1], np.full((1, 8), 0.5)).to_csv(tmp_path / "sub.csv", index=False)
    message = cli_error([f"truth={tmp_path / 'truth.csv'}", f"submission={tmp_path / 'sub.csv'}"], capsys)
    assert "no prediction" in message and "sub.csv" in message


# ---- a file that is not a table: one line naming it, exit code 2, no traceback ----

def cli_error(argv, capsys) -> str:
    """Run ``python -m src.score``'s command line in-process; return its one stderr line."""
    from src.score import cli

    with pytest.raises(SystemExit) as info:
        cli(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _unusable(path, kind):
    """Make ``path`` an unusable CSV of the given kind; returns what the message must say."""
    if kind == "folder":
        path.mkdir()
        return "folder"
    contents = {"empty": (b"", "empty"), "blank lines": (b"\n\n  \n", "empty"),
                "binary": (bytes(range(256)) * 8, "binary"), "latin-1": ("Étude,é\n1,2\n".encode("latin-1"), "UTF-8"),
                "no table": (b"StudyInstanceUID,C1\n\"1.2.3, 0\n", "CSV table"),
                "wrong columns": (b"a,b\n1,2\n", "missing")}
    data, said = contents[kind]
    path.write_bytes(data)
    return said


@pytest.mark.parametrize("which", ["truth", "submission"])
@pytest.mark.parametrize("kind", ["empty", "blank lines", "binary", "latin-1", "folder", "no table", "wrong columns"])
def test_an_unusable_file_is_named_in_one_line(tmp_path, capsys, which, kind):
    uids = ["1.2.3.1", "1.2.3.2"]
    files = {"truth": tmp_path / "truth.csv", "submission": tmp_path / "sub.csv"}
    _wide(uids, np.zeros((2, 8), dtype=int)).to_csv(files["truth"], index=False)
    _wide(uids, np.full((2, 8), 0.5)).to_csv(files["submission"], index=False)
    files[which].unlink()
    said = _unusable(files[which], kind)
    message = cli_error([f"truth={files['truth']}", f"submission={files['submission']}"], capsys)
    assert str(files[which]) in message and said in message, message


def test_a_truth_without_studies_is_named(tmp_path, capsys):
    (tmp_path / "truth.csv").write_text("StudyInstanceUID," + ",".join(TARGETS) + "\n")
    _wide(["1.2.3.1"], np.full((1, 8), 0.5)).to_csv(tmp_path / "sub.csv", index=False)
    message = cli_error([f"truth={tmp_path / 'truth.csv'}", f"submission={tmp_path / 'sub.csv'}"], capsys)
    assert "truth.csv" in message and "no studies" in message


def test_no_truth_is_a_usage_line(capsys):
    assert "truth=" in cli_error([], capsys)


def test_python_m_src_score_on_a_folder_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "sub").mkdir()
    _wide(["1.2.3.1"], np.zeros((1, 8), dtype=int)).to_csv(tmp_path / "truth.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "src.score", f"truth={tmp_path / 'truth.csv'}",
                           f"submission={tmp_path / 'sub'}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and str(tmp_path / "sub") in done.stderr and "folder" in done.stderr
