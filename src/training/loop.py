"""The training loop: one flat function, :func:`fit`, for every model and task (src/train.py calls it).

The model comes from the registry (src/models/registry.py) and the data and the validation metric from
the task (src/tasks/__init__.py); the loop itself knows neither. Per run it writes, in the run folder:
config.yaml, last.pt and best.pt (src/training/checkpoint.py), history.csv (one row per epoch),
metrics.json, oof.csv and the figures the task draws, all from the best checkpoint, plus a W&B run.

Determinism, so that ``resume=true`` reproduces an uninterrupted run exactly: the data order of epoch e
comes from a generator seeded with ``seed + e`` (worker seeds too), and every other random draw from the
global RNGs, whose states last.pt keeps.

Several processes (torchrun, src/training/distributed.py): DDP around the model, a DistributedSampler
for training (its order fixed by ``seed`` and the epoch), validation dealt out in whole batches and
gathered back in order, so oof.csv and score are exactly one process's. Rank 0 alone writes the run
folder and the W&B run and prints; last.pt keeps every rank's RNG states, so a resumed run with the
same number of processes continues exactly.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import save_config
from .. import locks
from ..io_utils import atomic_write_csv, atomic_write_json, remove_stale_temporaries
from ..models.registry import get_model_class, model_family
from . import distributed
from .checkpoint import load_checkpoint, load_model_state, model_state, rng_state, save_checkpoint, set_rng_state
from .ema import WeightAverage
from .run_folder import FINISHED_MARKER, RunFolderError, Start, is_finished, lock_file, plan_start
from .schedule import build_scheduler
from .wandb_log import WandbRun


class TrainingStopped(RuntimeError):
    """The run cannot go on (a NaN or infinite loss); the message says where and what is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg) -> torch.device:
    """cpu or cuda as configured; under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if cfg["device"] == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = cfg["device"]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if kind == "cuda":
        return torch.device("cuda", distributed.current().local_rank)
    return torch.device(kind)


def tune_backends(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution for the (fixed) input shapes; a no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast_for(cfg, device: torch.device):
    """bf16 autocast on GPU by default; CPU bf16 convolutions are slower than fp32, so fp32 there."""
    precision = cfg["precision"]
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return nullcontext


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() in (4, 5):
                value = value.contiguous(memory_format=torch.channels_last if value.dim() == 4 else torch.channels_last_3d)
        out[key] = value
    return out


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


def place_model(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """Move the model to ``device``, channels-last if configured (3D layout for models with 3D convolutions)."""
    model.to(device)
    if cfg["channels_last"]:
        has_3d = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model.to(memory_format=torch.channels_last_3d if has_3d else torch.channels_last)
    return model


def judge(task, outputs: dict, val_set, model: torch.nn.Module):
    """``task.evaluate``, handed the (bare) model when the task needs to run it again (``needs_model``)."""
    if getattr(task, "needs_model", False):
        return task.evaluate(outputs, val_set, model=model)
    return task.evaluate(outputs, val_set)


def evaluate_checkpoint(cfg, task, checkpoint: Path) -> tuple[dict | None, pd.DataFrame | None]:
    """``task``'s validation fold predicted with a checkpoint's weights and judged, as :func:`fit` judges
    best.pt at the end. Under torchrun the prediction is shared out over the ranks and gathered; rank 0
    gets ``(metrics, oof)``, the others ``(None, None)``."""
    device = pick_device(cfg)
    model = get_model_class(cfg["model"])(cfg)
    load_model_state(model, load_checkpoint(checkpoint, map_location="cpu")["model"])
    place_model(model, cfg, device)
    _, val_set = task.datasets()
    loader = validation_loader(val_set, cfg, task, device)
    _, outputs = predict(model, loader, device, autocast_for(cfg, device), cfg["channels_last"])
    if not distributed.current().is_main:
        return None, None
    return judge(task, outputs, val_set, model)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers only, not on norms and biases."""
    decay, keep = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() > 1 else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@torch.no_grad()
