"""The weights dataset: what infer.py will load on Kaggle, copied from ``runs/`` with a checksummed manifest.

Called by the build (and the check, which verifies the checksums). The members, their folds, weights
and the localiser are chosen exactly as ``python infer.py`` chooses them (src/inference/settings.py:
configs/infer.yaml, the same overrides, ``ensemble.json`` when it names the same runs). Each chosen
fold's ``best.pt``, ``config.yaml`` (the resolved config it trained with) and ``metrics.json`` (the
finished marker, with its CV) are copied into ``<weights>/runs/<run>/fold<k>/``, in the run-folder
layout, so the notebook points ``runs_dir`` at it and nothing else changes. ``manifest.json`` lists
every file with its sha256 and the CV it came from, and the exact infer.py arguments that use them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..config import ConfigError
from ..inference.settings import resolve_ensemble
from ..paths import _abs
from ..runs import ENSEMBLE_FILE, FINISHED_MARKER, ensemble_path, read_run_config, select_folds

MANIFEST = "manifest.json"
FOLD_FILES = ("best.pt", "config.yaml", FINISHED_MARKER)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fold_cv(fold_dir: Path) -> dict:
    """What a fold's metrics.json says it scored: ``score`` (classifiers) or ``dice`` (the localiser)."""
    try:
        metrics = json.loads((fold_dir / FINISHED_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return {k: metrics[k] for k in ("score", "prior_score", "dice", "slice_iou") if isinstance(metrics.get(k), (int, float))}


def needs_localiser(fold_dir: Path) -> bool:
    from ..models.registry import get_model_class

    config = read_run_config(fold_dir) or {}
    try:
        return bool(getattr(get_model_class(config.get("model", "")), "needs_localisation", False))
    except (ConfigError, KeyError, ValueError):
        return False


def choose(cfg: dict, announce=print) -> dict:
    """{"members": [{run, weight, folds: {k: folder}}], "combine", "source", "localiser": (run, {k: folder}) or None}.

    ``cfg`` is infer.py's resolved settings (src/inference/settings.py ``load_infer_config``). Raises
    RunNotFoundError (listing what exists) for a run or fold that is not there.
    """
    runs_dir = _abs(cfg["runs_dir"])
    choice = resolve_ensemble(cfg, announce)
    members = [{"run": s.run, "weight": s.weight, "folds": select_folds(runs_dir, s.run, s.folds)}
               for s in choice.members if s.weight > 0]
    localiser = None
    if any(needs_localiser(folder) for m in members for folder in m["folds"].values()):
        localiser = (cfg["localiser"], select_folds(runs_dir, cfg["localiser"], "all"))
    return {"members": members, "combine": choice.combine, "source": choice.source, "localiser": localiser}


def write_weights(choice: dict, runs_dir: Path, out: Path) -> dict:
    """Copy the chosen folds (and ensemble.json if the weights came from it) into ``out/runs``; the manifest."""
    files: dict[str, dict] = {}
    runs: dict[str, dict] = {}

    def copy_fold(run: str, fold: int, folder: Path, role: str) -> None:
        target = out / "runs" / run / f"fold{fold}"
        target.mkdir(parents=True, exist_ok=True)
        cv = fold_cv(folder)
        for name in FOLD_FILES:
            shutil.copy2(folder / name, target / name)
            relative = str((target / name).relative_to(out))
            files[relative] = {"sha256": sha256(target / name), "bytes": (target / name).stat().st_size,
                               "run": run, "fold": fold, "role": role, "cv": cv}
        runs.setdefault(run, {"role": role, "folds": {}})["folds"][str(fold)] = cv

    for member in choice["members"]:
        for fold, folder in member["folds"].items():
            copy_fold(member["run"], fold, folder, "member")
        runs[member["run"]]["weight"] = member["weight"]
    if choice["localiser"] is not None:
        run, folds = choice["localiser"]
        for fold, folder in folds.items():
            copy_fold(run, fold, folder, "localiser")
    ensemble = ensemble_path(runs_dir)
    ensemble_cv = None
    if ensemble.is_file() and str(ensemble) in choice["source"]:
        shutil.copy2(ensemble, out / "runs" / ENSEMBLE_FILE)
        relative = f"runs/{ENSEMBLE_FILE}"
        data = json.loads(ensemble.read_text())
        ensemble_cv = (data.get("nested_cv") or {}).get("score")
        files[relative] = {"sha256": sha256(out / relative), "bytes": (out / relative).stat().st_size,
                           "role": "ensemble", "cv": {"nested_cv": ensemble_cv}}
    return {"runs": runs, "combine": choice["combine"], "weights_from": choice["source"],
            "ensemble_nested_cv": ensemble_cv, "files": files}


def infer_arguments(choice: dict) -> list[str]:
    """The infer.py settings that make it load exactly the shipped folds (paths are added by the notebook)."""
    members = ", ".join(f"{{run: {m['run']}, weight: {m['weight']:g}, folds: [{', '.join(map(str, m['folds']))}]}}"
                        for m in choice["members"])
    args = [f"members=[{members}]"]
    if choice["localiser"] is not None:
        args.append(f"localiser={choice['localiser'][0]}")
    return args


def verify(folder: Path) -> list[str]:
    """Files of ``folder/manifest.json`` that are missing or whose sha256 differs, each with why."""
    manifest = json.loads((folder / MANIFEST).read_text())
    problems = []
    for relative, entry in manifest["files"].items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems
