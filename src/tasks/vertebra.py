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

Stage-2 extras (issue 18; off in configs/default.yaml, the default experiment switches on
``aux_loss_weight``): ``mask_channel`` appends the target vertebra's mask on each sampled slice as one
more channel (the localiser's own voxel labels, src/localisation/stored_labels.py, else the localisation
box on the slices of its range; never the true segmentation, which inference lacks); ``order_jitter``
swaps neighbouring sampled slices in training; ``aux_loss_weight`` > 0 gives every training item
per-slice targets (:func:`slice_targets`): which vertebrae each sampled slice shows and, where
``train_bounding_boxes.csv`` says so, whether it shows the fracture.
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
from ..localisation.stored_labels import labels_on_grid, load_labels
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
                     generator: torch.Generator | None = None, shift: float = 0.0) -> np.ndarray:
    """``n_slices`` volume indices spread evenly from ``first`` to ``last`` (repeats when the range is short).

    ``jitter`` (training) moves each sample by up to that fraction of the spacing, so epochs see
    different slices of the same vertebra. ``shift`` (a test-time view) moves every sample by that
    fraction of the spacing, towards the feet when positive; both stay inside the range.
    """
    positions = np.linspace(first, last, n_slices)
    if (jitter > 0 or shift) and n_slices > 1 and last > first:
        spacing = (last - first) / (n_slices - 1)
        noise = torch.rand(n_slices, generator=generator).numpy() * 2 - 1 if jitter > 0 else 0.0
        positions = np.clip(positions + (noise * jitter + shift) * spacing, first, last)
    return np.round(positions).astype(int)


def neighbour_indices(positions: np.ndarray, neighbours: int, step: int, n_volume_slices: int) -> np.ndarray:
    """(N, 2k+1) volume indices: each sampled slice with ``neighbours`` slices either side, clipped at the ends."""
    offsets = np.arange(-neighbours, neighbours + 1) * max(1, int(step))
    return np.clip(positions[:, None] + offsets[None, :], 0, n_volume_slices - 1)


def jitter_order(n: int, prob: float, generator: torch.Generator | None = None) -> np.ndarray:
    """A permutation of 0..n-1 that swaps each neighbouring pair with probability ``prob`` (left to right,
    a slice moves at most one place): the slice-order jitter of training, drawn from torch's RNG."""
    order = np.arange(n)
    if prob <= 0 or n < 2:
        return order
    draws = torch.rand(n - 1, generator=generator).numpy()
    i = 0
    while i < n - 1:
        if draws[i] < prob:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2  # a swapped pair is left alone: no slice travels further than one place
        else:
            i += 1
    return order


def vertebra_presence(positions: np.ndarray, slice_numbers, plans: dict[str, tuple],
                      mask: np.ndarray | None = None) -> np.ndarray:
    """(N, 7) float32: 1 where the sampled slice shows that vertebra. From the mask's labels on the slice
    when the study is segmented, else from the localisation rows' slice ranges (a vertebra without a
    row is absent)."""
    out = np.zeros((len(positions), len(VERTEBRAE)), dtype=np.float32)
    if mask is not None:
        for i, p in enumerate(positions):
            present = np.unique(np.asarray(mask[int(p)]))
            present = present[(present >= 1) & (present <= len(VERTEBRAE))]
            out[i, present.astype(int) - 1] = 1.0
        return out
    numbers = np.asarray(slice_numbers, dtype=float)[np.asarray(positions, dtype=int)]
    for k, v in enumerate(VERTEBRAE):
        if v in plans:
            lo, hi = sorted(plans[v][:2])
            out[:, k] = (numbers >= lo) & (numbers <= hi)
    return out


def fracture_slices(positions: np.ndarray, slice_numbers, plan: tuple, fractured: bool,
                    box_slices: np.ndarray | None) -> np.ndarray:
    """(N,) float32 per sampled slice of one vertebra: 1 inside the slice range of the study's fracture boxes
    that fall in this vertebra's range, 0 outside it, 0 everywhere for an intact vertebra, and -1 (not
    supervised) for a fractured vertebra that no box falls in (boxes cover only some fractured studies)."""
    numbers = np.asarray(slice_numbers, dtype=float)[np.asarray(positions, dtype=int)]
    if not fractured:
        return np.zeros(len(numbers), dtype=np.float32)
    boxes = np.asarray(box_slices if box_slices is not None else [], dtype=float)
    lo, hi = sorted(plan[:2])
    boxes = boxes[(boxes >= lo) & (boxes <= hi)]
    if not len(boxes):
        return np.full(len(numbers), -1.0, dtype=np.float32)
    return ((numbers >= boxes.min()) & (numbers <= boxes.max())).astype(np.float32)


