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
from pathlib import Path

from .config import load_config, run_main
from .data.folds import FoldsError
from .locks import Busy
from .models.checkpoint import CheckpointError
from .training.run_folder import RunFolderError
from .data.demo import resolve_data_dir
from .paths import resolve_cache_dir
from .runs import run_dir


# a finished run, an unfinished one with other settings, a training already in progress, a damaged
# checkpoint (a localiser's, say): the user's to resolve, so one line rather than a traceback
STOPS_WITH_A_SENTENCE = (RunFolderError, Busy, CheckpointError, FoldsError)


def ensure_cache(cfg, data_dir: Path, cache_dir: Path, announce=print) -> None:
    """Prepare the studies of train_images that the cache lacks (all of them on a first run)."""
    from .data.cache import study_lock
    from .data.prepare import missing_studies, prepare_dataset
    from .locks import exclusive

    missing = missing_studies(data_dir, cache_dir, "train_images")
    if not missing:
        announce(f"[cache] {cache_dir}: every training study is prepared")
        return
    p = cfg["prepare"]
    announce(f"[cache] {len(missing)} studies missing in {cache_dir}, preparing them (size {p['size']}, {p['workers']} workers)")
    summary = prepare_dataset(data_dir, cache_dir, splits=("train_images",), size=p["size"], workers=p["workers"],
                              min_slices=p["min_slices"], progress=cfg["progress"], uids=missing,
                              max_pixels=p["max_pixels"])
    busy = [item["uid"] for item in summary.get("busy", [])]
    if busy:
        # another command is preparing them right now: training on a cache without them would silently
        # drop those studies, so wait for each one's lock (released when it is written or given up)
        announce(f"[cache] {len(busy)} studies are being prepared by another process: waiting for them")
        for uid in busy:
            with exclusive(study_lock(cache_dir, "train_images", uid), f"cached study {uid}", wait=True):
                pass


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


def _build_and_train(cfg, distributed) -> dict:
    from .data.folds import ensure_folds
    from .models.registry import get_model_class, model_task
    from .tasks import get_task_class
    from .training import TrainingStopped, fit

    model_cls = get_model_class(cfg["model"])  # fail on a bad name before any data work
    task_cls = get_task_class(model_task(model_cls))
    with distributed.main_first():
        data_dir = resolve_data_dir(cfg)
        dataset_kind = cfg["dataset_kind"]  # set by load_config: "demo" when the demo data stands in
        cache_dir = resolve_cache_dir(cfg, data_dir)
        ensure_cache(cfg, data_dir, cache_dir)
        folds = ensure_folds(cfg, data_dir)
        print(f"[folds] fold {cfg['fold']}: {int((folds['fold'] == cfg['fold']).sum())} validation studies of {len(folds)}")
        if getattr(model_cls, "needs_localisation", False):
            from .localisation.build import ensure_localisation

            ensure_localisation(cfg, data_dir, cache_dir)
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
