"""Why a vertebra classifier predicted what it did for one study: the crops it saw, where its attention went.

An :class:`StudyExplanation` holds, for each of C1..C7, the ``n_slices`` crops the model was fed (built by
the vertebra task's own item builder, :class:`src.tasks.vertebra.VertebraCrops`, so they are exactly the
validation or inference input), the DICOM numbers of the sampled slices, the attention weight the GRU's
pooling gave each slice (the model's ``"attention"`` output, src/models/effnet_gru.py), the eight
probabilities and, where known, the labels; plus the study volume and the localisation plans the crops
were cut from, for the reformats that src/tasks/explanation_figure.py draws.

Called by the vertebra task at the end of training (``VertebraTask.explain``), by the explain command's
library (src/reporting/explanations.py), by inference with ``explain=true`` (src/inference/explanations.py)
and by benchmarks/attention_on_cleft.py. Which studies to explain: :func:`worst_studies` (the held-out
studies the run got most wrong) and :func:`fractured_studies`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import TARGETS, VERTEBRAE
from ..metric import study_losses


@dataclass
class StudyExplanation:
    uid: str
    probs: np.ndarray             # (8,) TARGETS order
    attention: np.ndarray         # (7, N) per vertebra, sums to 1 over its N slices
    slice_numbers: np.ndarray     # (7, N) the study's DICOM numbers of the sampled slices
    positions: np.ndarray         # (7, N) the same slices as volume indices (head first)
    crops: np.ndarray             # (7, N, S, S) what the model saw of each slice: the centre slice, first window
    volume: np.ndarray            # int16 HU (slices, H, W), head first: the reformats are cut from it
    meta: dict                    # the volume's meta (src/data/cache.py)
    plans: dict                   # vertebra -> (slice_min, slice_max, x0, y0, x1, y1) the crops used
    labels: np.ndarray | None = None   # (8,) where known
    estimated: set = field(default_factory=set)  # vertebrae without a localisation row (an even split stood in)
    source: str = ""              # what predicted it, for the picture's title ("effnet_gru fold 0, held out")

    @property
    def patient_loss(self) -> float | None:
        """The study's competition loss, when its labels are known."""
        if self.labels is None:
            return None
        return float(study_losses(self.labels[None], self.probs[None])[0])


def centre_channel(crops) -> int:
    """The channel of a crop stack that holds the sampled slice itself in the first window (channels are
    neighbour-major: (2k+1) slices x windows, src/tasks/vertebra.py)."""
    return crops.neighbours * len(crops.windows)


@torch.no_grad()
def explain_study(model, crops, uid: str, volume: np.ndarray, meta: dict, plans: dict, labels=None,
                  images: torch.Tensor | None = None, source: str = "",
                  predicted: np.ndarray | None = None) -> StudyExplanation:
    """Run ``model`` (a vertebra classifier with an ``attention`` output, in eval mode) on one study.

    ``crops`` is the task's VertebraCrops (``train=False``); ``plans`` the study's localisation plans
    (src.tasks.vertebra.study_plans), a vertebra without one taking the task's fallback as in validation.
    ``images`` is the study's batch when it is already built (inference), else it is built here, with
    the localiser's compact ``predicted`` labels for a mask channel (src/localisation/stored_labels.py).
    """
    from .vertebra import fallback_plan

    used = {v: plans.get(v) or fallback_plan(meta, v) for v in VERTEBRAE}
    if images is None:
        images = torch.from_numpy(crops.study_stacks(volume, meta, used, predicted=predicted))[None]
    device = next(model.parameters()).device
    out = model({"images": images.to(device)})
    if "attention" not in out:
        raise ValueError(f"model {type(model).__name__} gives no attention output: only a vertebra classifier "
                         f"with attention pooling (effnet_gru) can be explained")
    positions = np.stack([crops.positions(meta, used[v]) for v in VERTEBRAE])
    numbers = np.asarray(meta["slice_numbers"])[positions]
    shown = images[0, :, :, centre_channel(crops)].float().cpu().numpy()
    return StudyExplanation(
        uid=uid, probs=torch.sigmoid(out["logits"][0].float()).cpu().numpy(),
        attention=out["attention"][0].float().cpu().numpy(), slice_numbers=numbers, positions=positions,
        crops=shown, volume=volume, meta=meta, plans=used,
        labels=None if labels is None else np.asarray(labels, dtype=float),
        estimated={v for v in VERTEBRAE if not plans.get(v)}, source=source)


def explain_cached(model, dataset, uid: str, labels=None, source: str = "") -> StudyExplanation:
    """:func:`explain_study` for a study of a VertebraDataset (validation): its cached volume, its plans."""
    from ..data.cache import load_study
    from ..localisation.stored_labels import load_labels

    study = load_study(dataset.cache_dir, dataset.split, uid, with_mask=False)
    predicted = load_labels(dataset.cache_dir, dataset.split, uid) if dataset.crops.mask_channel else None
    return explain_study(model, dataset.crops, uid, study.volume, study.meta, dataset.plans.get(uid, {}),
                         labels=labels, source=source, predicted=predicted)


def _aligned(oof: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """oof's studies that ``labels`` (StudyInstanceUID + TARGETS) knows, with both arrays in oof's order."""
    truth = labels.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")
    known = oof[oof["StudyInstanceUID"].isin(truth.index)].reset_index(drop=True)
    return known, truth.loc[known["StudyInstanceUID"], TARGETS].to_numpy(float), known[TARGETS].to_numpy(float)


def worst_studies(oof: pd.DataFrame, labels: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` studies of ``oof`` (wide, as oof.csv) with the highest competition loss, worst first."""
    known, truth, probs = _aligned(oof, labels)
    if known.empty:
        return []
    order = np.argsort(-study_losses(truth, probs), kind="stable")
    return [str(known["StudyInstanceUID"].iloc[i]) for i in order[:n]]


def fractured_studies(oof: pd.DataFrame, labels: pd.DataFrame, n: int = 0) -> list[str]:
    """The studies of ``oof`` labelled patient_overall = 1, in oof's order (the first ``n`` when n > 0)."""
    known, truth, _ = _aligned(oof, labels)
    uids = [str(u) for u, fractured in zip(known["StudyInstanceUID"], truth[:, 0] > 0.5) if fractured]
    return uids[:n] if n > 0 else uids
