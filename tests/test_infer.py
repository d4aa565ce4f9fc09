"""python infer.py: every bad input still ends in a complete, valid submission (a run that cannot load is
left out, a row test.csv cannot explain is named); missing runs, an unreadable test.csv and no loadable
member are one-line errors; and a study's prediction through infer.py equals its out-of-fold row
(Kaggle parity). Every kind of bad input at once: tests/test_hostile_infer.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src import TARGETS
from src.config import ConfigError, load_config, run_main
from src.inference.prior import REAL_PREVALENCE, label_prior
from src.inference.test_csv import build_submission, check_submission, read_test_csv, study_order, write_submission
from src.metric import SubmissionError, to_wide

from infer_helpers import (MODELS, cached_studies_as_dicom, infer, neck_volume, read_submission, run_infer,
                           save_member_runs, write_study, write_test_csv,
                           write_train_labels)

GOOD = ["1.2.826.7.1", "1.2.826.7.2"]
CORRUPT_SLICE, UNREADABLE, ABSENT, NOT_NAMED = "1.2.826.7.3", "1.2.826.7.4", "1.2.826.7.5", "1.2.826.7.6"
BAD_UID = "9.9.x"   # test.csv names a "study" that may never become a path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A Kaggle-shaped folder whose test.csv and test_images disagree, with a corrupt and an unreadable study."""
    root = tmp_path_factory.mktemp("kaggle")
    rng = np.random.default_rng(0)
    images = root / "test_images"
    write_study(images, GOOD[0], neck_volume(rng))
    write_study(images, GOOD[1], neck_volume(rng), reverse=True, numbers=range(101, 115))
    write_study(images, CORRUPT_SLICE, neck_volume(rng))
    (images / CORRUPT_SLICE / "5.dcm").write_bytes((images / CORRUPT_SLICE / "5.dcm").read_bytes()[:600])
    write_study(images, NOT_NAMED, neck_volume(rng))
    (images / UNREADABLE).mkdir()
    for i in range(1, 13):
        (images / UNREADABLE / f"{i}.dcm").write_bytes(b"not a dicom file" * 10)
    write_test_csv(root / "test.csv", GOOD + [CORRUPT_SLICE, UNREADABLE, ABSENT, BAD_UID])
    write_train_labels(root / "train.csv", 40, rng)
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("runs")
    save_member_runs(runs, data_dir)
    return runs


