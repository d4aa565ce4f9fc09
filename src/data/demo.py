"""The data a command works on: the configured folder, or the synthetic demo standing in for it.

Called by the commands (src.train, src.prepare, src.localise, src.folds, infer.py): when ``data_dir`` holds no
train.csv, the demo dataset under ``demo.dir`` is used instead, and generated (src/synth) the first time,
with the ``demo:`` settings of configs/default.yaml. Saying so is part of the job: a user who meant the
real data learns at once that it was not found.
"""
from __future__ import annotations

from pathlib import Path

from ..paths import _abs, has_labels, locate_data_dir


def resolve_data_dir(cfg, announce=print) -> Path:
    """The configured data folder, or the demo dataset (generated if absent) when it has no train.csv."""
    data_dir = _abs(cfg["data_dir"])
    if has_labels(data_dir):
        return data_dir
    demo = _abs(cfg["demo"]["dir"])
    if has_labels(demo):
        announce(f"[data] no train.csv in {data_dir}: using the demo dataset in {demo}")
        return locate_data_dir(cfg)
    announce(f"[data] no train.csv in {data_dir}: generating the demo dataset in {demo} (one-off, a minute or two)")
    from ..synth.generate import generate_dataset

    d = cfg["demo"]
    generate_dataset(demo, n_train=d["n_train"], n_test=d["n_test"], size=d["size"], seed=d["seed"],
                     seg_fraction=d["seg_fraction"])
    return demo
