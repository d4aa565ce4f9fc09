"""Finding trained runs: ``<runs_dir>/<experiment>/fold<k>/`` folders and the files inside them.

Called by inference (which needs each fold's ``best.pt`` and ``config.yaml``) and by the ensemble fit
(which needs each fold's ``oof.csv``). A run name that does not exist is an error that lists the
runs that do, because the usual cause is a typo or a run trained under another name.
"""
from __future__ import annotations

import re
from pathlib import Path

_FOLD_DIR = re.compile(r"^fold(\d+)$")


class RunNotFoundError(FileNotFoundError):
    """A named run, or a fold of it, is not in the runs folder; the message lists what is."""


def run_folds(runs_dir: Path, run: str, needs: str = "best.pt") -> dict[int, Path]:
    """``{fold: folder}`` for every ``fold<k>`` of ``run`` holding the file ``needs``."""
    root = Path(runs_dir) / run
    if not root.is_dir():
        return {}
    found = {}
    for path in root.iterdir():
        match = _FOLD_DIR.match(path.name)
        if match and (path / needs).is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def available_runs(runs_dir: Path, needs: str = "best.pt") -> dict[str, list[int]]:
    """Every run in ``runs_dir`` with at least one fold holding ``needs``, with those folds."""
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
        return f"no run in {runs_dir} has a fold with {needs}; train one first (bash train.sh config=<name> fold=0)"
    listed = ", ".join(f"{name} (folds {', '.join(map(str, folds))})" for name, folds in runs.items())
    return f"runs in {runs_dir} with {needs}: {listed}"


def select_folds(runs_dir: Path, run: str, folds="all", needs: str = "best.pt") -> dict[int, Path]:
    """The fold folders of ``run`` to use: ``all`` (every fold with ``needs``) or an explicit list.

    Raises :class:`RunNotFoundError` naming the available runs when ``run`` has no usable fold, or
    naming the run's folds when an explicitly requested fold lacks ``needs``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(run)) or str(run) in {".", ".."}:
        raise RunNotFoundError(f"run name {run!r} is not a folder name (letters, digits, _ . -)")
    found = run_folds(runs_dir, run, needs)
    if not found:
        raise RunNotFoundError(f"run '{run}' has no fold with {needs} in {runs_dir}; {describe_available(runs_dir, needs)}")
    if folds in ("all", None):
        return found
    wanted = [folds] if isinstance(folds, int) else list(folds)
    missing = [f for f in wanted if f not in found]
    if missing:
        raise RunNotFoundError(f"run '{run}': fold(s) {missing} have no {needs} in {Path(runs_dir) / run} "
                               f"(folds with it: {', '.join(map(str, found))})")
    return {f: found[f] for f in wanted}
