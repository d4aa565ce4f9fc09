"""``python -m src.prepare``: read every DICOM study once into the cache that training and inference read.

    python -m src.prepare                                   # demo data if the real data is absent
    python -m src.prepare data_dir=/data/rsna workers=16 size=256
    python -m src.prepare config=cnn3d prepare.splits=[train_images,test_images]

train.sh runs it when :func:`src.data.prepare.missing_studies` says the cache lacks studies.
``size``, ``workers``, ``min_slices``, ``splits``, ``decoder`` and ``max_pixels`` are short for
``prepare.<key>``; every other key is a normal config override (configs/default.yaml). Interrupt it
at any time: the next run skips finished studies and redoes the rest. Two runs on one cache at once
are safe (each study is locked while it is prepared). A setting that cannot work (a data_dir that
does not exist, an unknown decoder, a cache built at another size) stops it with one line and exit
code 2, as a config error does.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .config import CONFIG_DIR, DEFAULT_EXPERIMENT, load_config, run_main, split_args
from .data.prepare import PrepareError, format_summary, prepare_dataset
from .data.demo import resolve_data_dir
from .paths import resolve_cache_dir

SHORT_KEYS = ("size", "workers", "min_slices", "splits", "decoder", "max_pixels")


def expand_short_keys(argv: list[str]) -> list[str]:
    """``workers=4`` -> ``prepare.workers=4``; everything else passes through unchanged."""
    expanded = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.strip().lstrip("-")
        expanded.append(f"prepare.{bare}={value}" if sep and bare in SHORT_KEYS else arg)
    return expanded


def check_given_data_dir(argv: list[str], cfg) -> None:
    """Refuse a data_dir given on the command line that does not exist.

    Without a train.csv in data_dir the demo dataset stands in (src/data/demo.py): right
    for the default folder, but a misspelt ``data_dir=/data/rsna`` would then quietly prepare (and
    first generate) the demo data instead of saying what is wrong.
    """
    if any(key == "data_dir" for key, _ in split_args(argv)):
        folder = Path(cfg.data_dir).expanduser().resolve()
        if not folder.is_dir():
            raise PrepareError(f"data_dir {folder} does not exist; give the folder that holds train_images/ "
                               f"(or leave data_dir out to use the demo dataset)")


def main(argv: list[str]) -> dict:
    # the default experiment file may not exist in a partial checkout; default.yaml has every key
    experiment = DEFAULT_EXPERIMENT if (CONFIG_DIR / f"{DEFAULT_EXPERIMENT}.yaml").exists() else "default"
    argv = expand_short_keys(list(argv))
    cfg = load_config(argv, default_experiment=experiment)
    try:
        check_given_data_dir(argv, cfg)
        data_dir = resolve_data_dir(cfg)
        cache_dir = resolve_cache_dir(cfg, data_dir)
        settings = cfg.prepare
        print(f"[prepare] {data_dir} -> {cache_dir} (size {settings.size}, {settings.workers} workers, "
              f"splits {list(settings.splits)})", flush=True)
        summary = prepare_dataset(data_dir, cache_dir, splits=list(settings.splits), size=int(settings.size),
                                  workers=int(settings.workers), min_slices=int(settings.min_slices),
                                  progress=bool(cfg.progress), decoder=str(settings.decoder),
                                  max_pixels=int(settings.max_pixels))
    except PrepareError as err:
        print(f"[prepare] {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("[prepare] interrupted; finished studies are kept, the next run does the rest", file=sys.stderr)
        raise SystemExit(130) from None
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
