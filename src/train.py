"""``python -m src.train config=NAME fold=K key=value ...`` (what ``bash train.sh`` runs): train one fold.

Builds whatever the run needs and lacks first, saying so one line per step: the data (the demo
dataset when no real data is configured), the study cache, the folds, and, for models that train on
vertebra crops, the localisation table. Then trains through the one loop (src/training/loop.py) into
``runs/<experiment>/fold<K>/``.

Under torchrun (``bash train.sh gpus=N``, src/training/distributed.py) rank 0 builds those things first,
alone, while the other ranks wait; then every rank trains, and only rank 0 prints.
"""
from __future__ import annotations

import sys

from .config import load_config, run_main
from .data.demo import resolve_data_dir
from .data.prepare import ensure_cache
from .paths import resolve_cache_dir
from .runs import run_dir
from .training import STOPS_WITH_A_SENTENCE


def main(argv: list[str]) -> dict:
    cfg = load_config(argv)
    from .training import distributed

    distributed.setup(cfg["device"])  # a no-op unless torchrun started this process
    try:
        with distributed.quiet_unless_main():
            try:
                return _build_and_train(cfg, distributed)
            except STOPS_WITH_A_SENTENCE as err:
                if distributed.current().is_main:
                    print(f"[stopped] {err}", file=sys.stderr)
                raise SystemExit(2) from None
    finally:
        distributed.shutdown()


def prepare_training_data(cfg):
    """What a run of ``cfg`` trains on, each built where missing: the data, the study cache, the folds and,
    for a model that trains on vertebra crops, the localisation table. Returns (data_dir, cache_dir, folds).
    Not safe for two processes at once on a dataset that lacks them (benchmarks/ablation.py --jobs calls it
    once before its trainings start)."""
    from .data.folds import ensure_folds
    from .models.registry import get_model_class

    model_cls = get_model_class(cfg["model"])
    data_dir = resolve_data_dir(cfg)
    cache_dir = resolve_cache_dir(cfg, data_dir)
    ensure_cache(cfg, data_dir, cache_dir)
    folds = ensure_folds(cfg, data_dir)
    print(f"[folds] fold {cfg['fold']}: {int((folds['fold'] == cfg['fold']).sum())} validation studies of {len(folds)}")
    if getattr(model_cls, "needs_localisation", False):
        from .localisation.build import ensure_localisation

        ensure_localisation(cfg, data_dir, cache_dir)
    return data_dir, cache_dir, folds


def _build_and_train(cfg, distributed) -> dict:
    from .models.registry import get_model_class, model_task
    from .tasks import get_task_class
    from .training import TrainingStopped, fit

    model_cls = get_model_class(cfg["model"])  # fail on a bad name before any data work
    task_cls = get_task_class(model_task(model_cls))
    with distributed.main_first():
        data_dir, cache_dir, folds = prepare_training_data(cfg)
    dataset_kind = cfg["dataset_kind"]  # set by load_config: "demo" when the demo data stands in
    task = task_cls(cfg, data_dir, cache_dir, folds)
    folder = run_dir(cfg)
    print(f"[run] {folder} ({cfg['experiment']}: model {cfg['model']}, task {task_cls.registry_name}, {dataset_kind} data, "
          f"{cfg['profile']} profile)")
    try:
        return fit(cfg, task, folder, dataset_kind=dataset_kind)
    except TrainingStopped as err:
        if distributed.current().is_main:
            print(f"[stopped] {err}", file=sys.stderr)
        raise SystemExit(1) from None

if __name__ == "__main__":
    run_main(main)