def test_every_bad_input_ends_in_a_complete_valid_submission(data_dir, runs_dir, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    result = run_infer(data_dir, runs_dir, out)
    printed = capsys.readouterr().out
    wide = read_submission(out, data_dir)
    prior, _ = label_prior(data_dir)
    for uid in (UNREADABLE, ABSENT, BAD_UID):
        np.testing.assert_allclose(wide.loc[uid].to_numpy(), prior)
    for uid in GOOD + [CORRUPT_SLICE]:  # predicted by the models, not the prior
        assert not np.allclose(wide.loc[uid].to_numpy(), prior)
    assert NOT_NAMED not in wide.index
    log = result["log"]
    assert log.uids("absent") == [ABSENT] and log.uids("unreadable") == [UNREADABLE] and log.uids("bad_uid") == [BAD_UID]
    assert log.uids("slices") == [CORRUPT_SLICE] and "5.dcm" in log.events["slices"][0][1]
    assert log.count("member") == 0 and log.count("all_members") == 0
    assert "that test.csv does not name are ignored" in printed and NOT_NAMED in printed
    for kind in ("absent", "unreadable", "bad_uid", "slices"):
        assert f"[summary] {kind}" in printed
    # two folds of cnn3d and one of effnet_gru were run; each member's time was measured
    assert {"read", "localise", "member:cnn3d", "member:effnet_gru"} <= set(result["timings"])


def test_reversed_study_reads_head_first_like_the_cache(data_dir):
    from src.inference.reading import read_test_study

    volumes, _ = read_test_study(data_dir / "test_images" / GOOD[1], {16, 32})
    assert set(volumes) == {16, 32}
    volume, meta = volumes[32]
    assert volume.shape == (14, 32, 32) and meta["slice_numbers"][0] == 114  # file 114.dcm is the head
    assert volumes[16][0].shape == (14, 16, 16)


def test_failing_members_fall_back_to_the_others_then_to_the_prior(data_dir, runs_dir, tmp_path, monkeypatch):
    from src.inference import members as members_module

    def broken_forward(self, batch):
        return {"logits": torch.full((1, 8), float("nan"))}

    one = "limit_studies=1"  # the first study through the models, the rest get the prior: quicker
    both = tmp_path / "both.csv"
    run_infer(data_dir, runs_dir, both, one)
    only_effnet = tmp_path / "only_effnet.csv"
    run_infer(data_dir, runs_dir, only_effnet, one, "members=[effnet_gru]")
    from src.models.cnn3d import CNN3D

    monkeypatch.setattr(CNN3D, "forward", broken_forward)
    broken = tmp_path / "broken.csv"
    result = run_infer(data_dir, runs_dir, broken, one)
    assert result["log"].uids("member") == [GOOD[0]] and "cnn3d" in result["log"].events["member"][0][1]
    np.testing.assert_allclose(read_submission(broken, data_dir).to_numpy(),
                               read_submission(only_effnet, data_dir).to_numpy(), rtol=1e-6)
    assert not np.allclose(read_submission(broken, data_dir).to_numpy(), read_submission(both, data_dir).to_numpy())

    monkeypatch.setattr(members_module.Member, "predict", lambda *a, **k: (_ for _ in ()).throw(MemoryError("boom")))
    nothing = tmp_path / "nothing.csv"
    result = run_infer(data_dir, runs_dir, nothing, one)
    wide = read_submission(nothing, data_dir)
    np.testing.assert_allclose(wide.to_numpy(), np.tile(label_prior(data_dir)[0], (len(wide), 1)))
    assert result["log"].uids("all_members") == [GOOD[0]] and result["log"].count("not_requested") == 4


def test_an_unexpected_error_costs_only_that_study(data_dir, runs_dir, tmp_path, monkeypatch):
    from src.inference import pipeline

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 2 GiB")

    monkeypatch.setattr(pipeline, "combine_members", out_of_memory)
    result = run_infer(data_dir, runs_dir, tmp_path / "s.csv", "members=[cnn3d]", "limit_studies=1")
    assert result["log"].uids("error") == [GOOD[0]] and "cannot allocate" in result["log"].events["error"][0][1]
    np.testing.assert_allclose(read_submission(tmp_path / "s.csv", data_dir).loc[GOOD[0]].to_numpy(),
                               label_prior(data_dir)[0])


def test_studies_are_read_ahead_in_processes_and_nothing_is_written_but_the_submission(data_dir, runs_dir, tmp_path,
                                                                                       monkeypatch):
    """workers=2 gives what reading in process gives; and the study never goes to disk (np.save and the
    cache writer refuse, in the reading processes too, which are forked after the patch)."""
    import src.data.cache

    in_process = run_infer(data_dir, runs_dir, tmp_path / "in_process.csv", "workers=0")

    def no_disk(*args, **kwargs):
        raise AssertionError("inference wrote a study to disk")

    monkeypatch.setattr(np, "save", no_disk)
    monkeypatch.setattr(src.data.cache, "write_study", no_disk)
    ahead = run_infer(data_dir, runs_dir, tmp_path / "ahead.csv", "workers=2")
    assert ahead["log"].count("member") == 0 and ahead["log"].count("error") == 0, ahead["summary"]
    for kind in ("absent", "unreadable", "bad_uid", "slices"):
        assert ahead["log"].events[kind] == in_process["log"].events[kind]
    assert {"read", "inputs before localising", "wait for reading"} <= set(ahead["timings"])
    np.testing.assert_array_equal(read_submission(tmp_path / "ahead.csv", data_dir).to_numpy(),
                                  read_submission(tmp_path / "in_process.csv", data_dir).to_numpy())


def test_a_reading_process_that_dies_costs_only_its_study(data_dir, runs_dir, tmp_path, monkeypatch):
    """A decoder that kills its process (a segfault, say) on one study: that study gets the prior, named
    under ``unreadable``; the studies read beside it in the same pool are predicted as usual."""
    import os

    from src.inference import studies

    read = studies.read_test_study

    def crash_on_one(study_dir, *args, **kwargs):
        if Path(study_dir).name == GOOD[1]:
            os._exit(11)
        return read(study_dir, *args, **kwargs)

    run_infer(data_dir, runs_dir, tmp_path / "reference.csv", "members=[cnn3d]", "workers=0")
    monkeypatch.setattr(studies, "read_test_study", crash_on_one)
    result = run_infer(data_dir, runs_dir, tmp_path / "s.csv", "members=[cnn3d]", "workers=2")
    log = result["log"]
    assert GOOD[1] in log.uids("unreadable") and "died" in dict(log.events["unreadable"])[GOOD[1]]
    assert log.uids("unreadable") == [GOOD[1], UNREADABLE] and log.uids("slices") == [CORRUPT_SLICE]
    got, expected = read_submission(tmp_path / "s.csv", data_dir), read_submission(tmp_path / "reference.csv", data_dir)
    np.testing.assert_allclose(got.loc[GOOD[1]].to_numpy(), label_prior(data_dir)[0])
    others = [GOOD[0], CORRUPT_SLICE]
    np.testing.assert_array_equal(got.loc[others].to_numpy(), expected.loc[others].to_numpy())


def test_a_run_saved_with_the_old_task_key_predicts_as_before(data_dir, runs_dir, tmp_path):
    """Runs trained while configs had a ``task:`` key (``classify`` for the 3D CNN) load as they are: the
    model class names its task now, and the extra key is ignored."""
    import yaml

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "cnn3d" / "fold0", runs / "cnn3d" / "fold0")
    path = runs / "cnn3d" / "fold0" / "best.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["task"] = "classify"
    torch.save(state, path)
    (path.parent / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    old = run_infer(data_dir, runs, tmp_path / "old.csv", "members=[cnn3d]", "limit_studies=1")
    assert old["log"].count("left_out") == 0 and old["log"].count("member") == 0
    run_infer(data_dir, runs_dir, tmp_path / "new.csv", "members=[{run: cnn3d, folds: [0]}]", "limit_studies=1")
    np.testing.assert_array_equal(read_submission(tmp_path / "old.csv", data_dir).to_numpy(),
                                  read_submission(tmp_path / "new.csv", data_dir).to_numpy())


def test_localiser_failure_still_predicts_every_study(data_dir, runs_dir, tmp_path, monkeypatch):
    from src.inference.localiser import Localiser

    monkeypatch.setattr(Localiser, "rows_for", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no bones")))
    result = run_infer(data_dir, runs_dir, tmp_path / "s.csv", "members=[effnet_gru]", "limit_studies=2")
    assert result["log"].uids("localiser") == GOOD
    assert result["log"].count("all_members") == 0
    read_submission(tmp_path / "s.csv", data_dir)


def test_a_slice_shift_view_that_cannot_be_built_costs_only_that_view(data_dir, runs_dir, tmp_path, monkeypatch):
    from src.tasks.vertebra import VertebraTask

    def predicted(name, *extra):
        result = run_infer(data_dir, runs_dir, tmp_path / f"{name}.csv", "members=[effnet_gru]", "limit_studies=1", *extra)
        return result["log"], read_submission(tmp_path / f"{name}.csv", data_dir).loc[GOOD[0]].to_numpy()

    _, one_shift = predicted("one", "tta_shifts=[-0.5]")
    build = VertebraTask.study_batch

    def no_forward_shift(cls, *args, shift=0.0, **kwargs):
        if shift > 0:
            raise IndexError("slice 99 is past the study")
        return build(*args, shift=shift, **kwargs)

    monkeypatch.setattr(VertebraTask, "study_batch", classmethod(no_forward_shift))
    log, got = predicted("two", "tta_shifts=[-0.5,0.5]")
    assert log.uids("view") == [GOOD[0]] and "0.5" in log.events["view"][0][1] and "slice 99" in log.events["view"][0][1]
    assert log.count("member") == 0
    np.testing.assert_allclose(got, one_shift, rtol=1e-6)  # the plain and -0.5 views, as if 0.5 were never asked


@pytest.mark.slow
def test_weights_combine_and_tta(data_dir, runs_dir, tmp_path):
    def predicted(name, *extra):
        """The two studies the models predict (limit_studies=2 gives the rest the prior, quicker)."""
        run_infer(data_dir, runs_dir, tmp_path / f"{name}.csv", "limit_studies=2", *extra)
        return read_submission(tmp_path / f"{name}.csv", data_dir).loc[GOOD].to_numpy()

    a = predicted("a", "members=[cnn3d]")
    b = predicted("b", "members=[effnet_gru]")
    w = predicted("w", "members=[{run: cnn3d, weight: 3}, {run: effnet_gru, weight: 1}]", "combine=prob")
    np.testing.assert_allclose(w, 0.75 * a + 0.25 * b, rtol=1e-6)
    lg = predicted("l", "members=[cnn3d, effnet_gru]", "combine=logit")
    np.testing.assert_allclose(lg, 1 / (1 + np.exp(-(np.log(a / (1 - a)) + np.log(b / (1 - b))) / 2)), rtol=1e-5)
    f0 = predicted("f0", "members=[{run: cnn3d, folds: [0]}]", "tta=false")
    mirrored = predicted("t", "members=[{run: cnn3d, folds: [0]}]", "tta=true")
    assert not np.allclose(f0, a) and not np.allclose(f0, mirrored)  # two folds differ from one; the mirror counts


def test_the_ensemble_files_calibration_is_applied_after_combining(data_dir, runs_dir, tmp_path):
    import json

    run_infer(data_dir, runs_dir, tmp_path / "plain.csv", "members=[cnn3d]", "limit_studies=2")
    plain = read_submission(tmp_path / "plain.csv", data_dir).loc[GOOD].to_numpy()
    for name, calibration in (("floor", {"method": "floor", "params": {"floor": 0.3}}),
                              ("temperature", {"method": "temperature", "params": {"temperature": [2.0] * 8}})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"members": ["cnn3d"], "weights": [1.0], "combine": "prob",
                                    "calibration": {**calibration, "kept": True}}))
        run_infer(data_dir, runs_dir, tmp_path / f"{name}.csv", "members=[cnn3d]", "limit_studies=2", f"ensemble={path}")
        got = read_submission(tmp_path / f"{name}.csv", data_dir).loc[GOOD].to_numpy()
        want = (np.clip(plain, 0.3, 0.7) if name == "floor"
                else 1 / (1 + np.exp(-np.log(plain / (1 - plain)) / 2.0)))
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_missing_runs_and_bad_settings_are_clear_errors(data_dir, runs_dir, tmp_path):
    with pytest.raises(ConfigError, match="run 'cnn3dd'.*cnn3d \\(folds 0, 1\\).*effnet_gru \\(folds 0\\)"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "members=[cnn3dd]")
    with pytest.raises(ConfigError, match="fold\\(s\\) \\[3\\]"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "members=[{run: cnn3d, folds: [3]}]")
    with pytest.raises(ConfigError, match="localiser"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "members=[effnet_gru]", "localiser=nolocaliser")
    with pytest.raises(ConfigError, match="unknown config key 'member'.*did you mean members"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "member=[cnn3d]")
    with pytest.raises(ConfigError, match="weight"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "members=[{run: cnn3d, weight: -1}]")
    with pytest.raises(ConfigError, match="combine"):
        run_infer(data_dir, runs_dir, tmp_path / "x.csv", "combine=mean")
    assert not (tmp_path / "x.csv").exists()


