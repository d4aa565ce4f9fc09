"""The localisation table: seven rows per study that say where each vertebra is in the study's own terms.

Called by src/localisation/predict.py (one study) and src/localisation/build.py (the whole dataset);
read by the per-vertebra classifier and by inference. Columns (docs/data.md#the-localisation-table):

- ``StudyInstanceUID``, ``vertebra`` (C1..C7)
- ``slice_min``, ``slice_max``: the study's own DICOM file numbers (``<n>.dcm``) of the first and last
  slice the vertebra covers, as min/max of the numbers, whatever the storage order and gaps
- ``x0, y0, x1, y1``: box in pixels of the ORIGINAL slice, x = column, y = row; x0/y0 inclusive and
  x1/y1 exclusive, so ``pixels[y0:y1, x0:x1]`` is the crop
- ``confidence``: mean softmax probability of the vertebra over its voxels (0 for estimates)
- ``estimated``: True when the model found too little and the row was inferred from neighbours
- after them, tables written since the level checks: ``level_confidence``, ``level_flag``, ``level_repaired``
  (the study's verdict, the same on its seven rows; src/localisation/levels.py)

Extents arrive on a study grid (src/localisation/extents.py): one row per original slice in volume order,
in-plane a resize of the whole original slice (the cache's and the model's both are), so slice indices
map through ``meta["slice_numbers"]`` and boxes scale by ``original_shape / grid size``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import VERTEBRAE
from .extents import Extent

LEVEL_COLUMNS = ["level_confidence", "level_flag", "level_repaired"]

# the level columns (src/localisation/levels.py) follow these in tables that have them
COLUMNS = ["StudyInstanceUID", "vertebra", "slice_min", "slice_max", "x0", "y0", "x1", "y1", "confidence", "estimated"]
CROP_COLUMNS = COLUMNS[:8]  # what a vertebra crop needs: the study, the vertebra, its slice range and box


def study_rows(uid: str, extents: dict[str, Extent], meta: dict, grid_shape) -> pd.DataFrame:
    """Seven table rows for one study from its extents on the study grid ``grid_shape`` (S, H, W)."""
    n_slices, n_rows, n_cols = (int(s) for s in grid_shape)
    slice_numbers = np.asarray(meta["slice_numbers"])
    if len(slice_numbers) != n_slices:
        raise ValueError(f"study {uid}: meta has {len(slice_numbers)} slice_numbers but the volume has {n_slices} "
                         f"slices; the cache entry is inconsistent, rebuild it with `python -m src.prepare`")
    orig_rows, orig_cols = (int(s) for s in meta.get("original_shape", (n_rows, n_cols)))
    row_scale, col_scale = orig_rows / n_rows, orig_cols / n_cols
    records = []
    for name in VERTEBRAE:
        ext = extents[name]
        numbers = slice_numbers[ext.slice_lo:ext.slice_hi + 1]
        records.append({
            "StudyInstanceUID": uid,
            "vertebra": name,
            "slice_min": int(numbers.min()),
            "slice_max": int(numbers.max()),
            # a grid pixel i covers original pixels [i * scale, (i + 1) * scale)
            "x0": int(math.floor(ext.col_lo * col_scale)),
            "y0": int(math.floor(ext.row_lo * row_scale)),
            "x1": int(min(math.ceil((ext.col_hi + 1) * col_scale), orig_cols)),
            "y1": int(min(math.ceil((ext.row_hi + 1) * row_scale), orig_rows)),
            "confidence": round(float(ext.confidence), 4),
            "estimated": bool(ext.estimated),
        })
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def read_table(path: Path, complete: bool = True) -> pd.DataFrame:
    """Read a localisation table: the one source of the check for every reader.

    ``complete`` (a table this project built, which the localisation step extends): every column, seven rows
    per study, ``estimated`` as booleans. Otherwise (what the classifier and inference crop by, which may
    also be a CSV the user names with ``localisation_table=``): the columns a crop needs, as they are;
    studies and rows it lacks take the classifier's fallback.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no localisation table at {path}; make it with `python -m src.localise` "
                                f"(train.sh builds it when it is missing) or set localisation_table=<csv>")
    table = pd.read_csv(path, dtype={"StudyInstanceUID": str})
    missing = [c for c in (COLUMNS if complete else CROP_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; rebuild it with `python -m src.localise`")
    if not complete:
        return table
    counts = table.groupby("StudyInstanceUID")["vertebra"].nunique()
    short = counts[counts != len(VERTEBRAE)]
    if len(short):
        raise ValueError(f"{path}: {len(short)} studies lack some of C1..C7 (e.g. {short.index[0]}); "
                         f"rebuild it with `python -m src.localise`")
    flags = ["estimated"] + [c for c in ("level_flag", "level_repaired") if c in table.columns]
    for column in flags:
        table[column] = table[column].astype(str).str.lower().isin(["true", "1"])
    return table[COLUMNS + [c for c in LEVEL_COLUMNS if c in table.columns]]
