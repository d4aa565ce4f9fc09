"""The training loop on a tiny cached dataset: run folder, exact resume, NaN stop, schedule, resampling."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import src.training.loop as loop
from src import TARGETS
from src.models.losses import competition_loss
from src.models.registry import register_model
from src.tasks.volume import ensure_resampled, resample_volume
from src.train import main
from src.training import TrainingStopped
from src.training.schedule import warmup_cosine_factor
from fake_training_data import install_folds, make_tiny_dataset, overrides
from interruptions import stopped_after_first_epoch

TINY_CNN = ["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    install_folds(data)
    return data


def run_folder(tiny, experiment="cnn3d", fold=0):
    from pathlib import Path

    return Path(tiny["runs_dir"]) / experiment / f"fold{fold}"


STRAIGHT = dict(epochs=2, max_steps_per_epoch=3)


@pytest.fixture(scope="module")
def straight_run(tiny):
    """Two uninterrupted epochs: the run-folder checks and the resume comparison both read it."""
    return main(TINY_CNN + overrides(tiny, **STRAIGHT))


def test_run_folder_holds_everything_the_spec_names(tiny, straight_run):
    metrics = straight_run
    folder = run_folder(tiny)
    for name in ["config.yaml", "last.pt", "best.pt", "history.csv", "metrics.json", "oof.csv",
                 "confusion_matrices.png", "roc_curves.png"]:
        assert (folder / name).exists(), name
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    for column in ["train_loss", "val_loss", "score", "lr", "seconds", "train_items_per_s",
                   *[f"val_{t}_logloss" for t in TARGETS]]:
        assert column in history.columns and history[column].notna().all(), column
    assert (history["train_items_per_s"] > 0).all() and "peak_gpu_gib" not in history  # CPU: no GPU memory
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["score"] == pytest.approx(metrics["score"])
    assert {"prior_score", "per_target_logloss", "per_target_auc", "best_epoch", "n_val"} <= set(saved)
    assert saved["score"] == pytest.approx(history.loc[saved["best_epoch"], "score"])  # best, re-evaluated
    # the validation loss is the competition loss, so on the same predictions it equals the score
    assert history["val_loss"].to_numpy() == pytest.approx(history["score"].to_numpy(), rel=1e-4)
    oof = pd.read_csv(folder / "oof.csv", dtype={"StudyInstanceUID": str})
    folds = pd.read_csv(tiny["folds_file"], dtype={"StudyInstanceUID": str})
    assert sorted(oof["StudyInstanceUID"]) == sorted(folds.loc[folds["fold"] == 0, "StudyInstanceUID"])
    assert list(oof.columns) == ["StudyInstanceUID", *TARGETS] and ((oof[TARGETS] >= 0) & (oof[TARGETS] <= 1)).all().all()
    state = torch.load(folder / "last.pt", weights_only=True)  # plain tensors and types only
    assert state["epoch"] == 1 and "rng" in state and "optimizer" in state


def test_prior_score_uses_the_training_folds_label_rates(tiny):
    from src.metric import competition_score

    main(TINY_CNN + overrides(tiny, epochs=1, runs_dir=tiny["runs_dir"] + "_prior"))
    saved = json.loads((run_folder({"runs_dir": tiny["runs_dir"] + "_prior"}) / "metrics.json").read_text())
    labels = pd.DataFrame(tiny["labels"], columns=TARGETS).assign(fold=np.arange(len(tiny["labels"])) % 5)
    rates = labels.loc[labels["fold"] != 0, TARGETS].mean().to_numpy()
    val = labels.loc[labels["fold"] == 0, TARGETS].to_numpy(float)
    assert saved["prior_score"] == pytest.approx(competition_score(val, np.tile(rates, (len(val), 1))))


def killed_after_first_epoch(monkeypatch, args):
    """Run ``main(args)`` as a process that dies right after writing the first epoch's last.pt."""
    stopped_after_first_epoch(monkeypatch, lambda: main(args))


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny, straight_run, monkeypatch):
    args = TINY_CNN + overrides(tiny, **STRAIGHT)
    straight = torch.load(run_folder(tiny) / "last.pt", weights_only=True)

    killed_after_first_epoch(monkeypatch, args + [f"runs_dir={tiny['runs_dir']}_resumed"])
    # draw some random numbers: a fresh process would start from other RNG states
    torch.rand(100), np.random.rand(100)
    main(args + [f"runs_dir={tiny['runs_dir']}_resumed", "resume=true"])
    folder = run_folder({"runs_dir": tiny["runs_dir"] + "_resumed"})
    resumed = torch.load(folder / "last.pt", weights_only=True)

    assert resumed["epoch"] == straight["epoch"] == 1
    assert straight["model"].keys() == resumed["model"].keys()
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0, 1]


