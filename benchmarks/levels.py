"""How right are the level checks, and what do repair and calibration do? Measured on the demo.

    python benchmarks/levels.py                              # fold 0 of the demo (runs/, cache/demo)
    python benchmarks/levels.py -- runs_dir=/tmp/x/runs cache_dir=/tmp/x/cache/demo ...   # config overrides

1. The truth: each demo study's true slice ranges of C1..C7. Every synthetic study is rendered again from
   its seed (src.synth.generate.plan_dataset, make_study; no DICOM is written) and its label volume gives
   the ranges in cache order; the segmented studies' cached masks must agree with it (checked).
2. The checks (src/localisation/levels.py) on every study of the localisation table: how many are flagged,
   and how many of those are real errors (some vertebra's slice-range IoU with the truth under 0.3).
3. Repair: each flagged train study localised again (its labels) and repaired where the evidence allows;
   real errors before and after; then the classifier's best.pt re-evaluated on its held-out fold with the
   repaired table (src.training.evaluate.evaluate_checkpoint), beside its score with the table as it was.
4. Calibration: src.ensembling.calibration judged by nested CV on the run's out-of-fold rows.

Prints one line per figure and writes ``--out`` (JSON) with all of them. Needs the demo data, its cache and
localisation table, a trained localiser and classifier (``bash train.sh fold=0``); about 10 minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IOU_ERROR = 0.3  # a vertebra whose predicted slice range overlaps the true one by less than this is wrong


def synth_truth(data_dir: Path, progress: bool = True) -> pd.DataFrame:
    """True inclusive slice-index ranges (cache order, head first) of C1..C7 for every demo study."""
    from tqdm import tqdm

    from src import VERTEBRAE
    from src.localisation.levels import mask_ranges
    from src.synth.generate import plan_dataset
    from src.synth.study import make_study

    summary = json.loads((data_dir / "synth_summary.json").read_text())
    n_seg = len(list((data_dir / "segmentations").glob("*.nii")))
    tasks, _ = plan_dataset(summary["n_train"], summary["n_test"], summary["size"], summary["seed"],
                            n_seg / max(summary["n_train"], 1), False)
    rows = []
    for task in tqdm(tasks, desc="truth", disable=not progress):
        study = make_study(task["uid"], task["seed"], size=task["size"], fractured=task["fractured"],
                           with_fractures=False)
        for v, r in mask_ranges(study.labels).items():
            rows.append({"StudyInstanceUID": task["uid"], "split": task["split"], "vertebra": v,
                         "lo": r[0] if r else -1, "hi": r[1] if r else -1, "n_slices": study.hu.shape[0]})
    return pd.DataFrame(rows)


def below(ranges: dict, name: str) -> tuple[int, int]:
    """The range one vertebra under ``name``'s (same height, same gap as above it): where T1 would be
    when ``name`` is C7."""
    from src import VERTEBRAE

    lo, hi = ranges[name]
    above = ranges[VERTEBRAE[VERTEBRAE.index(name) - 1]]
    step = lo - above[0]
    return lo + step, hi + step


def miscount(ranges: dict, kind: str) -> dict:
    """A localisation made wrong on purpose, the ways a localiser miscounts:
    ``merge``  C2 spans C2 and C3, then every label one vertebra low (the issue's study: its "C7" on T1);
    ``skip``   C4 skipped: C4..C6 on the true C5..C7, C7 on T1;
    ``shift``  every label one vertebra low: C1 on C2, ..., C7 on T1;
    ``swap``   C4 and C5 exchanged."""
    from src import VERTEBRAE

    r = dict(ranges)
    t1 = below(ranges, "C7")
    if kind == "merge":
        r["C2"] = (ranges["C2"][0], ranges["C3"][1])
        for a, b in zip(VERTEBRAE[2:], VERTEBRAE[3:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "skip":
        for a, b in zip(VERTEBRAE[3:], VERTEBRAE[4:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "shift":
        for a, b in zip(VERTEBRAE, VERTEBRAE[1:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "swap":
        r["C4"], r["C5"] = ranges["C5"], ranges["C4"]
    else:
        raise ValueError(kind)
    return r


MISCOUNTS = ("merge", "skip", "shift", "swap")
