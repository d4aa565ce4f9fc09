"""One synthetic study in memory: geometry, slice numbering, anatomy, fractures, HU and label volumes.

Called by src.synth.generate (which writes the result to DICOM and NIfTI), by src/synthetic_figure.py, and
by tests that need a study without touching disk. Everything about a study follows from
``(study_uid, seed, size)``: three independent random streams (geometry, fractures, noise) mean the
same study rendered without its fractures differs only inside the clefts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import VERTEBRAE
from .anatomy import OUTLINE, Anatomy, StudyGeometry, Tissue, render
from .fractures import Fracture, draw_fractured_vertebrae, plan_fractures, target_row

SIZES = {
    # matrix (rows = cols), slice count range, slice spacings (mm) to choose from, field of view (mm)
    "demo": dict(matrix=128, slices=(60, 160), spacings=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0), fov=(170.0, 240.0),
                 noise=(8.0, 25.0)),
    "full": dict(matrix=512, slices=(200, 600), spacings=(0.5, 0.625, 0.8, 1.0), fov=(180.0, 260.0),
                 noise=(20.0, 45.0)),
}

# how the real data is stored, roughly: uncompressed and JPEG Lossless above all
SYNTAX_MIX = {"explicit_le": 0.50, "jpeg_lossless": 0.35, "rle": 0.08, "jpeg2000_lossless": 0.07}
REVERSED_RATE = 0.15  # numbered from the feet
OFFSET_RATE = 0.30  # numbering does not start at 1
GAP_RATE = 0.10  # some numbers are missing


@dataclass
class SynthStudy:
    """A study as arrays, slice 0 at the head (largest z)."""

    study_uid: str
    hu: np.ndarray  # int16 (slices, rows, cols)
    labels: np.ndarray  # uint8, 0 background, 1..7 C1..C7, 8..19 T1..T12
    cleft: np.ndarray  # uint8, 0 none, i + 1 inside fractures[i]'s cleft
    z_positions: np.ndarray  # ImagePositionPatient z per slice, descending
    slice_numbers: np.ndarray  # the file numbers, per slice
    pixel_spacing: tuple[float, float]  # (row, column) mm
    slice_thickness: float
    origin_xy: tuple[float, float]
    intercept: float
    slope: float
    transfer_syntax: str
    reversed: bool  # True: the head has the highest slice number
    fractured: list[str]  # drawn labels (C1..C7)
    fractures: list[Fracture] = field(default_factory=list)

    @property
    def target(self) -> dict[str, int]:
        return target_row(self.fractured)

    @property
    def slice_spacing(self) -> float:
        return float(abs(self.z_positions[0] - self.z_positions[1])) if len(self.z_positions) > 1 else self.slice_thickness

    def bounding_boxes(self, pad_mm: float = 2.0) -> list[dict]:
        """train_bounding_boxes.csv rows: one per fracture per slice it crosses (x = column, y = row, px)."""
        rows = []
        dy, dx = self.pixel_spacing
        pad_r, pad_c = pad_mm / dy, pad_mm / dx
        n_rows, n_cols = self.hu.shape[1:]
        for i in range(len(self.fractures)):
            hit = np.nonzero((self.cleft == i + 1).any(axis=(1, 2)))[0]
            for s in hit:
                r, c = np.nonzero(self.cleft[s] == i + 1)
                x0, y0 = max(0.0, c.min() - pad_c), max(0.0, r.min() - pad_r)
                x1, y1 = min(n_cols - 1.0, c.max() + pad_c), min(n_rows - 1.0, r.max() + pad_r)
                rows.append({"StudyInstanceUID": self.study_uid, "x": round(float(x0), 2), "y": round(float(y0), 2),
                             "width": round(float(x1 - x0), 2), "height": round(float(y1 - y0), 2),
                             "slice_number": int(self.slice_numbers[s])})
        return rows


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return str(names[rng.choice(len(names), p=p / p.sum())])


def _slice_grid(rng: np.random.Generator, spec: dict, needed_mm: float, extra_mm: float) -> tuple[int, float]:
    """Slice count and spacing: in the size's count range, covering at least ``needed_mm``."""
    lo, hi = spec["slices"]
    n_target = int(rng.integers(lo, hi + 1))
    wanted = needed_mm + extra_mm
    order = sorted(spec["spacings"], key=lambda s: abs(wanted / s - n_target))
    for spacing in order:
        n = int(np.clip(round(wanted / spacing), lo, hi))
        n = max(n, int(np.ceil(needed_mm / spacing)))
        if n <= hi:
            return n, spacing
    spacing = max(spec["spacings"])
    return int(np.clip(np.ceil(needed_mm / spacing), lo, hi)), spacing


