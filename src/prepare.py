"""``python -m src.prepare``: read every DICOM study once into the cache that training and inference read.

    python -m src.prepare                                   # demo data if the real data is absent
    python -m src.prepare data_dir=/data/rsna workers=16 size=256
    python -m src.prepare config=cnn3d prepare.splits=[train_images,test_images]

train.sh runs it when :func:`src.data.prepare.missing_studies` says the cache lacks studies.
``size``, ``workers``, ``min_slices``, ``splits`` and ``decoder`` are short for ``prepare.<key>``;
every other key is a normal config override (configs/default.yaml). Interrupt it at any time: the
next run skips finished studies and redoes the rest.
"""
from __future__ import annotations

import sys

from .config import CONFIG_DIR, DEFAULT_EXPERIMENT, load_config, run_main
from .data.prepare import format_summary, prepare_dataset
from .paths import resolve_cache_dir, resolve_data_dir

SHORT_KEYS = ("size", "workers", "min_slices", "splits", "decoder")


def expand_short_keys(argv: list[str]) -> list[str]:
    """``workers=4`` -> ``prepare.workers=4``; everything else passes through unchanged."""
    expanded = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.strip().lstrip("-")
        expanded.append(f"prepare.{bare}={value}" if sep and bare in SHORT_KEYS else arg)
    return expanded


def main(argv: list[str]) -> dict:
    # the default experiment file may not exist in a partial checkout; default.yaml has every key
    experiment = DEFAULT_EXPERIMENT if (CONFIG_DIR / f"{DEFAULT_EXPERIMENT}.yaml").exists() else "default"
    cfg = load_config(expand_short_keys(list(argv)), default_experiment=experiment)
    data_dir = resolve_data_dir(cfg)
    cache_dir = resolve_cache_dir(cfg, data_dir)
    settings = cfg.prepare
    print(f"[prepare] {data_dir} -> {cache_dir} (size {settings.size}, {settings.workers} workers, "
          f"splits {list(settings.splits)})", flush=True)
    summary = prepare_dataset(data_dir, cache_dir, splits=list(settings.splits), size=int(settings.size),
                              workers=int(settings.workers), min_slices=int(settings.min_slices),
                              progress=bool(cfg.progress), decoder=str(settings.decoder))
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