def test_an_unfinished_fold_is_never_predicted_with(data_dir, runs_dir, tmp_path):
    """A fold whose training was interrupted has a best.pt of its best epoch so far: not a result to submit."""
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    (runs / "cnn3d" / "fold1" / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="fold\\(s\\) \\[1\\] not finished"):
        run_infer(data_dir, runs, tmp_path / "x.csv", "members=[{run: cnn3d, folds: [0, 1]}]")
    result = run_infer(data_dir, runs, tmp_path / "y.csv", "members=[cnn3d]")  # "all" = the finished ones
    assert result["path"].exists()
    (runs / "localiser" / "fold0" / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="localiser.*not finished"):
        run_infer(data_dir, runs, tmp_path / "z.csv", "members=[effnet_gru]")


# ---- one bad piece costs only itself: runs that cannot load, rows test.csv cannot explain ----

def copy_with_truncated(runs_dir, tmp_path, *pieces):
    """A copy of ``runs_dir`` in which each of ``pieces`` (``run/fold<k>``) has a truncated best.pt; a
    piece of a run that does not exist is made from cnn3d's fold 0 first."""
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    for piece in pieces:
        if not (runs / piece).exists():
            shutil.copytree(runs / "cnn3d" / "fold0", runs / piece)
        path = runs / piece / "best.pt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return runs


