"""python -m src.dashboard builds the W&B workspace offline and writes its specification; every key its
panels read is one the training loop logs, found by running the loop's own logging code (history_row,
WandbRun.log_epoch and finish, the task's figures), so a renamed or dropped metric fails here."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml

from src import TARGETS
from src.metric import summarize
from src.reporting.dashboard import build_workspace, used_keys
from wandb_recorder import recording_run_class


def loop_logged_keys(tmp_path, history_row=None) -> dict:
    """What one classifier run logs to W&B, by kind, from the training loop's code (src/training/loop.py:
    history_row each epoch, the task's figures, the explanation pictures and the summary at the end)."""
    from src.tasks.study_task import StudyClassificationTask
    from src.training import loop

    history_row = history_row or loop.history_row
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 8)) < 0.4).astype(float)
    probs = rng.random((12, 8))
    metrics = summarize(labels, probs, prior_labels=labels)  # what StudyClassificationTask.evaluate returns
    logged = {}
    cfg = {"wandb": {"mode": "disabled"}}
    run = recording_run_class(logged)(cfg, "effnet_gru", "demo")
    for epoch in range(2):
        run.log_epoch(history_row(epoch, 0.5, 0.4, metrics, "score", 1e-3, 1.0), epoch)
    uids = [f"1.2.3.{i}" for i in range(12)]
    oof = pd.DataFrame(probs, columns=TARGETS).assign(StudyInstanceUID=uids)
    task = SimpleNamespace(val_frame=pd.DataFrame(labels, columns=TARGETS).assign(StudyInstanceUID=uids))
    figures = StudyClassificationTask.figures(task, metrics, oof, None, tmp_path)
    final = {"score": metrics["score"], **metrics, "best_epoch": 1, "n_val": 12}  # as loop._finish forms it
    run.finish(final, figures, [], explanations={uids[0]: tmp_path / "roc_curves.png"})
    return logged


def missing(workspace, logged) -> dict:
    used = used_keys(workspace)
    return {"history": used["history"] - logged["history"], "summary": used["summary"] - logged["summary"],
            "media": used["media"] - set(logged["media"])}


def test_every_key_the_dashboard_reads_is_logged_by_the_training_loop(tmp_path):
    workspace = build_workspace("entity", "project", "demo", None)
    used = used_keys(workspace)
    assert {"score", "train_loss", "epoch"} <= used["history"]
    assert {"score", "prior_score", "val_C1_logloss", "val_patient_overall_logloss"} <= used["summary"]
    assert "explanations" in used["media"]
    assert missing(workspace, loop_logged_keys(tmp_path)) == {"history": set(), "summary": set(), "media": set()}


def test_a_renamed_metric_breaks_the_check(tmp_path):
    from src.training import loop

    def renamed(*args):
        row = loop.history_row(*args)
        row["training_loss"] = row.pop("train_loss")
        return row

    workspace = build_workspace("entity", "project", "demo", None)
    assert missing(workspace, loop_logged_keys(tmp_path, renamed))["history"] == {"train_loss"}


def _finished_run(runs, experiment, fold, score, kind="demo"):
    folder = runs / experiment / f"fold{fold}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"score": score, "prior_score": 0.57}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": experiment, "dataset_kind": kind}))


def test_offline_it_writes_the_specification_with_the_panels_and_says_so(tmp_path, monkeypatch, capsys):
    from src.dashboard import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    runs = tmp_path / "runs"
    _finished_run(runs, "cnn3d", 0, 0.55)
    _finished_run(runs, "effnet_gru", 0, 0.19)
    _finished_run(runs, "effnet_gru", 1, 0.25)
    result = main([f"runs_dir={runs}"])
    assert result["mode"] == "offline"
    out = runs / "dashboard.json"
    said = capsys.readouterr().out
    assert f"wrote the workspace it would create to {out}" in said and "nothing was created" in said
    assert "best run effnet_gru-fold0" in said
    spec = json.loads(out.read_text())
    assert spec["project"] == "rsna-2022-cspine" and "(demo)" in spec["displayName"]
    text = json.dumps(spec)
    sections = [s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]]
    assert sections[:3] == ["Which run is better", "Learning curves", "Log loss per target"]
    assert "effnet_gru-fold0" in sections[3]
    panels = [p for s in spec["spec"]["section"]["panelBankConfig"]["sections"] for p in s["panels"]]
    configs = json.dumps([p["config"] for p in panels])
    for key in ("train_loss", "prior_score", "val_C7_logloss", "explanations"):
        assert f'"{key}"' in configs, key
    assert '"groupArea": "stddev"' in configs and '"groupBy": "group"' in configs
    assert "demo" in text and "tags" in text  # the tag filter

    real = main([f"runs_dir={runs}", "tag=real", f"out={tmp_path / 'real.json'}"])
    assert "(real)" in json.loads((tmp_path / "real.json").read_text())["displayName"] and real["mode"] == "offline"
