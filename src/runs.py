"""The run-folder layout, in one place: ``<runs_dir>/<experiment>/fold<k>/`` and what it holds.

Every part of the pipeline that reads or writes runs goes through here: training (which folder a run
writes, whether it is finished), localisation (its fold models), inference (each member's folds),
ensembling (each member's oof.csv, ensemble.json) and reporting. docs/data.md#run-folders describes
the files. A fold counts as done only when it is **finished**: its training wrote ``metrics.json``,
last, so an interrupted run's best.pt (the best epoch so far) is never taken for a result.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from .paths import locate_data_dir

FINISHED_MARKER = "metrics.json"
ENSEMBLE_FILE = "ensemble.json"
_FOLD_DIR = re.compile(r"^fold(\d+)$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class RunNotFoundError(FileNotFoundError):
    """A named run, or a fold of it, is not in the runs folder; the message lists what is."""


def fold_dir(runs_dir: Path | str, experiment: str, fold: int) -> Path:
    return Path(runs_dir) / experiment / f"fold{int(fold)}"


def run_dir(cfg, experiment: str | None = None, fold: int | None = None) -> Path:
    """The run folder a config trains into (``runs_dir``, ``experiment``, ``fold``; either may be overridden)."""
    return fold_dir(Path(cfg["runs_dir"]).expanduser().resolve(), experiment or cfg["experiment"],
                    cfg["fold"] if fold is None else fold)


def is_finished(folder: Path) -> bool:
    return (Path(folder) / FINISHED_MARKER).is_file()


def fold_dirs(runs_dir: Path, run: str) -> dict[int, Path]:
    """``{fold: folder}`` for every ``fold<k>`` folder of ``run``, finished or not (moved-aside runs,
    ``fold<k>.old-<time>``, are not folds)."""
    root = Path(runs_dir) / run
    if not root.is_dir():
        return {}
    found = {}
    for path in root.iterdir():
        match = _FOLD_DIR.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def run_folds(runs_dir: Path, run: str, needs: str = "best.pt") -> dict[int, Path]:
    """``{fold: folder}`` for every finished fold of ``run`` that holds the file ``needs``."""
    return {k: p for k, p in fold_dirs(runs_dir, run).items() if is_finished(p) and (p / needs).is_file()}


def available_runs(runs_dir: Path, needs: str = "best.pt") -> dict[str, list[int]]:
    """Every run in ``runs_dir`` with at least one finished fold holding ``needs``, with those folds."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return {}
    out = {}
    for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        folds = run_folds(runs_dir, path.name, needs)
        if folds:
            out[path.name] = list(folds)
    return out


def describe_available(runs_dir: Path, needs: str = "best.pt") -> str:
    runs = available_runs(runs_dir, needs)
    if not runs:
        return f"no run in {runs_dir} has a finished fold with {needs}; train one first (bash train.sh config=<name> fold=0)"
    listed = ", ".join(f"{name} (folds {', '.join(map(str, folds))})" for name, folds in runs.items())
    return f"runs in {runs_dir} with finished folds holding {needs}: {listed}"


def select_folds(runs_dir: Path, run: str, folds="all", needs: str = "best.pt") -> dict[int, Path]:
    """The finished fold folders of ``run`` to use: ``all`` of them, or an explicit list.

    Raises :class:`RunNotFoundError` naming the available runs when ``run`` has no usable fold, or naming
    the run's folds when an explicitly requested one is missing or unfinished.
    """
    if not _RUN_NAME.fullmatch(str(run)) or str(run) in {".", ".."}:
        raise RunNotFoundError(f"run name {run!r} is not a folder name (letters, digits, _ . -)")
    found = run_folds(runs_dir, run, needs)
    unfinished = sorted(set(fold_dirs(runs_dir, run)) - set(found))
    still = f" (fold(s) {unfinished} not finished: train them to the end first)" if unfinished else ""
    if not found:
        raise RunNotFoundError(f"run '{run}' has no finished fold with {needs} in {runs_dir}{still}; "
                               f"{describe_available(runs_dir, needs)}{old_name_hint(runs_dir, run)}")
    if folds in ("all", None):
        return found
    wanted = [folds] if isinstance(folds, int) else list(folds)
    missing = [f for f in wanted if f not in found]
    if missing:
        raise RunNotFoundError(f"run '{run}': fold(s) {missing} have no finished run with {needs} in "
                               f"{Path(runs_dir) / run} (finished folds: {', '.join(map(str, found))}){still}")
    return {f: found[f] for f in wanted}


