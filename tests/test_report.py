"""Tests for ``python -m src.report``: fake run folders in tmp, checked against their own metrics.json.

The fake runs are built the way the training loop writes them (docs/data.md#run-folders): oof.csv from noisy
labels, metrics.json from src.metric on that oof, history.csv per epoch. The slow test at the end
trains two real tiny experiments once src/train.py exists.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from src import TARGETS, VERTEBRAE
from src.metric import competition_score, summarize
from src.report import DEFAULTS, main, make_report
from src.reporting.build import build_report

PREVALENCE = np.array([0.476, 0.072, 0.141, 0.036, 0.053, 0.080, 0.137, 0.195])


def make_labels(data_dir: Path, n_studies: int, rng: np.random.Generator) -> pd.DataFrame:
    vertebrae = (rng.random((n_studies, 7)) < PREVALENCE[1:] * 2).astype(int)
    labels = pd.DataFrame(vertebrae, columns=VERTEBRAE)
    labels.insert(0, "patient_overall", labels.max(axis=1))
    labels.insert(0, "StudyInstanceUID", [f"1.2.826.0.1.3680043.{1000 + i}" for i in range(n_studies)])
    data_dir.mkdir(parents=True, exist_ok=True)
    labels.to_csv(data_dir / "train.csv", index=False)
    return labels


def write_classifier_fold(run: Path, experiment: str, fold: int, n_folds: int, labels: pd.DataFrame,
                          skill: float, data_dir: Path, rng: np.random.Generator, epochs: int = 4,
                          model: str = "effnet_gru") -> dict:
    """A finished fold: predictions pulled towards the labels by ``skill`` (0 = the prior, 1 = perfect-ish)."""
    run.mkdir(parents=True)
    held_out = labels.iloc[fold::n_folds]
    train = labels.drop(held_out.index)
    truth = held_out[TARGETS].to_numpy(float)
    prior = train[TARGETS].to_numpy(float).mean(axis=0)
    probs = np.clip((1 - skill) * prior + skill * truth + rng.normal(0, 0.08, truth.shape), 0.02, 0.98)
    oof = pd.DataFrame(probs, columns=TARGETS)
    oof.insert(0, "StudyInstanceUID", held_out["StudyInstanceUID"].to_numpy())
    oof.to_csv(run / "oof.csv", index=False)
    summary = summarize(truth, probs, prior_labels=train[TARGETS].to_numpy(float))
    metrics = {"score": summary["score"], "prior_score": summary["prior_score"],
               "per_target_logloss": summary["per_target_logloss"], "per_target_auc": summary["per_target_auc"],
               "best_epoch": epochs - 1, "n_val": len(held_out)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    # Curves that fall from the prior's level towards the final score, with some epoch-to-epoch noise.
    epoch = np.arange(epochs)
    approach = np.exp(-epoch / max(epochs / 3, 1))
    start = summary["prior_score"]
    history = pd.DataFrame({
        "epoch": epoch,
        "train_loss": 0.45 * summary["score"] / start + 0.5 * approach * (1 - skill / 2) + rng.normal(0, 0.01, epochs),
        "val_loss": summary["score"] + (start - summary["score"]) * approach,
        "score": summary["score"] + (start - summary["score"]) * approach + rng.normal(0, 0.01, epochs),
        "lr": 1e-3 * (1 + np.cos(np.pi * epoch / epochs)) / 2, "seconds": 1.0})
    history.loc[epochs - 1, "score"] = summary["score"]  # the last epoch is the best one, as metrics.json says
    for target in TARGETS:
        history[f"val_{target}_logloss"] = summary["per_target_logloss"][target] * (1 + approach)
    history.to_csv(run / "history.csv", index=False)
    config = {"experiment": experiment, "model": model, "task": "classify", "fold": fold, "n_folds": n_folds,
              "data_dir": str(data_dir), "demo": {"dir": str(data_dir.parent / "no-demo")},
              "effnet_gru": {"n_slices": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return metrics


def write_localiser_fold(run: Path, experiment: str, fold: int, dice: float) -> dict:
    run.mkdir(parents=True)
    metrics = {"dice": dice, "slice_iou": dice - 0.1,
               "per_vertebra_dice": {v: dice - 0.01 * i for i, v in enumerate(VERTEBRAE)}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"epoch": [0, 1], "train_loss": [0.9, 0.5], "val_loss": [0.8, 0.6], "dice": [dice - 0.2, dice],
                  "slice_iou": [dice - 0.3, dice - 0.1], "lr": [1e-3, 1e-3]}).to_csv(run / "history.csv", index=False)
    # task stays "classify" on purpose: the localiser's model class fixes its task, the saved config may not say so.
    (run / "config.yaml").write_text(yaml.safe_dump({"experiment": experiment, "model": "localiser", "task": "classify",
                                                     "fold": fold, "n_folds": 3}))
    return metrics


def make_fake_runs(root: Path, seed: int = 0, n_studies: int = 90, n_folds: int = 3, epochs: int = 4,
                   experiments: dict[str, tuple[float, str]] | None = None) -> dict:
    """Classifier experiments ({name: (skill, model)}; by default a strong and a weak one), a localiser, and
    an unfinished fold; returns the runs folder, the labels and every fold's metrics."""
    experiments = experiments or {"effnet_gru": (0.7, "effnet_gru"), "cnn3d": (0.25, "cnn3d")}
    rng = np.random.default_rng(seed)
    data_dir = root / "data" / "demo"
    labels = make_labels(data_dir, n_studies, rng)
    runs = root / "runs"
    metrics: dict[str, dict[int, dict]] = {name: {} for name in experiments}
    for fold in range(n_folds):
        for name, (skill, model) in experiments.items():
            metrics[name][fold] = write_classifier_fold(runs / name / f"fold{fold}", name, fold, n_folds, labels,
                                                        skill, data_dir, rng, epochs=epochs, model=model)
    metrics["localiser"] = {f: write_localiser_fold(runs / "localiser" / f"fold{f}", "localiser", f, 0.8 + 0.02 * f)
                            for f in range(2)}
    # A run still training: config and two epochs of history, no metrics.json yet.
    unfinished = runs / "effnet_gru_384" / "fold0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"experiment": "effnet_gru_384", "task": "classify"}))
    pd.DataFrame({"epoch": [0, 1], "train_loss": [0.7, 0.6], "score": [0.6, 0.55]}).to_csv(unfinished / "history.csv",
                                                                                             index=False)
    return {"runs": runs, "data_dir": data_dir, "labels": labels, "metrics": metrics}


