"""The ensemble fit (src/ensembling, ``python -m src.ensemble``) on synthetic out-of-fold frames."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from src import TARGETS
from src.config import ConfigError
from src.ensembling.fit import fit_ensemble
from src.ensembling.oof import AlignedOof
from src.ensembling.weights import combine, fit_weights, nested_cv, per_fold_score, sigmoid, logit
from src.metric import competition_score

RATES = np.array([0.476, 0.072, 0.141, 0.036, 0.053, 0.080, 0.137, 0.195])


def synthetic(n=300, seed=0):
    """Labels, an informative member, a weaker one, and a useless one (noise around the prior)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 8)) < RATES).astype(float)
    labels[:, 0] = np.maximum(labels[:, 0], labels[:, 1:].max(axis=1))
    base = logit(np.tile(RATES, (n, 1)))
    signal = 2 * labels - 1
    good = sigmoid(base + 2.0 * signal + rng.normal(0, 1.5, (n, 8)))
    weak = sigmoid(base + 1.4 * signal + rng.normal(0, 1.5, (n, 8)))
    useless = sigmoid(base + rng.normal(0, 2.0, (n, 8)))
    return labels, np.stack([good, weak, useless]), np.arange(n) % 5


def test_combine_spaces_and_weights():
    _, probs, _ = synthetic(50)
    assert np.allclose(combine(probs, [1, 0, 0], "prob"), probs[0])
    assert np.allclose(combine(probs, [0, 0, 3], "logit"), probs[2], atol=1e-6)
    mean = combine(probs[:2], [1, 1], "prob")
    assert np.allclose(mean, probs[:2].mean(axis=0))
    geo = combine(probs[:2], [1, 1], "logit")
    assert np.allclose(geo, sigmoid(logit(probs[:2]).mean(axis=0)))
    assert not np.allclose(mean, geo)
    with pytest.raises(ValueError):
        combine(probs, [1, 1], "prob")
    with pytest.raises(ValueError):
        combine(probs, [1, 1, 1], "geometric")


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_useless_member_gets_almost_no_weight(space):
    labels, probs, _ = synthetic()
    w = fit_weights(labels, probs, space)
    assert w.shape == (3,) and np.isclose(w.sum(), 1) and (w >= 0).all()
    assert w[2] < 0.05, w
    assert w[0] > w[1]
    fitted = competition_score(labels, combine(probs, w, space))
    assert fitted <= competition_score(labels, probs[0]) + 1e-9
    assert fitted < competition_score(labels, combine(probs, [1, 1, 1], space))


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_nested_cv_is_no_better_than_in_sample_fit(space):
    labels, probs, folds = synthetic(seed=1)
    nested = nested_cv(labels, probs, folds, space)
    assert sorted(nested["per_fold"]) == [0, 1, 2, 3, 4]
    in_sample = per_fold_score(labels, combine(probs, fit_weights(labels, probs, space), space), folds)["score"]
    assert nested["score"] >= in_sample - 1e-12
    # each fold's weights were fitted without it: they differ from fold to fold
    assert len({tuple(np.round(w, 6)) for w in nested["weights"].values()}) > 1


def test_nested_cv_of_one_member_is_its_cv_and_needs_two_folds():
    labels, probs, folds = synthetic(100)
    assert np.isclose(nested_cv(labels, probs[:1], folds)["score"], per_fold_score(labels, probs[0], folds)["score"])
    with pytest.raises(ValueError, match="two folds"):
        nested_cv(labels, probs, np.zeros(len(labels)))


def test_fit_ensemble_reports_members_both_spaces_and_one_fold_fallback():
    labels, probs, folds = synthetic(200)
    aligned = AlignedOof(["good", "weak", "useless"], [f"1.{i}" for i in range(200)], probs, labels, folds)
    result = fit_ensemble(aligned)
    assert result["combine"] in ("prob", "logit")
    assert result["nested_cv"]["score"] == min(result["nested_cv"]["prob"], result["nested_cv"]["logit"])
    assert result["member_cv"]["good"] < result["member_cv"]["weak"] < result["member_cv"]["useless"]
    assert result["nested_cv"]["score"] >= result["spaces"][result["combine"]]["in_sample"]
    one_fold = AlignedOof(aligned.members, aligned.study_uids, probs, labels, np.zeros(200, dtype=int))
    result = fit_ensemble(one_fold, "logit", inner_folds=4)
    assert result["combine"] == "logit" and result["n_folds"] == 4
    assert any("one fold" in n for n in result["notes"])


