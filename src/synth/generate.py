"""Write a whole synthetic dataset in the Kaggle RSNA 2022 layout (docs/data.md#layout).

Called by ``python -m src.synthesise`` and by src/data/demo.py when no real data is configured.
Output under ``out``::

    train.csv  train_bounding_boxes.csv  test.csv  sample_submission.csv
    train_images/<UID>/<n>.dcm  test_images/<UID>/<n>.dcm  segmentations/<UID>.nii
    test_labels.csv       wide-format truth for the studies test.csv names that test_images holds (scoring)
    synth_fractures.csv   one row per cleft (a broken C1 has two): study, vertebra, component, slices crossed
    synth_summary.json    what was generated, label rates, timing

Dataset-level choices (UIDs, labels, which studies get masks or boxes, each study's seed) come
from one random stream in this process; each study is then built from its own seed, so the files
are identical whatever the number of worker processes. ``train.csv`` is written last: its presence
is what marks a finished dataset for src.paths.
"""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import TARGETS
from ..io_utils import atomic_write_csv, atomic_write_json
from .dicom_writer import write_series
from .fractures import draw_fractured_vertebrae, target_row
from .nifti import write_segmentation
from .study import SIZES, make_study

UID_ROOT = "1.2.826.0.1.3680043."  # the Kaggle studies' root
BOX_FRACTION = 0.3  # of fractured train studies get train_bounding_boxes.csv rows (real: 235 of ~960)
OUTPUTS = ["train.csv", "train_bounding_boxes.csv", "test.csv", "sample_submission.csv", "test_labels.csv",
           "synth_fractures.csv", "synth_summary.json", "train_images", "test_images", "segmentations"]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; choose another out=")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=true to replace the dataset in it, "
                                  f"or choose another out=")
        # only what a previous run wrote goes, train.csv first so the folder never looks finished
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _study_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, 1 if split == "test_images" else 0, index]).generate_state(1)[0])


def _build_and_write(task: dict) -> dict:
    """Worker: one study to disk; returns what the CSVs need."""
    study = make_study(task["uid"], task["seed"], size=task["size"], fractured=task["fractured"])
    out = Path(task["out"])
    write_series(out / task["split"] / study.study_uid, study.hu, study_uid=study.study_uid,
                 slice_numbers=study.slice_numbers, z_positions=study.z_positions, pixel_spacing=study.pixel_spacing,
                 slice_thickness=study.slice_thickness, origin_xy=study.origin_xy,
                 transfer_syntaxes=study.transfer_syntax, intercept=study.intercept, slope=study.slope)
    if task["segmentation"]:
        write_segmentation(out / "segmentations" / f"{study.study_uid}.nii", study.labels, study.z_positions,
                           study.pixel_spacing, study.origin_xy)
    fractures = []
    for i, f in enumerate(study.fractures):
        crossed = np.nonzero((study.cleft == i + 1).any(axis=(1, 2)))[0]
        numbers = study.slice_numbers[crossed]
        fractures.append({"StudyInstanceUID": study.study_uid, "split": task["split"], "vertebra": f.vertebra,
                          "component": f.component, "n_slices": int(len(crossed)),
                          "slice_min": int(numbers.min()) if len(numbers) else -1,
                          "slice_max": int(numbers.max()) if len(numbers) else -1,
                          "contrast": round(f.contrast, 3)})
    return {"uid": study.study_uid, "n_slices": int(study.hu.shape[0]), "syntax": study.transfer_syntax,
            "reversed": study.reversed, "boxes": study.bounding_boxes() if task["boxes"] else [],
            "fractures": fractures}