# Model, config-section and run names saved before the project settled on one spelling, and today's.
RENAMED = {"localizer": "localiser"}


def current_names(config: dict) -> dict:
    """A saved run config with the names of today's code: a run trained before a rename still loads."""
    config = {RENAMED.get(key, key): value for key, value in config.items()}
    if config.get("model") in RENAMED:
        config["model"] = RENAMED[config["model"]]
    return config


def old_name_hint(runs_dir: Path, run: str) -> str:
    """A sentence when ``run`` has no folder but its name from before a rename has one, else ''."""
    for old, new in RENAMED.items():
        if new == run and (Path(runs_dir) / old).is_dir() and not (Path(runs_dir) / new).exists():
            return (f"; {Path(runs_dir) / old} is this run under its old name: "
                    f"`mv {Path(runs_dir) / old} {Path(runs_dir) / new}` to use it")
    return ""


def read_run_config(folder: Path) -> dict | None:
    """A fold's resolved ``config.yaml`` (in today's names), or None when it is missing or unreadable."""
    path = Path(folder) / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return current_names(data) if isinstance(data, dict) else None


def run_labels(config: dict) -> Path:
    """train.csv of the data a run was trained on (its ``data_dir``, or the demo folder standing in for it).

    Raises KeyError when the config names no data, FileNotFoundError when neither folder has labels.
    """
    if not isinstance(config, dict) or "data_dir" not in config:
        raise KeyError("data_dir")
    return locate_data_dir(config) / "train.csv"


def ensemble_path(runs_dir: Path) -> Path:
    """Where ``python -m src.ensemble`` writes the fitted ensemble and ``infer.py`` and the report read it."""
    return Path(runs_dir) / ENSEMBLE_FILE


COMBINE_SPACES = ("prob", "logit")
PATIENT_METHODS = ("keep", "noisy_or", "max", "logistic")  # src/ensembling/patient.py; N_PATIENT_FEATURES for logistic
N_PATIENT_FEATURES = 8


def read_ensemble(path: Path) -> dict:
    """``ensemble.json`` as ``python -m src.ensemble`` writes it, checked: ``members`` (run names), ``weights``
    (one per member), ``combine`` (prob or logit), then what the fit measured, ``nested_cv`` ({"score", "prob",
    "logit"}), ``member_cv`` ({run: score}), ``spaces``, ``n_studies``, ``n_folds``, ``notes``. The first three
    are required (inference needs no more; a hand-written file may stop there); ``nested_cv``, when present,
    must hold a numeric ``score``. Raises ValueError naming the file."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the ensemble file ({err}); re-run `python -m src.ensemble`") from err
    ok = (isinstance(data, dict) and isinstance(data.get("members"), list) and isinstance(data.get("weights"), list)
          and len(data["members"]) == len(data["weights"]) and data.get("combine") in COMBINE_SPACES)
    nested = data.get("nested_cv") if isinstance(data, dict) else None
    if ok and nested is not None:
        ok = isinstance(nested, dict) and isinstance(nested.get("score"), (int, float))
    patient = data.get("patient") if isinstance(data, dict) else None
    if ok and patient is not None:
        ok = isinstance(patient, dict) and patient.get("method") in PATIENT_METHODS
        if ok and patient["method"] == "logistic":
            params = patient.get("params")
            ok = (isinstance(params, dict) and isinstance(params.get("intercept"), (int, float))
                  and isinstance(params.get("coef"), list) and len(params["coef"]) == N_PATIENT_FEATURES)
    if not ok:
        raise ValueError(f"{path}: not an ensemble file (needs members, weights of the same length, combine "
                         f"{'|'.join(COMBINE_SPACES)}, a numeric nested_cv.score if any, and a patient entry with a "
                         f"method of {'|'.join(PATIENT_METHODS)} if any, logistic with {N_PATIENT_FEATURES} coef); "
                         f"re-run `python -m src.ensemble`")
    return data
