"""The model registry, the competition loss, and the 3D CNN baseline's forward pass."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.config import ConfigError, load_config
from src.metric import competition_score
from src.models import build_model, get_model_class, model_names
from src.models.losses import competition_loss


def test_loss_equals_competition_metric_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = (rng.random((32, 8)) < 0.3).astype(float)
    logits = rng.normal(0, 2, (32, 8))
    loss = competition_loss(torch.tensor(logits), torch.tensor(labels))
    expected = competition_score(labels, 1 / (1 + np.exp(-logits)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_loss_equals_metric_with_saturated_logits():
    # probabilities at 1e-20 and 1 - 1e-20: the metric clips them at 1e-15, the loss must agree
    labels = np.array([[1, 0, 1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1]], dtype=float)
    logits = np.where(labels > 0, -46.0, 46.0)  # confidently wrong everywhere
    logits[1, :3] = [-12.0, 30.0, 0.0]
    probs = 1 / (1 + np.exp(-logits))
    loss = competition_loss(torch.tensor(logits), torch.tensor(labels))
    assert float(loss) == pytest.approx(competition_score(labels, probs), rel=1e-5)
    assert float(loss) > 20  # and it is large, not clipped to something small


def test_loss_weights_patient_overall_heavier_than_a_vertebra():
    labels = torch.zeros(1, 8)
    wrong_patient = torch.full((1, 8), -20.0)  # every other target right and confident
    wrong_patient[0, 0] = 3.0
    wrong_vertebra = torch.full((1, 8), -20.0)
    wrong_vertebra[0, 3] = 3.0
    assert competition_loss(wrong_patient, labels) > 5 * competition_loss(wrong_vertebra, labels)


def test_loss_refuses_wrong_shapes():
    with pytest.raises(ValueError, match="expects"):
        competition_loss(torch.zeros(2, 7), torch.zeros(2, 7))


def test_registry_knows_cnn3d_and_names_the_registered_ones_for_a_typo():
    assert "cnn3d" in model_names()
    assert get_model_class("cnn3d").task == "volume" and get_model_class("cnn3d").settings == "cnn3d"
    with pytest.raises(ConfigError, match="cnn3d"):
        get_model_class("cnn3e")


def tiny_cnn3d_cfg(**extra):
    cfg = load_config(["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]",
                       "windows=[[400,1800],[40,400]]"] + [f"{k}={v}" for k, v in extra.items()])
    return cfg


def test_cnn3d_forward_gives_eight_logits_and_a_loss_that_backpropagates():
    model = build_model(tiny_cnn3d_cfg())
    batch = {"volume": torch.rand(3, 2, 8, 16, 16), "labels": torch.randint(0, 2, (3, 8)).float()}
    out = model(batch)
    assert out["logits"].shape == (3, 8)
    assert out["loss"].dim() == 0
    out["loss"].backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
    assert "loss" not in model({"volume": batch["volume"]})  # inference: no labels, no loss


def test_cnn3d_starts_at_the_label_prior():
    model = build_model(tiny_cnn3d_cfg()).eval()
    rates = np.array([0.5, 0.07, 0.14, 0.04, 0.05, 0.08, 0.14, 0.2])
    model.init_label_prior(rates)
    model.head.weight.data.zero_()
    probs = torch.sigmoid(model({"volume": torch.rand(2, 2, 8, 16, 16)})["logits"])
    np.testing.assert_allclose(probs.detach().numpy(), np.tile(rates, (2, 1)), rtol=1e-5)


def test_model_code_imports_without_data_or_logging_libraries():
    import subprocess
    import sys

    # block the libraries a GPU box may lack, then import and build the model
    code = ("import sys\n"
            "for name in ['wandb', 'pydicom', 'albumentations', 'monai']: sys.modules[name] = None\n"
            "import torch\nfrom omegaconf import OmegaConf\nfrom src.models import build_model\n"
            "cfg = OmegaConf.create({'model': 'cnn3d', 'windows': [[400, 1800]], 'cnn3d': {'widths': [4], 'blocks': 1, 'dropout': 0.0}})\n"
            "print(build_model(cfg)({'volume': torch.rand(1, 1, 8, 8, 8)})['logits'].shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 8])" in result.stdout


def test_tiny_cfg_helper_really_sets_the_shape():
    assert list(tiny_cnn3d_cfg().cnn3d.shape) == [8, 16, 16]
    assert OmegaConf.is_readonly(tiny_cnn3d_cfg())