def read_box_slices(path: Path) -> dict[str, np.ndarray]:
    """uid -> the slice numbers of its fracture boxes, from ``train_bounding_boxes.csv`` (docs/data.md).
    A missing file means no boxes (every fractured vertebra then goes unsupervised per slice), said once."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"no {path}: per-slice fracture targets are left unsupervised for every fractured vertebra")
        return {}
    boxes = pd.read_csv(path, dtype={"StudyInstanceUID": str})
    if not {"StudyInstanceUID", "slice_number"} <= set(boxes.columns):
        raise ValueError(f"{path}: needs columns StudyInstanceUID and slice_number (docs/data.md)")
    return {uid: group["slice_number"].to_numpy(float) for uid, group in boxes.groupby("StudyInstanceUID")}


def keep_box_share(box_slices: dict[str, np.ndarray], share: float, seed: int) -> dict[str, np.ndarray]:
    """``box_slices`` with the boxes of a ``share`` of its studies (a draw seeded by ``seed``, the same for
    every fold); the studies left out are then fractured studies without boxes. Measures how the auxiliary
    loss depends on how many studies have boxes, on the same images (``effnet_gru.aux_box_share``)."""
    if share >= 1:
        return box_slices
    uids = sorted(box_slices)
    n_kept = int(round(share * len(uids)))
    kept = np.random.default_rng(seed).choice(len(uids), size=n_kept, replace=False) if n_kept else []
    return {uids[i]: box_slices[uids[i]] for i in sorted(kept)}


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
    range, ``C`` = (2 * neighbours + 1) x windows, neighbour-major, plus one last channel with the target
    vertebra's mask when ``mask_channel`` is set; ``S`` = crop_size.

    ``train`` jitters the sampled slices (and their order, with ``order_jitter``) and draws one augmentation
    per vertebra, from torch's RNG. ``shift`` moves the slices sampled for validation and inference by that
    fraction of their spacing: the slice-shift views of ``python infer.py tta_shifts=[...]``.
    """

    def __init__(self, settings, windows, train: bool = False, shift: float = 0.0):
        self.windows = [tuple(w) for w in windows]
        self.n_slices = int(settings["n_slices"])
        self.neighbours = int(settings["neighbours"])
        self.neighbour_step = int(settings.get("neighbour_step", 1))
        self.crop_size = int(settings["crop_size"])
        self.margin = float(settings["margin"])
        self.mask_channel = bool(settings.get("mask_channel", False))
        self.order_jitter = float(settings.get("order_jitter", 0.0)) if train else 0.0
        self.train = train
        self.shift = 0.0 if train else float(shift)
        self.transform = None
        if train and float(settings.get("augment", 1.0)) > 0:
            from ..data.augment import build_slice_stack_transform

            self.transform = build_slice_stack_transform(float(settings.get("augment", 1.0)))

    @property
    def channels(self) -> int:
        return (2 * self.neighbours + 1) * len(self.windows) + int(self.mask_channel)

    def positions(self, meta: dict, plan: tuple) -> np.ndarray:
        """The ``n_slices`` volume indices sampled for one vertebra (jittered in training)."""
        first, last = slice_range_indices(meta["slice_numbers"], plan[0], plan[1])
        positions = sample_positions(first, last, self.n_slices, jitter=0.5 if self.train else 0.0, shift=self.shift)
        if self.order_jitter > 0:
            positions = positions[jitter_order(len(positions), self.order_jitter)]
        return positions

    def vertebra_stack(self, volume: np.ndarray, meta: dict, plan: tuple, out: np.ndarray | None = None,
                       positions: np.ndarray | None = None, vertebra: str | None = None,
                       predicted: np.ndarray | None = None) -> np.ndarray:
        """(N, C, S, S) float32 for one vertebra of a study, written into ``out`` when given. ``vertebra``
        and the localiser's compact ``predicted`` labels (or None: the box) feed the mask channel."""
        slice_min, slice_max, x0, y0, x1, y1 = plan
        if positions is None:
            positions = self.positions(meta, plan)
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
        images = out[:, :out.shape[1] - int(self.mask_channel)]
        # (N*(2k+1), W, S, S) gathered straight into the item (at 384 px a study's item is half a gigabyte:
        # every copy counts); mode="clip" because "raise" would gather into a temporary first
        if self.mask_channel:
            images[...] = slices[inverse.reshape(-1)].reshape(images.shape)  # a strided view: no out= gather
            target = target_mask(volume.shape, meta, plan, positions, VERTEBRAE.index(vertebra), predicted)
            out[:, -1] = resize_stack(crop_padded(target, box, fill=0.0), size)
        else:
            np.take(slices, inverse.reshape(-1), axis=0, out=out.reshape(-1, *slices.shape[1:]), mode="clip")
        if self.transform is not None:
            from ..data.augment import augment_stack

            if self.mask_channel:
                image, moved = augment_stack(np.ascontiguousarray(images).reshape(-1, size, size), self.transform,
                                             mask=np.ascontiguousarray(out[:, -1]))
                images[...] = image.reshape(images.shape)
                out[:, -1] = moved
            else:
                out[...] = augment_stack(out.reshape(-1, size, size), self.transform).reshape(out.shape)
        return out

    def study_stacks(self, volume: np.ndarray, meta: dict, plans: dict[str, tuple], vertebrae=VERTEBRAE,
                     positions_out: list | None = None, predicted: np.ndarray | None = None) -> np.ndarray:
        """(len(vertebrae), N, C, S, S); a vertebra without a plan takes :func:`fallback_plan`. The sampled
        volume indices of each vertebra are appended to ``positions_out`` when given."""
        size = self.crop_size
        out = np.empty((len(vertebrae), self.n_slices, self.channels, size, size), dtype=np.float32)
        for i, v in enumerate(vertebrae):
            plan = plans.get(v) or fallback_plan(meta, v)
            positions = self.positions(meta, plan)
            self.vertebra_stack(volume, meta, plan, out=out[i], positions=positions, vertebra=v,
                                predicted=predicted)
            if positions_out is not None:
                positions_out.append(positions)
        return out


