"""The localiser's voxel labels kept beside the cache (src/localisation/stored_labels.py) and the mask
channel they feed: compact storage that scales back onto any cache size, training items that read them,
and inference items that take the same labels straight from the localiser."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from src import VERTEBRAE
from src.config import load_config
from src.data.cache import write_study
from src.localisation.stored_labels import compact, labels_on_grid, load_labels, missing_labels, save_labels
from src.tasks.vertebra import VertebraCrops, VertebraDataset, VertebraTask

TINY = ["effnet_gru.encoder=test_efficientnet", "effnet_gru.n_slices=4", "effnet_gru.neighbours=0",
        "effnet_gru.crop_size=32", "effnet_gru.gru_hidden=8", "pretrained=false", "effnet_gru.train_unit=study",
        "effnet_gru.augment=0", "effnet_gru.mask_channel=true", "windows=[[400,1800]]"]


def _labels(size=64, slices=20):
    """C3 on a block of rows 16..31, cols 32..47 of every slice; C4 beside it, aligned to 8 px blocks."""
    labels = np.zeros((slices, size, size), dtype=np.uint8)
    labels[:, 16:32, 32:48] = 3
    labels[:, 40:56, 8:24] = 4
    return labels


def test_compact_keeps_every_slice_and_scales_back_onto_any_grid():
    labels = _labels(size=512)
    small = compact(labels)
    assert small.dtype == np.uint8 and small.shape == (20, 128, 128)        # 512 px: every 4th pixel
    back = labels_on_grid(small, np.arange(20), labels.shape)
    assert np.array_equal(back, labels)                                    # blocks aligned to the stride: exact
    assert np.array_equal(compact(_labels(size=64)), _labels(size=64))     # small enough: kept as it is
    half = labels_on_grid(small, [0, 5], (20, 256, 256))                   # another cache size, same study
    assert np.array_equal(half, labels[[0, 5], ::2, ::2])
    with pytest.raises(ValueError, match="another cache"):
        labels_on_grid(small, [0], (21, 512, 512))


def test_stored_labels_round_trip_in_the_study_folder(tmp_path):
    meta = {"slice_numbers": list(range(1, 21)), "original_shape": [64, 64]}
    write_study(tmp_path, "train_images", "1.2.3", np.zeros((20, 64, 64), dtype=np.int16), meta)
    assert load_labels(tmp_path, "train_images", "1.2.3") is None
    assert missing_labels(tmp_path, "train_images", ["1.2.3"]) == ["1.2.3"]
    save_labels(tmp_path, "train_images", "1.2.3", _labels())
    assert np.array_equal(load_labels(tmp_path, "train_images", "1.2.3"), _labels())
    assert missing_labels(tmp_path, "train_images", ["1.2.3"]) == []


def test_the_mask_channel_draws_the_predicted_labels_where_the_crop_is():
    """A known C3 block, stored thinned (stride 2), is found in the channel at the crop's place."""
    volume = np.zeros((20, 64, 64), dtype=np.int16)
    meta = {"slice_numbers": list(range(1, 21)), "original_shape": [64, 64]}
    crops = VertebraCrops({"n_slices": 4, "neighbours": 0, "crop_size": 32, "margin": 0.0, "mask_channel": True},
                          [[400, 1800]])
    predicted = compact(_labels(), max_side=32)
    assert predicted.shape == (20, 32, 32)
    # the box of rows 16..47 and cols 16..47, a 32 px square: one crop pixel per volume pixel
    stack = crops.vertebra_stack(volume, meta, (1, 20, 16, 16, 48, 48), vertebra="C3", predicted=predicted)
    expected = np.zeros((32, 32), dtype=np.float32)
    expected[0:16, 16:32] = 1                                               # rows 16..31, cols 32..47 of the slice
    assert np.allclose(stack[:, -1], expected[None], atol=1e-5)
    # without labels: the box, the whole crop here
    boxed = crops.vertebra_stack(volume, meta, (1, 20, 16, 16, 48, 48), vertebra="C3")
    assert np.allclose(boxed[:, -1], 1.0)
    other = crops.vertebra_stack(volume, meta, (1, 20, 16, 16, 48, 48), vertebra="C4", predicted=predicted)
    assert other[:, -1].max() == pytest.approx(1.0) and not np.allclose(other[:, -1], stack[:, -1])


def _study(tmp_path):
    """A cached 70-slice study whose localiser labels put C1..C7 on ten slices each, shifted a pixel apart,
    and its table rows (boxes wider than the labels)."""
    rng = np.random.default_rng(0)
    volume = rng.integers(-500, 1500, size=(70, 64, 64)).astype(np.int16)
    meta = {"slice_numbers": list(range(1, 71)), "z": [float(-z) for z in range(70)], "pixel_spacing": [1.0, 1.0],
            "original_shape": [64, 64], "slice_spacing": 1.0, "skipped_files": []}
    write_study(tmp_path, "train_images", "1.2.3", volume, meta)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    for k in range(7):
        labels[10 * k:10 * k + 10, 20:44, 18 + k:40 + k] = k + 1
    table = pd.DataFrame([{"StudyInstanceUID": "1.2.3", "vertebra": v, "slice_min": 10 * k + 1,
                           "slice_max": 10 * k + 10, "x0": 10, "y0": 10, "x1": 54, "y1": 54}
                          for k, v in enumerate(VERTEBRAE)])
    return volume, meta, labels, table


