"""Inference asks glibc to keep freed memory for the next study (src/inference/memory.py), and only when
``keep_freed_memory`` is on."""
from __future__ import annotations

import platform

import pytest

from fake_training_data import make_tiny_dataset
from infer_helpers import save_untrained_run
from src.inference import pipeline
from src.inference.memory import keep_freed_memory
from src.inference.settings import load_infer_config


def test_the_allocator_accepts_the_setting_on_glibc():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("setting, calls", [("true", 1), ("false", 0)])
def test_the_predictor_keeps_freed_memory_only_when_asked(tmp_path, monkeypatch, setting, calls):
    tiny = make_tiny_dataset(tmp_path / "tiny")
    save_untrained_run(tmp_path / "runs", "cnn3d", tiny["data_dir"])
    asked = []
    monkeypatch.setattr(pipeline, "keep_freed_memory", lambda: asked.append(1) or True)
    cfg = load_infer_config([f"runs_dir={tmp_path / 'runs'}", "members=[cnn3d]", "ensemble=none", "device=cpu",
                             f"keep_freed_memory={setting}"])
    pipeline.load_predictor(cfg, announce=lambda *_: None)
    assert len(asked) == calls