def write_run(runs_dir, name, probs, uids, folds, data_dir):
    for fold in sorted(set(folds)):
        d = runs_dir / name / f"fold{fold}"
        d.mkdir(parents=True)
        keep = [i for i, f in enumerate(folds) if f == fold]
        frame = pd.DataFrame(probs[keep], columns=TARGETS)
        frame.insert(0, "StudyInstanceUID", [uids[i] for i in keep])
        frame.to_csv(d / "oof.csv", index=False)
        (d / "config.yaml").write_text(yaml.safe_dump({"data_dir": str(data_dir), "demo": {"dir": str(data_dir)}}))
        (d / "metrics.json").write_text("{}")  # finished, as the training loop leaves a run


@pytest.fixture
def oof_runs(tmp_path):
    labels, probs, folds = synthetic(150, seed=2)
    uids = [f"1.2.3.{i}" for i in range(150)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    frame = pd.DataFrame(labels.astype(int), columns=TARGETS)
    frame.insert(0, "StudyInstanceUID", uids)
    frame.to_csv(data_dir / "train.csv", index=False)
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "good", probs[0], uids, folds, data_dir)
    # the useless member misses 10 studies: only the common ones are fitted
    write_run(runs_dir, "useless", probs[2][10:], uids[10:], folds[10:], data_dir)
    return runs_dir


def test_cli_writes_the_file_infer_reads(oof_runs, capsys):
    from src.ensemble import main
    from src.inference.settings import resolve_ensemble

    result = main([f"runs_dir={oof_runs}", "runs=good,useless"])
    out = capsys.readouterr().out
    assert "nested CV" in out and out.strip().splitlines()[-2].startswith("nested_cv=")
    saved = json.loads((oof_runs / "ensemble.json").read_text())
    assert saved["members"] == ["good", "useless"] and saved["n_studies"] == 140
    assert np.isclose(sum(saved["weights"]), 1) and saved["weights"][0] > 0.9
    assert saved["nested_cv"]["score"] == result["nested_cv"]["score"]
    cfg = {"members": ["useless", "good"], "ensemble": "auto", "combine": "auto", "runs_dir": str(oof_runs)}
    choice = resolve_ensemble(cfg, announce=lambda *_: None)
    assert [m.run for m in choice.members] == ["good", "useless"] and choice.combine == saved["combine"]
    assert [m.weight for m in choice.members] == saved["weights"] and "ensemble.json" in choice.source
    other = dict(cfg, members=["good"])
    notes = []
    choice = resolve_ensemble(other, announce=notes.append)
    assert [m.weight for m in choice.members] == [1.0] and choice.combine == "prob" and "fitted for" in notes[0]
    assert choice.calibration is None and choice.patient is None  # the file fitted for other members is not used


def test_an_unfinished_fold_is_not_fitted_on(oof_runs):
    from src.ensemble import main

    (oof_runs / "good" / "fold1" / "metrics.json").unlink()  # fold 1 of "good" was interrupted
    result = main([f"runs_dir={oof_runs}", "runs=good,useless"])
    assert result["n_studies"] < 140  # its studies are not used ...
    with pytest.raises(ConfigError, match="not finished"):  # ... and asking for it by name says why
        from src.runs import select_folds

        try:
            select_folds(oof_runs, "good", [1], needs="oof.csv")
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None


def test_cli_missing_run_lists_the_existing_ones(oof_runs):
    from src.ensemble import main

    with pytest.raises(ConfigError, match="good.*useless"):
        main([f"runs_dir={oof_runs}", "runs=[good,goood]"])
    with pytest.raises(ConfigError, match="unknown config key 'run'"):
        main([f"runs_dir={oof_runs}", "run=good"])
    with pytest.raises(ConfigError, match="combine"):
        main([f"runs_dir={oof_runs}", "runs=good", "combine=geometric"])