def predict_batches(model, loader, device, autocast, channels_last: bool) -> list[tuple]:
    """One ``(first_index, loss_sum, n_with_loss, outputs)`` per batch, ``first_index`` counting items
    from the loader's start (or its batch sampler's first index): what distributed.merge_batches takes."""
    model.eval()
    firsts = [b[0] for b in loader.batch_sampler] if isinstance(loader.batch_sampler, list) else None
    done, results = 0, []
    for k, batch in enumerate(loader):
        batch = to_device(batch, device, channels_last)
        with autocast():
            out = model(batch)
        n = len(out["logits"])
        loss_sum, n_with_loss = (float(out["loss"]) * n, n) if "loss" in out else (0.0, 0)
        outputs = {key: value.float().cpu().numpy() for key, value in out.items()
                   if key != "loss" and isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n}
        results.append((firsts[k] if firsts is not None else done, loss_sum, n_with_loss, outputs))
        done += n
    return results


def predict(model, loader, device, autocast, channels_last: bool) -> tuple[float, dict]:
    """Mean loss over the items (NaN if the model gives none) and every batched output as one array per key.

    Under DDP ``loader`` holds this rank's share (distributed.batch_shards) and the result is gathered
    from all ranks, in one-process order, on every rank.
    """
    own = predict_batches(model, loader, device, autocast, channels_last)
    loss_sum, n_with_loss, outputs = distributed.gather_batches(own)
    return (loss_sum / n_with_loss if n_with_loss else math.nan), outputs


def history_row(epoch: int, train_loss: float, val_loss: float, metrics: dict, monitor: str, lr: float,
                seconds: float) -> dict:
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, monitor: metrics[monitor], "lr": lr}
    for key, value in metrics.items():
        if key == monitor:
            continue
        if isinstance(value, dict):  # per_target_logloss -> val_C1_logloss, ...
            suffix = key.removeprefix("per_target_")
            row.update({f"val_{target}_{suffix}": v for target, v in value.items()})
        elif isinstance(value, (int, float)):
            row[key] = value
    row["seconds"] = round(seconds, 2)
    return row


def fit(cfg, task, run_folder: Path, dataset_kind: str = "real", announce=print) -> dict:
    """Train ``cfg.model`` on ``task``'s fold, write the run folder, return the final (best) metrics.

    Under torchrun every rank calls this; rank 0 writes and prints, every rank returns the same metrics.
    """
    ctx = distributed.current()
    main = ctx.is_main
    if not main:
        announce = _silent
    run_folder = Path(run_folder)
    with ExitStack() as held:
        if main:  # one writer per run folder: a second training stops here, naming the one that runs
            run_folder.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(locks.exclusive(lock_file(run_folder), f"run folder {run_folder}"))
        start = _plan_start(cfg, run_folder, announce) if main else None
        start = distributed.broadcast_object(start)
        if isinstance(start, RunFolderError):
            raise start
        return _fit(cfg, task, run_folder, start, dataset_kind, announce)


def _plan_start(cfg, run_folder: Path, announce) -> Start | RunFolderError:
    """Rank 0's decision for the run folder (src/training/run_folder.py), or the error every rank raises."""
    try:
        start = plan_start(run_folder, _plain(cfg), bool(cfg["resume"]), bool(cfg["overwrite"]))
    except RunFolderError as err:
        return err
    run_folder.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(run_folder)
    if stale:
        announce(f"[run] removed {len(stale)} temporary file(s) a killed write left in {run_folder}")
    if start.message:
        announce(start.message)
    return start


