"""``python -m src.kaggle push``: upload a built package with the official ``kaggle`` CLI, and submit it.

Called by src/kaggle.py. The CLI is run as a subprocess (``pip install kaggle``; nothing here imports
it), each command printed before it runs:

1. each dataset: ``kaggle datasets version -p <folder> -m MSG --dir-mode zip`` when it already exists
   (``kaggle datasets status <id>`` succeeds), else ``kaggle datasets create -p <folder> --dir-mode zip``
   (``--dir-mode zip``: the CLI otherwise skips sub-folders such as ``src/`` and ``runs/``);
2. ``kaggle kernels push -p <notebook folder>``: Kaggle then runs the notebook on the public test set;
3. run again with ``submit=true version=N`` (only this step then): ``kaggle competitions submit <competition> -k <kernel id> -v N -f
   submission.csv -m MSG``, which has Kaggle rerun that notebook version on the hidden test set (a code
   competition takes a notebook, not a file).

Without credentials it stops before running anything, with one line saying where they go.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..paths import _abs
from .build import PLACEHOLDER_OWNER, Package

NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json (kaggle.com > Settings > API > Create New Token) in "
                  "~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY")


class PushError(RuntimeError):
    """Something stops the upload before or while it runs; the message is one line."""


def credentials(env=os.environ) -> dict | None:
    """{"username": ...} when the CLI will find credentials (KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
    ``$KAGGLE_CONFIG_DIR or ~/.kaggle``/kaggle.json or access_token), else None."""
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return {"username": env["KAGGLE_USERNAME"]}
    folder = Path(env.get("KAGGLE_CONFIG_DIR") or Path(env.get("HOME", "~")) / ".kaggle").expanduser()
    try:
        data = json.loads((folder / "kaggle.json").read_text())
        if isinstance(data, dict) and data.get("username") and data.get("key"):
            return {"username": data["username"]}
    except (OSError, ValueError):
        pass
    if env.get("KAGGLE_API_TOKEN") or (folder / "access_token").is_file():
        return {"username": env.get("KAGGLE_USERNAME", "")}
    return None


def dataset_exists(dataset_id: str, run, announce=print) -> bool:
    command = ["kaggle", "datasets", "status", dataset_id]
    announce("$ " + " ".join(command) + "   # exists already? then a new version, else create")
    return run(command, check=False).returncode == 0


def commands(package: Package, settings: dict, exists: Callable[[str], bool]) -> list[list[str]]:
    """Every CLI command push runs, in order (``exists(dataset_id)`` picks version or create)."""
    message = settings["message"] or "python -m src.kaggle push"
    if settings["submit"]:
        kernel = package.metadata(package.notebook)
        return [["kaggle", "competitions", "submit", kernel["competition_sources"][0], "-k", kernel["id"],
                 "-v", str(settings["version"]), "-f", "submission.csv", "-m", message]]
    out = []
    for folder in (package.code, package.weights):
        dataset_id = package.metadata(folder)["id"]
        if exists(dataset_id):
            out.append(["kaggle", "datasets", "version", "-p", str(folder), "-m", message, "--dir-mode", "zip"])
        else:
            out.append(["kaggle", "datasets", "create", "-p", str(folder), "--dir-mode", "zip"])
    out.append(["kaggle", "kernels", "push", "-p", str(package.notebook)])
    return out


def push(settings: dict, run=subprocess.run, env=os.environ, announce=print) -> list[list[str]]:
    """Run the upload; returns the commands run. Raises PushError (no credentials, no package, a failed command)."""
    found = credentials(env)
    if found is None:
        raise PushError(NO_CREDENTIALS)
    package = Package(_abs(settings["out"]))
    if not (package.notebook / "kernel-metadata.json").is_file():
        raise PushError(f"no package in {package.root}: run python -m src.kaggle build first")
    owner = package.metadata(package.notebook)["id"].split("/")[0]
    if owner == PLACEHOLDER_OWNER or (found["username"] and owner != found["username"]):
        raise PushError(f"{package.root} was built for owner '{owner}', the credentials are "
                        f"'{found['username']}': rebuild with owner={found['username'] or '<your Kaggle user name>'}")
    if settings["submit"] and settings["version"] < 1:
        raise PushError("submit=true needs version=N, the notebook version Kaggle ran (its page lists them)")
    if run is subprocess.run and shutil.which("kaggle") is None:
        raise PushError("the kaggle command is not installed: pip install kaggle")
    done = []
    for command in commands(package, settings, lambda dataset_id: dataset_exists(dataset_id, run, announce)):
        announce("$ " + " ".join(command))
        result = run(command, check=False)
        done.append(command)
        if result.returncode != 0:
            raise PushError(f"`{' '.join(command)}` failed (exit {result.returncode})")
    if not settings["submit"]:
        kernel = package.metadata(package.notebook)["id"]
        announce(f"[push] once the notebook's run on kaggle.com/code/{kernel} has finished, submit it with "
                 f"python -m src.kaggle push submit=true version=<its version>")
    return done
