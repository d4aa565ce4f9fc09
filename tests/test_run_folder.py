"""A run folder is never trained over by accident: finished runs stop a second training, unfinished ones
resume, overwrite=true moves the old run aside, and two trainings cannot share one folder."""
import json

import pytest
import torch

from src import locks
from src.train import main
from src.training.run_folder import changed_keys, lock_file
from fake_training_data import install_folds, make_tiny_dataset, overrides
from interruptions import stopped_after_first_epoch

TINY_CNN = ["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1"]
STRAIGHT = dict(epochs=2, max_steps_per_epoch=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    install_folds(data)
    return data


def args_for(tiny, name: str, **extra) -> list[str]:
    return TINY_CNN + overrides(tiny, **{**STRAIGHT, **extra}) + [f"runs_dir={tiny['runs_dir']}_{name}"]


def folder_of(tiny, name: str):
    from pathlib import Path

    return Path(f"{tiny['runs_dir']}_{name}") / "cnn3d" / "fold0"


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_second_training_into_a_finished_run_stops_and_touches_nothing(tiny, capsys):
    main(args_for(tiny, "finished"))
    folder = folder_of(tiny, "finished")
    before = snapshot(folder)
    with pytest.raises(SystemExit) as stopped:
        main(args_for(tiny, "finished", lr=0.5))
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert str(folder) in message and "finished run" in message
    assert "resume=true" in message and "overwrite=true" in message
    assert snapshot(folder) == before  # metrics, oof, history and both checkpoints as they were


def test_resume_of_a_finished_run_with_no_more_epochs_trains_nothing(tiny, capsys):
    main(args_for(tiny, "again"))
    folder = folder_of(tiny, "again")
    before = snapshot(folder)
    metrics = main(args_for(tiny, "again", resume=True))
    assert metrics["score"] == json.loads(before["metrics.json"])["score"]
    assert "nothing to train" in capsys.readouterr().out
    assert snapshot(folder) == before


def test_overwrite_moves_the_finished_run_aside_and_starts_over(tiny, capsys):
    main(args_for(tiny, "overwrite"))
    folder = folder_of(tiny, "overwrite")
    old = snapshot(folder)
    main(args_for(tiny, "overwrite", overwrite=True, lr=0.05))
    moved = [p for p in folder.parent.iterdir() if p.name.startswith("fold0.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == old  # nothing deleted
    assert "moved to" in capsys.readouterr().out
    assert (folder / "metrics.json").exists()
    assert not torch.equal(*[torch.load(f / "best.pt", weights_only=True)["model"]["head.weight"]
                             for f in (folder, moved[0])])


def kill_after_first_epoch(monkeypatch, args):
    stopped_after_first_epoch(monkeypatch, lambda: main(args))


def test_an_interrupted_run_is_resumed_without_being_asked_and_ends_as_an_uninterrupted_one(tiny, monkeypatch, capsys):
    main(args_for(tiny, "straight"))
    kill_after_first_epoch(monkeypatch, args_for(tiny, "killed"))
    folder = folder_of(tiny, "killed")
    assert (folder / "best.pt").exists() and not (folder / "metrics.json").exists()
    torch.rand(100)  # a fresh process would start from other RNG states
    main(args_for(tiny, "killed"))  # no resume=true: an unfinished run is continued, not restarted
    assert "resuming it" in capsys.readouterr().out
    straight = torch.load(folder_of(tiny, "straight") / "last.pt", weights_only=True)
    resumed = torch.load(folder / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 1
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key


def test_an_interrupted_run_is_not_resumed_with_other_settings(tiny, monkeypatch, capsys):
    kill_after_first_epoch(monkeypatch, args_for(tiny, "changed"))
    folder = folder_of(tiny, "changed")
    before = snapshot(folder)
    with pytest.raises(SystemExit):
        main(args_for(tiny, "changed", lr=0.123))
    message = capsys.readouterr().err
    assert "lr" in message and "0.123" in message and "overwrite=true" in message
    assert snapshot(folder) == before


def test_a_training_already_running_in_the_folder_stops_the_second(tiny, capsys):
    folder = folder_of(tiny, "locked")
    with locks.exclusive(lock_file(folder), "the first training"):
        with pytest.raises(SystemExit) as stopped:
            main(args_for(tiny, "locked"))
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert str(folder) in message and "pid" in message
    assert not (folder / "metrics.json").exists()
    main(args_for(tiny, "locked"))  # once the first is gone, it runs
    assert (folder / "metrics.json").exists()


def test_temporaries_left_by_a_killed_write_are_cleaned(tiny, monkeypatch):
    kill_after_first_epoch(monkeypatch, args_for(tiny, "stale"))
    folder = folder_of(tiny, "stale")
    stale = folder / ".best.pt.abc123.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    main(args_for(tiny, "stale"))
    assert not stale.exists()


def test_changed_keys_ignores_what_a_resume_may_change():
    saved = {"lr": 0.1, "epochs": 2, "wandb": {"mode": "offline"}, "cnn3d": {"widths": [4, 8]}}
    current = {"lr": 0.1, "epochs": 5, "wandb": {"mode": "online"}, "cnn3d": {"widths": [4, 16]}}
    assert changed_keys(saved, current) == ["cnn3d.widths"]
    # keys the code gained or dropped since (a run started with the old task: key) are no change of settings
    assert changed_keys({**saved, "task": "classify"}, {**current, "profile": "auto"}) == ["cnn3d.widths"]
