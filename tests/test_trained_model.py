"""From a run folder to a model ready to predict (src/models/checkpoint.py ``trained_model``), and runs
saved under names from before the localiser's spelling was settled (src/runs.py ``RENAMED``)."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from fake_training_data import make_tiny_dataset
from infer_helpers import save_untrained_run
from src.models.checkpoint import CheckpointError, trained_model
from src.runs import RunNotFoundError, select_folds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _spell_the_old_way(folder):
    """Rewrite a localiser run's saved config as runs trained before the rename wrote it."""
    state = torch.load(folder / "best.pt", weights_only=True)
    config = state["config"]
    config["localizer"] = config.pop("localiser")
    config["model"] = state["model_name"] = "localizer"
    torch.save(state, folder / "best.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_run_folder_gives_the_model_and_config_it_was_trained_with(tiny, tmp_path):
    folder = save_untrained_run(tmp_path / "runs", "effnet_gru", tiny["data_dir"])
    model, config = trained_model(folder)
    saved = torch.load(folder / "best.pt", weights_only=True)
    assert config["model"] == "effnet_gru" and config["pretrained"] is False
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name


def test_without_a_config_in_the_checkpoint_the_folder_config_serves(tiny, tmp_path):
    folder = save_untrained_run(tmp_path / "runs", "cnn3d", tiny["data_dir"])
    state = torch.load(folder / "best.pt", weights_only=True)
    del state["config"]
    torch.save(state, folder / "best.pt")
    assert trained_model(folder)[1]["model"] == "cnn3d"
    (folder / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="neither it nor a config.yaml"):
        trained_model(folder)


def test_weights_that_do_not_fit_their_config_name_the_file(tiny, tmp_path):
    folder = save_untrained_run(tmp_path / "runs", "cnn3d", tiny["data_dir"])
    state = torch.load(folder / "best.pt", weights_only=True)
    state["model"] = {name: t[..., :1] if t.dim() else t for name, t in state["model"].items()}
    torch.save(state, folder / "best.pt")
    with pytest.raises(CheckpointError, match=f"{folder / 'best.pt'}.*do not fit"):
        trained_model(folder)


def test_a_localiser_saved_under_the_old_spelling_still_loads(tiny, tmp_path):
    folder = save_untrained_run(tmp_path / "runs", "localiser", tiny["data_dir"])
    _spell_the_old_way(folder)
    model, config = trained_model(folder)
    assert config["model"] == "localiser" and "localiser" in config and "localizer" not in config
    assert type(model).__name__ == "Localiser"


def test_a_run_folder_under_the_old_name_is_pointed_out_not_ignored(tiny, tmp_path):
    runs = tmp_path / "runs"
    save_untrained_run(runs, "localiser", tiny["data_dir"])
    shutil.move(runs / "localiser", runs / "localizer")
    with pytest.raises(RunNotFoundError, match=r"under its old name: `mv .*localizer .*localiser`"):
        select_folds(runs, "localiser")
    (runs / "localizer").rename(runs / "localiser")
    assert list(select_folds(runs, "localiser")) == [0]
