"""Signed-distance shapes the synthetic anatomy is built from.

Used by src.synth.anatomy. Every shape answers ``sdf(u, v, a)``: the approximate distance in mm to
its surface, negative inside. ``u`` runs to the patient's left, ``v`` to the back, ``a`` toward the
feet (mm below the top of C1), all in the study's canonical (unscaled) frame centred on the spinal
canal. ``u`` and ``v`` are arrays over a block of pixels, ``a`` is one value per slice, shape
(slices, 1, 1). A union of shapes is the minimum of their distances, a hole the maximum with the
negated distance; the depth below the surface then tells cortical from trabecular bone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EllipseSlab:
    """An elliptic cylinder along the body axis between ``a0`` and ``a1`` (a vertebral body, a disc)."""

    cu: float
    cv: float
    ru: float
    rv: float
    a0: float
    a1: float

    def sdf(self, u, v, a):
        radial = np.sqrt(((u - self.cu) / self.ru) ** 2 + ((v - self.cv) / self.rv) ** 2)
        d = (radial - 1.0) * min(self.ru, self.rv)
        return np.maximum(d, np.maximum(self.a0 - a, a - self.a1))

    @property
    def a_range(self):
        return self.a0, self.a1

    @property
    def bbox(self):
        return self.cu - self.ru, self.cu + self.ru, self.cv - self.rv, self.cv + self.rv


@dataclass(frozen=True)
class Annulus:
    """An elliptic ring between ``a0`` and ``a1``, optionally cut to ``v >= v_min`` or ``v <= v_max``.

    The neural arch around the canal, the atlas ring, the jaw and the skull base are all rings cut
    to the part that exists.
    """

    cu: float
    cv: float
    outer: tuple[float, float]
    inner: tuple[float, float]
    a0: float
    a1: float
    v_min: float | None = None
    v_max: float | None = None

    def sdf(self, u, v, a):
        du, dv = u - self.cu, v - self.cv
        ro = np.sqrt((du / self.outer[0]) ** 2 + (dv / self.outer[1]) ** 2)
        ri = np.sqrt((du / self.inner[0]) ** 2 + (dv / self.inner[1]) ** 2)
        d = np.maximum((ro - 1.0) * min(self.outer), (1.0 - ri) * min(self.inner))
        if self.v_min is not None:
            d = np.maximum(d, self.v_min - v)
        if self.v_max is not None:
            d = np.maximum(d, v - self.v_max)
        return np.maximum(d, np.maximum(self.a0 - a, a - self.a1))

    @property
    def a_range(self):
        return self.a0, self.a1

    @property
    def bbox(self):
        v0 = self.cv - self.outer[1] if self.v_min is None else max(self.v_min, self.cv - self.outer[1])
        v1 = self.cv + self.outer[1] if self.v_max is None else min(self.v_max, self.cv + self.outer[1])
        return self.cu - self.outer[0], self.cu + self.outer[0], v0, v1


@dataclass(frozen=True)
class Bar:
    """A 2-D capsule from ``p`` to ``q`` (in u, v) extruded between ``a0`` and ``a1`` (pedicles, processes)."""

    p: tuple[float, float]
    q: tuple[float, float]
    r: float
    a0: float
    a1: float

    def sdf(self, u, v, a):
        pu, pv = u - self.p[0], v - self.p[1]
        eu, ev = self.q[0] - self.p[0], self.q[1] - self.p[1]
        t = np.clip((pu * eu + pv * ev) / max(eu * eu + ev * ev, 1e-9), 0.0, 1.0)
        d = np.sqrt((pu - t * eu) ** 2 + (pv - t * ev) ** 2) - self.r
        return np.maximum(d, np.maximum(self.a0 - a, a - self.a1))

    @property
    def a_range(self):
        return self.a0, self.a1

    @property
    def bbox(self):
        return (min(self.p[0], self.q[0]) - self.r, max(self.p[0], self.q[0]) + self.r,
                min(self.p[1], self.q[1]) - self.r, max(self.p[1], self.q[1]) + self.r)


@dataclass(frozen=True)
class Capsule:
    """A 3-D capsule from ``p`` to ``q`` (u, v, a): sloping bones such as spinous processes, ribs, the dens."""

    p: tuple[float, float, float]
    q: tuple[float, float, float]
    r: float

    def sdf(self, u, v, a):
        pu, pv, pa = u - self.p[0], v - self.p[1], a - self.p[2]
        eu, ev, ea = (self.q[i] - self.p[i] for i in range(3))
        t = np.clip((pu * eu + pv * ev + pa * ea) / max(eu * eu + ev * ev + ea * ea, 1e-9), 0.0, 1.0)
        return np.sqrt((pu - t * eu) ** 2 + (pv - t * ev) ** 2 + (pa - t * ea) ** 2) - self.r

    @property
    def a_range(self):
        return min(self.p[2], self.q[2]) - self.r, max(self.p[2], self.q[2]) + self.r

    @property
    def bbox(self):
        return (min(self.p[0], self.q[0]) - self.r, max(self.p[0], self.q[0]) + self.r,
                min(self.p[1], self.q[1]) - self.r, max(self.p[1], self.q[1]) + self.r)


def sphere(centre: tuple[float, float, float], r: float) -> Capsule:
    return Capsule(centre, centre, r)


def mirrored(make) -> list:
    """The left and right copy of a paired structure: ``make(side)`` with side = -1 (right), +1 (left)."""
    return [make(-1.0), make(1.0)]


def union_sdf(solids, holes, u, v, a) -> np.ndarray:
    """Distance to the union of ``solids`` minus ``holes``, shape of ``u``; +inf far from everything.

    ``a`` is one value per slice and increases with the slice index, so each shape is evaluated only
    on the run of slices its height range covers.
    """
    flat_a = a.reshape(-1)
    d = np.full(u.shape, np.inf, dtype=np.float32)

    def span(shape):
        lo, hi = shape.a_range
        i0, i1 = np.searchsorted(flat_a, [lo, hi], side="left")[0], np.searchsorted(flat_a, hi, side="right")
        return i0, i1

    for shape in solids:
        i0, i1 = span(shape)
        if i1 > i0:
            d[i0:i1] = np.minimum(d[i0:i1], shape.sdf(u[i0:i1], v[i0:i1], a[i0:i1]))
    for hole in holes:
        i0, i1 = span(hole)
        if i1 > i0:
            d[i0:i1] = np.maximum(d[i0:i1], -hole.sdf(u[i0:i1], v[i0:i1], a[i0:i1]))
    return d
