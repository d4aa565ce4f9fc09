"""``python -m src.localise [config=localiser] key=value ...``: the localisation table of the dataset.

Prepares the study cache and the folds if they are missing, trains the localiser folds
``localiser.folds`` ([] = all) whose training has not finished (no ``runs/<experiment>/fold<k>/metrics.json``;
an interrupted fold is resumed), then predicts every cached study (out-of-fold for the segmented ones) and
writes the table to ``<cache_dir>/localisation.csv`` (or ``localisation_table=``). Prints the out-of-fold Dice and slice IoU.
"""
from __future__ import annotations

import sys

from .config import ConfigError, load_config, run_main
from .localisation import LOCALISER_EXPERIMENT
from .data.demo import resolve_data_dir
from .paths import resolve_cache_dir


def main(argv: list[str]) -> dict:
    cfg = load_config(argv, default_experiment=LOCALISER_EXPERIMENT)
    from .data.folds import ensure_folds
    from .data.prepare import ensure_cache
    from .localisation.build import build_table, train_missing_folds
    from .models.registry import get_model_class, model_task
    from .training import STOPS_WITH_A_SENTENCE

    if model_task(get_model_class(cfg["model"])) != "localise":
        raise ConfigError(f"config '{cfg['experiment']}' trains model '{cfg['model']}', not a localiser; "
                          f"use config={LOCALISER_EXPERIMENT}")
    try:
        data_dir = resolve_data_dir(cfg)
        cache_dir = resolve_cache_dir(cfg, data_dir)
        ensure_cache(cfg, data_dir, cache_dir)
        folds = ensure_folds(cfg, data_dir)
        train_missing_folds(cfg, data_dir, cache_dir, folds)
        _, summary = build_table(cfg, data_dir, cache_dir, folds)
    except STOPS_WITH_A_SENTENCE as err:
        print(f"[stopped] {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary


if __name__ == "__main__":
    run_main(main)