@pytest.fixture()
def fake(tmp_path):
    return make_fake_runs(tmp_path)


def test_ranking_follows_mean_fold_score(fake):
    report = build_report(fake["runs"])
    means = {exp: statistics.mean(m["score"] for m in folds.values())
             for exp, folds in fake["metrics"].items() if exp != "localiser"}
    assert list(report.classifiers["experiment"]) == sorted(means, key=means.get)
    assert report.classifiers["experiment"].iloc[0] == "effnet_gru"  # the skilled fake must win


def test_table_numbers_equal_metrics_json(fake):
    board = build_report(fake["runs"]).classifiers.set_index("experiment")
    for exp in ("effnet_gru", "cnn3d"):
        folds = fake["metrics"][exp]
        scores = [m["score"] for m in folds.values()]
        row = board.loc[exp]
        assert row["n_folds"] == len(folds) and row["n_folds_planned"] == 3
        assert row["score_mean"] == pytest.approx(statistics.mean(scores), abs=1e-12)
        assert row["score_std"] == pytest.approx(statistics.stdev(scores), abs=1e-12)
        assert row["score_min"] == min(scores) and row["score_max"] == max(scores)
        assert row["prior_mean"] == pytest.approx(statistics.mean(m["prior_score"] for m in folds.values()))
        assert row["n_val"] == sum(m["n_val"] for m in folds.values())
        for target in TARGETS:
            expected = statistics.mean(m["per_target_logloss"][target] for m in folds.values())
            assert row[f"logloss_{target}"] == pytest.approx(expected, abs=1e-12)