def _fit(cfg, task, run_folder: Path, start: Start, dataset_kind: str, announce) -> dict:
    from tqdm import tqdm

    ctx = distributed.current()
    main = ctx.is_main
    device = pick_device(cfg)
    tune_backends(device)
    autocast = autocast_for(cfg, device)
    seed_everything(cfg["seed"])

    model_cls = get_model_class(cfg["model"])
    model = model_cls(cfg)
    train_set, val_set = task.datasets()
    if hasattr(model, "init_label_prior") and hasattr(task, "label_rates"):
        model.init_label_prior(task.label_rates)
    place_model(model, cfg, device)
    channels_last = cfg["channels_last"]
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])
    # with ema_decay > 0 the average of the weights is what is validated, saved as "model" and inferred with;
    # the trained weights travel beside it in the checkpoints ("train_model") for resuming
    average = WeightAverage(model, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
    judged = average.model if average is not None else model
    if ctx.enabled:
        # Same weights everywhere (DDP copies rank 0's anyway), then a random stream of each rank's own
        # for dropout and augmentation, so the ranks do not draw identical masks for different studies.
        seed_everything(cfg["seed"] + 1 + ctx.rank)

    data_order = torch.Generator()
    train_sampler = None
    if ctx.enabled:
        train_sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                                            shuffle=True, seed=cfg["seed"])
    train_loader = make_loader(train_set, cfg, task, True, device, data_order, sampler=train_sampler)
    val_loader = validation_loader(val_set, cfg, task, device)
    steps_per_epoch = len(train_loader)
    if cfg["max_steps_per_epoch"] > 0:
        steps_per_epoch = min(steps_per_epoch, cfg["max_steps_per_epoch"])
    scheduler = build_scheduler(optimizer, round(cfg["warmup_epochs"] * steps_per_epoch), cfg["epochs"] * steps_per_epoch)

    monitor, sign = task.monitor, (1 if task.mode == "min" else -1)  # sign * value: lower is better
    last_path, best_path = run_folder / "last.pt", run_folder / "best.pt"
    history_path = run_folder / "history.csv"
    start_epoch, best_value, best_epoch, history, wandb_id = 0, math.inf, -1, [], None
    if start.resume:
        state = load_checkpoint(last_path, map_location=device)
        if state["model_name"] != cfg["model"]:
            raise ValueError(f"{last_path} holds model '{state['model_name']}', not '{cfg['model']}'; "
                             f"set resume=false to start over")
        load_model_state(model, state.get("train_model", state["model"]))
        if average is not None:
            if "ema_steps" not in state:
                announce(f"[resume] {last_path} holds no weight average: it starts from the resumed weights")
            average.load_state_dict({"model": state["model"], "steps": state.get("ema_steps", 0)})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        wandb_id = state.get("wandb_id")
        streams = distributed.rank_streams(state, ctx)
        if streams is None:
            announce(f"[resume] {last_path} was written by {len(state.get('rng_per_rank') or [0])} process(es), "
                     f"this run has {ctx.world_size}: it continues, but not bit-for-bit as an uninterrupted run")
            set_rng_state(state["rng"])
            seed_everything(cfg["seed"] + 1 + ctx.rank + 1000 * start_epoch)
        else:
            set_rng_state(streams)
        if history_path.exists():
            history = [r for r in pd.read_csv(history_path).to_dict("records") if r["epoch"] < start_epoch]
        announce(f"[resume] {last_path}: epoch {state['epoch']} done, continuing at epoch {start_epoch}")
        if start_epoch >= cfg["epochs"] and is_finished(run_folder):
            announce(f"[done] {run_folder} is finished ({state['epoch'] + 1} epochs); nothing to train "
                     f"(resume=true with a larger epochs= trains it further)")
            return json.loads((run_folder / FINISHED_MARKER).read_text())
    saved_epoch = start_epoch - 1 if start_epoch > 0 else None  # what last.pt holds, for the stop message
    if main:
        save_config(cfg, run_folder / "config.yaml")

    logger = WandbRun(cfg, model_family(model_cls), dataset_kind, resume_id=wandb_id, announce=announce, active=main)
    # Validation runs the bare model: DDP's forward would broadcast buffers, a collective that ranks with
    # fewer validation batches never reach. Compiled, each of the two compiles once.
    train_net = model
    if ctx.enabled:
        train_net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    eval_net = judged
    if cfg["compile"]:
        train_net = torch.compile(train_net)
        eval_net = torch.compile(judged) if ctx.enabled or average is not None else train_net
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    processes = f" x {ctx.world_size} processes" if ctx.enabled else ""
    announce(f"[train] {cfg['model']} on {device.type}{processes} ({n_params:.2f} M parameters), "
             f"{len(train_set)} training / {len(val_set)} validation items, {steps_per_epoch} steps per epoch")

    def checkpoint(epoch: int, streams: list | None) -> dict:
        content = {"model": model_state(judged), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "epoch": epoch, "best_value": best_value, "best_epoch": best_epoch, "monitor": monitor,
                   "rng": rng_state(), "model_name": cfg["model"], "wandb_id": logger.id,
                   "config": _plain(cfg)}
        if streams is not None:
            content["rng_per_rank"] = streams
        if average is not None:
            content["train_model"], content["ema_steps"] = model_state(model), average.steps
        return content

    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            started = time.time()
            train_net.train()
            data_order.manual_seed(cfg["seed"] + epoch + 100_003 * ctx.rank)  # worker seeds (and order, one process)
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=not (cfg["progress"] and main), unit="step")
            loss_sum, n_items, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
            for step, batch in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                batch = to_device(batch, device, channels_last)
                with autocast():
                    out = train_net(batch)
                loss = out["loss"]
                step_loss = distributed.mean_over_ranks(loss.detach())
                if not torch.isfinite(step_loss):
                    raise TrainingStopped(_stop_message(f"loss is {float(step_loss)}", epoch, step, last_path, saved_epoch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"] > 0:
                    # DDP has averaged the gradients: the norm, and the decision, are the same on every rank
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                    if not torch.isfinite(grad_norm):
                        raise TrainingStopped(_stop_message("the gradient norm is not finite", epoch, step, last_path,
                                                            saved_epoch))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                if average is not None:
                    average.update(model)
                n = len(out["logits"])
                loss_sum += float(step_loss) * n
                n_items += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n_items:.4f}",
                                samples_s=f"{n_items * ctx.world_size / (time.time() - started):.1f}")
            bar.close()

            distributed.sync_buffers(model)
            if average is not None:
                distributed.sync_buffers(average.model)
            val_loss, outputs = predict(eval_net, val_loader, device, autocast, channels_last)
            if not all(np.isfinite(v).all() for v in outputs.values()):  # gathered: every rank stops alike
                raise TrainingStopped(_stop_message("validation outputs are not finite", epoch, -1, last_path, saved_epoch))
            streams = distributed.all_gather_object(rng_state()) if ctx.enabled else None
            if main:
                metrics, _ = judge(task, outputs, val_set, judged)
                row = history_row(epoch, loss_sum / max(n_items, 1), val_loss, metrics, monitor, lr, time.time() - started)
                history.append(row)
                atomic_write_csv(history_path, pd.DataFrame(history))
                improved = sign * metrics[monitor] < sign * best_value if best_epoch >= 0 else True
                if improved:
                    best_value, best_epoch = metrics[monitor], epoch
                    save_checkpoint(best_path, **checkpoint(epoch, streams))
            if cfg["save_every_epoch"] or epoch == cfg["epochs"] - 1:
                if main:
                    save_checkpoint(last_path, **checkpoint(epoch, streams))
                saved_epoch = epoch
            if main:
                logger.log_epoch(row, epoch)
                announce(f"[epoch {epoch}] train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
                         f"{monitor} {metrics[monitor]:.4f}" + (f"  (prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else "")
                         + f"  {row['seconds']:.0f} s" + ("  *best" if improved else ""))
    except BaseException:
        logger.abort()
        raise

    # The run's result is the best checkpoint's, re-evaluated so that it does not depend on resumes.
    distributed.wait()  # rank 0 has written best.pt
    state = load_checkpoint(best_path, map_location=device)
    load_model_state(judged, state["model"])
    _, outputs = predict(eval_net, val_loader, device, autocast, channels_last)
    metrics = None
    if main:
        metrics, oof = judge(task, outputs, val_set, judged)
        metrics = {monitor: metrics[monitor], **metrics, "best_epoch": state["epoch"], "n_val": len(val_set)}
        files = [run_folder / FINISHED_MARKER]
        if oof is not None:
            atomic_write_csv(run_folder / "oof.csv", oof)
            files.append(run_folder / "oof.csv")
        figures = task.figures(metrics, oof, val_set, run_folder) if oof is not None else {}
        atomic_write_json(run_folder / FINISHED_MARKER, metrics)  # last: its presence means the run is finished
        logger.finish(metrics, figures, files, model_file=best_path if cfg["wandb"]["log_model"] else None)
        announce(f"[done] {run_folder}: best epoch {state['epoch']}, {monitor} {metrics[monitor]:.4f}"
                 + (f" (label prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else ""))
    return distributed.broadcast_object(metrics)


def _silent(*_args, **_kwargs) -> None:
    """announce() of ranks other than 0."""


def _stop_message(what: str, epoch: int, step: int, last_path: Path, saved_epoch: int | None) -> str:
    where = f"epoch {epoch}, step {step}" if step >= 0 else f"epoch {epoch}, validation"
    kept = (f"{last_path} (end of epoch {saved_epoch}) is kept as the last good checkpoint; resume=true continues from it"
            if saved_epoch is not None else "no checkpoint of this run was written yet")
    return f"{what} at {where}: stopping. {kept}. Usual fixes: a lower lr, grad_clip, precision=fp32."


def _plain(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
