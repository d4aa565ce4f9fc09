"""The project's W&B comparison dashboard as code: a workspace built with ``wandb-workspaces``.

Called by ``python -m src.dashboard``. The workspace holds what README "Comparing experiments" describes:

- the runs table grouped by experiment (the W&B group), ``score`` and ``prior_score`` pinned, best first,
  restricted to one dataset tag (``demo`` or ``real``: never compare across them);
- ``score`` and ``train_loss`` against ``epoch``, one line per experiment, the band the spread over folds;
- the per-target log losses (``val_<target>_logloss``) as bars per experiment, with the spread over folds;
- the explanation pictures (``explanations``, logged at the end of training, src/tasks/explanation.py)
  and the validation figures of the best run, which is pinned and the baseline of the table.

The keys named here are the training loop's (src/training/loop.py ``history_row``, src/training/wandb_log.py);
:func:`used_keys` lists them by kind so that tests/test_dashboard.py checks each against what a run logs.
Online (a W&B login, WANDB_MODE not offline) the workspace is saved to the project; otherwise its
specification, exactly what would be sent, is written as JSON and nothing touches the network.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .. import TARGETS
from ..runs import fold_dirs, read_run_config

SPREAD = "stddev"  # the band around each experiment's mean: the standard deviation over its folds


@dataclass
class BestRun:
    experiment: str
    fold: int
    score: float
    dataset_kind: str
    wandb_id: str | None

    @property
    def name(self) -> str:  # the W&B run name src/training/wandb_log.py gives a fold
        return f"{self.experiment}-fold{self.fold}"


def best_run(runs_dir: Path) -> BestRun | None:
    """The finished classifier fold with the lowest ``score`` in ``runs_dir``, or None."""
    best = None
    for experiment in sorted(p.name for p in Path(runs_dir).iterdir() if p.is_dir()) if Path(runs_dir).is_dir() else []:
        for fold, folder in fold_dirs(runs_dir, experiment).items():
            try:
                metrics = json.loads((folder / "metrics.json").read_text())
            except (OSError, ValueError):
                continue
            score = metrics.get("score")
            if not isinstance(score, (int, float)) or not math.isfinite(score) or (best and best.score <= score):
                continue
            config = read_run_config(folder) or {}
            best = BestRun(experiment, fold, float(score), str(config.get("dataset_kind", "")), _wandb_id(folder))
    return best


def _wandb_id(folder: Path) -> str | None:
    """The W&B run id a fold's checkpoint recorded (None when W&B was off or the file cannot be read)."""
    from ..models.checkpoint import load_checkpoint

    try:
        return load_checkpoint(Path(folder) / "best.pt").get("wandb_id")
    except Exception:  # a damaged checkpoint only costs the pin
        return None


def build_workspace(entity: str, project: str, tag: str, best: BestRun | None, name: str = "Which run is better"):
    """The workspace (wandb_workspaces.workspaces.Workspace); nothing is sent."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    per_target = [f"val_{target}_logloss" for target in TARGETS]
    by_experiment = {"groupby": "Group", "groupby_aggfunc": "mean", "groupby_rangefunc": SPREAD}
    sections = [
        ws.Section(name="Which run is better", is_open=True, panels=[
            wr.BarPlot(title="score and label prior, mean over folds (lower is better)",
                       metrics=["score", "prior_score"], orientation="v", **by_experiment),
        ]),
        ws.Section(name="Learning curves", is_open=True, panels=[
            wr.LinePlot(title="validation score", x="epoch", y=["score"], **by_experiment),
            wr.LinePlot(title="training loss", x="epoch", y=["train_loss"], **by_experiment),
        ]),
        ws.Section(name="Log loss per target", is_open=True, panels=[
            wr.BarPlot(title="which vertebra each model gets wrong", metrics=per_target, orientation="v",
                       **by_experiment),
        ]),
    ]
    best_title = f" of the best run, {best.name} (score {best.score:.4f})" if best else " of the best run"
    sections.append(ws.Section(name="Explanations" + best_title, is_open=True, panels=[
        wr.MediaBrowser(title="held-out studies: crops, attention, reformats", media_keys=["explanations"],
                        num_columns=1),
        wr.MediaBrowser(title="validation figures", media_keys=["confusion_matrices", "roc_curves"], num_columns=2),
    ]))
    runset = {"groupby": [expr.Metric("Group")], "pinned_columns": ["summary:score", "summary:prior_score"],
              "order": [expr.Ordering(expr.Summary("score"), ascending=True)]}
    if tag:
        runset["filters"] = [expr.Tags().isin([tag])]
    if best and best.wandb_id:
        runset["baseline_run"] = best.wandb_id
    return ws.Workspace(entity=entity, project=project, name=name + (f" ({tag})" if tag else ""), sections=sections,
                        settings=ws.WorkspaceSettings(x_axis="epoch"), runset_settings=ws.RunsetSettings(**runset))


def used_keys(workspace) -> dict[str, set[str]]:
    """What the workspace reads from the runs, by kind: ``history`` (per-epoch keys), ``summary`` and
    ``media`` (images logged at the end)."""
    history, summary, media = set(), set(), set()
    for section in workspace.sections:
        for panel in section.panels:
            if hasattr(panel, "y"):
                history |= {str(panel.x), *map(str, panel.y)}
            elif hasattr(panel, "media_keys"):
                media |= set(panel.media_keys)
            elif hasattr(panel, "metrics"):
                summary |= set(map(str, panel.metrics))
    settings = workspace.runset_settings
    summary |= {c.split(":", 1)[1] for c in settings.pinned_columns if c.startswith("summary:")}
    summary |= {o.item.name for o in settings.order if o.item.section == "summary"}
    history.add(workspace.settings.x_axis)
    return {"history": history, "summary": summary, "media": media}


def specification(workspace) -> dict:
    """The JSON body :meth:`Workspace.save` would send (the view's model), built offline."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