def test_resume_with_persistent_validation_workers_continues_exactly(tiny, monkeypatch):
    """Validation workers persist (num_workers > 0) and start again in a resumed process; that start must not
    shift the random stream of the epochs after the first resumed one (dropout masks, here)."""
    args = TINY_CNN + overrides(tiny, epochs=3, max_steps_per_epoch=3, num_workers=1)
    main(args + [f"runs_dir={tiny['runs_dir']}_workers"])
    killed_after_first_epoch(monkeypatch, args + [f"runs_dir={tiny['runs_dir']}_workers_resumed"])
    main(args + [f"runs_dir={tiny['runs_dir']}_workers_resumed", "resume=true"])
    runs = [run_folder({"runs_dir": tiny["runs_dir"] + suffix}) for suffix in ("_workers", "_workers_resumed")]
    straight, resumed = (pd.read_csv(folder / "history.csv") for folder in runs)
    assert list(resumed["epoch"]) == [0, 1, 2]
    assert list(resumed["train_loss"]) == list(straight["train_loss"])  # epoch 2 too, the second resumed one
    weights = [torch.load(folder / "last.pt", weights_only=True)["model"] for folder in runs]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_resume_with_a_weight_average_restores_both_weights(tiny, monkeypatch):
    args = TINY_CNN + overrides(tiny, **STRAIGHT) + ["ema_decay=0.8"]
    main(args + [f"runs_dir={tiny['runs_dir']}_ema"])
    straight = torch.load(run_folder({"runs_dir": tiny["runs_dir"] + "_ema"}) / "last.pt", weights_only=True)
    killed_after_first_epoch(monkeypatch, args + [f"runs_dir={tiny['runs_dir']}_ema_resumed"])
    main(args + [f"runs_dir={tiny['runs_dir']}_ema_resumed", "resume=true"])
    resumed = torch.load(run_folder({"runs_dir": tiny["runs_dir"] + "_ema_resumed"}) / "last.pt", weights_only=True)
    assert resumed["ema_steps"] == straight["ema_steps"] == 2 * STRAIGHT["max_steps_per_epoch"]
    for part in ("model", "train_model"):
        for key in straight[part]:
            assert torch.equal(straight[part][key], resumed[part][key]), (part, key)
    assert any(not torch.equal(straight["model"][k], straight["train_model"][k]) for k in straight["model"])


def test_a_weight_average_leaves_the_trajectory_alone_and_history_scores_both(tiny):
    """With ema_decay on, history.csv scores the trained weights beside the average; training itself is
    unchanged, so that column repeats, epoch by epoch, the score of the same run without the average."""
    args = TINY_CNN + overrides(tiny, **STRAIGHT)
    main(args + [f"runs_dir={tiny['runs_dir']}_plain"])
    main(args + [f"runs_dir={tiny['runs_dir']}_average", "ema_decay=0.8"])
    plain = pd.read_csv(run_folder({"runs_dir": tiny["runs_dir"] + "_plain"}) / "history.csv")
    averaged = pd.read_csv(run_folder({"runs_dir": tiny["runs_dir"] + "_average"}) / "history.csv")
    assert not any(c.startswith("trained_") for c in plain.columns)
    assert list(averaged["train_loss"]) == list(plain["train_loss"])
    assert list(averaged["trained_score"]) == list(plain["score"])
    assert list(averaged["score"]) != list(plain["score"])  # the average is what the score column judges


