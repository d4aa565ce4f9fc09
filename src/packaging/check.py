"""``python -m src.kaggle check``: prove a built package offline before anything is uploaded.

Called by src/kaggle.py. In ``<out>/check/``:

1. the package itself: every file of the weights manifest with its sha256, a wheel for every pin of
   ``wheels/requirements.txt`` (a missing one fails here, naming its module), the metadata fields the
   CLI reads, the notebook's format;
2. a clean virtual environment holding only what Kaggle's image is assumed to hold
   (src/packaging/environment.py ``KAGGLE_IMAGE`` and their requirements), linked from this
   environment's installed files (torch and its CUDA libraries are gigabytes, and the same files make
   the two submissions comparable); no pip configuration, index or find-links reaches it, so the
   notebook's ``pip install --no-index`` can only use the shipped wheels;
3. the datasets copied, read-only, under a stand-in for ``/kaggle/input`` with the test data (the demo
   test set by default) as the competition's folder, and the unchanged notebook executed there with
   nbclient on a kernel of that environment;
4. its submission compared row by row with ``python infer.py``'s on the same data from the original
   runs (they must be identical), and the time per study measured and projected to the hidden test
   set: on this machine's device, or on the target when ``speed_factor`` (its measured speed over
   this machine's) is given. A projection over Kaggle's limit fails the check.

Every failure is a CheckFailed with one message; the executed notebook and check.json stay in
``<out>/check/`` for a look.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

from ..config import load_experiment_file
from ..paths import _abs
from . import notebook as nb
from .build import ROOT, Package, writable
from .environment import image_distributions
from .weights import verify
from .wheels import missing_wheels

KERNEL_NAME = "kaggle-image"
DATASET_FIELDS = ("id", "title", "licenses")
KERNEL_FIELDS = ("id", "title", "code_file", "language", "kernel_type", "enable_gpu", "enable_internet",
                 "dataset_sources", "competition_sources")


class CheckFailed(RuntimeError):
    """The package would not work, or not in time, on Kaggle; the message says why in one line."""


def metadata_problems(package: Package) -> list[str]:
    """Fields the kaggle CLI needs that a metadata file lacks or gets wrong (an empty list when all is well)."""
    problems = []
    for folder in (package.code, package.weights):
        data = package.metadata(folder)
        problems += [f"{folder / nb.DATASET_METADATA}: no {k}" for k in DATASET_FIELDS if not data.get(k)]
        if not re.fullmatch(r"[^/\s]+/[a-z0-9][a-z0-9-]{2,49}", str(data.get("id", ""))):
            problems.append(f"{folder / nb.DATASET_METADATA}: id {data.get('id')!r} is not owner/slug")
    kernel = package.metadata(package.notebook)
    where = package.notebook / nb.KERNEL_METADATA
    problems += [f"{where}: no {k}" for k in KERNEL_FIELDS if k not in kernel]
    if not (package.notebook / kernel.get("code_file", "")).is_file():
        problems.append(f"{where}: code_file {kernel.get('code_file')!r} is not beside it")
    if kernel.get("enable_gpu") is not True or kernel.get("enable_internet") is not False:
        problems.append(f"{where}: a scoring run needs enable_gpu true and enable_internet false")
    datasets = {package.metadata(f)["id"] for f in (package.code, package.weights)}
    if set(kernel.get("dataset_sources", [])) != datasets:
        problems.append(f"{where}: dataset_sources {kernel.get('dataset_sources')} are not the two datasets {sorted(datasets)}")
    if kernel.get("id", "").split("/")[-1] != str(kernel.get("title", "")).lower().replace(" ", "-"):
        problems.append(f"{where}: Kaggle derives the slug from the title; id and title disagree")
    return problems


def check_package(package: Package) -> None:
    """The static part: files, checksums, wheels, metadata, notebook format. Raises CheckFailed."""
    for folder in (package.code, package.weights, package.notebook):
        if not folder.is_dir():
            raise CheckFailed(f"{folder} does not exist: run python -m src.kaggle build first")
    missing = missing_wheels(package.code / "wheels")
    if missing:
        raise CheckFailed(f"missing wheel(s) in {package.code / 'wheels'}: {', '.join(missing)}; rebuild with "
                          f"python -m src.kaggle build")
    bad = verify(package.weights)
    if bad:
        raise CheckFailed(f"weights dataset does not match its manifest: {'; '.join(bad)}; rebuild")
    problems = metadata_problems(package)
    if problems:
        raise CheckFailed("; ".join(problems))
    import nbformat

    try:
        nbformat.validate(nbformat.read(package.notebook / nb.NOTEBOOK_FILE, as_version=4))
    except Exception as err:  # nbformat's ValidationError or a JSON error
        raise CheckFailed(f"{package.notebook / nb.NOTEBOOK_FILE}: not a valid notebook ({err})") from None


def make_image_env(folder: Path, python_version: str) -> Path:
    """A fresh venv with only the image's distributions, linked from this environment; its python."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != python_version:
        raise CheckFailed(f"the wheels are for Python {python_version} but this is Python {here}: check runs "
                          f"them here, so build with python_version={here} to check, or check on a {python_version}")
    if folder.exists():
        shutil.rmtree(folder)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in image_distributions(python_version).values():
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if Path(f).parts and Path(f).parts[0] != ".."}
        for top in sorted(tops - {"__pycache__"}):
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return python


