"""What the demo diagnostics (fracture_probe.py, cleft_ablation.py, attention_on_cleft.py, levels.py) start
from: the effnet_gru config, the synthetic dataset it resolves to, its cache and localisation table, with a
clear exit when any is missing; and the held-out fractured studies rendered again with and without their
clefts, in the cache's slice order."""
from __future__ import annotations

import sys

import numpy as np


def synthetic_inputs(overrides: list[str], why_synthetic: str):
    """(cfg, data_dir, cache_dir, localisation table) for ``config=effnet_gru`` plus ``overrides``."""
    from src.config import load_config
    from src.paths import is_synthetic, locate_data_dir, localisation_path, resolve_cache_dir
    from src.localisation.table import read_table

    cfg = load_config(["config=effnet_gru", *overrides])
    data_dir = locate_data_dir(cfg)
    if not is_synthetic(data_dir):
        sys.exit(f"{data_dir} is not a synthetic dataset: {why_synthetic}")
    cache_dir = resolve_cache_dir(cfg, data_dir)
    table_path = localisation_path(cfg, cache_dir)
    if not table_path.exists():
        sys.exit(f"no localisation table at {table_path}; build it with `python -m src.localise`")
    return cfg, data_dir, cache_dir, read_table(table_path, complete=False)


def cached_order(rendered: np.ndarray, z_positions: np.ndarray, cached: np.ndarray) -> np.ndarray | None:
    """Slice indices that turn the rendered volume into the cached one (which is sorted by position), or
    None if no ordering matches voxel for voxel."""
    by_z = np.argsort(z_positions)
    for order in (np.arange(len(z_positions)), by_z, by_z[::-1]):
        if rendered.shape == cached.shape and np.array_equal(rendered[order].astype(cached.dtype), cached):
            return order
    return None


def held_out_fractured(cfg, data_dir) -> list[dict]:
    """The generator's plan (src.synth.generate.plan_dataset) of every fractured study that fold
    ``cfg.fold`` holds out, in plan order; exits when the config's demo settings do not describe
    ``data_dir``."""
    import pandas as pd

    from src.data.folds import ensure_folds
    from src.synth.generate import plan_dataset

    demo = cfg["demo"]
    tasks, _ = plan_dataset(demo["n_train"], demo["n_test"], demo["size"], demo["seed"], demo["seg_fraction"], False)
    train = set(pd.read_csv(data_dir / "train.csv", dtype={"StudyInstanceUID": str})["StudyInstanceUID"])
    if not all(t["uid"] in train for t in tasks if t["split"] == "train_images"):
        sys.exit(f"the demo settings in the config do not describe {data_dir} (another n_train, seed or seg_fraction?)")
    folds = ensure_folds(cfg, data_dir)
    held_out = set(folds.loc[folds["fold"] == cfg["fold"], "StudyInstanceUID"])
    return [t for t in tasks if t["uid"] in held_out and t["fractured"]]


def with_and_without_clefts(task: dict, cache_dir):
    """(the cached study, its volume, the same study rendered again without its clefts in the cache's
    slice order), or None when the cache is not the rendered study."""
    from src.data.cache import load_study
    from src.synth.study import make_study

    cached = load_study(cache_dir, "train_images", task["uid"], with_mask=False)
    volume = np.asarray(cached.volume)
    study = make_study(task["uid"], task["seed"], size=task["size"], fractured=task["fractured"])
    order = cached_order(study.hu, study.z_positions, volume)
    if order is None:
        return None
    intact = make_study(task["uid"], task["seed"], size=task["size"], fractured=task["fractured"],
                        with_fractures=False)
    return cached, volume, intact.hu[order].astype(volume.dtype)