def summary_lines_naming(printed: str, subject: str) -> list[str]:
    summary = printed[printed.index("[summary]"):]
    return [line for line in summary.splitlines() if line.strip().startswith(f"{subject}:")]


def test_a_member_or_fold_that_cannot_load_is_left_out_and_the_rest_predict(data_dir, runs_dir, tmp_path, capsys):
    runs = copy_with_truncated(runs_dir, tmp_path, "broken/fold0", "cnn3d/fold1")
    result = run_infer(data_dir, runs, tmp_path / "s.csv", "members=[cnn3d, broken]", "limit_studies=1")
    printed = capsys.readouterr().out
    left_out = dict(result["log"].events["left_out"])
    assert set(left_out) == {"broken", "cnn3d fold 1"}
    assert str(runs / "broken" / "fold0" / "best.pt") in left_out["broken"] and "cannot load" in left_out["broken"]
    assert str(runs / "cnn3d" / "fold1" / "best.pt") in left_out["cnn3d fold 1"]
    assert len(summary_lines_naming(printed, "broken")) == 1
    # what is left (cnn3d's fold 0) predicts exactly as it does alone
    run_infer(data_dir, runs_dir, tmp_path / "ref.csv", "members=[{run: cnn3d, folds: [0]}]", "limit_studies=1")
    np.testing.assert_allclose(read_submission(tmp_path / "s.csv", data_dir).to_numpy(),
                               read_submission(tmp_path / "ref.csv", data_dir).to_numpy())


