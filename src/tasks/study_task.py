"""What every study-level fracture classifier's task shares: which studies train and validate on a fold,
the model's settings section, the label prior, the competition metric on validation and the
out-of-fold table, and the end-of-run plots.

Subclasses (src/tasks/volume.py, src/tasks/vertebra.py) say how a study becomes an item, twice from one
item builder: ``make_dataset(frame, train)`` for training and validation (studies read from the cache)
and the class method ``study_batch(cfg, volume, meta, localisation, labels=None)`` for inference (a test study's
arrays, read straight from DICOM by src/inference: int16 HU (slices, size, size) at
``cfg.prepare.size``, head first, meta as src.data.cache describes it, and the study's localisation
rows or None, and the localiser's compact voxel labels or None), so a test study is fed exactly as a
validation study.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..data.cache import cached_uids
from ..data.folds import read_labels
from ..metric import summarize
from ..models.registry import model_settings

SPLIT = "train_images"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def exclude_studies(labels: pd.DataFrame, uids, announce=print) -> pd.DataFrame:
    """``labels`` without the studies of ``exclude_studies`` (known-broken ones), saying which were dropped
    and from which folds; UIDs that are not in the labels are named too, so a typo does not pass unseen."""
    uids = [str(u) for u in uids]
    if not uids:
        return labels
    dropped = labels[labels["StudyInstanceUID"].isin(uids)]
    absent = sorted(set(uids) - set(dropped["StudyInstanceUID"]))
    if len(dropped):
        where = ", ".join(f"{u} (fold {f})" for u, f in zip(dropped["StudyInstanceUID"], dropped.get("fold", ["?"] * len(dropped))))
        announce(f"[data] exclude_studies: left out {len(dropped)} stud{'y' if len(dropped) == 1 else 'ies'}: {where}")
    if absent:
        announce(f"[data] exclude_studies: {len(absent)} listed UID(s) are not in the labels: {', '.join(absent)}")
    return labels[~labels["StudyInstanceUID"].isin(uids)].reset_index(drop=True)


class StudyClassificationTask:
    monitor = "score"
    mode = "min"
    collate = None

    def __init__(self, cfg, data_dir: Path, cache_dir: Path, folds: pd.DataFrame, announce=print):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.announce = announce
        self.settings = model_settings(cfg)  # the section the model declares (its class's ``settings``)
        labels = read_labels(data_dir).merge(folds[["StudyInstanceUID", "fold"]], on="StudyInstanceUID")
        labels = exclude_studies(labels, cfg.get("exclude_studies") or [], announce)
        cached = set(cached_uids(cache_dir, SPLIT))
        absent = labels.loc[~labels["StudyInstanceUID"].isin(cached), "StudyInstanceUID"]
        if len(absent):
            # prepare skips unreadable studies and reports them; train on the rest rather than stop
            warnings.warn(f"{len(absent)} labelled studies are not in the cache {cache_dir / SPLIT} and are left out "
                          f"(e.g. {absent.iloc[0]}); run `python -m src.prepare` to add them")
        self.labels = labels[labels["StudyInstanceUID"].isin(cached)].sort_values("StudyInstanceUID").reset_index(drop=True)
        fold = cfg["fold"]
        self.train_frame = self._limit(self.labels[self.labels["fold"] != fold])
        self.val_frame = self._limit(self.labels[self.labels["fold"] == fold])
        if len(self.train_frame) == 0 or len(self.val_frame) == 0:
            raise ValueError(f"fold {fold} leaves {len(self.train_frame)} training and {len(self.val_frame)} validation "
                             f"studies; check fold (0..{cfg['n_folds'] - 1}) and the folds file")

    def _limit(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = self.cfg["limit_studies"]
        return (frame.head(n) if n > 0 else frame).reset_index(drop=True)

    @property
    def label_rates(self) -> np.ndarray:
        return self.train_frame[TARGETS].to_numpy(float).mean(axis=0)

    def make_dataset(self, frame: pd.DataFrame, train: bool):
        raise NotImplementedError

    def datasets(self):
        return self.make_dataset(self.train_frame, train=True), self.make_dataset(self.val_frame, train=False)

    def evaluate(self, outputs: dict, val_dataset) -> tuple[dict, pd.DataFrame]:
        uids = list(val_dataset.study_uids)
        probs = sigmoid(np.asarray(outputs["logits"], dtype=float))
        truth = self.val_frame.set_index("StudyInstanceUID").loc[uids, TARGETS].to_numpy(float)
        metrics = summarize(truth, probs, prior_labels=self.train_frame[TARGETS].to_numpy(float))
        oof = pd.DataFrame(probs, columns=TARGETS)
        oof.insert(0, "StudyInstanceUID", uids)
        return metrics, oof

    def figures(self, metrics: dict, oof: pd.DataFrame, val_dataset, out_dir: Path) -> dict[str, Path]:
        from .plots import confusion_matrices, roc_curves

        truth = self.val_frame.set_index("StudyInstanceUID").loc[oof["StudyInstanceUID"], TARGETS].to_numpy(float)
        probs = oof[TARGETS].to_numpy(float)
        return {"confusion_matrices": confusion_matrices(truth, probs, Path(out_dir) / "confusion_matrices.png"),
                "roc_curves": roc_curves(truth, probs, Path(out_dir) / "roc_curves.png")}