def test_weight_average_follows_the_weights_with_a_ramped_decay():
    from src.training.ema import WeightAverage

    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    average = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].num_batches_tracked += 5
    average.update(net)  # first step: decay min(0.9, 2/11), mostly the new weights
    d = 2 / 11
    expected = d * start["0.weight"] + (1 - d) * net[0].weight
    assert torch.allclose(average.model[0].weight, expected)
    assert int(average.model[1].num_batches_tracked) == 5  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in average.model.parameters())
    for _ in range(300):
        average.update(net)
    assert torch.allclose(average.model[0].weight, net[0].weight, atol=1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(net, decay=1.0)


@register_model("nan_after_first_epoch")
class NanAfterFirstEpoch(nn.Module):
    """Trains normally for ``epochs_ok`` epochs worth of steps, then returns a NaN loss."""

    task = "volume"
    settings = "cnn3d"  # fed as the 3D CNN is
    steps_ok = 2

    def __init__(self, cfg):
        super().__init__()
        self.head = nn.Linear(1, 8)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        logits = self.head(batch["volume"].mean(dim=(1, 2, 3, 4))[:, None])
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = competition_loss(logits, batch["labels"])
            if self.training:
                self.calls += 1
                if self.calls > self.steps_ok:
                    out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny, capsys):
    args = TINY_CNN + overrides(tiny, epochs=3, max_steps_per_epoch=2, model="nan_after_first_epoch",
                                runs_dir=tiny["runs_dir"] + "_nan")
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 1
    message = capsys.readouterr().err
    assert "loss is nan at epoch 1, step 0" in message and "end of epoch 0" in message
    folder = run_folder({"runs_dir": tiny["runs_dir"] + "_nan"})
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 0
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0]
    assert not (folder / "metrics.json").exists()


def test_fit_raises_training_stopped_for_callers_other_than_main(tiny):
    from src.config import load_config
    from src.data.folds import ensure_folds
    from src.tasks import get_task_class

    cfg = load_config(TINY_CNN + overrides(tiny, model="nan_after_first_epoch", runs_dir=tiny["runs_dir"] + "_nan2")
                      + [])
    folds = ensure_folds(cfg, tiny["data_dir"])
    task = get_task_class("volume")(cfg, tiny["data_dir"], tiny["cache_dir"], folds)
    NanAfterFirstEpoch.steps_ok = 0
    try:
        with pytest.raises(TrainingStopped, match="no checkpoint of this run was written yet"):
            loop.fit(cfg, task, run_folder({"runs_dir": tiny["runs_dir"] + "_nan2"}))
    finally:
        NanAfterFirstEpoch.steps_ok = 2


def test_warmup_then_cosine():
    factors = [warmup_cosine_factor(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert all(a < b for a, b in zip(factors[:4], factors[1:5]))  # rising through the warm-up
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # then falling
    assert factors[-1] < 0.05
    assert warmup_cosine_factor(0, 0, 10) == pytest.approx(1.0)


def test_resample_volume_averages_when_shrinking_and_keeps_hu():
    hu = np.zeros((4, 4, 4), dtype=np.int16)
    hu[:2] = 1000
    out = resample_volume(hu, (2, 2, 2))
    assert out.dtype == np.int16 and out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[0], 1000)
    np.testing.assert_array_equal(out[1], 0)
    assert resample_volume(hu, (8, 6, 6)).shape == (8, 6, 6)  # growing works too


def test_resampled_cache_is_written_once(tiny, tmp_path):
    uids = tiny["uids"][:2]
    folder = ensure_resampled(tiny["cache_dir"], uids, (4, 8, 8), progress=False)
    first = (folder / f"{uids[0]}.npy").stat().st_mtime_ns
    lines = []
    ensure_resampled(tiny["cache_dir"], uids, (4, 8, 8), progress=False, announce=lines.append)
    assert lines == [] and (folder / f"{uids[0]}.npy").stat().st_mtime_ns == first
    assert np.load(folder / f"{uids[0]}.npy").shape == (4, 8, 8)


def test_limit_studies_keeps_the_first_studies_of_each_split(tiny):
    from src.config import load_config
    from src.data.folds import ensure_folds
    from src.tasks import get_task_class

    cfg = load_config(TINY_CNN + overrides(tiny, limit_studies=3))
    task = get_task_class("volume")(cfg, tiny["data_dir"], tiny["cache_dir"], ensure_folds(cfg, tiny["data_dir"]))
    train_set, val_set = task.datasets()
    assert len(train_set) == 3 and len(val_set) == 2  # fold 0 has only two validation studies
    assert set(train_set.study_uids).isdisjoint(val_set.study_uids)
    item = train_set[0]
    assert item["volume"].shape == (1, 8, 16, 16) and item["labels"].shape == (8,)
    assert 0 <= float(item["volume"].min()) and float(item["volume"].max()) <= 1


def test_an_unknown_model_name_is_a_config_error_before_any_data_work(tiny):
    from src.config import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'cnn3e'.*cnn3d"):
        main(TINY_CNN + overrides(tiny, model="cnn3e"))