def target_mask(shape: tuple, meta: dict, plan: tuple, positions: np.ndarray, vertebra_index: int,
                predicted: np.ndarray | None) -> np.ndarray:
    """(N, H, W) float32 on the cached grid: the target vertebra on each sampled slice. The localiser's
    compact ``predicted`` labels when given (what inference has for every study; a segmented training
    study uses them too, not its truth), else its localisation box on the slices of its range (1 inside)."""
    positions = np.asarray(positions, dtype=int)
    if predicted is not None:
        return (labels_on_grid(predicted, positions, shape) == vertebra_index + 1).astype(np.float32)
    slice_min, slice_max, x0, y0, x1, y1 = plan
    rows, cols = meta.get("original_shape", shape[1:])
    sy, sx = shape[1] / rows, shape[2] / cols
    out = np.zeros((len(positions), shape[1], shape[2]), dtype=np.float32)
    numbers = np.asarray(meta["slice_numbers"], dtype=float)[positions]
    lo, hi = sorted((slice_min, slice_max))
    inside = (numbers >= lo) & (numbers <= hi)
    r0, r1 = max(0, int(np.floor(y0 * sy))), min(shape[1], int(np.ceil(y1 * sy)))
    c0, c1 = max(0, int(np.floor(x0 * sx))), min(shape[2], int(np.ceil(x1 * sx)))
    out[inside, r0:r1, c0:c1] = 1.0
    return out