def test_when_no_member_can_load_it_is_one_clear_error(data_dir, runs_dir, tmp_path, capsys):
    runs = copy_with_truncated(runs_dir, tmp_path, "cnn3d/fold0", "cnn3d/fold1")
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer.main, [f"data_dir={data_dir}", f"runs_dir={runs}", f"output={tmp_path / 's.csv'}",
                              "progress=false", "device=cpu", "members=[cnn3d]"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "no member could be loaded" in err and str(runs / "cnn3d" / "fold0" / "best.pt") in err
    assert not (tmp_path / "s.csv").exists()


def test_a_localiser_that_cannot_load_is_left_out_and_crops_come_from_an_even_split(data_dir, runs_dir, tmp_path):
    runs = copy_with_truncated(runs_dir, tmp_path, "localiser/fold0")
    result = run_infer(data_dir, runs, tmp_path / "s.csv", "members=[effnet_gru]", "limit_studies=1")
    log = result["log"]
    assert log.uids("left_out") == ["localiser"] and "best.pt" in log.events["left_out"][0][1]
    assert log.uids("localiser") == [GOOD[0]] and log.count("all_members") == 0
    read_submission(tmp_path / "s.csv", data_dir)


def write_rows(path, rows):
    pd.DataFrame(rows, columns=["row_id", "StudyInstanceUID", "prediction_type"]).to_csv(path, index=False)


def test_rows_test_csv_cannot_explain_are_named_and_never_stop_the_run(tmp_path):
    from src.inference.test_csv import read_test_rows

    a, b = GOOD
    rows = [(f"{a}_{t}", a, t) for t in TARGETS] + [(f"{b}_{t}", b, t) for t in TARGETS]
    rows[2] = (f"{a}_C2", b, "C4")                       # the columns say another study and type
    rows[3] = (f"{a}_C3", "", "")                        # the columns are empty: row_id says it all
    rows += [(f"{a}_C9", a, "C9"), ("junk", a, "C1"), ("", b, "C5"), (f"{a}_C1", a, "C1")]
    write_rows(tmp_path / "test.csv", rows)
    lines = (tmp_path / "test.csv").read_text().splitlines()
    (tmp_path / "test.csv").write_text("\n".join(lines[:17] + [""] + lines[17:]) + "\n")  # a blank line 18
    test, problems = read_test_rows(tmp_path / "test.csv")
    named = {(kind, subject) for kind, subject, _ in problems}
    assert named == {("row_mismatch", f"{a}_C2"), ("row_mismatch", f"{a}_C3"), ("bad_row", f"{a}_C9"),
                     ("bad_row", "junk"), ("bad_row", "line 21"), ("repeated_row", f"{a}_C1")}
    assert list(test["row_id"]) == [r for r, _, _ in rows[:-1] if r]  # in order; no row_id, no row; a repeat once
    assert study_order(test) == [a, b]                                   # row_id's study, not the columns'
    prior = np.linspace(0.1, 0.8, 8)
    predictions = {a: np.full(8, 0.9), b: np.arange(8) / 10}
    values = build_submission(test, predictions, prior).set_index("row_id")["fractured"]
    assert values[f"{a}_C2"] == 0.9 and values[f"{a}_C3"] == 0.9      # what row_id says
    assert values[f"{a}_C9"] == pytest.approx(prior.mean()) and values["junk"] == pytest.approx(prior.mean())


def test_a_row_whose_columns_disagree_gets_what_its_row_id_says(data_dir, runs_dir, tmp_path):
    """row_id is what Kaggle scores: GOOD[1]_C3 must get GOOD[1]'s C3 even when its columns say GOOD[0], C5."""
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "test_images").symlink_to(data_dir / "test_images")
    shutil.copy(data_dir / "train.csv", kaggle / "train.csv")  # the same prior for the other studies
    test = pd.read_csv(data_dir / "test.csv")
    test.loc[test["row_id"] == f"{GOOD[1]}_C3", ["StudyInstanceUID", "prediction_type"]] = [GOOD[0], "C5"]
    test.to_csv(kaggle / "test.csv", index=False)
    result = run_infer(kaggle, runs_dir, tmp_path / "s.csv", "members=[cnn3d]", "limit_studies=2")
    run_infer(data_dir, runs_dir, tmp_path / "ref.csv", "members=[cnn3d]", "limit_studies=2")
    got, ref = (pd.read_csv(tmp_path / name).set_index("row_id")["fractured"] for name in ("s.csv", "ref.csv"))
    assert list(got.index) == list(test["row_id"])
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy())  # that row included
    assert got[f"{GOOD[1]}_C3"] != pytest.approx(ref[f"{GOOD[0]}_C5"])
    assert result["log"].uids("row_mismatch") == [f"{GOOD[1]}_C3"]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00binary", b"", b"\n\n", b"id,value\n1,2\n"],
                         ids=["binary", "empty", "blank lines", "no row_id column"])
