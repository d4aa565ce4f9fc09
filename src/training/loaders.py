"""The DataLoaders of a training run: shuffled, seeded training batches (this rank's share under DDP) and
validation batches dealt out to the ranks in whole batches. Called by src/training/loop.py and
src/training/evaluate.py.
"""
from __future__ import annotations

import torch

from . import distributed


def make_loader(dataset, cfg, task, train: bool, device: torch.device, generator=None, sampler=None,
                batches=None):
    """The DataLoader of one split. ``sampler``: training under DDP (this rank's share, shuffled);
    ``batches``: this rank's validation batches (distributed.batch_shards)."""
    speed = {"num_workers": cfg["num_workers"], "collate_fn": task.collate, "pin_memory": device.type == "cuda"}
    if cfg["num_workers"] > 0:
        # Validation draws nothing at random, so its workers can live through the run; training workers
        # that persist keep their random streams across epochs, which a resumed run cannot replay.
        speed["persistent_workers"] = cfg["persistent_workers"] if train else True
    if batches is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **speed)
    n_items = len(sampler) if sampler is not None else len(dataset)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg["batch_size"], shuffle=train and sampler is None, sampler=sampler,
        generator=generator, drop_last=train and n_items > cfg["batch_size"],  # no lone last sample through batch norm
        **speed)


def validation_loader(val_set, cfg, task, device: torch.device):
    """The validation DataLoader; under torchrun this rank's whole batches (distributed.batch_shards)."""
    ctx = distributed.current()
    batches = distributed.batch_shards(len(val_set), cfg["batch_size"], ctx.rank, ctx.world_size) if ctx.enabled else None
    return make_loader(val_set, cfg, task, False, device, batches=batches)