def plan_dataset(n_train: int, n_test: int, size: str, seed: int, seg_fraction: float,
                 plant_test_trap: bool, box_fraction: float = BOX_FRACTION) -> tuple[list[dict], dict]:
    """Every study's task (split, UID, seed, labels, mask?, boxes?) and the trap, without building anything."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"need at least one study (n_train={n_train}, n_test={n_test})")
    if not 0.0 <= seg_fraction <= 1.0:
        raise ValueError(f"seg_fraction must be in [0, 1], got {seg_fraction}")
    if not 0.0 <= box_fraction <= 1.0:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
    if plant_test_trap and n_test < 2:
        raise ValueError("the test trap needs n_test >= 2 (one study listed, one left out of test.csv)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2022]))
    numbers = rng.choice(np.arange(10000, 10000 + max(30000, 3 * (n_train + n_test + 1))),
                         size=n_train + n_test + 1, replace=False)
    uids = [UID_ROOT + str(n) for n in numbers]
    labels = [draw_fractured_vertebrae(rng) for _ in range(n_train + n_test)]
    with_mask = set(rng.choice(n_train, size=int(round(seg_fraction * n_train)), replace=False).tolist()) if n_train else set()
    fractured_train = [i for i in range(n_train) if labels[i]]
    n_boxes = int(round(box_fraction * len(fractured_train)))
    if fractured_train and n_boxes == 0 and box_fraction > 0:
        n_boxes = 1
    with_boxes = set(rng.choice(fractured_train, size=n_boxes, replace=False).tolist()) if fractured_train else set()
    tasks = []
    for i in range(n_train + n_test):
        split = "train_images" if i < n_train else "test_images"
        index = i if i < n_train else i - n_train
        tasks.append({"split": split, "uid": uids[i], "seed": _study_seed(seed, split, index), "size": size,
                      "fractured": labels[i], "segmentation": i in with_mask, "boxes": i in with_boxes})
    trap = {}
    if plant_test_trap:
        trap = {"listed_without_images": uids[-1], "in_images_not_listed": tasks[-1]["uid"]}
    return tasks, trap


def generate_dataset(out: Path, n_train: int, n_test: int, size: str = "demo", seed: int = 0,
                     seg_fraction: float = 0.35, overwrite: bool = False, plant_test_trap: bool = False,
                     progress: bool = True, workers: int = 2, box_fraction: float = BOX_FRACTION) -> dict:
    """Write the dataset to ``out`` and return a summary (also saved as ``synth_summary.json``).

    ``box_fraction`` is the share of fractured training studies given train_bounding_boxes.csv rows.

    ``plant_test_trap`` mirrors the real public test set: test.csv names one study that
    test_images lacks, and test_images holds one study test.csv does not name.
    """
    started = time.perf_counter()
    out = Path(out)
    tasks, trap = plan_dataset(n_train, n_test, size, seed, seg_fraction, plant_test_trap, box_fraction)
    _prepare_out(out, overwrite)
    for task in tasks:
        task["out"] = str(out)
    records: dict[str, dict] = {}
    bar = tqdm(total=len(tasks), desc=f"synth {size} -> {out}", unit="study", disable=not progress)
    workers = max(1, min(int(workers), len(tasks)))
    if workers == 1:
        for task in tasks:
            records[task["uid"]] = _build_and_write(task)
            bar.update()
    else:
        # spawn, not fork: the caller may be a training process with threads (torch) running
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for record in pool.map(_build_and_write, tasks, chunksize=1):
                records[record["uid"]] = record
                bar.update()
    bar.close()

    train = [t for t in tasks if t["split"] == "train_images"]
    test = [t for t in tasks if t["split"] == "test_images"]
    train_frame = pd.DataFrame([{"StudyInstanceUID": t["uid"], **target_row(t["fractured"])} for t in train],
                               columns=["StudyInstanceUID", *TARGETS])
    boxes = pd.DataFrame([b for t in train for b in records[t["uid"]]["boxes"]],
                         columns=["StudyInstanceUID", "x", "y", "width", "height", "slice_number"])
    listed = [t["uid"] for t in test if t["uid"] != trap.get("in_images_not_listed")]
    if trap:
        listed.append(trap["listed_without_images"])
    test_rows = [{"row_id": f"{uid}_{target}", "StudyInstanceUID": uid, "prediction_type": target}
                 for uid in listed for target in TARGETS]
    test_frame = pd.DataFrame(test_rows, columns=["row_id", "StudyInstanceUID", "prediction_type"])
    fractures = pd.DataFrame([f for t in tasks for f in records[t["uid"]]["fractures"]],
                             columns=["StudyInstanceUID", "split", "vertebra", "component", "n_slices", "slice_min",
                                      "slice_max", "contrast"])
    atomic_write_csv(out / "train_bounding_boxes.csv", boxes)
    atomic_write_csv(out / "test.csv", test_frame)
    atomic_write_csv(out / "sample_submission.csv", pd.DataFrame({"row_id": test_frame["row_id"], "fractured": 0.5}))
    # Truth for the studies a submission must predict and can be scored on: named by test.csv and
    # present in test_images (the trap's unlisted study is never predicted, so it has no row here).
    atomic_write_csv(out / "test_labels.csv",
                     pd.DataFrame([{"StudyInstanceUID": t["uid"], **target_row(t["fractured"])} for t in test
                                   if t["uid"] in set(listed)],
                                  columns=["StudyInstanceUID", *TARGETS]))
    atomic_write_csv(out / "synth_fractures.csv", fractures)

    syntaxes: dict[str, int] = {}
    for record in records.values():
        syntaxes[record["syntax"]] = syntaxes.get(record["syntax"], 0) + 1
    summary = {
        "out": str(out), "size": size, "seed": seed, "n_train": n_train, "n_test": n_test,
        "n_slices": int(sum(r["n_slices"] for r in records.values())),
        "train_rates": {c: round(float(train_frame[c].mean()), 4) for c in TARGETS} if n_train else {},
        "n_segmentations": sum(t["segmentation"] for t in train),
        "n_box_studies": sum(t["boxes"] for t in train), "n_boxes": int(len(boxes)),
        "n_reversed": sum(r["reversed"] for r in records.values()),
        "transfer_syntaxes": dict(sorted(syntaxes.items())),
        "trap": trap or None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out / "synth_summary.json", summary)
    atomic_write_csv(out / "train.csv", train_frame)  # last: marks the dataset finished
    return summary
