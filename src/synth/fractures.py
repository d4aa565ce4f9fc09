"""Which vertebrae of a synthetic study are fractured, and the clefts that show it.

Called by src.synth.study (one study) and src.synth.generate (labels for a whole dataset).
Labels follow the real training set's prevalence (docs/data.md#the-metric). Drawing each vertebra
independently cannot match both the per-vertebra rates and ``patient_overall`` (fractured studies
have about 1.5 fractured vertebrae), so a study is first drawn fractured or not, then its vertebrae
are drawn independently given "at least one", with per-vertebra probabilities solved so the
conditional rates come out right.

A fracture is a thin plane of low density through the body or the arch of one vertebra, limited
to a disc of radius ``radius`` around a point, with the fragment on one side shifted a little. The
plane is steep (at most ~40 degrees from vertical, except at the dens) so it crosses several axial
slices and shows on each as a dark line through the bone. A fractured atlas (C1) breaks like a
Jefferson fracture, in two places on roughly opposite sides of its ring: a single break of a ring
that thin and that short (a few slices) is too small a sign to learn from the demo's few dozen cases.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import VERTEBRAE
from .anatomy import LABEL_OF, Part

# docs/data.md#the-metric, real train labels
PATIENT_RATE = 0.476
VERTEBRA_RATES = {"C1": 0.072, "C2": 0.141, "C3": 0.036, "C4": 0.053, "C5": 0.080, "C6": 0.137, "C7": 0.195}


def conditional_probabilities(rates: dict[str, float] = VERTEBRA_RATES, patient_rate: float = PATIENT_RATE) -> np.ndarray:
    """Per-vertebra probabilities q such that, drawing independently and redrawing "none",
    P(vertebra | fractured) = rate / patient_rate for every vertebra."""
    target = np.array([rates[v] for v in VERTEBRAE]) / patient_rate
    if target.max() >= 1.0:
        raise ValueError("a vertebra rate above the patient rate cannot be matched")
    z = 1.0  # z = P(at least one) under q; q = target * z is a fixed point of this map
    for _ in range(200):
        z = 1.0 - np.prod(1.0 - target * z)
    return target * z


_Q = conditional_probabilities()


def draw_fractured_vertebrae(rng: np.random.Generator) -> list[str]:
    """The fractured vertebrae of one study (empty for an intact study)."""
    if rng.random() >= PATIENT_RATE:
        return []
    while True:
        hit = rng.random(len(VERTEBRAE)) < _Q
        if hit.any():
            return [v for v, h in zip(VERTEBRAE, hit) if h]


def target_row(fractured: list[str]) -> dict[str, int]:
    """The train.csv columns for a study: patient_overall then C1..C7."""
    row = {"patient_overall": int(bool(fractured))}
    row.update({v: int(v in fractured) for v in VERTEBRAE})
    return row


@dataclass
class Fracture:
    """One cleft, in the study's canonical frame (mm; see src.synth.anatomy)."""

    vertebra: str
    component: str  # body | arch | ring | dens
    centre: tuple[float, float, float]  # (u, v, a)
    normal: tuple[float, float, float]  # unit normal of the cleft plane
    half_width: float
    radius: float
    contrast: float  # 1: the cleft is soft tissue; 0: invisible
    cleft_hu: float
    shift: tuple[float, float]  # (u, v) displacement of the fragment on the normal's side
    shift_radius: float

    @property
    def label(self) -> int:
        return LABEL_OF[self.vertebra]

    def _offsets(self, u, v, a):
        return u - self.centre[0], v - self.centre[1], a - self.centre[2]

    def warp(self, u, v, a):
        """Coordinates at which to evaluate the bone so the fragment appears shifted by ``shift``."""
        du, dv, da = self._offsets(u, v, a)
        side = (du * self.normal[0] + dv * self.normal[1] + da * self.normal[2]) > 0
        dist = np.sqrt(du * du + dv * dv + da * da)
        weight = np.where(side, np.clip(1.0 - dist / self.shift_radius, 0.0, 1.0), 0.0).astype(np.float32)
        return u - weight * self.shift[0], v - weight * self.shift[1]

    def cleft_mask(self, u, v, a) -> np.ndarray:
        du, dv, da = self._offsets(u, v, a)
        across = np.abs(du * self.normal[0] + dv * self.normal[1] + da * self.normal[2])
        return (across < self.half_width) & (du * du + dv * dv + da * da < self.radius ** 2)

    def as_dict(self) -> dict:
        return asdict(self)


def _unit(u: float, v: float, a: float) -> tuple[float, float, float]:
    n = np.array([u, v, a], dtype=np.float64)
    return tuple(float(x) for x in n / np.linalg.norm(n))


def _steep_normal(rng: np.random.Generator, in_plane: tuple[float, float], max_tilt_deg: float) -> tuple:
    """A plane normal mostly in the axial plane (so the cleft crosses several slices), tilted up or down."""
    tilt = np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg))
    return _unit(in_plane[0] * np.cos(tilt), in_plane[1] * np.cos(tilt), np.sin(tilt))


