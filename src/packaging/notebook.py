"""The submission notebook and the metadata files the ``kaggle`` CLI reads.

Called by the build. The notebook has two code cells, plain Python so they run in any kernel:

1. install every shipped wheel from the code dataset with ``pip install --no-index --no-deps`` (no
   internet on Kaggle's scoring run), after checking each pinned wheel is there, then import every
   module the inference path needs in a fresh interpreter; either failure stops the notebook with
   one line naming the missing module;
2. run the code dataset's ``infer.py`` on the competition's data with ``runs_dir`` in the weights
   dataset, writing ``/kaggle/working/submission.csv``.

Datasets are found under ``/kaggle/input`` by their slug (one or two folders down too, since Kaggle
has mounted them both ways); ``KAGGLE_INPUT_DIR`` and ``KAGGLE_WORKING_DIR`` replace the two roots,
which is how ``python -m src.kaggle check`` runs this same notebook on a stand-in.

Metadata fields are the ones the CLI reads: a dataset's ``id``, ``title``, ``licenses``; a kernel's
``id``, ``title``, ``code_file``, ``language``, ``kernel_type``, ``is_private``, ``enable_gpu``,
``enable_internet``, ``dataset_sources``, ``competition_sources``, ``kernel_sources``, ``model_sources``.
"""
from __future__ import annotations

import json

NOTEBOOK_FILE = "submission.ipynb"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"

INSTALL_CELL = '''\
# Cell 1 (written by python -m src.kaggle build): install what Kaggle's image lacks from the code
# dataset's wheels, offline, then check that every module the inference path imports is there.
import os, pathlib, re, subprocess, sys

INPUT = pathlib.Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
WORKING = pathlib.Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
COMPETITION = {competition!r}
CODE_SLUG, WEIGHTS_SLUG = {code_slug!r}, {weights_slug!r}


def attached(slug, marker):
    """The folder of an attached dataset or competition, however Kaggle mounted it."""
    for pattern in (slug, f"*/{{slug}}", f"*/*/{{slug}}"):
        for folder in sorted(INPUT.glob(pattern)):
            if (folder / marker).exists():
                return folder
    raise SystemExit(f"{{slug}} is not attached: no {{slug}}/{{marker}} under {{INPUT}}; add it to the notebook's inputs")


CODE = attached(CODE_SLUG, "infer.py")
WEIGHTS = attached(WEIGHTS_SLUG, "manifest.json")
DATA = attached(COMPETITION, "test.csv")
WHEELS = CODE / "wheels"
pins = []  # (requirement, module)
for line in (WHEELS / "requirements.txt").read_text().splitlines():
    requirement, _, comment = line.partition("#")
    if requirement.strip():
        pins.append((requirement.strip(), comment.split("module:")[-1].strip() if "module:" in comment else "-"))
name = lambda text: re.sub(r"[-_.]+", "-", text).lower()
have = {{(name(w.name.split("-")[0]), w.name.split("-")[1]) for w in WHEELS.glob("*.whl")}}
lacking = [f"{{r}} (module {{m}})" for r, m in pins if (name(r.split("==")[0]), r.split("==")[1]) not in have]
if lacking:
    raise SystemExit(f"missing wheel(s) in {{WHEELS}}: {{', '.join(lacking)}}; rebuild with python -m src.kaggle build")
if pins:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
                             str(WHEELS), "--no-warn-script-location", *[r for r, _ in pins]],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"pip install from {{WHEELS}} failed: {{(result.stderr or result.stdout).strip()[-2000:]}}")
MODULES = {modules!r}
probe = ("import importlib, sys\\n"
         "bad = []\\n"
         "for m in sys.argv[1:]:\\n"
         "    try: importlib.import_module(m)\\n"
         "    except Exception as err: bad.append(f'{{m}} ({{type(err).__name__}}: {{err}})')\\n"
         "print('; '.join(bad)); sys.exit(1 if bad else 0)")
result = subprocess.run([sys.executable, "-c", probe, *MODULES], capture_output=True, text=True)
if result.returncode:
    raise SystemExit(f"missing module(s) after installing {{WHEELS}}: {{result.stdout.strip() or result.stderr.strip()}}")
print(f"[install] {{len(pins)}} wheel(s) from {{WHEELS}}; {{len(MODULES)}} module(s) import")
'''

INFER_CELL = '''\
# Cell 2: predict every study of the competition's test.csv with the shipped runs.
import time

SHIPPED = {infer_args!r}  # the members, folds and localiser in the weights dataset (its manifest.json)
started = time.perf_counter()
process = subprocess.Popen([sys.executable, str(CODE / "infer.py"), f"data_dir={{DATA}}", f"runs_dir={{WEIGHTS / 'runs'}}",
                            f"output={{WORKING / 'submission.csv'}}", "progress=false", *SHIPPED],
                           cwd=WORKING, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in process.stdout:
    print(line, end="")
if process.wait():
    raise SystemExit(f"infer.py failed (exit {{process.returncode}}); its output is above")
print(f"[notebook] infer.py took {{time.perf_counter() - started:.1f}} s")
'''


def notebook(competition: str, code_slug: str, weights_slug: str, modules: list[str], infer_args: list[str]) -> dict:
    """The notebook as nbformat 4 JSON."""
    def cell(source: str, name: str) -> dict:
        return {"cell_type": "code", "id": name, "execution_count": None, "metadata": {}, "outputs": [],
                "source": source.splitlines(keepends=True)}

    return {
        "cells": [cell(INSTALL_CELL.format(competition=competition, code_slug=code_slug, weights_slug=weights_slug,
                                           modules=list(modules)), "install"),
                  cell(INFER_CELL.format(infer_args=list(infer_args)), "infer")],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def dataset_metadata(owner: str, slug: str, title: str) -> dict:
    return {"id": f"{owner}/{slug}", "title": title, "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(owner: str, slug: str, title: str, dataset_ids: list[str], competition: str) -> dict:
    return {"id": f"{owner}/{slug}", "title": title, "code_file": NOTEBOOK_FILE, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": list(dataset_ids), "competition_sources": [competition],
            "kernel_sources": [], "model_sources": []}


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1) + "\n"
