"""The fallback prediction: the label prior, used for any study no model could predict.

Called by the inference pipeline (src/inference/pipeline.py) for a study that test.csv names but
test_images lacks, a folder with no readable slice, or a study every member failed on. The rates come
from train.csv when the data folder has one (as on Kaggle, where the competition data is attached to
the notebook); otherwise from the real train set's prevalence (docs/data.md#the-metric), which is the best a
constant can do on the hidden test set short of the labels themselves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS

# Label prevalence of the real train set, TARGETS order (docs/data.md#the-metric).
REAL_PREVALENCE = np.array([0.476, 0.072, 0.141, 0.036, 0.053, 0.080, 0.137, 0.195])


def label_prior(data_dir: Path | str | None) -> tuple[np.ndarray, str]:
    """(rates in TARGETS order, where they came from). Never fails: a broken train.csv falls back to the real prevalence."""
    path = Path(data_dir) / "train.csv" if data_dir is not None else None
    if path is not None and path.exists():
        try:
            labels = pd.read_csv(path, usecols=TARGETS)
            rates = labels[TARGETS].to_numpy(float).mean(axis=0)
            if len(labels) and np.all(np.isfinite(rates)) and np.all((rates >= 0) & (rates <= 1)):
                # a rate of exactly 0 or 1 would cost an infinite loss on the first study that disagrees
                return np.clip(rates, 1e-3, 1 - 1e-3), f"label rates of {path} ({len(labels)} studies)"
        except (ValueError, KeyError, pd.errors.ParserError):
            pass
        return REAL_PREVALENCE.copy(), f"real train set prevalence ({path} unusable)"
    return REAL_PREVALENCE.copy(), "real train set prevalence (no train.csv)"
