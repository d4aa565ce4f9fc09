"""The EfficientNet + GRU classifier and its per-vertebra dataset: geometry, augmentation, the model's
heads, offline pretrained loading, and that best.pt reproduces the validation predictions."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from src import TARGETS, VERTEBRAE
from src.config import load_config
from src.data.cache import write_study
from src.models.effnet_gru import EffNetGRU, PretrainedWeightsError, create_encoder, noisy_or_logit
from src.tasks.vertebra import (VertebraDataset, VertebraSampleDataset, crop_padded, neighbour_indices, patient_alternatives,
                                sample_positions, slice_range_indices, square_box)

from fake_training_data import install_folds, make_tiny_dataset, overrides

TINY = ["effnet_gru.encoder=test_efficientnet", "effnet_gru.n_slices=3", "effnet_gru.neighbours=1",
        "effnet_gru.crop_size=32", "effnet_gru.gru_hidden=8", "pretrained=false", "effnet_gru.train_unit=study"]
SETTINGS = {"n_slices": 4, "neighbours": 1, "neighbour_step": 1, "crop_size": 24, "margin": 0.0, "augment": 0.0}


# ---- geometry ----

def test_slice_range_is_found_by_number_in_reversed_and_gapped_studies():
    reversed_numbers = np.arange(50, 0, -1)          # volume index 0 holds file 50.dcm
    assert slice_range_indices(reversed_numbers, 41, 45) == (5, 9)
    gapped = np.array([3, 4, 5, 9, 10, 11, 12])       # files 6..8 missing
    assert slice_range_indices(gapped, 5, 10) == (2, 4)
    assert slice_range_indices(gapped, 6, 8) in {(2, 2), (3, 3)}  # nothing inside: the nearest slice


def test_positions_neighbours_and_box():
    assert sample_positions(10, 20, 3).tolist() == [10, 15, 20]
    assert sample_positions(7, 7, 4).tolist() == [7, 7, 7, 7]
    torch.manual_seed(0)
    jittered = sample_positions(0, 90, 10, jitter=0.5)
    assert jittered.min() >= 0 and jittered.max() <= 90 and not np.array_equal(jittered, sample_positions(0, 90, 10))
    assert neighbour_indices(np.array([0, 5, 9]), 1, 2, 10).tolist() == [[0, 0, 2], [3, 5, 7], [7, 9, 9]]
    x0, y0, x1, y1 = square_box(10, 20, 30, 30, margin=0.5)  # 20 x 10 box, longer side 20 -> 40 wide
    assert (x1 - x0, y1 - y0) == (40, 40) and (x0 + x1) / 2 == 20 and (y0 + y1) / 2 == 25


def test_crop_outside_the_slice_is_air():
    slices = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    crop = crop_padded(slices, (-2, 1, 2, 3), fill=-1024)
    assert crop.shape == (2, 2, 4)
    assert (crop[:, :, :2] == -1024).all() and np.array_equal(crop[:, :, 2:], slices[:, 1:3, 0:2])


# ---- the dataset on a tiny cache ----

def _study(tmp_path, numbers):
    """A 20-slice 40 px study whose slice i holds the value 100 * i inside a bright square at rows 10..20, cols 20..30."""
    hu = np.full((20, 40, 40), -1000, dtype=np.int16)
    for i in range(20):
        hu[i, 10:20, 20:30] = 100 * i - 500
    uid = "1.2.3.4"
    meta = {"slice_numbers": list(numbers), "original_shape": [80, 80]}  # cache at half the original size
    write_study(tmp_path, "train_images", uid, hu, meta)
    return uid


def test_vertebra_crops_follow_the_table_in_original_pixels(tmp_path):
    uid = _study(tmp_path, range(20, 0, -1))  # stored reversed: file 20.dcm is volume index 0
    rows = [{"StudyInstanceUID": uid, "vertebra": v, "slice_min": 11, "slice_max": 14,   # volume indices 6..9
             "x0": 40, "y0": 20, "x1": 60, "y1": 40} for v in VERTEBRAE]                 # cache cols 20..30, rows 10..20
    ds = VertebraDataset(tmp_path, [uid], pd.DataFrame(rows), SETTINGS, windows=[[0, 2000]])
    images = ds[0]["images"]
    assert tuple(images.shape) == (7, 4, 3, 24, 24)  # 7 vertebrae, 4 slices, 3 neighbours x 1 window
    centre = images[0, :, 1, 12, 12].numpy()          # the sampled slices themselves (middle channel)
    expected = (100 * np.array([6, 7, 8, 9]) - 500 + 1000) / 2000  # window [0, 2000] maps -1000..1000 to 0..1
    np.testing.assert_allclose(centre, expected, atol=0.02)
    assert images[0, 0, 0, 12, 12] < images[0, 0, 2, 12, 12]  # neighbour before (index 5) darker than after (7)


def test_a_study_missing_from_the_table_still_gets_an_item(tmp_path):
    uid = _study(tmp_path, range(1, 21))
    empty = pd.DataFrame(columns=["StudyInstanceUID", "vertebra", "slice_min", "slice_max", "x0", "y0", "x1", "y1"])
    with pytest.warns(UserWarning, match="lack some localisation rows"):
        ds = VertebraDataset(tmp_path, [uid], empty, SETTINGS, windows=[[400, 1800]], labels=np.zeros((1, 8)))
    item = ds[0]
    assert tuple(item["images"].shape) == (7, 4, 3, 24, 24) and torch.isfinite(item["images"]).all()
    # the fallback spreads the vertebrae down the study, head first: C1 sees earlier (darker) slices than C7
    assert item["images"][0, :, 1].mean() < item["images"][6, :, 1].mean()


def test_vertebra_items_show_every_fracture_and_reweight_the_intact(tmp_path):
    uids = [_study(tmp_path / "0", range(1, 21))]
    rows = [{"StudyInstanceUID": uids[0], "vertebra": v, "slice_min": 3, "slice_max": 8, "x0": 40, "y0": 20,
             "x1": 60, "y1": 40} for v in VERTEBRAE]
    labels = np.zeros((1, 8), dtype=np.float32)
    labels[0, [0, 2, 6]] = 1  # patient, C2 and C6 fractured: 2 positives, 5 intact vertebrae
    studies = VertebraDataset(tmp_path / "0", uids[:1], pd.DataFrame(rows), SETTINGS, windows=[[400, 1800]], labels=labels)
    items = VertebraSampleDataset(studies, negatives_per_positive=1.5)
    assert len(items) == 2 + 3
    assert items.negative_weight == pytest.approx(5 / 3)  # each intact vertebra drawn 3/5 of a time per epoch
    first, second = items[0], items[1]
    assert {int(first["vertebra"]), int(second["vertebra"])} == {1, 5} and float(first["vertebra_label"]) == 1.0
    torch.manual_seed(0)
    drawn = [items[i] for i in range(2, 5)]
    assert all(float(d["vertebra_label"]) == 0 and int(d["vertebra"]) not in (1, 5) for d in drawn)
    assert all(float(d["vertebra_weight"]) == pytest.approx(5 / 3) for d in drawn)
    assert tuple(first["images"].shape) == (4, 3, 24, 24)


def test_single_vertebra_loss_is_the_weighted_vertebra_log_loss():
    model = EffNetGRU(load_config(TINY))
    batch = {"images": torch.rand(3, 3, 3, 32, 32), "vertebra": torch.tensor([0, 4, 6]),
             "vertebra_label": torch.tensor([1.0, 0.0, 0.0]), "vertebra_weight": torch.tensor([1.0, 2.0, 2.0])}
    out = model(batch)
    logits = out["logits"][:, 0].detach()
    p = torch.sigmoid(logits.double())
    # weights: fractured 2 x 1, intact 1 x 2 (sampling) each -> 2, 2, 2
    expected = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_augmentation_is_shared_by_all_slices_and_follows_torch_seed(tmp_path):
    from src.data.augment import augment_stack, build_slice_stack_transform

    transform = build_slice_stack_transform(1.0)
    one = np.zeros((24, 24), dtype=np.float32)
    one[4:10, 6:18] = 1.0
    stack = np.repeat(one[None], 12, axis=0)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(augment_stack(stack, transform))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0] - outs[0][:1]).max() == 0  # every slice moved exactly alike
    torch.manual_seed(4)
    assert not np.array_equal(augment_stack(stack, transform), outs[0])


# ---- the model ----

def test_noisy_or_logit_matches_the_product_formula():
    logits = torch.tensor([[0.0] * 7, [-3.0, -2, -4, -2, -1, -2, -3], [25.0, -9, -9, -9, -9, -9, -9], [-20.0] * 7])
    p = torch.sigmoid(logits.double())
    np.testing.assert_allclose(torch.sigmoid(noisy_or_logit(logits).double()).numpy(),
                               (1 - (1 - p).prod(dim=1)).numpy(), rtol=1e-4, atol=1e-9)
    probs = np.array([[0.1, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
    alt = patient_alternatives(probs)
    assert alt["noisy_or"][0] == pytest.approx(0.55) and alt["max"][0] == pytest.approx(0.5)


@pytest.mark.parametrize("head", ["noisy_or", "max", "learned"])
def test_model_gives_eight_logits_and_the_competition_loss(head):
    cfg = load_config(TINY + [f"effnet_gru.patient_head={head}"])
    model = EffNetGRU(cfg)
    model.init_label_prior(np.array([0.5, 0.1, 0.2, 0.05, 0.05, 0.1, 0.15, 0.2]))
    images = torch.rand(2, 7, 3, 3, 32, 32)
    labels = torch.zeros(2, 8)
    labels[0, [0, 3]] = 1
    out = model({"images": images, "labels": labels})
    assert tuple(out["logits"].shape) == (2, 8) and out["loss"].ndim == 0
    out["loss"].backward()
    assert model.encoder.conv_stem.weight.grad.abs().sum() > 0  # the loss reaches the encoder
    if head == "max":
        assert torch.equal(out["logits"][:, 0], out["logits"][:, 1:].max(dim=1).values)


def test_pretrained_without_local_weights_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_encoder("test_efficientnet", 3, pretrained=True, pretrained_path=str(tmp_path / "nope.pth"))
    started = time.time()
    with pytest.raises(PretrainedWeightsError, match="pretrained_path"):
        create_encoder("test_efficientnet", 3, pretrained=True)
    assert time.time() - started < 20


def test_pretrained_path_loads_weights_and_adapts_the_stem(tmp_path):
    source = create_encoder("test_efficientnet", 3)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param))  # no parameter keeps its initial value (zero biases, unit norms)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = create_encoder("test_efficientnet", 9, pretrained=True, pretrained_path=str(path))
    assert loaded.conv_stem.weight.shape[1] == 9
    theirs = dict(source.named_parameters())
    rest = [name for name in theirs if not name.startswith("conv_stem")]
    assert rest and all(torch.equal(param, theirs[name]) for name, param in loaded.named_parameters() if name in rest)
    fresh = create_encoder("test_efficientnet", 9)
    assert not torch.equal(dict(fresh.named_parameters())[rest[-1]], theirs[rest[-1]])  # the check can fail


# ---- through the loop: best.pt reproduces the validation predictions ----

@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_best_checkpoint_reproduces_validation_predictions(tmp_path, ema_decay):
    from src.data.folds import ensure_folds
    from src.tasks.vertebra import VertebraTask
    from src.training import fit
    from src.models.checkpoint import load_checkpoint

    tiny = make_tiny_dataset(tmp_path, n_studies=10, slices=14, size=16)
    install_folds(tiny)
    cfg = load_config(overrides(tiny, batch_size=2) + TINY + ["effnet_gru.augment=1.0", f"ema_decay={ema_decay}"])
    folds = ensure_folds(cfg, tiny["data_dir"])
    task = VertebraTask(cfg, tiny["data_dir"], tiny["cache_dir"], folds)
    run = tmp_path / "run"
    metrics = fit(cfg, task, run, dataset_kind="demo", announce=lambda *_: None)
    oof = pd.read_csv(run / "oof.csv", dtype={"StudyInstanceUID": str})
    assert {"score", "prior_score", "score_patient_noisy_or", "score_patient_max"} <= set(metrics)

    best = load_checkpoint(run / "best.pt")
    if ema_decay:  # the average is what was validated and is saved as "model"; the trained weights differ
        assert best["ema_steps"] > 0
        assert any(not torch.equal(best["model"][k], best["train_model"][k]) for k in best["model"])
    fresh = EffNetGRU(cfg)
    fresh.load_state_dict(best["model"])
    fresh.eval()
    _, val_set = task.datasets()
    with torch.no_grad():
        logits = torch.cat([fresh({"images": val_set[i]["images"][None]})["logits"] for i in range(len(val_set))])
    assert list(oof["StudyInstanceUID"]) == list(val_set.study_uids)
    np.testing.assert_allclose(oof[TARGETS].to_numpy(), torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)


def test_model_imports_and_runs_without_data_or_logging_libraries():
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ['wandb', 'pydicom', 'albumentations', 'monai', 'dicomsdl']: sys.modules[name] = None\n"
            "import torch\nfrom src.config import load_config\nfrom src.models import build_model\n"
            f"cfg = load_config({TINY!r})\n"
            "print(build_model(cfg)({'images': torch.rand(1, 7, 3, 3, 32, 32)})['logits'].shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 8])" in result.stdout