def plan_fractures(rng: np.random.Generator, part: Part, pixel_mm: float, scale: float) -> list[Fracture]:
    """The clefts of one fractured vertebra: two across the atlas ring on roughly opposite sides, one elsewhere."""
    if part.name != "C1":
        return [plan_cleft(rng, part, pixel_mm, scale)]
    psi = rng.uniform(0.0, 2 * np.pi)
    opposite = psi + np.pi + rng.uniform(-0.7, 0.7)
    return [plan_cleft(rng, part, pixel_mm, scale, ring_angle=psi),
            plan_cleft(rng, part, pixel_mm, scale, ring_angle=opposite)]


def plan_cleft(rng: np.random.Generator, part: Part, pixel_mm: float, scale: float,
               ring_angle: float | None = None) -> Fracture:
    """Place one cleft in ``part`` (a vertebra): where, how wide, how visible, how displaced.

    ``pixel_mm`` keeps the cleft 3-4 pixels wide and the fragment 2-3 pixels out of line at any image size;
    ``ring_angle`` (radians round the atlas ring, 0 = its back) places a C1 cleft, drawn at random if None.
    """
    name = part.name
    crx, cry = part.canal
    th = part.arch_thickness
    if name == "C1":
        component = "ring"
    elif name == "C2":
        component = rng.choice(["dens", "body", "arch"], p=[0.35, 0.35, 0.30])
    else:
        component = rng.choice(["body", "arch"], p=[0.6, 0.4])
    if component == "body":
        cv, rx, ry, top, bottom = part.body
        centre = (rng.uniform(-0.5, 0.5) * rx, cv + rng.uniform(-0.4, 0.4) * ry,
                  rng.uniform(top + 0.3 * (bottom - top), bottom - 0.3 * (bottom - top)))
        angle = rng.uniform(0.0, np.pi)
        normal = _steep_normal(rng, (np.cos(angle), np.sin(angle)), 35.0)
        radius = rng.uniform(1.5, 2.0) * rx  # the cleft cuts the whole body
    elif component == "dens":
        cv, rx, ry, top, bottom = part.body
        centre = (0.0, -14.0 + rng.uniform(-1.0, 1.0), top - rng.uniform(1.0, 4.0))
        angle = rng.uniform(0.0, 2 * np.pi)
        tilt = np.radians(rng.uniform(35.0, 55.0))  # dens fractures run obliquely across its base
        normal = _unit(np.cos(angle) * np.cos(tilt), np.sin(angle) * np.cos(tilt), np.sin(tilt))
        radius = rng.uniform(6.0, 9.0)
    else:  # a point on the ring round the canal, cut across
        if component == "ring":
            ring_cv, ring_r = -4.5, (17.75, 16.75)
            psi = rng.uniform(0.0, 2 * np.pi) if ring_angle is None else ring_angle
            a_mid = rng.uniform(3.5, 7.0)
        else:
            ring_cv, ring_r = 0.0, (crx + th / 2, cry + th / 2)
            psi = rng.uniform(-1.3, 1.3)  # lamina (0 = midline) to pedicle
            _, _, _, top, bottom = part.body
            a_mid = rng.uniform(top + 0.3 * (bottom - top), top + 0.65 * (bottom - top))
        centre = (ring_r[0] * np.sin(psi), ring_cv + ring_r[1] * np.cos(psi), a_mid)
        tangent = (ring_r[0] * np.cos(psi), -ring_r[1] * np.sin(psi))
        tn = np.hypot(*tangent)
        normal = _steep_normal(rng, (tangent[0] / tn, tangent[1] / tn), 30.0)
        radius = rng.uniform(9.0, 12.0)  # through the whole thickness of the arch or ring
    # Clefts that split the bone: 3-4 pixels wide, nearly as dark as soft tissue, the fragment moved 2-3
    # pixels (benchmarks/fracture_probe.py: fainter, narrower clefts were not learnable from the demo's
    # few hundred fractures; these are, at 64 px crops)
    width_mm = max(rng.uniform(1.2, 2.8), rng.uniform(3.0, 4.0) * pixel_mm)
    contrast = float(np.clip(rng.beta(4.0, 1.6), 0.95, 1.0))
    shift_mm = max(rng.uniform(0.0, 2.5), rng.uniform(2.0, 3.0) * pixel_mm)
    shift_dir = rng.uniform(0.0, 2 * np.pi)
    return Fracture(
        vertebra=name, component=str(component), centre=tuple(float(c) for c in centre), normal=normal,
        half_width=float(width_mm / scale / 2), radius=float(radius), contrast=contrast,
        cleft_hu=float(rng.uniform(-60.0, 20.0)),
        shift=(float(shift_mm / scale * np.cos(shift_dir)), float(shift_mm / scale * np.sin(shift_dir))),
        shift_radius=float(radius * 1.5))
