"""The "vertebra" task: each study becomes seven stacks of cropped slices, one per vertebra C1..C7.

Used by the EfficientNet + GRU classifier (src/models/effnet_gru.py), or any crop classifier that declares
``task = "vertebra"``, with the settings section its class names (``cfg.effnet_gru`` for that one).
:class:`VertebraCrops` builds the stacks from a study's arrays; :class:`VertebraDataset` feeds it cached
studies (training, validation) and :meth:`VertebraTask.study_batch` a test study read straight from
DICOM (src/inference). Where each vertebra is comes from the localisation table
(src.paths.localisation_path; columns in docs/data.md#the-localisation-table): its slice range in the study's own DICOM
numbers and its box in original slice pixels. For each vertebra, ``n_slices`` slices are sampled evenly
over the range; each carries ``neighbours`` slices either side as extra channels (2.5D, a thin fracture
line is clearer across adjacent slices) times every HU window, and is cropped to the vertebra's box
widened by ``margin`` and made square, then resized to ``crop_size``. Training items get one random
augmentation per vertebra (src/data/augment.py), the same for all its slices.

One item per study keeps training on the competition loss exactly, patient_overall included, and lets
validation write one out-of-fold row per study. A study missing from the table, or with unusable rows,
is still predicted: its vertebrae fall back to even slices of the whole study and the full slice.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import TARGETS, VERTEBRAE
from ..data.cache import load_study
from ..data.windows import apply_windows
from ..localisation.table import CROP_COLUMNS, read_table
from ..models.registry import model_settings
from ..paths import localisation_path
from . import register_task
from .study_task import SPLIT, StudyClassificationTask, sigmoid

AIR_HU = -1024  # what padding outside the scanned field stands for


# ---- geometry: pure functions of arrays, tested without a cache ----

def slice_range_indices(slice_numbers: np.ndarray, slice_min: float, slice_max: float) -> tuple[int, int]:
    """Volume indices (first, last) of the slices whose DICOM numbers lie in [slice_min, slice_max].

    The volume is ordered head to feet whatever the file numbering, so the numbers can run backwards
    (reversed studies) or skip (gaps); the range is found by value, not by position. A range that
    holds no slice (it fell into a gap) gives the slice nearest its middle.
    """
    numbers = np.asarray(slice_numbers, dtype=float)
    lo, hi = min(slice_min, slice_max), max(slice_min, slice_max)
    inside = np.flatnonzero((numbers >= lo) & (numbers <= hi))
    if len(inside):
        return int(inside.min()), int(inside.max())
    nearest = int(np.abs(numbers - (lo + hi) / 2).argmin())
    return nearest, nearest


def sample_positions(first: int, last: int, n_slices: int, jitter: float = 0.0,
                     generator: torch.Generator | None = None) -> np.ndarray:
    """``n_slices`` volume indices spread evenly from ``first`` to ``last`` (repeats when the range is short).

    ``jitter`` (training) moves each sample by up to that fraction of the spacing, so epochs see
    different slices of the same vertebra.
    """
    positions = np.linspace(first, last, n_slices)
    if jitter > 0 and n_slices > 1 and last > first:
        spacing = (last - first) / (n_slices - 1)
        noise = torch.rand(n_slices, generator=generator).numpy() * 2 - 1
        positions = np.clip(positions + noise * jitter * spacing, first, last)
    return np.round(positions).astype(int)


def neighbour_indices(positions: np.ndarray, neighbours: int, step: int, n_volume_slices: int) -> np.ndarray:
    """(N, 2k+1) volume indices: each sampled slice with ``neighbours`` slices either side, clipped at the ends."""
    offsets = np.arange(-neighbours, neighbours + 1) * max(1, int(step))
    return np.clip(positions[:, None] + offsets[None, :], 0, n_volume_slices - 1)


def square_box(x0: float, y0: float, x1: float, y1: float, margin: float, min_side: float = 8.0) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1), integer pixels, around the box's centre: its longer side widened by
    ``margin`` on each side. Square so that resizing keeps the bone's shape; it may reach outside the slice."""
    side = max(x1 - x0, y1 - y0, min_side) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = max(1, int(round(side)))
    return left, top, left + size, top + size


