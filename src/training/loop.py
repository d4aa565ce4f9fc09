"""The training loop: one flat function, :func:`fit`, for every model and task (src/train.py calls it).

The model comes from the registry (src/models/registry.py) and the data and the validation metric from
the task (src/tasks/__init__.py); the loop itself knows neither. Per run it writes, in the run folder:
config.yaml, last.pt and best.pt (src/training/checkpoint.py), history.csv (one row per epoch),
metrics.json, oof.csv and the figures the task draws, all from the best checkpoint, plus a W&B run.

Determinism, so that ``resume=true`` reproduces an uninterrupted run exactly: the data order of epoch e
comes from a generator seeded with ``seed + e`` (worker seeds too), and every other random draw from the
global RNGs, whose states last.pt keeps.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import save_config
from ..io_utils import atomic_write_csv, atomic_write_json
from ..models.registry import get_model_class, model_family
from .checkpoint import load_checkpoint, load_model_state, model_state, rng_state, save_checkpoint, set_rng_state
from .schedule import build_scheduler
from .wandb_log import WandbRun


class TrainingStopped(RuntimeError):
    """The run cannot go on (a NaN or infinite loss); the message says where and what is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg) -> torch.device:
    if cfg["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    return torch.device(cfg["device"])


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


def make_loader(dataset, cfg, task, train: bool, device: torch.device, generator=None):
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg["batch_size"], shuffle=train, generator=generator,
        num_workers=cfg["num_workers"], collate_fn=task.collate, pin_memory=device.type == "cuda",
        drop_last=train and len(dataset) > cfg["batch_size"],  # no lone last sample through batch norm
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers only, not on norms and biases."""
    decay, keep = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() > 1 else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@torch.no_grad()
def predict(model, loader, device, autocast, channels_last: bool) -> tuple[float, dict]:
    """Mean loss over the items (NaN if the model gives none) and every batched output as one array per key."""
    model.eval()
    loss_sum, n_items, n_with_loss, collected = 0.0, 0, 0, {}
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast():
            out = model(batch)
        n = len(out["logits"])
        if "loss" in out:
            loss_sum += float(out["loss"]) * n
            n_with_loss += n
        n_items += n
        for key, value in out.items():
            if key != "loss" and isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n:
                collected.setdefault(key, []).append(value.float().cpu().numpy())
    outputs = {key: np.concatenate(parts) for key, parts in collected.items()}
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
    """Train ``cfg.model`` on ``task``'s fold, write the run folder, return the final (best) metrics."""
    from tqdm import tqdm

    run_folder = Path(run_folder)
    run_folder.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)
    autocast = autocast_for(cfg, device)
    seed_everything(cfg["seed"])

    model_cls = get_model_class(cfg["model"])
    model = model_cls(cfg)
    train_set, val_set = task.datasets()
    if hasattr(model, "init_label_prior") and hasattr(task, "label_rates"):
        model.init_label_prior(task.label_rates)
    model.to(device)
    channels_last = cfg["channels_last"]
    if channels_last:
        has_3d = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model.to(memory_format=torch.channels_last_3d if has_3d else torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])

    data_order = torch.Generator()
    train_loader = make_loader(train_set, cfg, task, True, device, data_order)
    val_loader = make_loader(val_set, cfg, task, False, device)
    steps_per_epoch = len(train_loader)
    if cfg["max_steps_per_epoch"] > 0:
        steps_per_epoch = min(steps_per_epoch, cfg["max_steps_per_epoch"])
    scheduler = build_scheduler(optimizer, round(cfg["warmup_epochs"] * steps_per_epoch), cfg["epochs"] * steps_per_epoch)

    monitor, sign = task.monitor, (1 if task.mode == "min" else -1)  # sign * value: lower is better
    last_path, best_path = run_folder / "last.pt", run_folder / "best.pt"
    history_path = run_folder / "history.csv"
    start_epoch, best_value, best_epoch, history, wandb_id = 0, math.inf, -1, [], None
    if cfg["resume"] and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        if state["model_name"] != cfg["model"]:
            raise ValueError(f"{last_path} holds model '{state['model_name']}', not '{cfg['model']}'; "
                             f"set resume=false to start over")
        load_model_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        wandb_id = state.get("wandb_id")
        set_rng_state(state["rng"])
        if history_path.exists():
            history = [r for r in pd.read_csv(history_path).to_dict("records") if r["epoch"] < start_epoch]
        announce(f"[resume] {last_path}: epoch {state['epoch']} done, continuing at epoch {start_epoch}")
    else:
        if cfg["resume"]:
            announce(f"[resume] no {last_path} yet: starting from scratch")
        # a fresh start must not leave an earlier run's results looking like this run's if it fails
        for stale in ("metrics.json", "oof.csv", "history.csv"):
            (run_folder / stale).unlink(missing_ok=True)
    saved_epoch = start_epoch - 1 if start_epoch > 0 else None  # what last.pt holds, for the stop message
    save_config(cfg, run_folder / "config.yaml")

    logger = WandbRun(cfg, model_family(model_cls), dataset_kind, resume_id=wandb_id, announce=announce)
    net = torch.compile(model) if cfg["compile"] else model
    announce(f"[train] {cfg['model']} on {device} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
             f"{len(train_set)} training / {len(val_set)} validation items, {steps_per_epoch} steps per epoch")

    def checkpoint(epoch: int) -> dict:
        return {"model": model_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "best_value": best_value, "best_epoch": best_epoch, "monitor": monitor,
                "rng": rng_state(), "model_name": cfg["model"], "wandb_id": logger.id,
                "config": _plain(cfg)}

    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            started = time.time()
            net.train()
            data_order.manual_seed(cfg["seed"] + epoch)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=not cfg["progress"], unit="step")
            loss_sum, n_items, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
            for step, batch in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                batch = to_device(batch, device, channels_last)
                with autocast():
                    out = net(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise TrainingStopped(_stop_message(f"loss is {float(loss.detach())}", epoch, step, last_path, saved_epoch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"] > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                    if not torch.isfinite(grad_norm):
                        raise TrainingStopped(_stop_message("the gradient norm is not finite", epoch, step, last_path,
                                                            saved_epoch))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                n = len(out["logits"])
                loss_sum += float(loss.detach()) * n
                n_items += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n_items:.4f}", samples_s=f"{n_items / (time.time() - started):.1f}")
            bar.close()

            val_loss, outputs = predict(net, val_loader, device, autocast, channels_last)
            if not all(np.isfinite(v).all() for v in outputs.values()):
                raise TrainingStopped(_stop_message("validation outputs are not finite", epoch, -1, last_path, saved_epoch))
            metrics, _ = task.evaluate(outputs, val_set)
            row = history_row(epoch, loss_sum / max(n_items, 1), val_loss, metrics, monitor, lr, time.time() - started)
            history.append(row)
            atomic_write_csv(history_path, pd.DataFrame(history))
            improved = sign * metrics[monitor] < sign * best_value if best_epoch >= 0 else True
            if improved:
                best_value, best_epoch = metrics[monitor], epoch
                save_checkpoint(best_path, **checkpoint(epoch))
            if cfg["save_every_epoch"] or epoch == cfg["epochs"] - 1:
                save_checkpoint(last_path, **checkpoint(epoch))
                saved_epoch = epoch
            logger.log_epoch(row, epoch)
            announce(f"[epoch {epoch}] train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
                     f"{monitor} {metrics[monitor]:.4f}" + (f"  (prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else "")
                     + f"  {row['seconds']:.0f} s" + ("  *best" if improved else ""))
    except BaseException:
        logger.abort()
        raise

    # The run's result is the best checkpoint's, re-evaluated so that it does not depend on resumes.
    state = load_checkpoint(best_path, map_location=device)
    load_model_state(model, state["model"])
    _, outputs = predict(net, val_loader, device, autocast, channels_last)
    metrics, oof = task.evaluate(outputs, val_set)
    metrics = {monitor: metrics[monitor], **metrics, "best_epoch": state["epoch"], "n_val": len(val_set)}
    files = [run_folder / "metrics.json"]
    if oof is not None:
        atomic_write_csv(run_folder / "oof.csv", oof)
        files.append(run_folder / "oof.csv")
    atomic_write_json(run_folder / "metrics.json", metrics)
    figures = task.figures(metrics, oof, val_set, run_folder) if oof is not None else {}
    logger.finish(metrics, figures, files, model_file=best_path if cfg["wandb"]["log_model"] else None)
    announce(f"[done] {run_folder}: best epoch {state['epoch']}, {monitor} {metrics[monitor]:.4f}"
             + (f" (label prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else ""))
    return metrics


def _stop_message(what: str, epoch: int, step: int, last_path: Path, saved_epoch: int | None) -> str:
    where = f"epoch {epoch}, step {step}" if step >= 0 else f"epoch {epoch}, validation"
    kept = (f"{last_path} (end of epoch {saved_epoch}) is kept as the last good checkpoint; resume=true continues from it"
            if saved_epoch is not None else "no checkpoint of this run was written yet")
    return f"{what} at {where}: stopping. {kept}. Usual fixes: a lower lr, grad_clip, precision=fp32."


def _plain(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
