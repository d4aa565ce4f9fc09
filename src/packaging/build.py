"""``python -m src.kaggle build``: write dist/kaggle/ from the trained runs.

Called by src/kaggle.py. Three folders, each what one ``kaggle`` CLI command uploads:

- ``code/``: ``src/``, ``configs/``, ``infer.py`` of this checkout, ``wheels/`` (src/packaging/wheels.py)
  and ``dataset-metadata.json``;
- ``weights/``: the chosen runs (src/packaging/weights.py), ``manifest.json``, ``dataset-metadata.json``;
- ``notebook/``: ``submission.ipynb`` and ``kernel-metadata.json`` (src/packaging/notebook.py).

A previous build in the same folder is replaced whole, so nothing stale is uploaded.
"""
from __future__ import annotations

import json
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..inference.settings import load_infer_config
from ..io_utils import atomic_write_text
from ..paths import _abs
from . import notebook as nb
from .environment import INFERENCE_NEEDS, KAGGLE_IMAGE, shipped_pins
from .weights import MANIFEST, choose, infer_arguments, write_weights
from .wheels import Downloader, pip_download, write_wheels

ROOT = Path(__file__).resolve().parents[2]   # the checkout whose code is shipped
CODE_ITEMS = ("src", "configs", "infer.py")
PLACEHOLDER_OWNER = "your-kaggle-username"
PATH_KEYS = {"data_dir", "runs_dir", "output", "progress", "members", "localiser"}  # set by the notebook itself


@dataclass
class Package:
    """Where a build put things, and the ids it gave them (what check and push read back)."""

    root: Path

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def notebook(self) -> Path:
        return self.root / "notebook"

    def metadata(self, folder: Path) -> dict:
        name = nb.KERNEL_METADATA if folder == self.notebook else nb.DATASET_METADATA
        return json.loads((folder / name).read_text())

    @property
    def manifest(self) -> dict:
        return json.loads((self.weights / MANIFEST).read_text())


def slugs(name: str) -> dict[str, str]:
    return {"code": f"{name}-code", "weights": f"{name}-weights", "kernel": f"{name}-submission"}


def build(settings: dict, download: Downloader = pip_download, announce=print) -> Package:
    """Write the package under ``settings["out"]``; ``settings`` are src/kaggle.py's (owner, name, python_version,
    platform, competition, and ``infer`` = infer.py overrides choosing runs_dir, members, localiser)."""
    started = time.perf_counter()
    package = Package(_abs(settings["out"]))
    cfg = load_infer_config(list(settings["infer"]))
    choice = choose(cfg, announce)
    if package.root.exists():
        writable(package.root)  # check leaves read-only copies of the datasets in check/input
        shutil.rmtree(package.root)
    owner, ids = settings["owner"], slugs(settings["name"])

    # the code dataset
    for item in CODE_ITEMS:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, package.code / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            package.code.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, package.code / item)
    pins = shipped_pins(settings["python_version"])
    wheels = write_wheels(pins, package.code / "wheels", settings["python_version"], settings["platform"], download)
    write_json(package.code / nb.DATASET_METADATA,
               nb.dataset_metadata(owner, ids["code"], f"{settings['name']} code and wheels"))

    # the weights dataset
    runs_dir = _abs(cfg["runs_dir"])
    manifest = write_weights(choice, runs_dir, package.weights)
    args = infer_arguments(choice) + [a for a in settings["infer"] if a.split("=", 1)[0] not in PATH_KEYS]
    manifest.update({"built": time.strftime("%Y-%m-%d %H:%M:%S"), "runs_dir": str(runs_dir), "infer_args": args,
                     "python_version": settings["python_version"], "platform": settings["platform"],
                     "image_assumed": list(KAGGLE_IMAGE), "wheels": [p.requirement for p in pins]})
    write_json(package.weights / MANIFEST, manifest)
    write_json(package.weights / nb.DATASET_METADATA,
               nb.dataset_metadata(owner, ids["weights"], f"{settings['name']} weights"))

    # the notebook
    modules = list(INFERENCE_NEEDS.values())
    write_json(package.notebook / nb.NOTEBOOK_FILE,
               nb.notebook(settings["competition"], ids["code"], ids["weights"], modules, args))
    write_json(package.notebook / nb.KERNEL_METADATA,
               nb.kernel_metadata(owner, ids["kernel"], ids["kernel"], [f"{owner}/{ids['code']}",
                                                                       f"{owner}/{ids['weights']}"],
                                  settings["competition"]))
    runs_text = ", ".join(f"{run} folds {list(entry['folds'])}" for run, entry in manifest["runs"].items())
    size = sum(f.stat().st_size for f in package.root.rglob("*") if f.is_file()) / 1e6
    announce(f"[build] {package.root}: code ({len(wheels)} wheels for Python {settings['python_version']}, "
             f"{settings['platform']}), weights ({len(manifest['files'])} files: "
             f"{runs_text}), notebook; "
             f"{size:.0f} MB in {time.perf_counter() - started:.0f} s")
    if owner == PLACEHOLDER_OWNER:
        announce(f"[build] owner={owner} is a placeholder: rebuild with owner=<your Kaggle user name> before push")
    return package


def writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, nb.dumps(data))