def crop_padded(slices: np.ndarray, box: tuple[int, int, int, int], fill: float = AIR_HU) -> np.ndarray:
    """``slices`` (K, H, W) cut to ``box`` (x0, y0, x1, y1); the part outside the slice is ``fill``."""
    x0, y0, x1, y1 = box
    k, height, width = slices.shape
    out = np.full((k, y1 - y0, x1 - x0), fill, dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = slices[:, sy0:sy1, sx0:sx1]
    return out


def resize_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """(K, h, w) float32 -> (K, size, size), bilinear; antialiased when shrinking so thin bone does not alias."""
    tensor = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
    shrink = stack.shape[1] > size or stack.shape[2] > size
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[:, 0].numpy()


# ---- the localisation table ----

def study_plans(table: pd.DataFrame) -> dict[str, dict[str, tuple]]:
    """uid -> vertebra -> (slice_min, slice_max, x0, y0, x1, y1), rows with a missing value left out."""
    plans: dict[str, dict[str, tuple]] = {}
    usable = table.dropna(subset=CROP_COLUMNS)
    for row in usable[CROP_COLUMNS].itertuples(index=False):
        plans.setdefault(str(row[0]), {})[str(row[1])] = tuple(float(v) for v in row[2:])
    return plans


def fallback_plan(meta: dict, vertebra: str) -> tuple:
    """Where a vertebra is assumed to be when the table has nothing: its seventh of the slice numbers,
    on the whole slice. Crude, but the study still gets a prediction (the model has seen every level)."""
    numbers = np.asarray(meta["slice_numbers"], dtype=float)  # volume order: head first, whatever the numbering
    k = VERTEBRAE.index(vertebra)
    edges = np.linspace(0, len(numbers) - 1, len(VERTEBRAE) + 1)
    first, last = numbers[int(edges[k])], numbers[int(edges[k + 1])]
    rows, cols = meta.get("original_shape", meta["shape"][1:])
    return (min(first, last), max(first, last), 0.0, 0.0, float(cols), float(rows))


# ---- the dataset ----

class VertebraCrops:
    """A study's arrays -> per vertebra (N, C, S, S) float32 in [0, 1]: ``n_slices`` crops sampled over its
    range, ``C`` = (2 * neighbours + 1) x windows, neighbour-major; ``S`` = crop_size.

    ``train`` jitters the sampled slices and draws one augmentation per vertebra, from torch's RNG.
    """

    def __init__(self, settings, windows, train: bool = False):
        self.windows = [tuple(w) for w in windows]
        self.n_slices = int(settings["n_slices"])
        self.neighbours = int(settings["neighbours"])
        self.neighbour_step = int(settings.get("neighbour_step", 1))
        self.crop_size = int(settings["crop_size"])
        self.margin = float(settings["margin"])
        self.train = train
        self.transform = None
        if train and float(settings.get("augment", 1.0)) > 0:
            from ..data.augment import build_slice_stack_transform

            self.transform = build_slice_stack_transform(float(settings.get("augment", 1.0)))

    @property
    def channels(self) -> int:
        return (2 * self.neighbours + 1) * len(self.windows)

    def sampled_positions(self, meta: dict, plan: tuple) -> np.ndarray:
        """The ``n_slices`` volume indices sampled over the plan's slice range (jittered when training)."""
        first, last = slice_range_indices(meta["slice_numbers"], plan[0], plan[1])
        return sample_positions(first, last, self.n_slices, jitter=0.5 if self.train else 0.0)

    def vertebra_stack(self, volume: np.ndarray, meta: dict, plan: tuple, out: np.ndarray | None = None) -> np.ndarray:
        """(N, C, S, S) float32 for one vertebra of a study, written into ``out`` when given."""
        _, _, x0, y0, x1, y1 = plan
        positions = self.sampled_positions(meta, plan)
        index = neighbour_indices(positions, self.neighbours, self.neighbour_step, volume.shape[0])
        # original slice pixels -> cached grid (prepare may have resized the slices)
        rows, cols = meta.get("original_shape", volume.shape[1:])
        sy, sx = volume.shape[1] / rows, volume.shape[2] / cols
        box = square_box(x0 * sx, y0 * sy, x1 * sx, y1 * sy, self.margin)
        needed, inverse = np.unique(index, return_inverse=True)
        hu = crop_padded(np.asarray(volume[needed]), box)                 # (K, h, w), only the slices used
        channels = apply_windows(hu, self.windows)                         # (W, K, h, w)
        k, h, w = hu.shape
        size = self.crop_size
        # each slice used is resized once, then the samples gathered: neighbours and a short range repeat slices
        slices = resize_stack(channels.transpose(1, 0, 2, 3).reshape(-1, h, w), size).reshape(k, -1, size, size)
        if out is None:
            out = np.empty((self.n_slices, self.channels, size, size), dtype=np.float32)
        # (N*(2k+1), W, S, S) gathered straight into the item (at 384 px a study's item is half a gigabyte:
        # every copy counts); mode="clip" because "raise" would gather into a temporary first
        np.take(slices, inverse.reshape(-1), axis=0, out=out.reshape(-1, *slices.shape[1:]), mode="clip")
        if self.transform is not None:
            from ..data.augment import augment_stack

            out[...] = augment_stack(out.reshape(-1, size, size), self.transform).reshape(out.shape)
        return out

    def study_stacks(self, volume: np.ndarray, meta: dict, plans: dict[str, tuple], vertebrae=VERTEBRAE) -> np.ndarray:
        """(len(vertebrae), N, C, S, S); a vertebra without a plan takes :func:`fallback_plan`."""
        size = self.crop_size
        out = np.empty((len(vertebrae), self.n_slices, self.channels, size, size), dtype=np.float32)
        for i, v in enumerate(vertebrae):
            self.vertebra_stack(volume, meta, plans.get(v) or fallback_plan(meta, v), out=out[i])
        return out


class VertebraDataset(torch.utils.data.Dataset):
    """One item per cached study: {"images": (7, N, C, S, S) float32 in [0, 1], "labels": (8,) when labelled}."""

    def __init__(self, cache_dir: Path, study_uids, table: pd.DataFrame, settings: dict, windows,
                 labels: np.ndarray | None = None, split: str = SPLIT, train: bool = False):
        self.cache_dir = Path(cache_dir)
        self.study_uids = [str(u) for u in study_uids]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.split = split
        self.crops = VertebraCrops(settings, windows, train)
        self.plans = study_plans(table)
        unplanned = [u for u in self.study_uids if len(self.plans.get(u, {})) < len(VERTEBRAE)]
        if unplanned:
            warnings.warn(f"{len(unplanned)} of {len(self.study_uids)} studies lack some localisation rows "
                          f"(e.g. {unplanned[0]}); their missing vertebrae use an even split of the whole study")

    def __len__(self) -> int:
        return len(self.study_uids)

    def stacks(self, index: int, vertebrae=VERTEBRAE) -> np.ndarray:
        """(len(vertebrae), N, C, S, S) for the study at ``index``."""
        uid = self.study_uids[index]
        study = load_study(self.cache_dir, self.split, uid, with_mask=False)
        return self.crops.study_stacks(study.volume, study.meta, self.plans.get(uid, {}), vertebrae)

    def __getitem__(self, index: int) -> dict:
        item = {"images": torch.from_numpy(self.stacks(index))}
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[index].copy())
        return item


