"""Does inference's test-time augmentation help? Trained runs' held-out folds predicted with each TTA of infer.py.

    python benchmarks/tta.py                                  # runs/effnet_gru/fold*, where trained
    python benchmarks/tta.py --shifts -0.25 0.25 runs/ablation/ablation_base/fold0 runs/other/fold2

Each run's best.pt (src.models.checkpoint.trained_model, as inference loads it) predicts its held-out fold
through the validation loader training used, once per view: as saved, with the sampled slices moved by
each of ``--shifts`` times their spacing (``python infer.py tta_shifts=[...]``, the same crop builder),
and the left-right mirror of each (src.inference.members.mirror, ``tta=true``). The views' probabilities
are averaged as inference averages them, for four choices: none, the mirror, the shifts, both; each is
judged by the run's task, as training judges an epoch. One table: the held-out score with patient_overall
from the model and from the max of the seven, patient_overall's log loss, the mean of the seven
vertebrae's, and the mean AUC; then each choice's difference from none, per run and on average. The epoch
a run kept was picked without TTA, which if anything favours the rows without it. Needs the runs' data,
cache and localisation table; about a minute per view of a demo run on a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def held_out_probabilities(model, loader, autocast) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, the mirror's), each (studies, 8), in the loader's order."""
    from src.inference.members import mirror

    plain, mirrored = [], []
    for batch in loader:
        for out, view in ((plain, batch), (mirrored, mirror(batch))):
            with autocast():
                out.append(torch.sigmoid(model(view)["logits"].float()).numpy())
    return np.concatenate(plain), np.concatenate(mirrored)


def judged(task, val_set, model, probs: np.ndarray) -> dict:
    from src import VERTEBRAE
    from src.training.evaluate import judge

    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    metrics, _ = judge(task, {"logits": np.log(clipped / (1 - clipped))}, val_set, model)
    losses, aucs = metrics["per_target_logloss"], metrics["per_target_auc"]
    return {"score": metrics["score"], "score_max": metrics["score_patient_max"],
            "patient_ll": losses["patient_overall"], "vertebra_ll": float(np.mean([losses[v] for v in VERTEBRAE])),
            "auc": float(np.nanmean(list(aucs.values())))}


def evaluate(folder: Path, shifts: list[float]) -> list[dict]:
    from omegaconf import OmegaConf

    from src.data.folds import ensure_folds
    from src.models.checkpoint import trained_model
    from src.models.registry import model_task
    from src.paths import locate_data_dir, resolve_cache_dir
    from src.tasks import get_task_class
    from src.training.device import autocast_for
    from src.training.loaders import validation_loader

    if not (folder / "best.pt").exists():
        raise SystemExit(f"{folder}: no best.pt; name a trained run folder")
    model, config = trained_model(folder, "cpu")
    cfg = OmegaConf.create(config)
    data_dir = locate_data_dir(cfg)
    task = get_task_class(model_task(type(model)))(cfg, data_dir, resolve_cache_dir(cfg, data_dir),
                                                   ensure_folds(cfg, data_dir), announce=lambda *_: None)
    if not getattr(task, "slice_shifts", False):
        raise SystemExit(f"{folder}: its task ({task.registry_name}) has no slice-shift views")
    _, val_set = task.datasets()
    device = torch.device("cpu")
    views = {}  # (shift, mirrored) -> probabilities
    for shift in [0.0, *shifts]:
        # the crop builder of infer.py's tta_shifts (src/tasks/vertebra.py); a fresh loader per shift, since a
        # loader's worker processes keep the dataset as it was when they started
        val_set.crops.shift = shift
        views[shift, False], views[shift, True] = held_out_probabilities(
            model, validation_loader(val_set, cfg, task, device), autocast_for(cfg, device))
    choices = {"none": [(0.0, False)], "mirror": [(0.0, False), (0.0, True)],
               "shifts": [(s, False) for s in [0.0, *shifts]], "both": list(views)}
    return [{"run": str(folder), "tta": name, **judged(task, val_set, model, np.mean([views[k] for k in keys], axis=0))}
            for name, keys in choices.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: runs/effnet_gru/fold*)")
    parser.add_argument("--shifts", nargs="+", type=float, default=[-0.5, 0.5],
                        help="slice shifts, fractions of the spacing (default -0.5 0.5)")
    args = parser.parse_args()
    runs = args.runs or sorted((ROOT / "runs" / "effnet_gru").glob("fold*/"))
    if not runs:
        raise SystemExit("no runs/effnet_gru/fold*: train one (`bash train.sh fold=0`) or name run folders")

    from src.reporting.markdown import table

    rows = pd.DataFrame([row for folder in runs for row in evaluate(Path(folder), args.shifts)])
    numbers = ["score", "score_max", "patient_ll", "vertebra_ll", "auc"]
    print(f"shifts {args.shifts}")
    print(table(["run", "tta", *numbers], [[r.run, r.tta, *(f"{r[k]:.4f}" for k in numbers)]
                                          for _, r in rows.iterrows()]))
    none = rows[rows.tta == "none"].set_index("run")[numbers]
    print("\neach TTA minus none (negative helped; for AUC, positive helped), per run and the mean over runs")
    lines = []
    for name in ("mirror", "shifts", "both"):
        difference = rows[rows.tta == name].set_index("run")[numbers] - none
        lines += [[run, name, *(f"{v:+.4f}" for v in r)] for run, r in difference.iterrows()]
        lines.append(["mean", name, *(f"{v:+.4f}" for v in difference.mean())])
    print(table(["run", "tta", *numbers], lines))


if __name__ == "__main__":
    main()