def slice_numbering(rng: np.random.Generator, n: int) -> tuple[np.ndarray, bool]:
    """File numbers for slices ordered head first, and whether they run from the feet instead."""
    start = 1 if rng.random() >= OFFSET_RATE else int(rng.integers(2, 400))
    steps = np.ones(n, dtype=np.int64)
    steps[0] = 0
    if rng.random() < GAP_RATE and n > 10:
        for pos in rng.choice(np.arange(2, n - 2), size=int(rng.integers(1, 4)), replace=False):
            steps[pos] += int(rng.integers(1, 4))
    numbers = start + np.cumsum(steps)
    is_reversed = bool(rng.random() < REVERSED_RATE)
    return (numbers[::-1].copy() if is_reversed else numbers), is_reversed


def _tissue(rng: np.random.Generator, spec: dict) -> Tissue:
    return Tissue(
        cortical=rng.uniform(900, 1400), trabecular=rng.uniform(170, 330), cortex_mm=rng.uniform(1.0, 1.6),
        fat=rng.uniform(-110, -80), muscle=rng.uniform(35, 60), csf=rng.uniform(5, 25), disc=rng.uniform(70, 100),
        lung=rng.uniform(-880, -800), fat_mm=rng.uniform(3, 12), neck_width=rng.uniform(0.9, 1.12),
        noise_sd=rng.uniform(*spec["noise"]), blur_mm=rng.uniform(0.35, 0.6),
        fill_outside_fov=bool(rng.random() < 0.35))


def make_study(study_uid: str, seed: int, *, size: str = "demo", fractured: Sequence[str] | None = None,
               with_fractures: bool = True) -> SynthStudy:
    """Build one study in memory.

    ``fractured``: the vertebrae (C1..C7) to fracture; None draws them at the real prevalence.
    ``with_fractures=False`` renders the same study with its clefts left out (its labels and
    fracture plans unchanged), for tests that compare the two.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    spec = SIZES[size]
    geom_rng, frac_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    tissue = _tissue(geom_rng, spec)
    anatomy = Anatomy.build(geom_rng, tissue)
    scale = float(geom_rng.uniform(0.88, 1.12))
    matrix = spec["matrix"]
    fov = float(geom_rng.uniform(*spec["fov"]))
    pixel = round(fov / matrix, 6)
    top_margin = float(geom_rng.uniform(5.0, 35.0))
    c7_bottom = anatomy.vertebra("C7").body[4] * scale
    n, spacing = _slice_grid(geom_rng, spec, needed_mm=top_margin + c7_bottom + 8.0,
                             extra_mm=float(geom_rng.uniform(10.0, 80.0)))
    z_top = round(float(geom_rng.uniform(-250.0, 150.0)), 1)
    z = np.round(z_top - spacing * np.arange(n), 4)
    fov_centre = (float(geom_rng.uniform(-30, 30)), float(geom_rng.uniform(-40, 40)))
    origin = (round(fov_centre[0] - fov / 2, 4), round(fov_centre[1] - fov / 2, 4))
    axis_xy = (fov_centre[0] + float(geom_rng.uniform(-12, 12)), fov_centre[1] + 10.0 + float(geom_rng.uniform(-12, 12)))
    lordosis = float(geom_rng.uniform(8.0, 18.0) if geom_rng.random() > 0.1 else geom_rng.uniform(-4.0, 3.0))
    rotation = float(np.radians(geom_rng.uniform(-8.0, 8.0)))
    sway = float(geom_rng.uniform(-4.0, 4.0))
    geom = StudyGeometry(rows=matrix, cols=matrix, pixel_spacing=(pixel, pixel), origin_xy=origin, z=z,
                         z_c1_top=z_top - top_margin, scale=scale, rotation=rotation, axis_xy=axis_xy,
                         lordosis_mm=lordosis, sway_mm=sway, table_y=0.0)
    # the table sits just under the patient's back at its lowest point
    a = geom.a_of_z(z)
    _, ay = geom.axis(a)
    back = (np.interp(a, OUTLINE[:, 0], OUTLINE[:, 1]) + np.interp(a, OUTLINE[:, 0], OUTLINE[:, 3])) * scale
    geom.table_y = float((ay + back).max() + geom_rng.uniform(1.0, 6.0))

    syntax = _choose(geom_rng, SYNTAX_MIX)
    intercept = -1024.0 if geom_rng.random() < 0.85 else -1000.0
    numbers, is_reversed = slice_numbering(geom_rng, n)

    chosen = draw_fractured_vertebrae(frac_rng) if fractured is None else list(fractured)
    unknown = [v for v in chosen if v not in VERTEBRAE]
    if unknown:
        raise ValueError(f"fractured vertebrae must be among {VERTEBRAE}, got {unknown}")
    plans = [cleft for v in chosen for cleft in plan_fractures(frac_rng, anatomy.vertebra(v), pixel, scale)]
    hu, labels, cleft = render(geom, tissue, anatomy, plans if with_fractures else [], noise_rng)
    return SynthStudy(study_uid=study_uid, hu=hu, labels=labels, cleft=cleft, z_positions=z, slice_numbers=numbers,
                      pixel_spacing=(pixel, pixel), slice_thickness=float(spacing), origin_xy=origin,
                      intercept=intercept, slope=1.0, transfer_syntax=syntax, reversed=is_reversed,
                      fractured=chosen, fractures=plans if with_fractures else [])
