"""``python -m src.dashboard``: the project's W&B comparison workspace, created from code (wandb-workspaces).

Builds the workspace src/reporting/dashboard.py describes (runs grouped by experiment with score and
prior_score, learning curves with the spread over folds, per-target log loss bars, one dataset tag, the
best run's explanation pictures) for ``project=`` (default: WANDB_PROJECT, else configs/default.yaml's
``wandb.project``) and ``entity=`` (WANDB_ENTITY, else the login's default). The best run is the finished
classifier fold of ``runs_dir=`` with the lowest score; ``tag=`` defaults to its dataset (demo or real).
With a W&B login it saves the workspace and prints its URL. Offline (no login, or WANDB_MODE=offline or
disabled) it writes the specification it would send to ``out=`` (default ``<runs_dir>/dashboard.json``)
and says so; nothing touches the network.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .config import CONFIG_DIR, ConfigError, parse_overrides, run_main

DEFAULTS = {"runs_dir": "runs", "entity": "", "project": "", "tag": "", "out": "", "name": "Which run is better"}


def main(argv: list[str]) -> dict:
    from .io_utils import atomic_write_text
    from .reporting.dashboard import best_run, build_workspace, specification, used_keys
    from .training.wandb_log import resolve_mode

    args = parse_overrides(argv, DEFAULTS)
    runs_dir = Path(args["runs_dir"])
    project = args["project"] or os.environ.get("WANDB_PROJECT") or \
        yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())["wandb"]["project"]
    mode = resolve_mode("auto")
    # decided before wandb is imported: wandb reads WANDB_MODE then (src/training/wandb_log.py)
    os.environ["WANDB_MODE"] = mode
    entity = args["entity"] or os.environ.get("WANDB_ENTITY") or ""
    if mode == "online" and not entity:
        import wandb

        entity = wandb.Api().default_entity or ""
        if not entity:
            raise ConfigError("no W&B entity: pass entity=<user or team> or set WANDB_ENTITY")
    best = best_run(runs_dir)
    tag = args["tag"] or (best.dataset_kind if best else "")
    workspace = build_workspace(entity or "<entity>", project, tag, best, args["name"])
    keys = used_keys(workspace)
    about = (f"best run {best.name} (score {best.score:.4f})" if best else f"no finished classifier in {runs_dir}") + \
        f"; tag filter {tag or 'none'}; keys {sorted(keys['history'] | keys['summary'] | keys['media'])}"
    if mode == "online":
        workspace.save()
        print(f"[dashboard] saved {workspace.url}: {about}")
        return {"mode": mode, "url": workspace.url, "workspace": workspace}
    out = Path(args["out"]) if args["out"] else runs_dir / "dashboard.json"
    atomic_write_text(out, json.dumps(specification(workspace), indent=1) + "\n")
    print(f"[dashboard] W&B is {mode}: nothing was created; wrote the workspace it would create to {out} ({about}). "
          f"After `wandb login` (and `wandb sync wandb/offline-run-*`) the same command creates it.")
    return {"mode": mode, "out": out, "workspace": workspace}


if __name__ == "__main__":
    run_main(main)