class VertebraDataset(torch.utils.data.Dataset):
    """One item per cached study: {"images": (7, N, C, S, S) float32 in [0, 1], "labels": (8,) when labelled}.

    With ``box_slices`` (uid -> fracture box slice numbers; training with ``aux_loss_weight`` > 0) and
    labels, items also carry the per-slice targets: "slice_vertebrae" (7, N, 7) and "slice_fracture"
    (7, N), -1 where not supervised (see :func:`vertebra_presence`, :func:`fracture_slices`).
    """

    def __init__(self, cache_dir: Path, study_uids, table: pd.DataFrame, settings: dict, windows,
                 labels: np.ndarray | None = None, split: str = SPLIT, train: bool = False,
                 box_slices: dict[str, np.ndarray] | None = None):
        self.cache_dir = Path(cache_dir)
        self.study_uids = [str(u) for u in study_uids]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.split = split
        self.crops = VertebraCrops(settings, windows, train)
        self.plans = study_plans(table)
        self.box_slices = box_slices if self.labels is not None else None
        unplanned = [u for u in self.study_uids if len(self.plans.get(u, {})) < len(VERTEBRAE)]
        if unplanned:
            warnings.warn(f"{len(unplanned)} of {len(self.study_uids)} studies lack some localisation rows "
                          f"(e.g. {unplanned[0]}); their missing vertebrae use an even split of the whole study")

    def __len__(self) -> int:
        return len(self.study_uids)

    def item(self, index: int, vertebrae=VERTEBRAE) -> dict:
        """{"images": (len(vertebrae), N, C, S, S)} for the study at ``index``, with the per-slice targets
        when this dataset makes them."""
        uid = self.study_uids[index]
        targets = self.box_slices is not None
        study = load_study(self.cache_dir, self.split, uid, with_mask=targets)
        plans = self.plans.get(uid, {})
        positions: list = []
        predicted = load_labels(self.cache_dir, self.split, uid) if self.crops.mask_channel else None
        stacks = self.crops.study_stacks(study.volume, study.meta, plans, vertebrae, positions_out=positions,
                                         predicted=predicted)
        item = {"images": torch.from_numpy(stacks)}
        if targets:
            numbers = study.meta["slice_numbers"]
            presence, fracture = [], []
            for v, sampled in zip(vertebrae, positions):
                presence.append(vertebra_presence(sampled, numbers, plans, study.mask))
                fracture.append(fracture_slices(sampled, numbers, plans.get(v) or fallback_plan(study.meta, v),
                                                bool(self.labels[index, 1 + VERTEBRAE.index(v)] > 0.5),
                                                self.box_slices.get(uid)))
            item["slice_vertebrae"] = torch.from_numpy(np.stack(presence))
            item["slice_fracture"] = torch.from_numpy(np.stack(fracture))
        return item

    def stacks(self, index: int, vertebrae=VERTEBRAE) -> np.ndarray:
        """(len(vertebrae), N, C, S, S) for the study at ``index``."""
        return self.item(index, vertebrae)["images"].numpy()

    def __getitem__(self, index: int) -> dict:
        item = self.item(index)
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
        item = {key: value[0] for key, value in self.studies.item(int(study), [VERTEBRAE[int(vertebra)]]).items()}
        return {**item, "vertebra": torch.tensor(int(vertebra)),
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
        self._box_slices = None

    def make_dataset(self, frame: pd.DataFrame, train: bool):
        settings = self.settings
        box_slices = None
        if train and float(settings.get("aux_loss_weight", 0.0)) > 0:  # per-slice targets: training items only
            if self._box_slices is None:
                every = read_box_slices(self.data_dir / "train_bounding_boxes.csv")
                share, seed = float(settings.get("aux_box_share", 1.0)), int(settings.get("aux_box_seed", 0))
                self._box_slices = keep_box_share(every, share, seed)
                if share < 1:
                    self.announce(f"[aux] per-slice fracture targets from the boxes of {len(self._box_slices)} of "
                                  f"{len(every)} studies (aux_box_share={share:g}, aux_box_seed={seed})")
            box_slices = self._box_slices
        studies = VertebraDataset(self.cache_dir, frame["StudyInstanceUID"], self.table, settings,
                                  self.cfg["windows"], labels=frame[TARGETS].to_numpy(np.float32), train=train,
                                  box_slices=box_slices)
        if train and settings["train_unit"] == "vertebra":
            return VertebraSampleDataset(studies, float(settings["negatives_per_positive"]))
        return studies  # validation always predicts whole studies: one oof row each

    @classmethod
    def wants_labels(cls, cfg) -> bool:
        """Only the mask channel reads the localiser's voxel labels."""
        return bool(model_settings(cfg).get("mask_channel", False))

    slice_shifts = True  # study_batch takes ``shift``: inference's slice-shift views (src/inference/inputs.py)

    @classmethod
    def study_batch(cls, cfg, volume: np.ndarray, meta: dict, localisation: pd.DataFrame | None,
                    labels: np.ndarray | None = None, shift: float = 0.0) -> dict:
        """The validation item from the study's localisation rows; without them (or for a vertebra
        without one) the task's own fallback, an even share of the study on the whole slice. ``labels``
        (the localiser's compact voxel labels) feed the mask channel as the stored ones do in training;
        ``shift`` moves the sampled slices by that fraction of their spacing (a test-time view)."""
        rows = localisation if localisation is not None else pd.DataFrame(columns=CROP_COLUMNS)
        plans = next(iter(study_plans(rows).values()), {})  # the rows are this study's
        crops = VertebraCrops(model_settings(cfg), cfg["windows"], shift=shift)
        stacks = crops.study_stacks(volume, meta, plans, predicted=labels if crops.mask_channel else None)
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
