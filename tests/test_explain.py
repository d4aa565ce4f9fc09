"""Explanation pictures: the model's attention output, the choice of studies, the picture and page of a run's
studies (python -m src.explain), the pictures the training loop draws for W&B without changing a number,
and infer.py explain=true (src/tasks/explanation*.py, src/reporting/explanations.py, src/inference/explanations.py)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fake_training_data import install_folds, make_tiny_dataset, overrides
from infer_helpers import MODELS, neck_volume, run_infer, save_untrained_run, write_study, write_test_csv
from src import TARGETS
from src.config import load_config
from src.models.registry import build_model
from src.tasks.explanation import fractured_studies, worst_studies
from wandb_recorder import recording_run_class

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_effnet(seed=0):
    cfg = load_config(["config=effnet_gru", *MODELS["effnet_gru"]])
    torch.manual_seed(seed)
    return build_model(cfg).eval(), cfg


def test_attention_weights_sum_to_one_and_leave_the_predictions_as_they_were():
    model, cfg = tiny_effnet()
    n = cfg["effnet_gru"]["n_slices"]
    images = torch.rand(2, 7, n, 3, 32, 32)
    with torch.no_grad():
        out = model({"images": images})
        # the forward as it was before the attention output: pool without weights, then the heads
        b, v = images.shape[:2]
        slices = model.encoder(images.flatten(0, 2))
        sequence, _ = model.gru(slices.view(b * v, n, -1).float())
        pooled = model.pool(sequence).view(b, v, -1)
        vertebra_logits = model.vertebra_head(pooled).squeeze(-1) + model.vertebra_bias
    assert out["attention"].shape == (2, 7, n)
    assert torch.all(out["attention"] >= 0)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(2, 7))
    assert torch.equal(out["vertebra_logits"], vertebra_logits)  # bit for bit
    assert not torch.allclose(out["attention"][0, 0], torch.full((n,), 1.0 / n))  # weights, not a constant


def _frames():
    uids = [f"1.2.3.{i}" for i in range(5)]
    labels = pd.DataFrame(np.zeros((5, 8)), columns=TARGETS).assign(StudyInstanceUID=uids)
    labels.loc[1, ["patient_overall", "C2"]] = 1
    labels.loc[3, ["patient_overall", "C5"]] = 1
    probs = np.full((5, 8), 0.05)
    probs[1, [0, 2]] = 0.9   # fractured at C2, predicted so: small loss
    probs[3] = 0.02          # fractured, predicted intact: the worst
    probs[4, 0] = 0.7        # intact, patient_overall predicted fractured: second worst
    oof = pd.DataFrame(probs, columns=TARGETS)
    oof.insert(0, "StudyInstanceUID", uids)
    return oof, labels


def test_top_errors_are_the_studies_with_the_highest_loss_worst_first():
    oof, labels = _frames()
    assert worst_studies(oof, labels, 2) == ["1.2.3.3", "1.2.3.4"]
    assert worst_studies(oof, labels, 10)[:2] == ["1.2.3.3", "1.2.3.4"] and len(worst_studies(oof, labels, 10)) == 5
    assert fractured_studies(oof, labels) == ["1.2.3.1", "1.2.3.3"]
    assert fractured_studies(oof, labels, 1) == ["1.2.3.1"]


def _tiny_run(tmp_path):
    """The tiny cached dataset and an untrained effnet_gru run on it whose oof.csv holds fold 0's studies."""
    tiny = make_tiny_dataset(tmp_path / "tiny", n_studies=10, slices=14, size=16)
    runs = Path(tiny["runs_dir"])
    folder = save_untrained_run(runs, "effnet_gru", tiny["data_dir"],
                                extra=[f"cache_dir={tiny['cache_dir']}", f"localisation_table={tiny['localisation_table']}"])
    held_out = [u for i, u in enumerate(tiny["uids"]) if i % 5 == 0]  # fold 0 of the tiny folds
    rng = np.random.default_rng(1)
    oof = pd.DataFrame(rng.random((len(held_out), 8)), columns=TARGETS)
    oof.insert(0, "StudyInstanceUID", held_out)
    oof.to_csv(folder / "oof.csv", index=False)
    return tiny, runs, folder, oof


def test_explain_draws_the_worst_held_out_studies_of_a_run_and_a_page(tmp_path, capsys):
    from src.explain import main

    tiny, runs, folder, oof = _tiny_run(tmp_path)
    labels = pd.read_csv(Path(tiny["data_dir"]) / "train.csv", dtype={"StudyInstanceUID": str})
    result = main([f"runs_dir={runs}", "run=effnet_gru", "n=1"])
    worst = worst_studies(oof, labels, 1)
    assert list(result["pictures"]) == worst
    png = folder / "explanations" / f"{worst[0]}.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    page = (folder / "explanations" / "index.html").read_text()
    assert f'src="{worst[0]}.png"' in page and worst[0] in page
    # the oof probabilities were random, not the model's: the picture says they differ
    assert "probabilities differ" in capsys.readouterr().out

    named = main([f"runs_dir={runs}", f"study={tiny['uids'][1]}", f"out={tmp_path / 'one'}"])
    assert list(named["pictures"]) == [tiny["uids"][1]] and (tmp_path / "one" / f"{tiny['uids'][1]}.png").exists()


