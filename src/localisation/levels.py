"""Level checks on a localisation: are C1..C7 seven vertebrae in order, each of a plausible height?

A localiser that miscounts (C1 and C2 right, then every later label one vertebra too low, its "C7" on
T1) still gives seven tidy rows with a high softmax confidence, and every crop then shows the wrong
vertebra. These checks catch it from the geometry of the slice ranges alone, against ranges learned
from the segmented studies' masks (:func:`learn_ranges`), never from guessed constants:

- ``height``  each vertebra's height in mm (slices x slice spacing);
- ``ratio``   each vertebra's height over the one above it;
- ``gap``     the signed distance in mm from the end of the vertebra above to the start of this one
              (negative: they overlap; C2's dens reaches up into C1's ring);
- ``c1_top``  how far C1's first slice lies below the first slice of any vertebra (C1 is the top);
- ``order``   the centres run C1..C7 head to feet.

A feature outside its learned range by more than its tolerance (from the localiser's error on that
feature over the segmented studies, in slices of this study's spacing; carried through to a ratio)
fails. ``level_confidence`` = exp(-worst excess in tolerances): 1 when every feature lies in its range,
0 when the order is broken; a study is ``level_flag``ged below exp(-1), when some feature is out by
more than one tolerance.

:func:`repair_levels` re-assigns levels from the run of vertebra-shaped components in the predicted
label volume (dips of the labelled voxels per slice are the discs) and is kept only when its result
passes the checks. Called by src/localisation/build.py (the table), src/localisation/predict.py
(inference) and benchmarks/levels.py (how often the flags are right); columns in
docs/data.md#the-localisation-table.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import VERTEBRAE
from ..io_utils import atomic_write_json

RANGES_FILE = "levels.json"  # in the localiser experiment's folder, beside fold0/ ... (src/runs.py layout)
FLAG_BELOW = math.exp(-1.0)
# A tolerance is TOLERANCE_SCALE x this quantile of the localiser's error on the segmented studies: on the
# demo these flag 5.8% of the table's studies (none of them wrong) and catch 94-100% of the miscounts
# benchmarks/levels.py makes on purpose; the largest error alone (1.0, 1.0) flags 7.7% and catches 61%
# of one kind (README, "Level checks").
TOLERANCE_QUANTILE = 0.8
TOLERANCE_SCALE = 2.0


@dataclass
class LevelRanges:
    """What the checks compare with: each feature's [low, high] over the segmented studies' masks, and
    its tolerance in slices, from the difference between the localiser's feature and the mask's on those
    studies (:func:`learn_ranges`; feature name -> value; ratios carry their heights' tolerances instead)."""

    bounds: dict[str, tuple[float, float]]
    tolerance: dict[str, float]
    n_studies: int

    def to_json(self, path: Path) -> Path:
        atomic_write_json(Path(path), {"n_studies": self.n_studies, "tolerance_slices": self.tolerance,
                                       "bounds": {k: list(v) for k, v in self.bounds.items()}})
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> "LevelRanges":
        try:
            data = json.loads(Path(path).read_text())
            return cls({k: (float(v[0]), float(v[1])) for k, v in data["bounds"].items()},
                       {k: float(v) for k, v in data["tolerance_slices"].items()}, int(data["n_studies"]))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{path}: not a level-ranges file ({err}); rebuild it with `python -m src.localise`") from None


@dataclass
class LevelCheck:
    """The verdict on one study: confidence in [0, 1], flagged or not, and why."""

    confidence: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    repaired: bool = False


def features(ranges: dict[str, tuple[int, int]], spacing: float) -> dict[str, float]:
    """The checked quantities of one study from its inclusive slice-index ranges (volume order, head
    first) and its slice spacing in mm."""
    heights = {v: (ranges[v][1] - ranges[v][0] + 1) * spacing for v in VERTEBRAE}
    out = {f"height_{v}": heights[v] for v in VERTEBRAE}
    for above, v in zip(VERTEBRAE, VERTEBRAE[1:]):
        out[f"ratio_{v}"] = heights[v] / heights[above]
        out[f"gap_{v}"] = (ranges[v][0] - ranges[above][1] - 1) * spacing
    out["c1_top"] = (ranges["C1"][0] - min(r[0] for r in ranges.values())) * spacing
    return out


def learn_ranges(truths, predictions=None, quantile: float = TOLERANCE_QUANTILE,
                 scale: float = TOLERANCE_SCALE) -> LevelRanges:
    """Feature ranges from ``(ranges, spacing)`` pairs of true (mask-derived) slice ranges, and with
    ``predictions`` (the localiser's ranges of the same studies, in the same order) each feature's
    tolerance in slices: ``scale`` x the ``quantile`` of |predicted - true| / spacing over them (1 slice
    at least, and without predictions). Studies whose mask lacks a cervical vertebra are passed over."""
    predictions = list(predictions) if predictions is not None else [None] * len(truths)
    pairs = [(t, p, s) for (t, s), p in zip(truths, predictions) if all(t.get(v) is not None for v in VERTEBRAE)]
    if not pairs:
        raise ValueError("no segmented study shows all of C1..C7: the level ranges cannot be learned")
    true_feats = pd.DataFrame([features(t, s) for t, _, s in pairs])
    bounds = {k: (round(float(true_feats[k].min()), 4), round(float(true_feats[k].max()), 4)) for k in true_feats}
    names = [k for k in true_feats if not k.startswith("ratio_")]
    errors = pd.DataFrame([{k: abs(features(p, s)[k] - features(t, s)[k]) / s for k in names}
                           for t, p, s in pairs if p is not None], columns=names)
    tolerance = {k: max(1.0, scale * float(errors[k].quantile(quantile)) if len(errors) else 1.0) for k in names}
    return LevelRanges(bounds, {k: round(v, 4) for k, v in tolerance.items()}, len(pairs))


def _tolerance_mm(name: str, feats: dict, spacing: float, learned: LevelRanges) -> float:
    """A feature's tolerance in its own units: its learned slices times this study's spacing; for a
    ratio, its two heights' tolerances carried through."""
    if name.startswith("ratio_"):
        v = name.split("_")[1]
        above = VERTEBRAE[VERTEBRAE.index(v) - 1]
        return feats[name] * sum(learned.tolerance.get(f"height_{w}", 1.0) * spacing / feats[f"height_{w}"]
                                 for w in (v, above))
    return learned.tolerance.get(name, 1.0) * spacing


def check_levels(ranges: dict[str, tuple[int, int]], spacing: float, learned: LevelRanges) -> LevelCheck:
    """Judge one study's slice-index ranges (volume order) against the learned ranges."""
    centres = [(ranges[v][0] + ranges[v][1]) / 2 for v in VERTEBRAE]
    broken = [f"{b} above {a}" for a, b, ca, cb in zip(VERTEBRAE, VERTEBRAE[1:], centres, centres[1:]) if cb <= ca]
    if broken:
        return LevelCheck(0.0, True, [f"order: {', '.join(broken)}"])
    feats = features(ranges, spacing)
    worst, reasons = 0.0, []
    for name, value in feats.items():
        if name not in learned.bounds:
            continue
        lo, hi = learned.bounds[name]
        excess = max(lo - value, value - hi, 0.0) / max(_tolerance_mm(name, feats, spacing, learned), 1e-9)
        worst = max(worst, excess)
        if excess > 1.0:
            reasons.append(f"{name} {value:.3g} outside [{lo:.3g}, {hi:.3g}]")
    confidence = math.exp(-worst)
    return LevelCheck(round(confidence, 4), confidence < FLAG_BELOW, reasons)


# ---- the table's terms: DICOM slice numbers <-> slice indices ----

def index_ranges(rows: pd.DataFrame, slice_numbers) -> dict[str, tuple[int, int]]:
    """A study's seven table rows (slice_min/slice_max in DICOM numbers) as index ranges in volume order."""
    position = {int(n): i for i, n in enumerate(slice_numbers)}
    out = {}
    for row in rows.itertuples(index=False):
        a, b = position[int(row.slice_min)], position[int(row.slice_max)]
        out[str(row.vertebra)] = (min(a, b), max(a, b))
    return out


def mask_ranges(mask: np.ndarray) -> dict[str, tuple[int, int] | None]:
    """True index ranges of C1..C7 in a (cervical or full) label volume on the cached grid."""
    from .metrics import true_slice_ranges

    return true_slice_ranges(np.where(np.asarray(mask) <= len(VERTEBRAE), mask, 0))


def with_level_columns(rows: pd.DataFrame, check: LevelCheck) -> pd.DataFrame:
    """The study's rows with the level columns appended (the same values on all seven)."""
    return rows.assign(level_confidence=check.confidence, level_flag=bool(check.flagged),
                       level_repaired=bool(check.repaired))


# ---- repair ----

def components(labels: np.ndarray, min_prominence: float = 0.25) -> list[tuple[int, int]]:
    """The vertebra-shaped pieces of the labelled cervical run, top to bottom, as inclusive slice ranges:
    the run of slices holding any label 1..7, cut at each dip of the labelled voxels per slice that is
    ``min_prominence`` of the run's peak below both its neighbouring maxima (a disc)."""
    from scipy.signal import find_peaks

    from .extents import main_run

    profile = ((labels >= 1) & (labels <= len(VERTEBRAE))).sum(axis=(1, 2)).astype(float)
    run = main_run(profile)
    if run is None:
        return []
    lo, hi = run
    part = profile[lo:hi + 1]
    # pad with zeros so a dip next to the run's ends is measured against a real shoulder
    dips, _ = find_peaks(-np.concatenate([[0.0], part, [0.0]]), prominence=min_prominence * part.max())
    cuts = [d - 1 for d in dips if 1 <= d - 1 <= len(part) - 2]
    edges = [lo] + [lo + c for c in cuts] + [hi + 1]
    pieces = []
    for a, b in zip(edges, edges[1:]):  # each piece without the empty disc slices at its ends
        filled = np.flatnonzero(profile[a:b] > 0)
        if len(filled):
            pieces.append((a + int(filled[0]), a + int(filled[-1])))
    return pieces


def repair_levels(labels: np.ndarray, ranges: dict[str, tuple[int, int]], spacing: float,
                  learned: LevelRanges) -> tuple[dict[str, tuple[int, int]], LevelCheck] | None:
    """Levels re-assigned from the components of the predicted labels: the top of the run is the C1/C2
    complex (no disc between the two; a piece too short for C2, such as C1's ring above the dens, is joined
    to the next one), then one component each for C3..C7, and anything below (a T1 taken for C7) is left
    out. C1 keeps its predicted range inside the complex, C2 the rest. None when the labels do not show
    enough components or the result fails the checks."""
    pieces = components(labels)
    shortest_c2 = learned.bounds.get("height_C2", (0.0, 0.0))[0] - learned.tolerance.get("height_C2", 1.0) * spacing
    while len(pieces) > 1 and (pieces[0][1] - pieces[0][0] + 1) * spacing < shortest_c2:
        pieces = [(pieces[0][0], pieces[1][1])] + pieces[2:]
    if len(pieces) < 6:
        return None
    top, rest = pieces[0], pieces[1:6]
    c1_lo = min(max(ranges["C1"][0], top[0]), top[1])
    c1_hi = min(max(ranges["C1"][1], c1_lo), top[1])
    repaired = {"C1": (c1_lo, c1_hi), "C2": (min(max(ranges["C2"][0], top[0]), top[1]), top[1])}
    repaired.update({v: piece for v, piece in zip(VERTEBRAE[2:], rest)})
    check = check_levels(repaired, spacing, learned)
    if check.flagged:
        return None
    check.repaired = True
    return repaired, check


def repaired_extents(labels: np.ndarray, ranges: dict[str, tuple[int, int]], extents: dict) -> dict:
    """Extents with the repaired slice ranges: each box that of every cervical label on those slices, the
    vertebra's confidence kept from the extent it replaces."""
    from .extents import Extent, main_run

    out = {}
    for v, (lo, hi) in ranges.items():
        core = (labels[lo:hi + 1] >= 1) & (labels[lo:hi + 1] <= len(VERTEBRAE))
        rows, cols = main_run(core.sum(axis=(0, 2))), main_run(core.sum(axis=(0, 1)))
        old = extents[v]
        if rows is None or cols is None:
            rows, cols = (old.row_lo, old.row_hi), (old.col_lo, old.col_hi)
        out[v] = Extent(lo, hi, rows[0], rows[1], cols[0], cols[1], confidence=old.confidence, estimated=old.estimated)
    return out


def relabelled(labels: np.ndarray, extents: dict) -> np.ndarray:
    """The voxel labels renumbered to agree with repaired extents: every cervical voxel on a vertebra's
    slices takes that vertebra's label (on a slice two ranges share, the lower vertebra's), so the mask
    channel shows what the repaired table rows say."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    cervical = (labels >= 1) & (labels <= len(VERTEBRAE))
    for k, v in enumerate(VERTEBRAE):
        lo, hi = extents[v].slice_range
        out[lo:hi + 1][cervical[lo:hi + 1]] = k + 1
    return out


def judge_extents(labels: np.ndarray | None, extents: dict, spacing: float, learned: LevelRanges,
                  repair: bool = False) -> tuple[dict, LevelCheck]:
    """A study's seven extents (src/localisation/extents.py) checked, and with ``repair`` (and its labels)
    re-assigned from the labels' components when they fail and the repair passes the checks."""
    ranges = {v: ext.slice_range for v, ext in extents.items()}
    check = check_levels(ranges, spacing, learned)
    if check.flagged and repair and labels is not None:
        fixed = repair_levels(labels, ranges, spacing, learned)
        if fixed is not None:
            return repaired_extents(labels, fixed[0], extents), fixed[1]
    return extents, check