def test_inference_items_with_the_localisers_labels_equal_the_training_items(tmp_path):
    """study_batch given the labels the localiser just predicted builds what the dataset builds from the
    stored ones; without labels both fall back to the boxes, and then they differ from it."""
    cfg = load_config(TINY)
    volume, meta, labels, table = _study(tmp_path)
    dataset = VertebraDataset(tmp_path, ["1.2.3"], table, cfg["effnet_gru"], cfg["windows"])
    boxes_only = dataset.stacks(0)
    save_labels(tmp_path, "train_images", "1.2.3", labels)
    trained_on = dataset.stacks(0)
    assert not np.array_equal(trained_on[:, :, -1], boxes_only[:, :, -1])
    served = VertebraTask.study_batch(cfg, volume, meta, table, compact(labels))["images"][0]
    assert torch.equal(served, torch.from_numpy(trained_on))
    assert torch.equal(VertebraTask.study_batch(cfg, volume, meta, table)["images"][0], torch.from_numpy(boxes_only))


def test_explanations_feed_a_mask_channel_model_what_validation_fed_it(tmp_path):
    from src.models.effnet_gru import EffNetGRU
    from src.tasks.explanation import explain_cached

    cfg = load_config(TINY)
    _, _, labels, table = _study(tmp_path)
    save_labels(tmp_path, "train_images", "1.2.3", labels)
    dataset = VertebraDataset(tmp_path, ["1.2.3"], table, cfg["effnet_gru"], cfg["windows"])
    torch.manual_seed(0)
    model = EffNetGRU(cfg).eval()
    explained = explain_cached(model, dataset, "1.2.3")
    with torch.no_grad():
        validated = torch.sigmoid(model({"images": dataset[0]["images"][None]})["logits"][0]).numpy()
    np.testing.assert_allclose(explained.probs, validated, atol=1e-6)


def test_a_repaired_study_keeps_labels_renumbered_to_its_repaired_ranges():
    from src.localisation.extents import Extent
    from src.localisation.levels import relabelled

    labels = np.zeros((70, 8, 8), dtype=np.uint8)
    for k in range(7):
        labels[10 * k:10 * k + 10, 2:6, 2:6] = k + 1
    labels[:, 0, 0] = 9                                   # a thoracic label stays what it was
    # the repair moved every vertebra one level down: C1 has no slices left to claim, C2 took C1's
    extents = {v: Extent(max(0, 10 * k - 10), 10 * k - 1 if k else 0, 2, 5, 2, 5) for k, v in enumerate(VERTEBRAE)}
    out = relabelled(labels, extents)
    assert out[15, 3, 3] == 3 and out[5, 3, 3] == 2 and out[65, 3, 3] == 7
    assert out[0, 0, 0] == 9 and out[20, 0, 1] == 0       # thoracic and background untouched
    assert labels[15, 3, 3] == 2                          # the labels given are not changed in place


def test_the_localiser_hands_over_labels_only_to_inputs_that_read_them(monkeypatch):
    """Only a mask-channel input asks for the localiser's voxel labels; without one the labels are
    neither compacted nor passed on."""
    from omegaconf import OmegaConf

    import src.localisation.predict as predict
    from src.inference.inputs import input_spec
    from src.inference.localiser import Localiser

    def spec(overrides):
        return input_spec(OmegaConf.to_container(load_config(overrides), resolve=True))

    assert spec(TINY).needs_labels
    assert not spec([*TINY, "effnet_gru.mask_channel=false"]).needs_labels
    assert not spec(["config=cnn3d"]).needs_labels

    asked = []

    def fake_localise(models, volume, meta, cfg, study_uid=None, levels=None, repair=False, with_labels=False):
        asked.append(with_labels)
        rows = pd.DataFrame({"vertebra": VERTEBRAE})
        return (rows, compact(_labels())) if with_labels else rows

    monkeypatch.setattr(predict, "localise_volume", fake_localise)
    localiser = Localiser("localiser", models=["a model"], cfg={"prepare": {"size": 64}})
    volumes = {64: (np.zeros((20, 64, 64), np.int16), {})}
    rows, labels = localiser.rows_for("1.2.3", volumes)
    assert labels is None and list(rows["StudyInstanceUID"].unique()) == ["1.2.3"]
    _, labels = localiser.rows_for("1.2.3", volumes, with_labels=True)
    assert labels is not None and np.array_equal(labels_on_grid(labels, np.arange(20), (20, 64, 64)), _labels())
    assert asked == [False, True]
