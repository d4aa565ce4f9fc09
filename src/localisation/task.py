"""The "localise" task: which segmented studies train and validate the localiser on a fold, and how a
held-out prediction is judged. The training loop (src/training/loop.py) drives it like any task
(interface: src/tasks/__init__.py); src/models/localiser.py imports this module so the name registers.

Folds: the dataset's one fold file (src/folds.py), restricted to the cached train studies that have a
mask, so a segmented study validates the localiser of the same fold in which it validates classifiers.

Judging a held-out study:

- ``dice``: mean over C1..C7 of the Dice between predicted and true labels on the cached grid: every
  original slice, at the cache's in-plane size (128 px on the demo, 256 on the real data), against the
  cached mask itself. The localiser's probabilities (model grid, or the spine box's grid after the second
  look) are brought up to that grid first (src/localisation/predict.py, ``segment_study``);
- ``slice_iou``: mean over C1..C7 of the IoU between the predicted slice range (the table's, estimates
  included) and the true one, in original slices, from the same labels.

The second look needs the model again, so the loop hands it to ``evaluate`` (``needs_model``).

``oof`` is the localisation table of the held-out studies with each vertebra's Dice and IoU beside it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import VERTEBRAE
from ..data.cache import META, cached_uids, load_study, study_dir
from ..tasks import register_task
from .dataset import SPLIT, LocaliserDataset, prepare_resampled
from .extents import extents_for, min_voxels
from .metrics import dice_per_vertebra, nanmean, slice_range_iou, true_slice_ranges
from .predict import describe_for_prediction, segment_study
from .resample import cervical_labels
from .table import study_rows


def segmented_uids(cache_dir: Path, split: str = SPLIT) -> list[str]:
    """Cached studies of ``split`` that have a vertebra mask (meta.json ``has_mask``)."""
    out = []
    for uid in cached_uids(cache_dir, split):
        meta = json.loads((study_dir(cache_dir, split, uid) / META).read_text())
        if meta.get("has_mask"):
            out.append(uid)
    return out


def judge_study(labels: np.ndarray, confidence: dict, study, cfg):
    """Table rows, per-vertebra Dice and slice IoU of one held-out cached study, from its predicted labels
    on the cached grid (``segment_study``)."""
    truth = cervical_labels(study.mask)
    dice = dice_per_vertebra(labels, truth)
    extents = extents_for(labels, confidence, min_voxels(cfg, labels.shape))
    iou = slice_range_iou({name: ext.slice_range for name, ext in extents.items()}, true_slice_ranges(truth))
    return study_rows(study.uid, extents, study.meta, labels.shape), dice, iou


@register_task("localise")
class LocalisationTask:
    monitor = "dice"
    mode = "max"
    collate = None
    needs_model = True  # evaluate() looks again at each study's spine box

    def __init__(self, cfg, data_dir: Path, cache_dir: Path, folds: pd.DataFrame, announce=print):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.announce = announce
        segmented = segmented_uids(cache_dir)
        if not segmented:
            raise ValueError(f"no cached study in {self.cache_dir / SPLIT} has a mask; the localiser trains on "
                             f"segmented studies (segmentations/<uid>.nii, cached by `python -m src.prepare`)")
        fold_of = dict(zip(folds["StudyInstanceUID"], folds["fold"]))
        unfolded = [u for u in segmented if u not in fold_of]
        if unfolded:
            warnings.warn(f"{len(unfolded)} segmented studies are not in the folds file (e.g. {unfolded[0]}) "
                          f"and are left out; delete the folds file to remake it")
        frame = pd.DataFrame({"StudyInstanceUID": [u for u in segmented if u in fold_of]})
        frame["fold"] = frame["StudyInstanceUID"].map(fold_of)
        fold, limit = cfg["fold"], cfg["limit_studies"]
        train, val = frame[frame["fold"] != fold], frame[frame["fold"] == fold]
        self.train_uids = list(train["StudyInstanceUID"][:limit] if limit > 0 else train["StudyInstanceUID"])
        self.val_uids = list(val["StudyInstanceUID"][:limit] if limit > 0 else val["StudyInstanceUID"])
        if not self.train_uids or not self.val_uids:
            raise ValueError(f"fold {fold} leaves {len(self.train_uids)} training and {len(self.val_uids)} validation "
                             f"segmented studies; check fold (0..{cfg['n_folds'] - 1}) and the folds file")
        self._figure_case = None

    def datasets(self):
        c = self.cfg["localiser"]
        hu_folder, mask_folder = prepare_resampled(self.cache_dir, self.train_uids + self.val_uids, c["shape"],
                                                   announce=self.announce, progress=self.cfg["progress"])
        augment = {"hu_scale": c["aug_hu_scale"], "hu_shift": c["aug_hu_shift"], "p_affine": c["aug_p_affine"],
                   "scale": c["aug_scale"], "shift": c["aug_shift"], "rotate": c["aug_rotate"],
                   "flip_lr": c["aug_flip_lr"]}
        margin = [float(m) for m in c["crop_margin"]]
        if len(margin) != 2 or not 0 <= margin[0] <= margin[1]:
            from ..config import ConfigError

            raise ConfigError(f"localiser.crop_margin={list(c['crop_margin'])}: expected [low, high] with "
                              f"0 <= low <= high, fractions of the spine box's length (e.g. [0.05, 0.3])")
        crop = {"prob": c["crop_prob"], "margin": tuple(margin), "cache_dir": self.cache_dir,
                "shape": [int(n) for n in c["shape"]]}
        windows = self.cfg["windows"]
        return (LocaliserDataset(hu_folder, mask_folder, self.train_uids, windows, augment, crop),
                LocaliserDataset(hu_folder, mask_folder, self.val_uids, windows, None))

    def evaluate(self, outputs: dict, val_dataset, model: torch.nn.Module) -> tuple[dict, pd.DataFrame]:
        was_training = model.training
        describe_for_prediction(model.eval(), self.cfg)
        rows, dices, ious = [], [], []
        try:
            for k, uid in enumerate(val_dataset.study_uids):
                probs = torch.softmax(torch.from_numpy(outputs["logits"][k]).float(), dim=0)
                study = load_study(self.cache_dir, SPLIT, uid)
                labels, confidence = segment_study([model], study.volume, first_probs=probs)
                table, dice, iou = judge_study(labels, confidence, study, self.cfg)
                rows.append(table.assign(dice=table["vertebra"].map(dice), slice_iou=table["vertebra"].map(iou)))
                dices.append(dice)
                ious.append(iou)
                if k == 0:
                    self._figure_case = (uid, np.asarray(study.volume), cervical_labels(study.mask), labels)
        finally:
            model.train(was_training)
        per_dice = {v: nanmean([d[v] for d in dices]) for v in VERTEBRAE}
        per_iou = {v: nanmean([d[v] for d in ious]) for v in VERTEBRAE}
        oof = pd.concat(rows, ignore_index=True)
        metrics = {"dice": nanmean(per_dice.values()), "slice_iou": nanmean(per_iou.values()),
                   "estimated_rows": int(oof["estimated"].sum()),
                   "per_target_dice": per_dice, "per_target_slice_iou": per_iou,
                   "dice_grid": "cached (every slice, cached in-plane size)", "refine_margin": model.refine_margin}
        return metrics, oof

    def figures(self, metrics: dict, oof: pd.DataFrame, val_dataset, out_dir: Path) -> dict[str, Path]:
        if self._figure_case is None:
            return {}
        from .figures import sagittal_comparison

        uid, hu, truth, pred = self._figure_case
        path = Path(out_dir) / "localisation_example.png"
        return {"localisation_example": sagittal_comparison(hu, truth, pred, path, title=f"held-out study {uid}")}
