"""The W&B run of one training run: called by the loop (src/training/loop.py) at start, per epoch, at the end.

Offline unless the machine is logged in to W&B (``WANDB_API_KEY`` or an api.wandb.ai entry in ~/.netrc),
so every run is recorded even without an account; ``wandb sync wandb/offline-run-*`` uploads later and
``wandb leet wandb`` browses the runs in a terminal. ``wandb.mode: disabled`` (or wandb not installed)
turns logging off; the run folder's history.csv and metrics.json exist either way.
"""
from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config import flatten

EXPLANATIONS_KEY = "explanations"  # the media key of the held-out studies' pictures (src/reporting/dashboard.py)


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(configured: str) -> str:
    """The config's mode; ``auto`` defers to WANDB_MODE if set, else online only when logged in."""
    if configured != "auto":
        return configured
    return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


class WandbRun:
    """Thin wrapper: a no-op when disabled, so the loop never checks."""

    def __init__(self, cfg, family: str, dataset_kind: str, resume_id: str | None = None, announce=print,
                 active: bool = True):
        self.run = None
        self.id = None
        mode = resolve_mode(cfg["wandb"]["mode"])
        if mode == "disabled" or not active:  # inactive: ranks other than 0 of a torchrun job
            return
        # wandb reads WANDB_MODE from the environment when it is imported and when its service process
        # starts; passing mode= to init() alone leaves both thinking online (a DNS look-up and telemetry
        # connection on every run, offline or not), so the decision goes into the environment first
        os.environ["WANDB_MODE"] = mode
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb is not installed: this run is not logged to W&B (history.csv and metrics.json still are)")
            return
        self.wandb = wandb
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        name = f"{cfg['experiment']}-fold{cfg['fold']}"
        folder = Path(cfg["wandb"]["dir"]).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or cfg["wandb"]["project"],
            entity=cfg["wandb"]["entity"] or os.environ.get("WANDB_ENTITY"),
            group=cfg["experiment"], name=name, job_type="train",
            tags=[family, dataset_kind, *cfg["tags"]], config=flatten(plain),
            dir=str(folder), mode=mode, id=resume_id, resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.id = self.run.id
        self.name = name
        announce(f"[wandb] {mode} run {name} ({self.run.id}) in {folder / 'wandb'}")

    def log_epoch(self, row: dict, epoch: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step=epoch)

    def finish(self, metrics: dict, figures: dict, files: list[Path], model_file: Path | None = None,
               explanations: dict | None = None) -> None:
        """The end of the run: figures, explanation pictures ({uid: png}, one media key), summary, artifacts."""
        if self.run is None:
            return
        wandb = self.wandb
        if figures:
            self.run.log({name: wandb.Image(str(path)) for name, path in figures.items()})
        if explanations:
            pictures = [wandb.Image(str(path), caption=uid) for uid, path in explanations.items()]
            self.run.log({EXPLANATIONS_KEY: pictures})
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.run.summary[key] = value
            elif key.startswith("per_target_") and isinstance(value, dict):
                # the best epoch's per-target figures, under the names the history uses (val_C1_logloss ...),
                # so the summary does not keep the last epoch's values for them
                kind = key.removeprefix("per_target_")
                for target, number in value.items():
                    self.run.summary[f"val_{target}_{kind}"] = number
        artifact = wandb.Artifact(f"{self.name}-oof", type="predictions",
                                  metadata={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for path in files:
            if Path(path).exists():
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        if model_file is not None:
            model = wandb.Artifact(f"{self.name}-model", type="model")
            model.add_file(str(model_file))
            self.run.log_artifact(model)
        self.run.finish()
        self.run = None

    def abort(self, exit_code: int = 1) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