def test_explain_refuses_clearly(tmp_path, capsys):
    from src.config import ConfigError
    from src.explain import main

    tiny, runs, _, _ = _tiny_run(tmp_path)
    with pytest.raises(ConfigError, match="not in the cache"):
        main([f"runs_dir={runs}", "study=1.2.999"])
    with pytest.raises(ConfigError, match="effnet_gru"):  # the error lists the runs that exist
        main([f"runs_dir={runs}", "run=cnn3d"])
    with pytest.raises(ConfigError, match="fractured"):
        main([f"runs_dir={runs}", "studies=,"])
    with pytest.raises(ConfigError, match="device"):
        main([f"runs_dir={runs}", "device=gpu"])


def test_the_explanation_shows_what_validation_fed_the_model(tmp_path):
    from src.tasks.explanation import explain_cached
    from src.localisation.table import read_table
    from src.tasks.vertebra import VertebraDataset

    tiny, runs, folder, _ = _tiny_run(tmp_path)
    from src.models.checkpoint import trained_model

    model, config = trained_model(folder)
    uid = tiny["uids"][0]
    dataset = VertebraDataset(tiny["cache_dir"], [uid], read_table(tiny["localisation_table"], complete=False),
                              config["effnet_gru"], config["windows"])
    expl = explain_cached(model, dataset, uid)
    with torch.no_grad():
        out = model({"images": dataset[0]["images"][None]})
    np.testing.assert_allclose(expl.probs, torch.sigmoid(out["logits"][0]).numpy(), atol=1e-6)
    n = config["effnet_gru"]["n_slices"]
    assert expl.crops.shape == (7, n, 32, 32) and expl.slice_numbers.shape == (7, n)
    # C1's slices lie inside its localised range (slices 1-2 of the tiny studies)
    assert set(expl.slice_numbers[0]) <= {1, 2} and expl.slice_numbers[6].min() >= 13
    centre = config["effnet_gru"]["neighbours"] * len(config["windows"])
    np.testing.assert_array_equal(expl.crops, dataset[0]["images"][:, :, centre].numpy())


def _fit(tiny, tmp_path, name, explain, monkeypatch):
    """One tiny effnet_gru training through the real loop, W&B calls recorded; returns (folder, logged)."""
    import src.training.loop as loop
    from src.data.folds import ensure_folds
    from src.tasks import get_task_class

    logged = {}
    monkeypatch.setattr(loop, "WandbRun", recording_run_class(logged))
    cfg = load_config(["config=effnet_gru", *overrides(tiny, runs_dir=str(tmp_path / name), explain_studies=explain),
                       *MODELS["effnet_gru"][:-1], "prepare.size=16"])
    task = get_task_class("vertebra")(cfg, tiny["data_dir"], tiny["cache_dir"], ensure_folds(cfg, tiny["data_dir"]),
                                      announce=lambda *_: None)
    folder = tmp_path / name / "effnet_gru" / "fold0"
    loop.fit(cfg, task, folder, dataset_kind="demo", announce=lambda *_: None)
    return folder, logged


@pytest.mark.slow  # two tiny trainings: about 40 s on a loaded 2-core machine
def test_training_draws_held_out_pictures_for_wandb_and_changes_no_number(tmp_path, monkeypatch):
    tiny = make_tiny_dataset(tmp_path / "tiny", n_studies=10, slices=14, size=16)
    install_folds(tiny)
    plain, _ = _fit(tiny, tmp_path, "without", 0, monkeypatch)
    folder, logged = _fit(tiny, tmp_path, "with", 2, monkeypatch)
    assert not (plain / "explanations").exists()
    pictures = sorted((folder / "explanations").glob("*.png"))
    assert len(pictures) == 2 and all(p.read_bytes()[:8] == PNG for p in pictures)
    images = logged["media"]["explanations"]
    assert sorted(Path(i.path).name for i in images) == [p.name for p in pictures]
    oof = pd.read_csv(folder / "oof.csv", dtype={"StudyInstanceUID": str})
    labels = pd.read_csv(Path(tiny["data_dir"]) / "train.csv", dtype={"StudyInstanceUID": str})
    assert [i.caption for i in images] == worst_studies(oof, labels, 2)
    assert (folder / "oof.csv").read_bytes() == (plain / "oof.csv").read_bytes()
    with_metrics, without = (json.loads((f / "metrics.json").read_text()) for f in (folder, plain))
    assert with_metrics == without

    # every key the dashboard reads is one this training logged (tests/test_dashboard.py checks it fast)
    from src.reporting.dashboard import build_workspace, used_keys

    used = used_keys(build_workspace("e", "p", "demo", None))
    assert used["history"] <= logged["history"], used["history"] - logged["history"]
    assert used["summary"] <= logged["summary"], used["summary"] - logged["summary"]
    assert used["media"] <= set(logged["media"]), used["media"] - set(logged["media"])


def test_infer_explain_true_writes_a_picture_per_study_beside_the_submission(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "kaggle"
    uids = ["1.2.826.5.1", "1.2.826.5.2"]
    for uid in uids:
        write_study(data / "test_images", uid, neck_volume(rng))
    write_test_csv(data / "test.csv", uids)
    runs = tmp_path / "runs"
    for name in ("effnet_gru", "localiser"):
        save_untrained_run(runs, name, data)
    out = tmp_path / "out" / "submission.csv"
    run_infer(data, runs, out, "members=[effnet_gru]", "workers=0")
    assert not (out.parent / "explanations").exists()  # off by default
    result = run_infer(data, runs, out, "members=[effnet_gru]", "workers=0", "explain=true")
    folder = out.parent / "explanations"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{u}.png" for u in uids)
    page = (folder / "index.html").read_text()
    assert all(u in page for u in uids) and "effnet_gru fold 0, test" in page
    assert result["summary"]  # the submission was written as always
    assert set(result["predictions"]) == set(uids)
