"""Tests of stage 1, the vertebra localiser (src/localisation, src/models/localiser.py, src/localise.py).

Hand-made label volumes check the maths (Dice, slice IoU, extents, estimates) and the table's mapping
to DICOM file numbers and original pixels, for a study stored reversed and one with numbering gaps;
a tiny cached dataset checks that the localiser trains through the one loop and writes the table.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from src import VERTEBRAE
from src.localisation.extents import fill_missing, find_extents, main_run
from src.localisation.metrics import dice_per_vertebra, range_iou, slice_range_iou, true_slice_ranges
from src.localisation.resample import probs_to_labels, resample_mask
from src.localisation.table import COLUMNS, LEVEL_COLUMNS, read_table, study_rows

# (first slice, last slice) of C1..C7 in a 40-slice hand-made study, head first
BANDS = [(4, 7), (8, 12), (13, 16), (17, 20), (21, 24), (25, 28), (29, 32)]


def banded_labels(n_slices: int = 40, size: int = 32, bands=BANDS, rows=(10, 20), cols=(12, 22)) -> np.ndarray:
    labels = np.zeros((n_slices, size, size), dtype=np.uint8)
    for v, (lo, hi) in enumerate(bands, start=1):
        labels[lo:hi + 1, rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = v
    return labels


def tiny_cfg(min_voxel_fraction: float = 0.0) -> dict:
    return {"localiser": {"min_voxel_fraction": min_voxel_fraction}}


# ---- metrics ----

def test_dice_on_hand_made_arrays():
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :2, :2] = 1          # C1: 4 true voxels
    pred[0, :2, :1] = 1           # 2 predicted, both right -> 2*2/(4+2)
    truth[2, 0, 0] = 3            # C3 missed entirely -> 0
    pred[3, 3, 3] = 5             # C5 predicted but absent -> 0
    pred[1, 1, 1] = 9             # a thoracic label counts as background
    dice = dice_per_vertebra(pred, truth)
    assert dice["C1"] == pytest.approx(2 * 2 / 6)
    assert dice["C3"] == 0.0 and dice["C5"] == 0.0
    assert math.isnan(dice["C2"])  # absent from both: no score rather than a free 1.0
    with pytest.raises(ValueError, match="same grid"):
        dice_per_vertebra(pred, truth[:3])


def test_slice_range_iou_on_hand_made_ranges():
    assert range_iou((0, 9), (5, 14)) == pytest.approx(5 / 15)
    assert range_iou((3, 3), (3, 3)) == 1.0
    assert range_iou((0, 2), (5, 6)) == 0.0
    assert range_iou(None, (1, 2)) == 0.0 and math.isnan(range_iou(None, None))
    truth = banded_labels()
    ranges = true_slice_ranges(truth)
    assert ranges["C2"] == (8, 12) and ranges["C7"] == (29, 32)
    shifted = {name: (lo + 1, hi + 1) for name, (lo, hi) in ranges.items()}
    iou = slice_range_iou(shifted, ranges)
    assert iou["C2"] == pytest.approx(4 / 6) and iou["C1"] == pytest.approx(3 / 5)


# ---- extents and estimates ----

def test_extents_ignore_stray_voxels():
    labels = banded_labels()
    labels[38, 0, 0] = 3        # a speck of "C3" far below C3, and one far to the side
    labels[14, 30, 30] = 3
    ext = find_extents(labels)["C3"]
    assert (ext.slice_lo, ext.slice_hi) == BANDS[2]
    assert (ext.row_lo, ext.row_hi, ext.col_lo, ext.col_hi) == (10, 20, 12, 22)
    assert main_run(np.array([5, 5, 0, 0, 0, 0, 9, 9, 9])) == (6, 8)
    assert main_run(np.zeros(4)) is None


def test_missing_vertebra_is_estimated_between_its_neighbours():
    labels = banded_labels()
    labels[labels == 4] = 0     # the model missed C4
    extents = fill_missing(find_extents(labels), labels.shape)
    c4 = extents["C4"]
    assert c4.estimated and c4.confidence == 0.0
    assert (c4.slice_lo, c4.slice_hi) == BANDS[3]  # the gap between C3 and C5
    assert (c4.row_lo, c4.row_hi) == (10, 20)      # box from the neighbours
    assert not any(extents[v].estimated for v in VERTEBRAE if v != "C4")


def test_too_few_voxels_counts_as_not_found():
    labels = banded_labels()
    labels[labels == 7] = 0
    labels[30, 15, 15] = 7      # one voxel of C7 is noise, not a vertebra
    found = find_extents(labels, min_voxels=20)
    assert found["C7"] is None and found["C6"] is not None
    c7 = fill_missing(found, labels.shape)["C7"]
    assert c7.estimated and c7.slice_lo > BANDS[5][1] and c7.slice_hi < labels.shape[0]


def test_nothing_found_still_gives_seven_ordered_rows():
    labels = np.zeros((50, 32, 32), dtype=np.uint8)
    extents = fill_missing(find_extents(labels), labels.shape)
    assert list(extents) == VERTEBRAE and all(e.estimated for e in extents.values())
    starts = [extents[v].slice_lo for v in VERTEBRAE]
    assert starts == sorted(starts) and all(0 <= e.slice_lo <= e.slice_hi < 50 for e in extents.values())
    meta = {"uid": "1.2.3", "slice_numbers": list(range(1, 51)), "original_shape": [512, 512]}
    table = study_rows("1.2.3", extents, meta, labels.shape)
    assert len(table) == 7 and table["estimated"].all() and list(table.columns) == COLUMNS
    assert (table["x1"] > table["x0"]).all() and (table["x1"] <= 512).all()


# ---- the table: DICOM file numbers and original pixels ----

def _rows_for(slice_numbers, original_shape=(512, 512)):
    labels = banded_labels()
    meta = {"uid": "1.2.826.7", "slice_numbers": slice_numbers, "original_shape": list(original_shape)}
    return study_rows("1.2.826.7", fill_missing(find_extents(labels), labels.shape), meta, labels.shape)


def test_table_points_at_the_files_of_a_reversed_study():
    # stored feet first: the head-first volume's slice 0 is file 40.dcm, slice 39 is 1.dcm
    table = _rows_for(list(range(40, 0, -1))).set_index("vertebra")
    for v, (lo, hi) in zip(VERTEBRAE, BANDS):
        # volume slice i is file 40 - i, so the vertebra's files run from 40 - hi to 40 - lo
        assert (table.loc[v, "slice_min"], table.loc[v, "slice_max"]) == (40 - hi, 40 - lo)
    assert table.loc["C1", "slice_min"] > table.loc["C7", "slice_max"]  # the head has the high numbers


def test_table_points_at_the_files_of_a_study_with_numbering_gaps():
    # numbering starts at 101 and skips 111..119 (a missing run of files)
    numbers = [101 + i for i in range(10)] + [120 + i for i in range(30)]
    table = _rows_for(numbers).set_index("vertebra")
    for v, (lo, hi) in zip(VERTEBRAE, BANDS):
        assert (table.loc[v, "slice_min"], table.loc[v, "slice_max"]) == (numbers[lo], numbers[hi])
    assert table.loc["C2", "slice_min"] == 109 and table.loc["C2", "slice_max"] == 122  # across the gap


def test_table_boxes_are_in_original_pixels():
    # a 32 x 32 study grid of an original 512 rows x 256 cols slice: rows x16, cols x8
    table = _rows_for(list(range(1, 41)), original_shape=(512, 256)).set_index("vertebra")
    assert tuple(table.loc["C3", ["x0", "y0", "x1", "y1"]]) == (12 * 8, 10 * 16, 23 * 8, 21 * 16)


def test_table_refuses_inconsistent_meta(tmp_path):
    labels = banded_labels()
    extents = fill_missing(find_extents(labels), labels.shape)
    with pytest.raises(ValueError, match="slice_numbers"):
        study_rows("1.2.3", extents, {"slice_numbers": [1, 2, 3]}, labels.shape)
    path = tmp_path / "loc.csv"
    study_rows("1.2.3", extents, {"slice_numbers": list(range(40))}, labels.shape).iloc[:6].to_csv(path, index=False)
    with pytest.raises(ValueError, match="lack some of C1..C7"):
        read_table(path)


# ---- grids ----

def test_probabilities_come_back_to_every_slice_like_trilinear_interpolation():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(8, 6, 8, 8), dim=0)
    labels, confidence = probs_to_labels(probs, (15, 20, 20), chunk=4)
    reference = torch.nn.functional.interpolate(probs[None], size=(15, 20, 20), mode="trilinear",
                                                align_corners=False)[0]
    assert np.array_equal(labels, reference.argmax(0).numpy())
    best_prob, best = probs.max(0)  # confidence: mean winning probability on the model grid
    assert confidence["C2"] == pytest.approx(float(best_prob[best == 2].mean()), rel=1e-5)


def test_resampled_mask_keeps_cervical_labels_only():
    mask = banded_labels()
    mask[33:36] = 8             # T1 below C7
    small = resample_mask(mask, (20, 16, 16))
    assert small.shape == (20, 16, 16) and set(np.unique(small)) == set(range(8))


# ---- the model, prediction and the whole stage on a tiny cached dataset ----

def _tiny_localiser_cfg(tiny, **extra):
    from src.config import load_config
    from fake_training_data import overrides

    extra = {"localiser.shape": [16, 16, 16], "localiser.channels": [4, 8], "localiser.res_units": 0,
             "localisation_table": str(tiny["cache_dir"]) + "/localisation_test.csv", **extra}
    return load_config(["config=localiser", *overrides(tiny, **extra)])


def test_a_model_that_finds_nothing_still_gives_seven_rows(tmp_path):
    from src.localisation.predict import localise_volume
    from src.models.localiser import Localiser
    from fake_training_data import make_tiny_dataset

    cfg = _tiny_localiser_cfg(make_tiny_dataset(tmp_path, n_studies=1))
    model = Localiser(cfg).eval()
    with torch.no_grad():  # a final layer that always answers "background"
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([10.0] + [0.0] * 7))
    model.input_shape, model.windows = (16, 16, 16), [[400, 1800]]
    volume = np.zeros((30, 24, 24), dtype=np.int16)
    meta = {"uid": "1.2.3.4", "slice_numbers": list(range(60, 30, -1)), "original_shape": [48, 48]}
    for models in ([model], []):
        table = localise_volume(models, volume, meta, cfg)
        assert list(table["vertebra"]) == VERTEBRAE and table["estimated"].all()
        assert table["slice_min"].between(31, 60).all() and table["slice_max"].between(31, 60).all()


def test_localiser_trains_through_the_loop_and_writes_the_table(tmp_path, monkeypatch):
    from src.data.folds import ensure_folds
    from src.localisation.build import ensure_localisation
    from src.localisation.build import train_missing_folds
    from src.runs import run_dir
    from fake_training_data import install_folds, make_tiny_dataset

    tiny = make_tiny_dataset(tmp_path, n_studies=10, slices=14, size=16)
    install_folds(tiny)
    cfg = _tiny_localiser_cfg(tiny, **{"localiser.folds": [0, 1]})
    cache_dir, data_dir = tiny["cache_dir"], tiny["data_dir"]
    train_missing_folds(cfg, data_dir, cache_dir, ensure_folds(cfg, data_dir), announce=lambda *_: None)
    metrics = json.loads((run_dir(cfg, fold=0) / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["slice_iou"] <= 1.0
    assert set(metrics["per_target_dice"]) == set(VERTEBRAE)
    oof = pd.read_csv(run_dir(cfg, fold=0) / "oof.csv")
    assert len(oof) == 7 * metrics["n_val"] and {"dice", "slice_iou"} <= set(oof.columns)
    assert (run_dir(cfg, fold=1) / "best.pt").exists() and not (run_dir(cfg, fold=2) / "best.pt").exists()

    messages = []
    path = ensure_localisation(cfg, data_dir, cache_dir, announce=messages.append)
    table = read_table(path)
    assert len(table) == 7 * len(tiny["uids"]) and set(table["StudyInstanceUID"]) == set(tiny["uids"])
    assert any("trained on them" in m for m in messages)  # folds 2..4 untrained: said, not hidden
    assert table["slice_min"].between(1, 14).all() and (table["slice_max"] >= table["slice_min"]).all()
    # the level checks: columns on every row, their ranges written beside the localiser's folds for inference
    assert list(table.columns) == COLUMNS + LEVEL_COLUMNS and table["level_confidence"].between(0, 1).all()
    assert (run_dir(cfg, fold=0).parent / "levels.json").exists()
    assert any(m.startswith("[levels]") and "fail the level checks" in m for m in messages)
    assert ensure_localisation(cfg, data_dir, cache_dir, announce=messages.append) == path
    assert "present" in messages[-1]
    # the localiser's voxel labels are kept beside every cached study for the classifier's mask channel
    from src.config import load_config
    from src.data.cache import cached_uids, load_study, study_dir
    from src.localisation.stored_labels import FILE, load_labels, missing_labels
    from fake_training_data import overrides

    cached = {split: cached_uids(cache_dir, split) for split in ("train_images", "test_images")}
    assert not any(missing_labels(cache_dir, split, uids) for split, uids in cached.items())
    first = cached["train_images"][0]
    assert load_labels(cache_dir, "train_images", first).shape[0] == load_study(cache_dir, "train_images", first).volume.shape[0]
    (study_dir(cache_dir, "train_images", first) / FILE).unlink()   # a table from before the labels were kept
    assert ensure_localisation(cfg, data_dir, cache_dir, announce=messages.append) == path
    assert "present" in messages[-1]                                   # the localiser itself does not need them
    elsewhere = load_config(overrides(tiny, **{"effnet_gru.mask_channel": True, "runs_dir": str(tmp_path / "other")}))
    with pytest.raises(FileNotFoundError, match="no finished localiser"):  # never a newly trained localiser
        ensure_localisation(elsewhere, data_dir, cache_dir, announce=messages.append)
    assert not (tmp_path / "other").exists()
    classifier = load_config(overrides(tiny, **{"effnet_gru.mask_channel": True}))
    monkeypatch.setattr("src.localisation.build.localiser_config", lambda *a, **k: cfg)  # the tiny localiser
    rows = path.read_bytes()
    ensure_localisation(classifier, data_dir, cache_dir, announce=messages.append)
    assert any("mask channel needs the localiser's voxel labels" in m for m in messages)
    assert load_labels(cache_dir, "train_images", first) is not None and path.read_bytes() == rows


def test_an_interrupted_localiser_fold_is_finished_before_the_table_uses_it(tmp_path, monkeypatch):
    """Stopping the first train.sh during the localiser must not let the next one build the table from the
    best epoch so far: the fold is resumed to its last epoch, and only then predicts."""
    from interruptions import stopped_after_first_epoch
    from src.data.folds import ensure_folds
    from src.localisation.build import fold_checkpoints, train_missing_folds
    from src.runs import run_dir
    from fake_training_data import install_folds, make_tiny_dataset

    tiny = make_tiny_dataset(tmp_path, n_studies=10, slices=14, size=16)
    install_folds(tiny)
    cfg = _tiny_localiser_cfg(tiny, **{"localiser.folds": [0], "epochs": 2})
    folds = ensure_folds(cfg, tiny["data_dir"])
    stopped_after_first_epoch(monkeypatch, lambda: train_missing_folds(cfg, tiny["data_dir"], tiny["cache_dir"], folds,
                                                                      announce=lambda *_: None))  # Ctrl-C
    folder = run_dir(cfg, fold=0)
    assert (folder / "best.pt").exists() and fold_checkpoints(cfg) == {}  # half-trained: not usable

    messages = []
    train_missing_folds(cfg, tiny["data_dir"], tiny["cache_dir"], folds, announce=messages.append)
    assert any("interrupted" in m for m in messages) and any("resuming" in m for m in messages)
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1  # both epochs, not restarted
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0, 1]
    assert fold_checkpoints(cfg) == {0: folder / "best.pt"}


def test_a_damaged_localiser_checkpoint_is_named_in_one_sentence(tmp_path):
    from src.localisation.predict import load_localisers
    from src.models.checkpoint import CheckpointError

    path = tmp_path / "best.pt"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match=str(path)):
        load_localisers([path])


# ---- the second look at the spine's box ----

def test_boxes_find_scale_and_widen_within_the_volume():
    from src.localisation.crop import box_shape, foreground_box, scale_box, widen_box

    labels = np.zeros((20, 16, 16), dtype=np.uint8)
    assert foreground_box(labels) is None
    labels[5:9, 2:4, 10:16] = 3
    box = foreground_box(labels)
    assert box == ((5, 9), (2, 4), (10, 16))
    assert scale_box(box, (20, 16, 16), (40, 8, 32)) == ((10, 18), (1, 2), (20, 32))
    assert scale_box(((1, 2), (1, 2), (1, 2)), (3, 3, 3), (4, 4, 4)) == ((1, 3), (1, 3), (1, 3))  # outwards
    wide = widen_box(box, labels.shape, 0.5)  # half the length each side, clipped at the edges
    assert wide == ((3, 11), (1, 5), (7, 16))
    uneven = widen_box(box, labels.shape, [[0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])
    assert uneven == ((5, 13), (2, 4), (7, 16)) and box_shape(uneven) == (8, 2, 9)


class ThresholdLocaliser(torch.nn.Module):
    """Stands in for a trained localiser: bone (bright in the first window) is C3, the rest background.
    Records the shape of every volume it is shown."""

    def __init__(self, shape, refine_margin):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(40.0))
        self.input_shape, self.windows, self.refine_margin = tuple(shape), [[400, 1800]], refine_margin
        self.seen = []

    def forward(self, batch):
        x = batch["volume"][:, :1]
        self.seen.append(tuple(x.shape[2:]))
        logits = torch.zeros(x.shape[0], 8, *x.shape[2:])
        logits[:, 3] = self.scale * (x[:, 0] - 0.6)
        return {"logits": logits}


def test_second_look_labels_the_box_around_the_spine_more_finely():
    from src.localisation.predict import segment_study

    volume = np.full((40, 48, 48), -1000, dtype=np.int16)
    truth = np.zeros(volume.shape, dtype=np.uint8)
    truth[13:26, 19:30, 21:29] = 3  # one bony block, off the coarse grid's voxel edges
    volume[truth > 0] = 1200
    once = ThresholdLocaliser((8, 8, 8), refine_margin=0.0)
    twice = ThresholdLocaliser((8, 8, 8), refine_margin=0.25)
    labels_once, _ = segment_study([once], volume)
    labels_twice, confidence = segment_study([twice], volume)
    assert labels_once.shape == labels_twice.shape == volume.shape
    assert once.seen == [(8, 8, 8)] and twice.seen == [(8, 8, 8), (8, 8, 8)]  # one look, then two
    assert not labels_twice[:5].any() and not labels_twice[35:].any()  # nothing outside the box
    dice_once = dice_per_vertebra(labels_once, truth)["C3"]
    dice_twice = dice_per_vertebra(labels_twice, truth)["C3"]
    assert dice_twice > dice_once + 0.1
    assert confidence["C3"] > 0.5 and confidence["C1"] == 0.0


def test_spine_box_training_items_zoom_in_on_all_seven_vertebrae(tmp_path):
    from src.localisation.dataset import LocaliserDataset, prepare_resampled
    from fake_training_data import make_tiny_dataset

    tiny = make_tiny_dataset(tmp_path, n_studies=1, slices=28, size=32)
    cache_dir, uid = tiny["cache_dir"], tiny["uids"][0]
    hu_folder, mask_folder = prepare_resampled(cache_dir, [uid], (14, 16, 16), announce=lambda *_: None, progress=False)
    crop = {"prob": 1.0, "margin": (0.1, 0.2), "cache_dir": cache_dir, "shape": (14, 16, 16)}
    whole = LocaliserDataset(hu_folder, mask_folder, [uid], [[400, 1800]])[0]
    torch.manual_seed(0)
    boxed = LocaliserDataset(hu_folder, mask_folder, [uid], [[400, 1800]], crop=crop)[0]
    assert boxed["volume"].shape == whole["volume"].shape == (1, 14, 16, 16)
    assert set(np.unique(boxed["labels"].numpy())) == set(range(8))
    # the fake spine fills a quarter of each slice's side; the box's margins are 10-20% of it
    assert (boxed["labels"] > 0).float().mean() > 2 * (whole["labels"] > 0).float().mean()


def test_a_spine_box_margin_that_is_not_a_range_is_a_config_error(tmp_path):
    from src.config import ConfigError
    from src.localisation.task import LocalisationTask
    from fake_training_data import make_tiny_dataset

    tiny = make_tiny_dataset(tmp_path, n_studies=4)
    cfg = _tiny_localiser_cfg(tiny, **{"localiser.crop_margin": [0.3, 0.1]})
    folds = pd.read_csv(tiny["folds_file"])
    task = LocalisationTask(cfg, tiny["data_dir"], tiny["cache_dir"], folds, announce=lambda *_: None)
    with pytest.raises(ConfigError, match="crop_margin"):
        task.datasets()


def test_the_localise_command_stops_on_a_broken_folds_file_with_one_line(tmp_path, capsys):
    from pathlib import Path

    from src.config import run_main
    from src.localise import main
    from fake_training_data import make_tiny_dataset, overrides

    tiny = make_tiny_dataset(tmp_path, n_studies=4)
    folds_file = Path(tiny["folds_dir"]) / f"{Path(tiny['data_dir']).resolve().name}.csv"
    folds_file.parent.mkdir(parents=True, exist_ok=True)
    folds_file.write_text("StudyInstanceUID,fold\n1.2.826.0.1.1000,first\n")
    with pytest.raises(SystemExit) as stop:
        run_main(main, ["config=localiser", *overrides(tiny)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert str(folds_file) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
