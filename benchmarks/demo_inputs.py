"""What the demo diagnostics (fracture_probe.py, cleft_ablation.py) start from: the effnet_gru config, the
synthetic dataset it resolves to, its cache and localisation table; a clear exit when any is missing."""
from __future__ import annotations

import sys


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
