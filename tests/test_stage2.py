"""The stage-2 ingredients of issue 18 (the auxiliary loss on by default, the rest options): per-slice
targets and the auxiliary head, the target vertebra's mask channel, slice-order jitter, mixup, top-k
checkpoint averaging, the patient-level model judged by nested CV, exclude_studies, the synthetic
generator's box_fraction, and the ablation's table."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from src import TARGETS, VERTEBRAE
from src.config import load_config
from src.data.cache import write_study
from src.ensembling import patient
from src.metric import competition_score
from src.models.effnet_gru import EffNetGRU, input_channels
from src.models.mixup import draw_mix, mix, mixed_loss
from src.tasks.study_task import exclude_studies
from src.tasks.vertebra import (VertebraCrops, VertebraDataset, fracture_slices, jitter_order, keep_box_share,
                                read_box_slices, vertebra_presence)
from src.training.top_k import average_into_best, average_states, keep_epoch

TINY = ["effnet_gru.encoder=test_efficientnet", "effnet_gru.n_slices=3", "effnet_gru.neighbours=0",
        "effnet_gru.crop_size=32", "effnet_gru.gru_hidden=8", "pretrained=false", "effnet_gru.train_unit=study"]


# ---- per-slice targets ----

def _plans():
    """C1..C7 over slices 1..70 (DICOM numbers), ten each, on the whole 40 px slice."""
    return {v: (10 * k + 1, 10 * k + 10, 0, 0, 40, 40) for k, v in enumerate(VERTEBRAE)}


def test_fracture_targets_inside_boxes_intact_and_unsupervised():
    numbers = np.arange(1, 71)
    c3 = _plans()["C3"]                                 # slices 21..30
    positions = np.array([20, 22, 24, 26, 29])          # volume indices -> numbers 21, 23, 25, 27, 30
    boxes = np.array([24.0, 25.0, 26.0, 55.0])          # three box slices in C3, one in C6
    assert fracture_slices(positions, numbers, c3, True, boxes).tolist() == [0, 0, 1, 0, 0]
    assert fracture_slices(np.array([23, 25]), numbers, c3, True, boxes).tolist() == [1, 1]  # 24 and 26: the ends
    assert fracture_slices(positions, numbers, c3, False, boxes).tolist() == [0] * 5    # intact: 0 everywhere
    # fractured, but no box falls in its range (boxes only elsewhere, or none in the study): not supervised
    assert fracture_slices(positions, numbers, _plans()["C2"], True, boxes).tolist() == [-1] * 5
    assert fracture_slices(positions, numbers, c3, True, None).tolist() == [-1] * 5


def test_vertebra_presence_from_mask_or_ranges():
    numbers = np.arange(1, 71)
    positions = np.array([0, 9, 10, 69])
    from_ranges = vertebra_presence(positions, numbers, _plans())
    assert from_ranges.shape == (4, 7)
    assert from_ranges.argmax(axis=1).tolist() == [0, 0, 1, 6] and from_ranges.sum() == 4
    mask = np.zeros((70, 8, 8), dtype=np.uint8)
    mask[9, :4] = 1
    mask[9, 4:] = 2                                     # slice 9 shows C1 and C2
    mask[69] = 9                                        # a thoracic label only: no cervical vertebra
    from_mask = vertebra_presence(positions, numbers, _plans(), mask)
    assert from_mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0] and from_mask[0].sum() == 0 and from_mask[3].sum() == 0


def test_dataset_items_carry_slice_targets_from_the_box_table(tmp_path):
    """A hand-made study: C3 fractured with boxes on slices 24..26, C5 fractured without boxes, the rest intact."""
    hu = np.zeros((70, 40, 40), dtype=np.int16)
    meta = {"slice_numbers": list(range(1, 71)), "z": [float(-z) for z in range(70)], "pixel_spacing": [1.0, 1.0],
            "original_shape": [40, 40], "slice_spacing": 1.0, "skipped_files": []}
    write_study(tmp_path, "train_images", "1.2.3", hu, meta)
    table = pd.DataFrame([{"StudyInstanceUID": "1.2.3", "vertebra": v, "slice_min": p[0], "slice_max": p[1],
                           "x0": 0, "y0": 0, "x1": 40, "y1": 40} for v, p in _plans().items()])
    boxes = tmp_path / "train_bounding_boxes.csv"
    pd.DataFrame({"StudyInstanceUID": ["1.2.3"] * 3, "x": 5, "y": 5, "width": 10, "height": 10,
                  "slice_number": [24, 25, 26]}).to_csv(boxes, index=False)
    labels = np.zeros((1, 8), dtype=np.float32)
    labels[0, [0, 3, 5]] = 1                            # patient, C3, C5
    settings = {"n_slices": 10, "neighbours": 0, "crop_size": 16, "margin": 0.0, "augment": 0.0}
    data = VertebraDataset(tmp_path, ["1.2.3"], table, settings, [[400, 1800]], labels=labels, train=False,
                           box_slices=read_box_slices(boxes))
    item = data[0]
    assert item["slice_vertebrae"].shape == (7, 10, 7) and item["slice_fracture"].shape == (7, 10)
    fracture = item["slice_fracture"].numpy()
    assert fracture[2].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]   # C3 sampled on 21..30: boxes on 24..26
    assert (fracture[4] == -1).all()                                 # C5: fractured, no boxes
    assert (fracture[[0, 1, 3, 5, 6]] == 0).all()                    # intact vertebrae
    presence = item["slice_vertebrae"].numpy()
    assert all((presence[k].argmax(axis=1) == k).all() for k in range(7))
    # single-vertebra items (train_unit=vertebra) carry their vertebra's targets
    from src.tasks.vertebra import VertebraSampleDataset

    single = VertebraSampleDataset(data, 3.0)[0]        # the first positive: C3
    assert int(single["vertebra"]) == 2 and single["slice_fracture"].tolist() == fracture[2].tolist()
    assert single["slice_vertebrae"].shape == (10, 7) and single["images"].shape == (10, 1, 16, 16)
    # without the box table the items are exactly as before: no targets
    plain = VertebraDataset(tmp_path, ["1.2.3"], table, settings, [[400, 1800]], labels=labels)[0]
    assert set(plain) == {"images", "labels"} and torch.equal(plain["images"], item["images"])


def test_box_share_keeps_a_seeded_subset_of_the_box_studies():
    boxes = {f"1.2.{i}": np.array([float(i), i + 1.0]) for i in range(9)}
    assert keep_box_share(boxes, 1.0, 0) is boxes and keep_box_share(boxes, 0.0, 0) == {}
    third = keep_box_share(boxes, 1 / 3, 0)
    assert len(third) == 3 and all(np.array_equal(third[uid], boxes[uid]) for uid in third)
    assert keep_box_share(boxes, 1 / 3, 0).keys() == third.keys()            # the same draw in every fold
    assert keep_box_share(dict(reversed(boxes.items())), 1 / 3, 0).keys() == third.keys()  # not the file's order
    assert len({tuple(keep_box_share(boxes, 1 / 3, seed)) for seed in range(5)}) > 1  # another seed, another draw
    assert len(keep_box_share(boxes, 0.5, 0)) == 4 and len(keep_box_share(boxes, 0.99, 0)) == 9


def test_box_share_is_a_probability():
    assert load_config(["effnet_gru.aux_box_share=0.33"])["effnet_gru"]["aux_box_share"] == 0.33
    with pytest.raises(ValueError, match="aux_box_share"):
        load_config(["effnet_gru.aux_box_share=1.5"])


# ---- the mask channel ----

def test_mask_channel_shape_and_alignment_with_the_crop(tmp_path):
    hu = np.zeros((30, 64, 64), dtype=np.int16)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[:, 10:20, 30:44] = 3                           # C3, a known rectangle on every slice
    mask[:, 40:50, 5:15] = 4                            # another vertebra beside it
    meta = {"slice_numbers": list(range(1, 31)), "original_shape": [64, 64]}
    plan = (1, 30, 0, 0, 64, 64)                        # the whole slice: the crop is the slice itself
    crops = VertebraCrops({"n_slices": 4, "neighbours": 1, "crop_size": 64, "margin": 0.0, "mask_channel": True},
                          [[400, 1800], [40, 80]])
    assert crops.channels == 3 * 2 + 1
    stack = crops.vertebra_stack(hu, meta, plan, vertebra="C3", predicted=mask)
    assert stack.shape == (4, 7, 64, 64)
    hu[:, 20:40, 20:40] = 300                           # some bone: the image channels are the plain stack's
    stack = crops.vertebra_stack(hu, meta, plan, vertebra="C3", predicted=mask)
    plain = VertebraCrops({"n_slices": 4, "neighbours": 1, "crop_size": 64, "margin": 0.0},
                          [[400, 1800], [40, 80]]).vertebra_stack(hu, meta, plan)
    assert np.array_equal(stack[:, :-1], plain)
    expected = (mask[0] == 3).astype(np.float32)
    assert np.allclose(stack[:, -1], expected[None], atol=1e-5)
    # no segmentation: the localisation box on the slices of the range, cropped like the image
    boxed = crops.vertebra_stack(hu, meta, (1, 30, 30, 10, 44, 20), vertebra="C3")
    assert boxed[:, -1].shape == (4, 64, 64)
    side = 14                                           # the 14 x 10 box made square: 14 px, resized to 64
    inside = boxed[0, -1] > 0.5
    assert inside.any() and inside.mean() == pytest.approx(10 / side, abs=0.05)
    # the model takes the extra channel
    cfg = load_config(TINY + ["effnet_gru.mask_channel=true"])
    assert input_channels(cfg) == 2 and EffNetGRU(cfg).encoder.conv_stem.in_channels == 2


def test_mask_channel_moves_with_the_augmentation_and_keeps_its_values():
    from src.data.augment import augment_stack, build_slice_stack_transform

    stack = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    mask = np.zeros((2, 32, 32), dtype=np.float32)
    mask[:, 4:10, 20:30] = 1
    torch.manual_seed(1)
    image, moved = augment_stack(stack, build_slice_stack_transform(1.0), mask=mask)
    assert image.shape == stack.shape and moved.shape == mask.shape
    assert set(np.unique(moved)) <= {0.0, 1.0}          # nearest-neighbour geometry only, no brightness
    torch.manual_seed(1)
    alone = augment_stack(stack, build_slice_stack_transform(1.0))
    assert np.array_equal(alone, image)                 # the same draw for the image with or without a mask


# ---- the auxiliary head ----

def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(2, 8, generator=g) < 0.4).float()
    fracture = (torch.rand(2, 7, 3, generator=g) < 0.3).float()
    fracture[0, 0] = -1
    return {"images": torch.rand(2, 7, 3, 1, 32, 32, generator=g), "labels": labels,
            "slice_vertebrae": (torch.rand(2, 7, 3, 7, generator=g) < 0.2).float(), "slice_fracture": fracture}


def _model(*extra):
    torch.manual_seed(0)
    return EffNetGRU(load_config(TINY + list(extra)))


def test_aux_weight_zero_is_the_old_loss_and_a_weight_adds_the_slice_loss():
    batch = _batch()
    plain = {k: batch[k] for k in ("images", "labels")}
    off, on = _model("effnet_gru.aux_loss_weight=0").train(), _model("effnet_gru.aux_loss_weight=0.5").train()
    assert not hasattr(off, "slice_head")
    shared = {k: v for k, v in on.state_dict().items() if not k.startswith("slice_head")}
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in shared.items())  # same weights but the new head
    torch.manual_seed(5)
    loss_plain = off(plain)["loss"]
    torch.manual_seed(5)
    assert torch.equal(off(batch)["loss"], loss_plain)  # targets in the batch change nothing at weight 0
    torch.manual_seed(5)
    loss_on = on(batch)["loss"]
    with torch.no_grad():
        _, _, features = on.embed_vertebrae(batch["images"])
        aux = on.slice_loss(features, batch)
    assert aux > 0
    assert float(loss_on.detach()) == pytest.approx(float(loss_plain.detach() + 0.5 * aux), rel=1e-4)
    loss_on.backward()
    assert on.slice_head.weight.grad.abs().sum() > 0
    on.eval()
    assert torch.equal(on(batch)["loss"], on(plain)["loss"])  # validation: the competition loss alone


def test_masked_fracture_slices_do_not_count():
    model = _model("effnet_gru.aux_loss_weight=1.0")
    batch = _batch()
    features = torch.randn(2, 7, 3, 16)
    base = model.slice_loss(features, batch)
    flipped = dict(batch, slice_fracture=batch["slice_fracture"].clone())
    flipped["slice_fracture"][0, 0] = -1                # already -1: unchanged
    assert torch.equal(model.slice_loss(features, flipped), base)
    known_changed = dict(batch, slice_fracture=batch["slice_fracture"].clone())
    known_changed["slice_fracture"][1, 1] = 1 - known_changed["slice_fracture"][1, 1]
    assert not torch.equal(model.slice_loss(features, known_changed), base)


# ---- mixup and order jitter ----

def test_mixup_draws_are_seeded_and_keep_shapes():
    assert draw_mix(8, 0.0, 0.4) is None and draw_mix(1, 1.0, 0.4) is None
    torch.manual_seed(3)
    lam, perm = draw_mix(8, 1.0, 0.4)
    torch.manual_seed(3)
    lam2, perm2 = draw_mix(8, 1.0, 0.4)
    assert lam == lam2 and torch.equal(perm, perm2) and 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(8))
    x = torch.arange(8.0).view(8, 1).expand(8, 5)
    mixed = mix(x, lam, perm)
    assert mixed.shape == x.shape and torch.allclose(mixed[:, 0], lam * x[:, 0] + (1 - lam) * x[perm, 0])
    batch = {"labels": torch.arange(8.0)}
    assert mixed_loss(lambda b: b["labels"].sum() * 0 + b["labels"][0], batch, None, None) == 0
    loss = mixed_loss(lambda b: b["labels"][0], batch, 0.25, perm)
    assert float(loss) == pytest.approx(0.25 * 0 + 0.75 * float(perm[0]))


def test_mixup_in_the_model_trains_only():
    model = _model("effnet_gru.mixup_prob=1.0")
    batch = {k: v for k, v in _batch().items() if k in ("images", "labels")}
    model.eval()
    ref = _model().eval()
    assert torch.equal(model(batch)["logits"], ref(batch)["logits"])  # validation is never mixed
    model.train()
    torch.manual_seed(0)
    out = model(batch)
    assert out["logits"].shape == (2, 8) and torch.isfinite(out["loss"])


def test_order_jitter_swaps_neighbours_only_and_is_seeded():
    assert jitter_order(6, 0.0).tolist() == list(range(6))
    g = torch.Generator().manual_seed(0)
    order = jitter_order(50, 0.5, g)
    assert sorted(order.tolist()) == list(range(50)) and np.abs(order - np.arange(50)).max() == 1
    assert np.array_equal(order, jitter_order(50, 0.5, torch.Generator().manual_seed(0)))
    assert np.array_equal(jitter_order(6, 1.0), [1, 0, 3, 2, 5, 4])


# ---- top-k checkpoint averaging ----

def test_average_states_and_keep_the_k_best(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    mean = average_states([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["n"]) == 3
    scores = [0.9, 0.5, 0.7, 0.4, 0.8]                  # lower is better: the best two are epochs 3 and 1
    for epoch, score in enumerate(scores):
        keep_epoch(tmp_path, 2, epoch, score, 1, {"w": torch.tensor([float(epoch)])})
    assert sorted(p.name for p in (tmp_path / "top_k").glob("*.pt")) == ["epoch1.pt", "epoch3.pt"]
    torch.save({"model": {"w": torch.tensor([3.0])}, "epoch": 3}, tmp_path / "best.pt")
    assert average_into_best(tmp_path, tmp_path / "best.pt") == [1, 3]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert float(best["model"]["w"]) == 2.0 and best["epoch"] == 3
    assert float(torch.load(tmp_path / "best_single.pt", weights_only=True)["model"]["w"]) == 3.0
    assert average_into_best(tmp_path, tmp_path / "best.pt") == [1, 3]  # again: still from the single best
    assert float(torch.load(tmp_path / "best_single.pt", weights_only=True)["model"]["w"]) == 3.0


# ---- the patient-level model ----

def _oof(n=400, seed=0, patient_column="useless"):
    """Vertebra probabilities that carry the truth; a patient column that is useless or the truth itself."""
    rng = np.random.default_rng(seed)
    vertebrae = rng.random((n, 7)) < 0.08
    labels = np.column_stack([vertebrae.any(axis=1), vertebrae]).astype(float)
    probs = np.clip(np.where(labels > 0, 0.7, 0.05) + rng.normal(0, 0.05, labels.shape), 0.01, 0.99)
    probs[:, 1:] = np.clip(probs[:, 1:] * 0.5, 0.005, 0.99)  # vertebrae under-confident: noisy-OR is off
    probs[:, 0] = 0.5 if patient_column == "useless" else np.where(labels[:, 0] > 0, 0.98, 0.02)
    return labels, probs, np.arange(n) % 4


def test_patient_model_nested_cv_takes_a_model_only_when_it_helps():
    labels, probs, folds = _oof()
    judged = patient.nested_cv(labels, probs, folds)
    assert judged["logistic"]["score"] < judged["keep"]["score"]
    assert patient.choose(judged) in ("logistic", "noisy_or", "max") and patient.choose(judged) != "keep"
    for method in patient.METHODS:                      # a fitted model is never better held out than in-sample
        assert judged[method]["score"] >= judged["in_sample"][method] - 0.01
    assert judged["logistic"]["score"] > judged["in_sample"]["logistic"]
    labels, probs, folds = _oof(patient_column="truth")
    judged = patient.nested_cv(labels, probs, folds)
    assert patient.choose(judged) == "keep"             # the members' column is already right: kept
    assert patient.choose(judged, "max") == "max"
    applied = patient.apply(probs, "noisy_or")
    assert np.allclose(applied[:, 1:], probs[:, 1:])    # vertebra columns are never touched
    with pytest.raises(ValueError):
        patient.choose(judged, "mean")


def test_src_ensemble_reports_the_patient_model_only_when_asked():
    from src.ensembling.fit import fit_ensemble, format_report
    from src.ensembling.oof import AlignedOof

    labels, probs, folds = _oof()
    aligned = AlignedOof(["a"], [str(i) for i in range(len(labels))], probs[None], labels, folds)
    assert "patient" not in fit_ensemble(aligned)
    result = fit_ensemble(aligned, patient="auto")
    assert result["patient"]["method"] != "keep" and "patient_overall from logistic" in format_report(result)
    chosen = result["patient"]
    improved = patient.apply(probs, chosen["method"], chosen["params"])
    assert competition_score(labels, improved) < competition_score(labels, probs)


def test_ensemble_file_patient_entry_is_checked_and_applied_at_inference(tmp_path):
    import json
    from types import SimpleNamespace

    from src.inference.pipeline import FallbackLog, Predictor
    from src.runs import read_ensemble

    entry = {"members": ["a"], "weights": [1.0], "combine": "prob",
             "patient": {"method": "logistic", "params": {"coef": [0.0] * 7 + [1.0], "intercept": 0.0}}}
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(entry))
    assert read_ensemble(path)["patient"]["method"] == "logistic"
    path.write_text(json.dumps({**entry, "patient": {"method": "logistic", "params": {"coef": [1.0], "intercept": 0}}}))
    with pytest.raises(ValueError, match="patient"):
        read_ensemble(path)
    probs = np.array([0.3, 0.1, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05])
    member = SimpleNamespace(run="a", weight=1.0, predict=lambda *args: probs)
    plain = Predictor([member], "prob", None, "cpu", None)
    assert np.allclose(plain._combine_members("u", {}, FallbackLog()), probs)
    fitted = Predictor([member], "prob", None, "cpu", None, patient=entry["patient"])
    out = fitted._combine_members("u", {}, FallbackLog())
    assert np.allclose(out[1:], probs[1:]) and out[0] == pytest.approx(1 - np.prod(1 - probs[1:]), abs=1e-6)
    # kept together with a calibration: the vertebrae are calibrated, patient_overall comes from the patient
    # model fitted on the uncalibrated combination (so the calibration does not reach it twice)
    calibration = {"method": "temperature", "params": {"temperature": 2.0}}
    both = Predictor([member], "prob", None, "cpu", None, calibration=calibration,
                     patient=entry["patient"])._combine_members("u", {}, FallbackLog())
    from src.ensembling.calibration import apply_calibration

    assert np.allclose(both[1:], apply_calibration(probs, calibration)[1:]) and not np.allclose(both[1:], probs[1:])
    assert both[0] == pytest.approx(out[0], abs=1e-9)


# ---- exclude_studies ----

def test_exclude_studies_removes_and_reports():
    labels = pd.DataFrame({"StudyInstanceUID": ["1.1", "1.2", "1.3"], "fold": [0, 1, 2]})
    said = []
    kept = exclude_studies(labels, ["1.2", "9.9"], said.append)
    assert kept["StudyInstanceUID"].tolist() == ["1.1", "1.3"]
    assert "1.2 (fold 1)" in said[0] and "9.9" in said[1]
    assert exclude_studies(labels, [], said.append) is labels and len(said) == 2


def test_exclude_studies_defaults_real_only_and_leaves_the_task(tmp_path):
    from fake_training_data import make_tiny_dataset, overrides
    from src.tasks.vertebra import VertebraTask

    assert load_config(["profile=demo"])["exclude_studies"] == []
    assert list(load_config(["profile=real"])["exclude_studies"]) == ["1.2.826.0.1.3680043.20574",
                                                                      "1.2.826.0.1.3680043.29952"]
    tiny = make_tiny_dataset(tmp_path)
    gone = [tiny["uids"][0], tiny["uids"][1]]           # one validation (fold 0) and one training study
    cfg = load_config(overrides(tiny) + [f"exclude_studies=[{','.join(gone)}]"])
    folds = pd.read_csv(tiny["folds_file"], dtype={"StudyInstanceUID": str})
    said = []
    task = VertebraTask(cfg, tiny["data_dir"], tiny["cache_dir"], folds, announce=said.append)
    used = set(task.train_frame["StudyInstanceUID"]) | set(task.val_frame["StudyInstanceUID"])
    assert not used & set(gone) and len(used) == len(tiny["uids"]) - 2
    assert any("left out 2 studies" in line for line in said)


# ---- the synthetic generator's boxes ----

def test_synth_box_fraction_changes_only_the_boxes():
    from src.synth.generate import plan_dataset

    default, _ = plan_dataset(300, 0, "demo", seed=1, seg_fraction=0.1, plant_test_trap=False)
    fewer, _ = plan_dataset(300, 0, "demo", seed=1, seg_fraction=0.1, plant_test_trap=False, box_fraction=0.1)
    assert sum(t["boxes"] for t in fewer) < sum(t["boxes"] for t in default)
    assert [t["fractured"] for t in fewer] == [t["fractured"] for t in default]
    none, _ = plan_dataset(300, 0, "demo", seed=1, seg_fraction=0.1, plant_test_trap=False, box_fraction=0.0)
    assert not any(t["boxes"] for t in none)


@pytest.mark.slow
def test_training_with_top_k_infers_with_the_mean_of_the_best_epochs(tmp_path):
    """A whole run (tiny 3D CNN, 3 epochs): best.pt holds the mean of the kept epochs, oof.csv comes from it."""
    from fake_training_data import install_folds, make_tiny_dataset, overrides
    from src.train import main

    tiny = make_tiny_dataset(tmp_path)
    install_folds(tiny)
    metrics = main(["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1"]
                   + overrides(tiny, epochs=3, max_steps_per_epoch=2, average_top_k=2))
    folder = tmp_path / "runs" / "cnn3d" / "fold0"
    kept = sorted((folder / "top_k").glob("epoch*.pt"))
    assert len(kept) == 2 and metrics["averaged_epochs"] == sorted(int(p.stem[5:]) for p in kept)
    best = torch.load(folder / "best.pt", weights_only=True)
    states = [torch.load(p, weights_only=True)["model"] for p in kept]
    key = next(k for k, v in best["model"].items() if v.is_floating_point() and v.numel() > 1)
    assert torch.allclose(best["model"][key], (states[0][key] + states[1][key]) / 2)
    single = torch.load(folder / "best_single.pt", weights_only=True)
    assert single["epoch"] == best["epoch"] and "averaged_epochs" not in single


# ---- benchmarks/ablation.py ----

def _ablation_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ablation", Path(__file__).resolve().parent.parent / "benchmarks" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    return ablation


def test_ablation_table_per_fold_mean_and_difference_from_base(tmp_path):
    ablation = _ablation_module()
    off = ablation.variants_for(load_config(["effnet_gru.aux_loss_weight=0"]), ["aux", "mask", "all", "patient"])
    assert off["base"] == [] and off["patient"] == [] and off["aux"] == ["effnet_gru.aux_loss_weight=1.0"]
    assert {"effnet_gru.mask_channel=true", "effnet_gru.aux_loss_weight=1.0"} <= set(off["all"])
    on = ablation.variants_for(load_config(["effnet_gru.aux_loss_weight=0.5"]), ["aux", "all"])
    assert set(on) == {"base", "no_aux", "all"} and on["no_aux"] == ["effnet_gru.aux_loss_weight=0.0"]
    assert not any(o.startswith("effnet_gru.aux_loss_weight") for o in on["all"])
    labels, probs, folds = _oof(n=200)
    uids = [f"1.{i}" for i in range(len(labels))]
    truth = pd.DataFrame(labels, columns=TARGETS).assign(StudyInstanceUID=uids)
    for variant, p in (("base", probs), ("aux", np.clip(probs * 0.9 + 0.1 * labels, 0, 1))):
        for fold in (0, 1):
            held = folds % 2 == fold
            folder = tmp_path / f"ablation_{variant}" / f"fold{fold}"
            folder.mkdir(parents=True)
            frame = pd.DataFrame(p[held], columns=TARGETS)
            frame.insert(0, "StudyInstanceUID", np.array(uids)[held])
            frame.to_csv(folder / "oof.csv", index=False)
    # ema finished fold 0 only, with base's very predictions: no difference, whatever base scores on fold 1
    folder = tmp_path / "ablation_ema" / "fold0"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "ablation_base" / "fold0" / "oof.csv", folder / "oof.csv")
    result = ablation.table(tmp_path, ["base", "aux", "mask", "ema", "patient"], [0, 1], truth)
    assert set(result["variant"]) == {"base", "aux", "ema", "patient"}  # mask was never trained: no row
    ema_mean = result[result["variant"] == "ema"].iloc[-1]
    assert ema_mean["fold"] == "mean of 0" and ema_mean["vs_base"] == 0
    base_rows = result[(result["variant"] == "base") & (result["fold"] != "mean")]
    held = folds % 2 == 0
    assert base_rows["score"].iloc[0] == pytest.approx(competition_score(labels[held], probs[held]))
    means = result[result["fold"] == "mean"].set_index("variant")
    assert means.loc["base", "vs_base"] == 0 and means.loc["aux", "vs_base"] < 0
    assert {"patient_ll", "C1_ll", "C7_ll", "auc"} <= set(result.columns)


def test_ablation_jobs_train_at_once_and_a_failed_run_costs_only_itself(tmp_path, monkeypatch, capsys):
    import sys
    import threading

    from fake_training_data import make_tiny_dataset

    ablation = _ablation_module()
    tiny = make_tiny_dataset(tmp_path / "tiny", n_studies=10)
    truth = pd.read_csv(tiny["data_dir"] + "/train.csv", dtype={"StudyInstanceUID": str})
    both_running = threading.Barrier(2, timeout=20)  # broken unless two trainings wait here at the same time
    started = []

    def fake_train(variant, overrides, fold, common, nice, log_dir, threads=0):
        started.append((variant, fold, threads))
        both_running.wait()
        if variant == "mixup":
            return "mixup fold 0 failed (exit 1); the end of its log: nan loss"
        folder = tmp_path / "runs" / f"ablation_{variant}" / f"fold{fold}"
        folder.mkdir(parents=True)
        truth.assign(**{t: 0.3 for t in TARGETS}).to_csv(folder / "oof.csv", index=False)
        (folder / "metrics.json").write_text("{}")
        return ""

    prepared = []
    monkeypatch.setattr(ablation, "prepare_once",
                        lambda configs: prepared.append((len(started), sorted(c["experiment"] for c in configs))))
    monkeypatch.setattr(ablation, "train_variant", fake_train)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(ablation.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--data-dir", tiny["data_dir"], "--runs-dir",
                                      str(tmp_path / "runs"), "--folds", "0", "--ingredients", "mixup",
                                      "--jobs", "2", "--", f"folds_dir={tiny['folds_dir']}"])
    with pytest.raises(SystemExit, match="1 run"):
        ablation.main()
    assert sorted(started) == [("base", 0, 1), ("mixup", 0, 1)]  # two at a time, one thread each on two cores
    # what both runs train on was built once, before either started, with each variant's settings
    assert prepared == [(0, ["ablation_base", "ablation_mixup"])]
    out, err = capsys.readouterr()
    assert "nan loss" in err and "base" in out.split("vs_base")[-1]  # the failure said, the others tabled
    assert (tmp_path / "runs" / "ablation_base" / "fold0" / "oof.csv").exists()

    started.clear()
    both_running = threading.Barrier(1)
    with pytest.raises(SystemExit, match="1 run"):  # base finished: only the failed run is tried again
        ablation.main()
    assert [v for v, _, _ in started] == ["mixup"]