def test_markdown_prints_the_same_numbers_in_rank_order(fake, tmp_path):
    _, text = make_report(fake["runs"], plots=False)
    assert (fake["runs"] / "report.md").read_text() == text
    for exp in ("effnet_gru", "cnn3d"):
        scores = [m["score"] for m in fake["metrics"][exp].values()]
        assert f"{statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f}" in text
        c1 = statistics.mean(m["per_target_logloss"]["C1"] for m in fake["metrics"][exp].values())
        assert f"{c1:.4f}" in text
    assert text.index("| 1 | effnet_gru |") < text.index("| 2 | cnn3d |")
    per_fold = text[text.index("### Score per fold"):]
    assert per_fold.index("| effnet_gru |") < per_fold.index("| cnn3d |")  # same order as the leaderboard


def test_oof_cv_scores_all_folds_against_train_csv(fake):
    board = build_report(fake["runs"]).classifiers.set_index("experiment")
    labels = fake["labels"].set_index("StudyInstanceUID")
    for exp in ("effnet_gru", "cnn3d"):
        oof = pd.concat(pd.read_csv(p) for p in sorted((fake["runs"] / exp).glob("fold*/oof.csv")))
        expected = competition_score(labels.loc[oof["StudyInstanceUID"], TARGETS].to_numpy(), oof[TARGETS].to_numpy())
        assert board.loc[exp, "oof_cv"] == pytest.approx(expected, abs=1e-12)
        assert board.loc[exp, "oof_studies"] == len(labels)


def test_oof_cv_without_labels_says_how_to_fix(fake):
    (fake["data_dir"] / "train.csv").unlink()
    report, text = make_report(fake["runs"], plots=False)
    assert report.classifiers["oof_cv"].isna().all()
    assert "truth=" in text
    # the truth= override brings it back
    fake["labels"].to_csv(fake["runs"].parent / "labels.csv", index=False)
    report = build_report(fake["runs"], truth=fake["runs"].parent / "labels.csv")
    assert report.classifiers["oof_cv"].notna().all()


def test_plots_are_written_as_png(fake, tmp_path):
    figures_dir = tmp_path / "figs"
    report, text = make_report(fake["runs"], figures=figures_dir)
    names = {p.name for p in report.figures.values()}
    assert {"learning_curves.png", "per_target_logloss.png", "fold_scores.png", "localiser_curves.png",
            "localiser_fold_dice.png"} <= names
    for path in report.figures.values():
        assert path.parent == figures_dir
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000  # a drawn figure, not an empty canvas
    assert "](../figs/learning_curves.png)" in text  # linked relative to runs/report.md


def test_unfinished_and_broken_runs_are_listed_not_fatal(fake):
    broken = fake["runs"] / "cnn3d" / "fold3"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    empty = fake["runs"] / "cnn3d" / "fold4"
    empty.mkdir()
    report, text = make_report(fake["runs"], plots=True)
    names = {(r.experiment, r.fold) for r in report.unfinished}
    assert names == {("effnet_gru_384", 0), ("cnn3d", 3), ("cnn3d", 4)}
    assert "effnet_gru_384/fold0: 2 epoch(s) logged" in text
    assert "metrics.json unreadable" in text
    assert "effnet_gru_384" not in set(report.classifiers["experiment"])
    assert report.classifiers.set_index("experiment").loc["cnn3d", "n_folds"] == 3  # broken folds not averaged in
    assert "learning_curves.png" in {p.name for p in report.figures.values()}


def test_localiser_runs_get_their_own_table(fake):
    report = build_report(fake["runs"])
    assert "localiser" not in set(report.classifiers["experiment"])
    row = report.localisers.set_index("experiment").loc["localiser"]
    dice = [m["dice"] for m in fake["metrics"]["localiser"].values()]
    assert row["dice_mean"] == pytest.approx(statistics.mean(dice))
    assert row["dice_C3"] == pytest.approx(statistics.mean(m["per_vertebra_dice"]["C3"]
                                                           for m in fake["metrics"]["localiser"].values()))