class VertebraSampleDataset(torch.utils.data.Dataset):
    """Training items of one vertebra each (``effnet_gru.train_unit: vertebra``), fractures shown more often.

    Fractured vertebrae are about one in ten; a study item shows each of them once an epoch among six
    intact neighbours. Here every fractured vertebra is one item per epoch, and ``negatives_per_positive``
    items per fracture are intact vertebrae drawn at random (torch's generator, so resumes replay them).
    Each intact item carries the weight n_intact / n_intact_items, so the expected loss of an epoch equals
    the competition-weighted vertebra loss over all vertebrae: the probabilities stay calibrated, which
    the noisy-OR patient_overall relies on. Items: {"images": (N, C, S, S), "vertebra": index 0..6,
    "vertebra_label": 0/1, "vertebra_weight": float}.
    """

    def __init__(self, studies: VertebraDataset, negatives_per_positive: float):
        if studies.labels is None:
            raise ValueError("vertebra items need labels")
        vertebra_labels = studies.labels[:, 1:] > 0.5
        self.studies = studies
        self.study_uids = studies.study_uids
        self.positives = np.argwhere(vertebra_labels)
        self.negatives = np.argwhere(~vertebra_labels)
        wanted = int(round(len(self.positives) * negatives_per_positive)) if len(self.positives) else len(self.negatives)
        self.n_negative_items = max(1, min(wanted, len(self.negatives))) if len(self.negatives) else 0
        self.negative_weight = len(self.negatives) / max(self.n_negative_items, 1)

    def __len__(self) -> int:
        return len(self.positives) + self.n_negative_items

    def __getitem__(self, index: int) -> dict:
        if index < len(self.positives):
            study, vertebra = self.positives[index]
            label, weight = 1.0, 1.0
        else:
            study, vertebra = self.negatives[int(torch.randint(len(self.negatives), ()))]
            label, weight = 0.0, self.negative_weight
        stack = self.studies.stacks(int(study), [VERTEBRAE[int(vertebra)]])[0]
        return {"images": torch.from_numpy(stack), "vertebra": torch.tensor(int(vertebra)),
                "vertebra_label": torch.tensor(label), "vertebra_weight": torch.tensor(weight, dtype=torch.float32)}


