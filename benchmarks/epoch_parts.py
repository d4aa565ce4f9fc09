"""Where one classifier epoch on the demo spends its time: building the items, or the model.

    python benchmarks/epoch_parts.py                        # the default experiment, fold 0 of the demo
    python benchmarks/epoch_parts.py --items 64 -- fold=1   # key=value config overrides after --

Times, in this one process with torch's thread count as training has it: building training items (the
data pipeline alone, no model), the model's training steps on such items (forward, loss, backward, AdamW),
and a validation pass over the whole held-out fold through the loader training uses (``num_workers`` from
the config; its workers started by an untimed pass first). Each part is scaled to one epoch and printed
with its share of their sum. In a real epoch the loader's workers build training items while the model
steps, so the first part mostly hides behind the second. Needs the demo data, cache and localisation
table (``bash train.sh fold=0`` builds them); the model is freshly initialised, which costs what a
trained one does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=96, help="training items built and stepped on (default 96)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    args = parser.parse_args()

    from src.config import load_config
    from src.data.demo import resolve_data_dir
    from src.data.folds import ensure_folds
    from src.models.registry import get_model_class, model_task
    from src.paths import localisation_path, resolve_cache_dir
    from src.tasks import get_task_class
    from src.training.device import autocast_for
    from src.training.evaluate import predict
    from src.training.loaders import validation_loader
    from src.training.loop import param_groups

    cfg = load_config(["progress=false", "wandb.mode=disabled", *args.overrides])
    data_dir = resolve_data_dir(cfg)
    cache_dir = resolve_cache_dir(cfg, data_dir)
    if not localisation_path(cfg, cache_dir).exists():
        raise SystemExit(f"no localisation table at {localisation_path(cfg, cache_dir)}: run `bash train.sh fold=0` first")
    model_cls = get_model_class(cfg["model"])
    task = get_task_class(model_task(model_cls))(cfg, data_dir, cache_dir, ensure_folds(cfg, data_dir))
    train_set, val_set = task.datasets()
    model = model_cls(cfg)
    if hasattr(model, "init_label_prior"):
        model.init_label_prior(task.label_rates)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])
    batch_size = int(cfg["batch_size"])
    n = min(args.items, len(train_set)) // batch_size * batch_size
    steps_per_epoch = len(train_set) // batch_size
    print(f"{cfg['experiment']} fold {cfg['fold']}: {len(train_set)} training items ({steps_per_epoch} steps of "
          f"{batch_size}), {len(val_set)} validation items, {torch.get_num_threads()} threads, "
          f"num_workers {cfg['num_workers']}")

    torch.manual_seed(0)
    # a random draw, as training's shuffle makes: the set lists the fractured vertebrae first
    picked = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:n].tolist()
    started = time.perf_counter()
    items = [train_set[i] for i in picked]
    build = (time.perf_counter() - started) / n * len(train_set)

    collate = task.collate or torch.utils.data.default_collate
    batches = [collate(items[i:i + batch_size]) for i in range(0, n, batch_size)]
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    steps = (time.perf_counter() - started) / len(batches) * steps_per_epoch

    device = torch.device("cpu")
    autocast = autocast_for(cfg, device)
    loader = validation_loader(val_set, cfg, task, device)
    predict(model, loader, device, autocast, False)  # starts the persistent workers, as epoch 0 does
    started = time.perf_counter()
    predict(model, loader, device, autocast, False)
    validation = time.perf_counter() - started

    total = build + steps + validation
    print(f"per epoch (from {n} training items): " + ", ".join(
        f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in
        [("building the training items", build), ("the training steps", steps), ("validation", validation)]))


if __name__ == "__main__":
    main()
