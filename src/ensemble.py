"""``python -m src.ensemble runs=a,b``: fit the ensemble's member weights on out-of-fold predictions.

Reads every fold's ``oof.csv`` of each run (src/ensembling/oof.py), keeps the studies all of them
predicted, and reports each member's CV beside the ensemble's NESTED CV (weights fitted on the other
folds, scored on the held-out one) for combination in probability and in logit space
(src/ensembling/fit.py), then a calibration of the result judged by the same nested CV (kept only if it
helps; ``calibrate=false`` skips it). Writes ``<runs_dir>/ensemble.json`` (members, weights, combine, member_cv,
nested_cv, calibration, ...), which ``python infer.py`` reads when its members are the same runs.
With no ``runs=``, the members of configs/infer.yaml are fitted.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import ConfigError, parse_overrides, run_main
from .io_utils import atomic_write_json
from .paths import _abs
from .runs import RunNotFoundError, ensemble_path, read_run_config, run_labels, select_folds

DEFAULTS = {
    "runs": "",             # a,b or [a,b]; empty -> the members of configs/infer.yaml
    "runs_dir": "runs",
    "truth": "",            # labels csv; empty -> train.csv of the data the first run was trained on
    "combine": "auto",      # auto (the better nested CV) | prob | logit
    "calibrate": True,      # try calibrating the final probabilities; kept only if the nested CV improves
    "inner_folds": 5,       # stand-in groups when the oof rows come from a single fold
    "seed": 0,
    "output": "",           # empty -> <runs_dir>/ensemble.json
    "patient": "keep",      # patient_overall: keep (the members') | auto (best nested CV) | noisy_or | max | logistic
}


def parse_runs(text: str) -> list[str]:
    if not text.strip():
        from .inference.settings import infer_defaults, parse_members

        return [m.run for m in parse_members(infer_defaults()["members"])]
    return [r.strip().strip("'\"") for r in text.strip().strip("[]").split(",") if r.strip()]


def labels_for(runs_dir: Path, run: str, truth: str) -> Path:
    """The labels to fit on: ``truth=`` when given, else train.csv of the data the run was trained on."""
    if truth:
        return _abs(truth)
    fold_dir = next(iter(select_folds(runs_dir, run, "all", needs="oof.csv").values()))
    try:
        return run_labels(read_run_config(fold_dir))
    except KeyError:
        raise ConfigError(f"{fold_dir / 'config.yaml'}: cannot tell which data {run} was trained on; "
                          f"pass truth=<train.csv>") from None
    except FileNotFoundError as err:
        raise ConfigError(f"labels for {run} not found ({err}); pass truth=<train.csv>") from None


def main(argv: list[str]) -> dict:
    from .ensembling.fit import fit_ensemble, format_report
    from .ensembling.oof import align_members
    args = parse_overrides(argv, DEFAULTS)
    if args["combine"] not in ("auto", "prob", "logit"):
        raise ConfigError(f"combine={args['combine']!r}; expected auto, prob or logit")
    runs = parse_runs(args["runs"])
    if not runs:
        raise ConfigError("runs= names no run (example: runs=effnet_gru,cnn3d)")
    runs_dir = _abs(args["runs_dir"])
    try:
        truth = labels_for(runs_dir, runs[0], args["truth"])
        if not truth.exists():
            raise ConfigError(f"no labels at {truth}; pass truth=<train.csv>")
        aligned = align_members(runs_dir, runs, pd.read_csv(truth))
    except RunNotFoundError as err:
        raise ConfigError(str(err)) from None
    if args["patient"] not in ("keep", "auto", "noisy_or", "max", "logistic"):
        raise ConfigError(f"patient={args['patient']!r}; expected keep, auto, noisy_or, max or logistic")
    result = fit_ensemble(aligned, args["combine"], args["inner_folds"], args["seed"], bool(args["calibrate"]),
                          args["patient"])
    result["truth"] = str(truth)
    output = _abs(args["output"]) if args["output"] else ensemble_path(runs_dir)
    atomic_write_json(output, result)
    print(format_report(result))
    print(f"[ensemble] wrote {output}")
    return result


if __name__ == "__main__":
    run_main(main)