# ---- the task ----

def patient_alternatives(vertebra_probs: np.ndarray) -> dict[str, np.ndarray]:
    """patient_overall formed from the seven vertebra probabilities (N, 7) in the principled ways."""
    return {"noisy_or": 1 - np.prod(1 - vertebra_probs, axis=1), "max": vertebra_probs.max(axis=1)}


@register_task("vertebra")
class VertebraTask(StudyClassificationTask):
    def __init__(self, cfg, data_dir: Path, cache_dir: Path, folds: pd.DataFrame, announce=print):
        super().__init__(cfg, data_dir, cache_dir, folds, announce)
        self.table = read_table(localisation_path(cfg, self.cache_dir), complete=False)

    def make_dataset(self, frame: pd.DataFrame, train: bool):
        settings = self.settings
        studies = VertebraDataset(self.cache_dir, frame["StudyInstanceUID"], self.table, settings,
                                  self.cfg["windows"], labels=frame[TARGETS].to_numpy(np.float32), train=train)
        if train and settings["train_unit"] == "vertebra":
            return VertebraSampleDataset(studies, float(settings["negatives_per_positive"]))
        return studies  # validation always predicts whole studies: one oof row each

    @classmethod
    def study_batch(cls, cfg, volume: np.ndarray, meta: dict, localisation: pd.DataFrame | None) -> dict:
        """The validation item from the study's localisation rows; without them (or for a vertebra
        without one) the task's own fallback, an even share of the study on the whole slice."""
        rows = localisation if localisation is not None else pd.DataFrame(columns=CROP_COLUMNS)
        plans = next(iter(study_plans(rows).values()), {})  # the rows are this study's
        stacks = VertebraCrops(model_settings(cfg), cfg["windows"]).study_stacks(volume, meta, plans)
        return {"images": torch.from_numpy(stacks)[None]}

    def explain(self, model, val_dataset, oof: pd.DataFrame, out_dir: Path, n: int) -> dict[str, Path]:
        """{uid: PNG} for the ``n`` held-out studies the run got most wrong: the crops, the attention over
        them and the reformats (src/tasks/explanation.py, explanation_figure.py), drawn into ``out_dir``.
        ``model`` is the bare model in eval mode; it is only run forward."""
        from .explanation import explain_cached, worst_studies
        from .explanation_figure import draw_explanation

        truth = self.val_frame.set_index("StudyInstanceUID")
        source = f"{self.cfg['experiment']} fold {self.cfg['fold']}, held out"
        return {uid: draw_explanation(explain_cached(model, val_dataset, uid, truth.loc[uid, TARGETS].to_numpy(float),
                                                     source=source), Path(out_dir) / f"{uid}.png")
                for uid in worst_studies(oof, self.val_frame, n)}

    def evaluate(self, outputs: dict, val_dataset) -> tuple[dict, pd.DataFrame]:
        """The shared metrics, plus the score patient_overall would get from each principled combination
        of the same vertebra probabilities: the measurement behind the default ``patient_head``."""
        metrics, oof = super().evaluate(outputs, val_dataset)
        from ..metric import competition_score

        truth = self.val_frame.set_index("StudyInstanceUID").loc[oof["StudyInstanceUID"], TARGETS].to_numpy(float)
        probs = oof[TARGETS].to_numpy(float)
        vertebra_probs = sigmoid(np.asarray(outputs["logits"], dtype=float))[:, 1:]
        for name, patient in patient_alternatives(vertebra_probs).items():
            swapped = probs.copy()
            swapped[:, 0] = patient
            metrics[f"score_patient_{name}"] = competition_score(truth, swapped)
        return metrics, oof
