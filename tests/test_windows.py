"""HU windows: one [0, 1] channel per (center, width), the same on numpy and torch."""
import numpy as np
import pytest
import torch

from src.data.windows import apply_windows

HU = np.array([[-3024, -500, -499, 400, 1300, 1301, 3071]], dtype=np.int16)


def test_bone_window_edges_and_clipping():
    out = apply_windows(HU)
    assert out.dtype == np.float32 and out.shape == (1,) + HU.shape
    expected = np.clip((HU.astype(np.float64) + 500) / 1800, 0, 1)
    assert np.allclose(out[0], expected, atol=1e-6)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 3] == pytest.approx(0.5) and out[0, 0, -1] == 1.0


def test_several_windows_become_channels_in_order():
    windows = [(400, 1800), (40, 400), (-600, 1500)]
    out = apply_windows(HU, windows)
    assert out.shape == (3,) + HU.shape
    for channel, (center, width) in zip(out, windows):
        assert np.allclose(channel, np.clip((HU - (center - width / 2)) / width, 0, 1), atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_torch_tensor_gives_the_same_values_as_numpy():
    windows = [(400, 1800), (40, 400)]
    volume = np.random.default_rng(0).integers(-2000, 3000, size=(3, 8, 8)).astype(np.int16)
    as_tensor = apply_windows(torch.from_numpy(volume), windows)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    assert as_tensor.shape == (2, 3, 8, 8)
    assert np.allclose(as_tensor.numpy(), apply_windows(volume, windows), atol=1e-6)


@pytest.mark.parametrize("bad", [[(400,)], [(400, 0)], [(400, -10)], []])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError, match="window"):
        apply_windows(HU, bad)
