"""Test-time views of infer.py: slice shifts (``tta_shifts``) beside the left-right mirror (``tta``)."""
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from src import VERTEBRAE
from src.config import load_config
from src.data.cache import load_study
from src.inference.inputs import build_inputs, input_spec, shifted_key
from src.inference.members import FoldModel, Member, mirror
from src.tasks.vertebra import VertebraDataset, sample_positions
from src.training.device import autocast_for
from test_effnet_gru import TINY, _study


class Brightness(torch.nn.Module):
    """A stand-in classifier whose logits follow each vertebra's crops: their mean (which the slices a
    shift samples change) and their left half against their right (which the mirror changes)."""

    def forward(self, batch):
        images = batch["images"]                                     # (B, 7, N, C, H, W)
        half = images.shape[-1] // 2
        vertebrae = 4 * (images.mean(dim=(2, 3, 4, 5)) - 0.5) + images[..., :half].mean(dim=(2, 3, 4, 5)) \
            - images[..., half:].mean(dim=(2, 3, 4, 5))
        return {"logits": torch.cat([vertebrae.mean(dim=1, keepdim=True), vertebrae], dim=1)}


def test_a_shift_moves_every_sample_by_that_share_of_the_spacing_inside_the_range():
    assert sample_positions(0, 70, 8).tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    assert sample_positions(0, 70, 8, shift=0.5).tolist() == [5, 15, 25, 35, 45, 55, 65, 70]
    assert sample_positions(0, 70, 8, shift=-0.5).tolist() == [0, 5, 15, 25, 35, 45, 55, 65]
    assert sample_positions(7, 7, 3, shift=0.5).tolist() == [7, 7, 7]  # a one-slice range has nowhere to go


def test_shift_views_are_the_validation_crops_shifted_and_inference_averages_every_view(tmp_path):
    uid = _study(tmp_path, range(1, 21))
    rows = pd.DataFrame([{"StudyInstanceUID": uid, "vertebra": v, "slice_min": 2 + 2 * k, "slice_max": 8 + 2 * k,
                          "x0": 20, "y0": 10, "x1": 60, "y1": 50} for k, v in enumerate(VERTEBRAE)])  # bone right of centre
    cfg = load_config(TINY + ["prepare.size=40", "windows=[[0,2000]]"])
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    spec = input_spec(plain_cfg)
    study = load_study(tmp_path, "train_images", uid)
    inputs = build_inputs([spec], {40: (np.asarray(study.volume), study.meta)}, rows, shifts=(-0.5, 0.5))
    assert set(inputs) == {spec.key, shifted_key(spec.key, -0.5), shifted_key(spec.key, 0.5)}
    # each view is exactly the validation item with the crops shifted alike: what benchmarks/tta.py scores
    dataset = VertebraDataset(tmp_path, [uid], rows, cfg["effnet_gru"], cfg["windows"])
    for shift, key in ((0.0, spec.key), (-0.5, shifted_key(spec.key, -0.5)), (0.5, shifted_key(spec.key, 0.5))):
        dataset.crops.shift = shift
        assert torch.equal(inputs[key]["images"][0], dataset[0]["images"])
    assert not torch.equal(inputs[spec.key]["images"], inputs[shifted_key(spec.key, 0.5)]["images"])

    model = Brightness()
    member = Member("effnet_gru", 1.0, [FoldModel(0, model, cfg, spec)])
    autocast = autocast_for(cfg, torch.device("cpu"))
    views = [inputs[k] for k in (spec.key, shifted_key(spec.key, -0.5), shifted_key(spec.key, 0.5))]
    with torch.no_grad():
        each = [torch.sigmoid(model(v)["logits"]).numpy().reshape(-1) for v in views + [mirror(v) for v in views]]
    got = member.predict(inputs, torch.device("cpu"), autocast, tta=True, shifts=(-0.5, 0.5))
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6)
    plain = member.predict(inputs, torch.device("cpu"), autocast)
    np.testing.assert_allclose(plain, each[0], rtol=1e-6)
    assert np.abs(each[3] - each[0]).max() > 1e-3  # the mirror is a view of its own
    one_shift = member.predict(inputs, torch.device("cpu"), autocast, shifts=(0.5,))
    np.testing.assert_allclose(one_shift, (each[0] + each[2]) / 2, rtol=1e-6)
    assert np.abs(one_shift - plain).max() > 1e-4  # float rounding alone stays under 1e-6


def test_tta_shifts_must_be_fractions_of_the_spacing():
    from src.config import ConfigError
    from src.inference.settings import load_infer_config

    assert load_infer_config(["tta_shifts=[-0.5,0.5]"])["tta_shifts"] == [-0.5, 0.5]
    for bad in ("tta_shifts=[1.5]", "tta_shifts=[true]"):
        with pytest.raises(ConfigError, match="tta_shifts"):
            load_infer_config([bad])