def test_a_test_csv_that_cannot_be_read_is_one_line_and_an_exit_code(content, runs_dir, tmp_path, capsys):
    (tmp_path / "test.csv").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer.main, [f"data_dir={tmp_path}", f"runs_dir={runs_dir}", f"output={tmp_path / 's.csv'}",
                              "progress=false", "device=cpu", "members=[cnn3d]"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and str(tmp_path / "test.csv") in err, err
    assert not (tmp_path / "s.csv").exists()


def test_a_data_dir_with_labels_but_no_test_csv_is_one_line(runs_dir, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("StudyInstanceUID,patient_overall\n1.2.3,1\n")
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer.main, [f"data_dir={tmp_path}", f"runs_dir={runs_dir}", "progress=false", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "test.csv" in err, err


def test_an_invalid_submission_is_never_written(tmp_path):
    test_path = tmp_path / "test.csv"
    write_test_csv(test_path, GOOD)
    test = read_test_csv(test_path)
    good = pd.DataFrame({"row_id": test["row_id"], "fractured": 0.5})
    check_submission(good, test)
    bad = {
        "NaN": good.assign(fractured=[np.nan] + [0.5] * (len(good) - 1)),
        "outside": good.assign(fractured=[1.5] + [0.5] * (len(good) - 1)),
        "differ": good.iloc[1:],
        "differ ": good.iloc[::-1],
    }
    for reason, frame in bad.items():
        with pytest.raises(SubmissionError, match=reason.strip() if reason.strip() != "NaN" else "missing or non-numeric"):
            write_submission(frame.reset_index(drop=True), test, tmp_path / "sub.csv")
        assert not (tmp_path / "sub.csv").exists()
    with pytest.raises(SubmissionError, match="cannot write the submission"):
        write_submission(good, test, tmp_path)  # output= names a folder


def test_prior_comes_from_train_csv_else_the_real_prevalence(tmp_path, data_dir):
    rates, source = label_prior(data_dir)
    expected = pd.read_csv(data_dir / "train.csv")[TARGETS].mean().to_numpy()
    np.testing.assert_allclose(rates, expected)
    assert "train.csv" in source
    rates, source = label_prior(tmp_path)
    np.testing.assert_allclose(rates, REAL_PREVALENCE)
    assert "real train set prevalence" in source and "no train.csv" in source
    (tmp_path / "train.csv").write_text("garbage\n1\n")
    rates, source = label_prior(tmp_path)
    np.testing.assert_allclose(rates, REAL_PREVALENCE)
    assert "unusable" in source


# ---- Kaggle parity: trained runs, a study through infer.py == its row in oof.csv ----

def train_tiny_run(tiny, experiment, extra):
    """One epoch of the real training loop on the tiny cached dataset, into runs/<experiment>/fold0."""
    from fake_training_data import overrides
    from src.data.folds import ensure_folds
    from src.models.registry import get_model_class, model_task
    from src.tasks import get_task_class
    from src.training import fit

    # prepare.size = the tiny cache's size, so that reading its DICOMs gives the cached volume back
    cfg = load_config([f"config={experiment}", *overrides(tiny), "prepare.size=16", *extra])
    task = get_task_class(model_task(get_model_class(cfg["model"])))(
        cfg, tiny["data_dir"], tiny["cache_dir"], ensure_folds(cfg, tiny["data_dir"]), announce=lambda *_: None)
    folder = Path(tiny["runs_dir"]) / experiment / "fold0"
    fit(cfg, task, folder, dataset_kind="demo", announce=lambda *_: None)
    return pd.read_csv(folder / "oof.csv", dtype={"StudyInstanceUID": str})


@pytest.mark.slow
def test_kaggle_parity_prediction_equals_the_validation_row(tmp_path, capsys):
    from fake_training_data import install_folds, make_tiny_dataset

    tiny = make_tiny_dataset(tmp_path / "tiny", n_studies=10, slices=14, size=16)
    install_folds(tiny)
    oof = {
        "effnet_gru": train_tiny_run(tiny, "effnet_gru", MODELS["effnet_gru"][:-1]),
        "cnn3d": train_tiny_run(tiny, "cnn3d", MODELS["cnn3d"][:-1]),
    }
    uids = list(oof["cnn3d"]["StudyInstanceUID"])
    assert uids and set(uids) == set(oof["effnet_gru"]["StudyInstanceUID"])
    kaggle = tmp_path / "kaggle"
    cached_studies_as_dicom(tiny, uids, kaggle)
    common = [f"data_dir={kaggle}", f"runs_dir={tiny['runs_dir']}", "progress=false", "device=cpu",
              f"localisation_table={tiny['localisation_table']}", "localiser=no_localiser_trained",
              "tta=false", "tta_shifts=[]"]  # the validation rows are of the plain view
    for experiment, rows in oof.items():
        out = tmp_path / f"{experiment}.csv"
        infer.main(common + [f"members=[{experiment}]", f"output={out}"])
        got = to_wide(pd.read_csv(out)).set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy()
        np.testing.assert_allclose(got, rows.set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy(),
                                   rtol=0, atol=1e-5, err_msg=experiment)

    # the ensemble fitted on those oof rows is what infer.py then uses (ensemble=auto)
    from src.ensemble import main as ensemble_main

    fitted = ensemble_main([f"runs_dir={tiny['runs_dir']}", "runs=effnet_gru,cnn3d",
                            f"truth={Path(tiny['data_dir']) / 'train.csv'}"])
    out = tmp_path / "ensemble.csv"
    infer.main(common + ["members=[cnn3d, effnet_gru]", f"output={out}"])
    assert "fitted by src.ensemble" in capsys.readouterr().out
    got = to_wide(pd.read_csv(out)).set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy()
    from src.ensembling.weights import combine

    members = np.stack([oof[m].set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy() for m in fitted["members"]])
    np.testing.assert_allclose(got, combine(members, fitted["weights"], fitted["combine"]), atol=1e-5)
