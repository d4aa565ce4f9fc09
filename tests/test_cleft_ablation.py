"""benchmarks/demo_inputs.py (for cleft_ablation.py and attention_on_cleft.py): matching a re-rendered demo
study to its cached volume."""
import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location(
    "demo_inputs", Path(__file__).resolve().parent.parent / "benchmarks" / "demo_inputs.py")
demo_inputs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(demo_inputs)


def test_cached_order_finds_the_slice_order_of_the_cache():
    rendered = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    z = np.array([2.0, 0.0, 3.0, 1.0])  # slices rendered out of position order
    cached = rendered[np.argsort(z)]
    order = demo_inputs.cached_order(rendered, z, cached)
    np.testing.assert_array_equal(rendered[order], cached)
    np.testing.assert_array_equal(rendered[demo_inputs.cached_order(rendered, z, cached[::-1])], cached[::-1])


def test_cached_order_refuses_a_volume_that_differs():
    rendered = np.zeros((3, 2, 2), dtype=np.int16)
    cached = rendered.copy()
    cached[1, 0, 0] = 5
    assert demo_inputs.cached_order(rendered, np.array([0.0, 1.0, 2.0]), cached) is None
    assert demo_inputs.cached_order(rendered, np.array([0.0, 1.0, 2.0]), rendered[:2]) is None
