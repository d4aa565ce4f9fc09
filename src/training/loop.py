"""The training loop: :func:`fit`, for every model and task (src/train.py and the localiser build call it).

:func:`fit` takes the run folder (src/training/run_folder.py decides: start, resume, or refuse), then runs
named steps over one :class:`Training`: build, resume, wrap, train one epoch, validate, finish.
The model comes from the registry (src/models/registry.py) and the data and the validation metric from
the task (src/tasks/__init__.py); the loop itself knows neither. Per run it writes, in the run folder:
config.yaml, last.pt and best.pt (src/training/checkpoint.py), history.csv (one row per epoch),
metrics.json, oof.csv and the figures the task draws, all from the best checkpoint, the pictures of
``explain_studies`` held-out studies in explanations/ (tasks that can explain), plus a W&B run.

Determinism, so that ``resume=true`` reproduces an uninterrupted run exactly: the data order of epoch e
comes from a generator seeded with ``seed + e`` (worker seeds too), and every other random draw from the
global RNGs, whose states last.pt keeps; the one draw a resumed process makes that the uninterrupted run did
not (restarting the persistent validation workers) is taken from a fork of them.

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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import locks
from ..config import save_config
from ..io_utils import atomic_write_csv, atomic_write_json, remove_stale_temporaries
from ..models.registry import get_model_class, model_family
from . import distributed, top_k
from ..models.checkpoint import load_checkpoint, load_model_state, model_state
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .device import autocast_for, pick_device, place_model, to_device, tune_backends
from .ema import WeightAverage
from .evaluate import judge, predict
from .loaders import make_loader, validation_loader
from .run_folder import FINISHED_MARKER, RunFolderError, Start, is_finished, lock_file, plan_start
from .schedule import build_scheduler
from .wandb_log import WandbRun


class TrainingStopped(RuntimeError):
    """The run cannot go on (a NaN or infinite loss); the message says where and what is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers only, not on norms and biases."""
    decay, keep = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() > 1 else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def history_row(epoch: int, train_loss: float, val_loss: float, metrics: dict, monitor: str, lr: float,
                seconds: float, speed: dict | None = None) -> dict:
    """One history.csv row (and W&B step): losses, the monitored metric, the rest of the metrics flattened,
    the epoch's wall time and ``speed`` (:func:`_train_one_epoch`'s training items/s and peak GPU memory)."""
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
    row.update(speed or {})
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


@dataclass
class Training:
    """One training run between its steps: what :func:`_build` makes and the steps read and update."""

    cfg: object
    task: object
    folder: Path
    device: torch.device
    autocast: object
    model: torch.nn.Module
    judged: torch.nn.Module  # what is validated, saved as "model" and inferred with: the weight average if any
    average: WeightAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_set: object
    val_set: object
    train_loader: object
    val_loader: object
    train_sampler: object
    data_order: torch.Generator
    steps_per_epoch: int
    train_net: torch.nn.Module = None
    eval_net: torch.nn.Module = None
    logger: WandbRun | None = None
    start_epoch: int = 0
    best_value: float = math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)
    saved_epoch: int | None = None  # the epoch last.pt holds, for the stop message
    wandb_id: str | None = None

    @property
    def monitor(self) -> str:
        return self.task.monitor

    @property
    def sign(self) -> int:  # sign * value: lower is better
        return 1 if self.task.mode == "min" else -1

    @property
    def last_path(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def checkpoint(self, epoch: int, streams: list | None) -> dict:
        content = {"model": model_state(self.judged), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best_value": self.best_value,
                   "best_epoch": self.best_epoch, "monitor": self.monitor, "rng": rng_state(),
                   "model_name": self.cfg["model"], "wandb_id": self.logger.id, "config": _plain(self.cfg)}
        if streams is not None:
            content["rng_per_rank"] = streams
        if self.average is not None:
            content["train_model"], content["ema_steps"] = model_state(self.model), self.average.steps
        return content


def _fit(cfg, task, run_folder: Path, start: Start, dataset_kind: str, announce) -> dict:
    """The steps of one run: build, resume, wrap, an epoch at a time train and validate, finish."""
    main = distributed.current().is_main
    run = _build(cfg, task, run_folder)
    if start.resume:
        _resume(run, announce)
        if run.start_epoch >= cfg["epochs"] and is_finished(run_folder):
            announce(f"[done] {run_folder} is finished ({run.start_epoch} epochs); nothing to train "
                     f"(resume=true with a larger epochs= trains it further)")
            return json.loads((run_folder / FINISHED_MARKER).read_text())
    if main:
        save_config(cfg, run_folder / "config.yaml")
    run.logger = WandbRun(cfg, model_family(get_model_class(cfg["model"])), dataset_kind, resume_id=run.wandb_id,
                          announce=announce, active=main)
    _wrap(run, announce)
    try:
        for epoch in range(run.start_epoch, cfg["epochs"]):
            started = time.time()
            train_loss, lr, speed = _train_one_epoch(run, epoch)
            _validate(run, epoch, train_loss, lr, started, announce, speed)
    except BaseException:
        run.logger.abort()
        raise
    return _finish(run, announce)


def _build(cfg, task, run_folder: Path) -> Training:
    """Model, weight average, optimiser, loaders and schedule, in the order that fixes every random draw."""
    ctx = distributed.current()
    device = pick_device(cfg)
    tune_backends(device)
    autocast = autocast_for(cfg, device)
    seed_everything(cfg["seed"])

    model = get_model_class(cfg["model"])(cfg)
    train_set, val_set = task.datasets()
    if hasattr(model, "init_label_prior") and hasattr(task, "label_rates"):
        model.init_label_prior(task.label_rates)
    place_model(model, cfg, device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])
    # with ema_decay > 0 the average of the weights is what is validated, saved as "model" and inferred with;
    # the trained weights travel beside it in the checkpoints ("train_model") for resuming
    average = WeightAverage(model, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
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
    return Training(cfg=cfg, task=task, folder=Path(run_folder), device=device, autocast=autocast, model=model,
                    judged=average.model if average is not None else model, average=average, optimizer=optimizer,
                    scheduler=scheduler, train_set=train_set, val_set=val_set, train_loader=train_loader,
                    val_loader=val_loader, train_sampler=train_sampler, data_order=data_order,
                    steps_per_epoch=steps_per_epoch)


def _resume(run: Training, announce) -> None:
    """Load last.pt into ``run``: weights, average, optimiser, schedule, best so far, history, RNG streams."""
    cfg, ctx = run.cfg, distributed.current()
    state = load_checkpoint(run.last_path, map_location=run.device)
    if state["model_name"] != cfg["model"]:
        raise RunFolderError(f"{run.last_path} holds model '{state['model_name']}', not '{cfg['model']}'; "
                             f"overwrite=true moves that run aside and starts over")
    load_model_state(run.model, state.get("train_model", state["model"]))
    if run.average is not None:
        if "ema_steps" not in state:
            announce(f"[resume] {run.last_path} holds no weight average: it starts from the resumed weights")
        run.average.load_state_dict({"model": state["model"], "steps": state.get("ema_steps", 0)})
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.start_epoch, run.best_value, run.best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
    run.saved_epoch = state["epoch"]
    run.wandb_id = state.get("wandb_id")
    streams = distributed.rank_streams(state, ctx)
    if streams is None:
        announce(f"[resume] {run.last_path} was written by {len(state.get('rng_per_rank') or [0])} process(es), "
                 f"this run has {ctx.world_size}: it continues, but not bit-for-bit as an uninterrupted run")
        set_rng_state(state["rng"])
        seed_everything(cfg["seed"] + 1 + ctx.rank + 1000 * run.start_epoch)
    else:
        set_rng_state(streams)
    history_path = run.folder / "history.csv"
    if history_path.exists():
        run.history = [r for r in pd.read_csv(history_path).to_dict("records") if r["epoch"] < run.start_epoch]
    announce(f"[resume] {run.last_path}: epoch {state['epoch']} done, continuing at epoch {run.start_epoch}")


def _wrap(run: Training, announce) -> None:
    """DDP and torch.compile around the model, then the one line that says what trains on what.

    Validation runs the bare model: DDP's forward would broadcast buffers, a collective that ranks with
    fewer validation batches never reach. Compiled, each of the two compiles once.
    """
    cfg, ctx, device = run.cfg, distributed.current(), run.device
    run.train_net = run.model
    if ctx.enabled:
        run.train_net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    run.eval_net = run.judged
    if cfg["compile"]:
        run.train_net = torch.compile(run.train_net)
        run.eval_net = torch.compile(run.judged) if ctx.enabled or run.average is not None else run.train_net
    n_params = sum(p.numel() for p in run.model.parameters()) / 1e6
    processes = f" x {ctx.world_size} processes" if ctx.enabled else ""
    announce(f"[train] {cfg['model']} on {device.type}{processes} ({n_params:.2f} M parameters), "
             f"{len(run.train_set)} training / {len(run.val_set)} validation items, "
             f"{run.steps_per_epoch} steps per epoch")


def _train_one_epoch(run: Training, epoch: int) -> tuple[float, float, dict]:
    """One pass over the training loader; returns (mean training loss, the learning rate of its last step,
    speed: ``train_items_per_s`` over all processes and, on a GPU, ``peak_gpu_gib``, this process's peak
    allocated memory in the epoch's training).
    Stops the run (TrainingStopped) at the first non-finite loss or gradient norm."""
    from tqdm import tqdm

    cfg, ctx = run.cfg, distributed.current()
    started = time.time()
    run.train_net.train()
    run.data_order.manual_seed(cfg["seed"] + epoch + 100_003 * ctx.rank)  # worker seeds (and order, one process)
    if run.train_sampler is not None:
        run.train_sampler.set_epoch(epoch)
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}", disable=not (cfg["progress"] and ctx.is_main),
               unit="step")
    loss_sum, n_items, lr = 0.0, 0, run.optimizer.param_groups[0]["lr"]
    on_gpu = run.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(run.device)
    for step, batch in enumerate(run.train_loader):
        if step >= run.steps_per_epoch:
            break
        batch = to_device(batch, run.device, cfg["channels_last"])
        with run.autocast():
            out = run.train_net(batch)
        loss = out["loss"]
        step_loss = distributed.mean_over_ranks(loss.detach())
        if not torch.isfinite(step_loss):
            raise TrainingStopped(_stop_message(f"loss is {float(step_loss)}", epoch, step, run.last_path,
                                                run.saved_epoch))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            # DDP has averaged the gradients: the norm, and the decision, are the same on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg["grad_clip"])
            if not torch.isfinite(grad_norm):
                raise TrainingStopped(_stop_message("the gradient norm is not finite", epoch, step, run.last_path,
                                                    run.saved_epoch))
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.scheduler.step()
        if run.average is not None:
            run.average.update(run.model)
        n = len(out["logits"])
        loss_sum += float(step_loss) * n
        n_items += n
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / n_items:.4f}",
                        samples_s=f"{n_items * ctx.world_size / (time.time() - started):.1f}")
    bar.close()
    speed = {"train_items_per_s": round(n_items * ctx.world_size / max(time.time() - started, 1e-9), 3)}
    if on_gpu:
        speed["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(run.device) / 2**30, 3)
    return loss_sum / max(n_items, 1), lr, speed


def _validate(run: Training, epoch: int, train_loss: float, lr: float, started: float, announce,
              speed: dict | None = None) -> None:
    """Predict the validation fold, judge it, append history, keep best.pt and last.pt, log the epoch."""
    cfg, ctx = run.cfg, distributed.current()
    distributed.sync_buffers(run.model)
    if run.average is not None:
        distributed.sync_buffers(run.average.model)
    # A DataLoader draws its workers' seed from the global generator whenever it starts them; persistent
    # validation workers start once, at epoch 0's validation, whose draw the saved RNG state already
    # follows. A resumed run starts them again at its first validation: forked, so that draw is not taken
    # from training's stream (else every epoch after the first resumed one trains on other dropout masks).
    restarted = run.val_loader.persistent_workers and epoch == run.start_epoch > 0
    with torch.random.fork_rng(devices=[], enabled=restarted):
        val_loss, outputs = predict(run.eval_net, run.val_loader, run.device, run.autocast, cfg["channels_last"])
    if not all(np.isfinite(v).all() for v in outputs.values()):  # gathered: every rank stops alike
        raise TrainingStopped(_stop_message("validation outputs are not finite", epoch, -1, run.last_path,
                                            run.saved_epoch))
    trained = None
    if run.average is not None:  # the trained weights too, on the same trajectory: does the average help?
        # a loader pass draws its worker seed from the global generator: forked, so training draws as it
        # would without this pass, and the trained weights follow the same path as with ema_decay=0
        with torch.random.fork_rng(devices=[]):
            _, trained = predict(run.model, run.val_loader, run.device, run.autocast, cfg["channels_last"])
    streams = distributed.all_gather_object(rng_state()) if ctx.enabled else None
    if ctx.is_main:
        metrics, _ = judge(run.task, outputs, run.val_set, run.judged)
        row = history_row(epoch, train_loss, val_loss, metrics, run.monitor, lr, time.time() - started, speed)
        if trained is not None:
            row[f"trained_{run.monitor}"] = judge(run.task, trained, run.val_set, run.model)[0][run.monitor]
        run.history.append(row)
        atomic_write_csv(run.folder / "history.csv", pd.DataFrame(run.history))
        improved = run.sign * metrics[run.monitor] < run.sign * run.best_value if run.best_epoch >= 0 else True
        if improved:
            run.best_value, run.best_epoch = metrics[run.monitor], epoch
            save_checkpoint(run.best_path, **run.checkpoint(epoch, streams))
        if cfg.get("average_top_k", 0) > 1:
            top_k.keep_epoch(run.folder, cfg["average_top_k"], epoch, metrics[run.monitor], run.sign,
                             model_state(run.judged))
    if cfg["save_every_epoch"] or epoch == cfg["epochs"] - 1:
        if ctx.is_main:
            save_checkpoint(run.last_path, **run.checkpoint(epoch, streams))
        run.saved_epoch = epoch
    if ctx.is_main:
        run.logger.log_epoch(row, epoch)
        prior = f"  (prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else ""
        plain = f" (trained weights {row[f'trained_{run.monitor}']:.4f})" if run.average is not None else ""
        announce(f"[epoch {epoch}] train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
                 f"{run.monitor} {metrics[run.monitor]:.4f}{plain}{prior}  {row['seconds']:.0f} s"
                 + ("  *best" if improved else ""))


def _finish(run: Training, announce) -> dict:
    """The run's result is the best checkpoint's, re-evaluated so that it does not depend on resumes: oof.csv,
    the task's figures, the W&B summary, and metrics.json last (its presence marks the run finished)."""
    cfg, main = run.cfg, distributed.current().is_main
    distributed.wait()  # rank 0 has written best.pt
    averaged = []
    if main and cfg.get("average_top_k", 0) > 1:
        averaged = top_k.average_into_best(run.folder, run.best_path)
        if averaged:
            announce(f"[top-k] best.pt now holds the mean weights of epochs {averaged} "
                     f"(the single best epoch: {top_k.SINGLE})")
    distributed.wait()
    state = load_checkpoint(run.best_path, map_location=run.device)
    load_model_state(run.judged, state["model"])
    _, outputs = predict(run.eval_net, run.val_loader, run.device, run.autocast, cfg["channels_last"])
    metrics = None
    if main:
        metrics, oof = judge(run.task, outputs, run.val_set, run.judged)
        metrics = {run.monitor: metrics[run.monitor], **metrics, "best_epoch": state["epoch"], "n_val": len(run.val_set)}
        if state.get("averaged_epochs"):
            metrics["averaged_epochs"] = list(state["averaged_epochs"])
        files = [run.folder / FINISHED_MARKER]
        if oof is not None:
            atomic_write_csv(run.folder / "oof.csv", oof)
            files.append(run.folder / "oof.csv")
        figures = run.task.figures(metrics, oof, run.val_set, run.folder) if oof is not None else {}
        explanations = _explanations(run, oof, announce)
        atomic_write_json(run.folder / FINISHED_MARKER, metrics)
        run.logger.finish(metrics, figures, files, model_file=run.best_path if cfg["wandb"]["log_model"] else None,
                          explanations=explanations)
        prior = f" (label prior {metrics['prior_score']:.4f})" if "prior_score" in metrics else ""
        announce(f"[done] {run.folder}: best epoch {state['epoch']}, {run.monitor} {metrics[run.monitor]:.4f}{prior}")
    return distributed.broadcast_object(metrics)


def _explanations(run: Training, oof, announce) -> dict[str, Path]:
    """Pictures of ``explain_studies`` held-out studies (the task's ``explain``, when it has one) in
    ``<run>/explanations/``, for the W&B run. Drawn after every number of the run is fixed, with the model
    only run forward; a picture that cannot be drawn is announced and costs nothing else."""
    n = int(run.cfg.get("explain_studies", 0))
    if n <= 0 or oof is None or not hasattr(run.task, "explain"):
        return {}
    try:
        return run.task.explain(run.judged, run.val_set, oof, run.folder / "explanations", n)
    except Exception as err:  # a picture must never cost the finished run
        announce(f"[explain] no explanation pictures: {type(err).__name__}: {err}")
        return {}


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
