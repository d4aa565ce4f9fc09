"""The "localize" task: which segmented studies train and validate the localiser on a fold, and how a
held-out prediction is judged. The training loop (src/training/loop.py) drives it like any task
(interface: src/tasks/__init__.py); src/models/localizer.py imports this module so the name registers.

Folds: the dataset's one fold file (src/folds.py), restricted to the cached train studies that have a
mask, so a segmented study validates the localiser of the same fold in which it validates classifiers.

Judging a held-out study:

- ``dice``: mean over C1..C7 of the Dice between predicted and true labels on the model grid
  (``localizer.shape``: 64^3 on the demo, 128^3 on the real data), the mask resampled by nearest neighbour;
- ``slice_iou``: mean over C1..C7 of the IoU between the predicted slice range (the table's, estimates
  included) and the true one, in original slices: probabilities are brought up to every original slice
  (src/localisation/resample.py) before the extents are taken.

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
from .dataset import SPLIT, LocalizerDataset, prepare_resampled
from .extents import extents_for, min_voxels
from .metrics import dice_per_vertebra, nanmean, slice_range_iou, true_slice_ranges
from .resample import cervical_labels, probs_to_labels, resample_mask
from .table import study_rows


def segmented_uids(cache_dir: Path, split: str = SPLIT) -> list[str]:
    """Cached studies of ``split`` that have a vertebra mask (meta.json ``has_mask``)."""
    out = []
    for uid in cached_uids(cache_dir, split):
        meta = json.loads((study_dir(cache_dir, split, uid) / META).read_text())
        if meta.get("has_mask"):
            out.append(uid)
    return out


def judge_study(probs: np.ndarray | torch.Tensor, study, cfg, model_mask: np.ndarray | None = None):
    """Table rows, per-vertebra Dice and slice IoU of one held-out cached study, and its model-grid labels.

    ``probs`` (8, D, h, w) are on the model grid, where Dice is measured (against ``model_mask``, the
    study's mask resampled to that grid, made here if not given). Slice ranges are measured in original
    slices: the probabilities are brought to (every original slice, h, w) first."""
    model_grid = tuple(int(s) for s in probs.shape[1:])
    truth = resample_mask(study.mask, model_grid) if model_mask is None else np.asarray(model_mask)
    pred = torch.as_tensor(probs).argmax(dim=0).to(torch.uint8).numpy()
    dice = dice_per_vertebra(pred, truth)
    grid = (int(study.volume.shape[0]), *model_grid[1:])
    labels, confidence = probs_to_labels(probs, grid)
    extents = extents_for(labels, confidence, min_voxels(cfg, grid))
    iou = slice_range_iou({name: ext.slice_range for name, ext in extents.items()},
                          true_slice_ranges(cervical_labels(study.mask)))
    return study_rows(study.uid, extents, study.meta, grid), dice, iou, pred


@register_task("localize")
class LocalisationTask:
    monitor = "dice"
    mode = "max"
    collate = None

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
        c = self.cfg["localizer"]
        hu_folder, mask_folder = prepare_resampled(self.cache_dir, self.train_uids + self.val_uids, c["shape"],
                                                   announce=self.announce, progress=self.cfg["progress"])
        augment = {"hu_scale": c["aug_hu_scale"], "hu_shift": c["aug_hu_shift"], "p_affine": c["aug_p_affine"],
                   "scale": c["aug_scale"], "shift": c["aug_shift"], "rotate": c["aug_rotate"],
                   "flip_lr": c["aug_flip_lr"]}
        windows = self.cfg["windows"]
        return (LocalizerDataset(hu_folder, mask_folder, self.train_uids, windows, augment),
                LocalizerDataset(hu_folder, mask_folder, self.val_uids, windows, None))

    def evaluate(self, outputs: dict, val_dataset) -> tuple[dict, pd.DataFrame]:
        rows, dices, ious = [], [], []
        for k, uid in enumerate(val_dataset.study_uids):
            probs = torch.softmax(torch.from_numpy(outputs["logits"][k]).float(), dim=0)
            study = load_study(self.cache_dir, SPLIT, uid)
            model_mask = np.load(val_dataset.mask_folder / f"{uid}.npy")
            table, dice, iou, labels = judge_study(probs, study, self.cfg, model_mask)
            rows.append(table.assign(dice=table["vertebra"].map(dice), slice_iou=table["vertebra"].map(iou)))
            dices.append(dice)
            ious.append(iou)
            if k == 0:
                hu = np.load(val_dataset.hu_folder / f"{uid}.npy")
                self._figure_case = (uid, hu, model_mask, labels)
        per_dice = {v: nanmean([d[v] for d in dices]) for v in VERTEBRAE}
        per_iou = {v: nanmean([d[v] for d in ious]) for v in VERTEBRAE}
        oof = pd.concat(rows, ignore_index=True)
        metrics = {"dice": nanmean(per_dice.values()), "slice_iou": nanmean(per_iou.values()),
                   "estimated_rows": int(oof["estimated"].sum()),
                   "per_target_dice": per_dice, "per_target_slice_iou": per_iou,
                   "dice_grid": "x".join(str(int(n)) for n in self.cfg["localizer"]["shape"])}
        return metrics, oof

    def figures(self, metrics: dict, oof: pd.DataFrame, val_dataset, out_dir: Path) -> dict[str, Path]:
        if self._figure_case is None:
            return {}
        from .figures import sagittal_comparison

        uid, hu, truth, pred = self._figure_case
        path = Path(out_dir) / "localisation_example.png"
        return {"localisation_example": sagittal_comparison(hu, truth, pred, path, title=f"held-out study {uid}")}