def test_ensemble_cv_is_read_when_fitted(fake):
    _, text = make_report(fake["runs"], plots=False)
    assert "not fitted" in text
    fitted = {"members": ["effnet_gru", "cnn3d"], "weights": [0.7, 0.3], "combine": "logit",
              "nested_cv": {"score": 0.31234, "prob": 0.32, "logit": 0.31234},
              "spaces": {"logit": {"nested_per_fold": {"0": 0.3, "1": 0.32}}}}
    (fake["runs"] / "ensemble.json").write_text(json.dumps(fitted))
    report, text = make_report(fake["runs"], plots=False)
    assert report.ensemble.score == pytest.approx(0.31234)
    assert "**0.3123**" in text and "not fitted" not in text and "fold1 0.3200" in text
    (fake["runs"] / "ensemble.json").write_text(json.dumps({"nested_cv": 0.3}))  # not what src.ensemble writes
    report, text = make_report(fake["runs"], plots=False)
    assert report.ensemble.score is None and "unusable" in text


def test_experiments_on_different_folds_are_flagged(fake):
    import shutil

    shutil.rmtree(fake["runs"] / "cnn3d" / "fold2")
    _, text = make_report(fake["runs"], plots=False)
    assert "different folds" in text
    assert "| cnn3d |" in text and "2/3" in text


def test_cli_overrides_and_unknown_key(fake, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "board.md"
    main([f"runs={fake['runs']}", f"out={out}", "plots=false"])
    printed = capsys.readouterr().out
    assert out.exists() and "| 1 | effnet_gru |" in printed
    assert not (fake["runs"] / "report").exists()
    from src.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'run'"):
        main(["run=runs"])
    with pytest.raises(SystemExit, match="no such folder"):
        main([f"runs={tmp_path / 'nothing'}"])
    assert set(DEFAULTS) == {"runs", "out", "figures", "truth", "plots"}


@pytest.mark.slow
def test_report_ranks_two_trained_tiny_experiments(tmp_path):
    """Train two tiny real experiments on demo data, then check the report against their metrics.json."""
    import importlib

    # The pipeline is written in parallel: skip, naming the part, until every stage this run touches exists.
    for module in ("src.train", "src.synth.generate", "src.data.prepare", "src.folds", "src.models.registry",
                   "src.tasks", "src.training"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            pytest.skip(f"{module} is not importable yet ({err}); this test trains through the real pipeline")
    from src.train import main as train_main

    runs = tmp_path / "runs"
    # The 3D CNN baseline: it needs no localisation table, so this stays a few minutes.
    common = [f"runs_dir={runs}", f"demo.dir={tmp_path / 'demo'}", "demo.n_train=24", "demo.n_test=2",
              f"data_dir={tmp_path / 'no-real-data'}", f"cache_dir={tmp_path / 'cache'}",
              f"folds_dir={tmp_path / 'folds'}", "n_folds=2", "epochs=2", "num_workers=0", "progress=false",
              "prepare.size=64", "prepare.workers=1", "cnn3d.shape=[16,32,32]",
              "cnn3d.widths=[4,8]", "batch_size=4", "wandb.mode=disabled", "device=cpu"]
    for fold in (0, 1):
        train_main(["config=cnn3d", "experiment=tiny_a", f"fold={fold}", "lr=0.003", *common])
        train_main(["config=cnn3d", "experiment=tiny_b", f"fold={fold}", "lr=0.000001", *common])
    report, text = make_report(runs, figures=tmp_path / "figs")
    metrics = {exp: [json.loads((runs / exp / f"fold{k}" / "metrics.json").read_text()) for k in (0, 1)]
               for exp in ("tiny_a", "tiny_b")}
    means = {exp: statistics.mean(m["score"] for m in ms) for exp, ms in metrics.items()}
    assert list(report.classifiers["experiment"]) == sorted(means, key=means.get)
    board = report.classifiers.set_index("experiment")
    for exp, ms in metrics.items():
        assert board.loc[exp, "score_mean"] == pytest.approx(means[exp], abs=1e-12)
        assert board.loc[exp, "n_folds"] == 2
        assert f"{means[exp]:.4f}" in text
        assert board.loc[exp, "oof_cv"] == board.loc[exp, "oof_cv"]  # labels found from config.yaml: not NaN
    assert {p.name for p in report.figures.values()} >= {"learning_curves.png", "per_target_logloss.png"}