def kernel_env(python: Path, input_dir: Path, working: Path) -> dict:
    """The kernel's environment: ours without pip configuration, Python paths or the project's venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CONDA", "JUPYTER"))}
    env.update({"PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}", "PIP_CONFIG_FILE": os.devnull,
                "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "KAGGLE_INPUT_DIR": str(input_dir),
                "KAGGLE_WORKING_DIR": str(working)})
    return env


def lay_out_input(package: Package, test_data: Path, input_dir: Path, competition: str) -> None:
    """The datasets as Kaggle mounts them: read-only copies, and the test data as the competition's folder."""
    if input_dir.exists():
        writable(input_dir)
        shutil.rmtree(input_dir)
    input_dir.mkdir(parents=True)
    ids = {folder: package.metadata(folder)["id"].split("/")[-1] for folder in (package.code, package.weights)}
    for folder, slug in ids.items():
        shutil.copytree(folder, input_dir / slug)
    (input_dir / competition).symlink_to(test_data, target_is_directory=True)
    for path in [p for slug in ids.values() for p in (input_dir / slug).rglob("*")] + [input_dir / s for s in ids.values()]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def execute_notebook(path: Path, python: Path, env: dict, workdir: Path, timeout: int) -> dict:
    """Run the notebook on a kernel of ``python``; the executed notebook. Raises CheckFailed naming the cell."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    spec_dir = workdir / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Kaggle image stand-in", "language": "python"}))
    notebook = nbformat.read(path, as_version=4)
    manager = AsyncKernelManager(kernel_name=KERNEL_NAME,  # our kernel spec only, whatever Jupyter has elsewhere
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))
    client = NotebookClient(notebook, km=manager, timeout=timeout, record_timing=True,
                            resources={"metadata": {"path": str(env["KAGGLE_WORKING_DIR"])}})
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        index = next((i + 1 for i, c in enumerate(notebook.cells) if any(o.get("output_type") == "error"
                                                                         for o in c.get("outputs", []))), "?")
        raise CheckFailed(f"notebook cell {index} failed: {err.ename}: {err.evalue}") from None
    finally:
        nbformat.write(notebook, workdir / "executed.ipynb")
    return notebook


def cell_seconds(cell) -> float:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return float("nan")
    return (end - start).total_seconds()


def cell_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def run_reference(test_data: Path, runs_dir: Path, infer_args: list[str], output: Path) -> float:
    """``python infer.py`` on the same data and runs, in this environment; its wall time."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), f"data_dir={test_data}", f"runs_dir={runs_dir}",
                             f"output={output}", "progress=false", *infer_args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise CheckFailed(f"the reference python infer.py failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def compare(notebook_csv: Path, reference_csv: Path) -> str | None:
    """None when the two submissions are identical row by row, else what differs."""
    if not notebook_csv.is_file():
        return f"the notebook wrote no {notebook_csv}"
    ours, theirs = notebook_csv.read_text().splitlines(), reference_csv.read_text().splitlines()
    if len(ours) != len(theirs):
        return f"{len(ours) - 1} rows in the notebook's submission, {len(theirs) - 1} in infer.py's"
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    if differ:
        return (f"{len(differ)} of {len(ours) - 1} rows differ, the first: notebook {ours[differ[0]]!r}, "
                f"infer.py {theirs[differ[0]]!r}")
    return None


def projection(infer_output: str, cell_seconds_: tuple[float, float], studies: int, speed_factor: float) -> dict:
    """Per-study time from infer.py's own lines and the projected hours for ``studies`` studies."""
    done = re.search(r"\[done\].* for (\d+) studies in ([\d.]+) s, ([\d.]+) s of it before the first study", infer_output)
    if not done:
        raise CheckFailed("infer.py's [done] line is not in the notebook's output; cannot time it")
    n_rows_studies, seconds, load = int(done.group(1)), float(done.group(2)), float(done.group(3))
    predicted = re.search(r"(\d+) predicted by the models", infer_output)
    n = int(predicted.group(1)) if predicted else n_rows_studies
    if n == 0:
        raise CheckFailed("no study was predicted by the models, so there is nothing to time")
    device = re.search(r"device (\S+);", infer_output)
    install, infer_cell = cell_seconds_
    per_study = (seconds - load) / n
    startup = max(infer_cell - seconds, 0.0)  # the interpreter and imports, before infer.py's own clock
    fixed = install + startup + load
    factor = speed_factor or 1.0
    total = fixed + per_study / factor * studies
    return {"device": device.group(1) if device else "unknown", "studies_timed": n, "seconds_per_study": per_study,
            "install_seconds": install, "startup_seconds": startup, "load_seconds": load, "speed_factor": speed_factor,
            "studies": studies, "projected_hours": total / 3600}


def over_limit(timing: dict, hours: float, where: str) -> str | None:
    """Why the package would not finish within ``hours`` on the hidden test set, or None when it would."""
    if timing["projected_hours"] <= hours:
        return None
    return (f"projected {timing['projected_hours']:.1f} h for {timing['studies']} studies on {where}, over the "
            f"{hours:g} h limit: fewer folds or members, or measure the target's speed_factor")


def check(settings: dict, announce=print) -> dict:
    """Run every step; returns what it measured (also written to ``<out>/check/check.json``)."""
    started = time.perf_counter()
    package = Package(_abs(settings["out"]))
    check_package(package)
    announce(f"[check] {package.root}: manifest checksums, wheels, metadata and notebook format are sound")
    test_data = _abs(settings["test_data"]) if settings["test_data"] else _abs(load_experiment_file("default")["demo"]["dir"])
    if not (test_data / "test.csv").is_file():
        raise CheckFailed(f"test_data={test_data} has no test.csv: point it at a folder in the competition's layout "
                          f"(the demo's: python -m src.synthesise out=data/demo)")
    work = package.root / "check"
    work.mkdir(exist_ok=True)
    python = make_image_env(work / "venv", settings["python_version"])
    announce(f"[check] clean environment {work / 'venv'}: {len(image_distributions(settings['python_version']))} "
             f"distributions of the assumed image, nothing else")
    kernel = package.metadata(package.notebook)
    competition = kernel["competition_sources"][0]
    lay_out_input(package, test_data, work / "input", competition)
    working = work / "working"
    if working.exists():
        shutil.rmtree(working)
    working.mkdir()
    env = kernel_env(python, work / "input", working)
    announce(f"[check] executing {package.notebook / nb.NOTEBOOK_FILE} on {test_data} (offline: pip sees only the wheels)")
    executed = execute_notebook(package.notebook / nb.NOTEBOOK_FILE, python, env, work, int(settings["timeout"]))
    install_cell, infer_cell = executed.cells[0], executed.cells[1]
    manifest = package.manifest
    runs_dir = Path(manifest["runs_dir"])
    if not runs_dir.is_dir():
        runs_dir = package.weights / "runs"
    reference_seconds = run_reference(test_data, runs_dir, manifest["infer_args"], work / "reference.csv")
    difference = compare(working / "submission.csv", work / "reference.csv")
    if difference:
        raise CheckFailed(f"the notebook's submission is not infer.py's: {difference} (both in {work})")
    rows = len((work / "reference.csv").read_text().splitlines()) - 1
    timing = projection(cell_text(infer_cell), (cell_seconds(install_cell), cell_seconds(infer_cell)),
                        int(settings["studies"]), float(settings["speed_factor"]))
    where = (f"the target at {timing['speed_factor']:g}x this machine's speed (speed_factor)" if timing["speed_factor"]
             else f"this machine's {timing['device']} (no speed_factor given)")
    result = {**timing, "rows": rows, "identical": True, "reference_seconds": reference_seconds,
              "notebook_seconds": {"install": cell_seconds(install_cell), "infer": cell_seconds(infer_cell)},
              "test_data": str(test_data), "projected_on": where, "limit_hours": settings["hours"],
              "check_seconds": time.perf_counter() - started}
    (work / "check.json").write_text(json.dumps(result, indent=1) + "\n")
    announce(f"[check] the notebook's submission equals python infer.py's: {rows} rows, identical")
    announce(f"[check] {timing['seconds_per_study']:.2f} s a study on {timing['device']} ({timing['studies_timed']} "
             f"studies), fixed {timing['install_seconds'] + timing['startup_seconds'] + timing['load_seconds']:.0f} s "
             f"(install {timing['install_seconds']:.0f}, start {timing['startup_seconds']:.0f}, models "
             f"{timing['load_seconds']:.0f}); projected for {timing['studies']} studies on {where}: "
             f"{timing['projected_hours']:.2f} h of Kaggle's {settings['hours']:g} h")
    problem = over_limit(timing, settings["hours"], where)
    if problem:
        raise CheckFailed(problem)
    announce(f"[check] passed in {result['check_seconds']:.0f} s; details in {work / 'check.json'}")
    return result

