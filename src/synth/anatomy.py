"""The anatomy of a synthetic neck CT: vertebrae C1..T12, other bones, soft tissue, and their rendering to HU.

Called by src.synth.study, which draws a study's geometry and tissue values and asks :func:`render`
for the Hounsfield-unit volume, the vertebra label volume and the fracture-cleft volume on the
study's slice grid. Shapes are signed-distance solids (src.synth.shapes) in a canonical frame in mm:
``u`` to the patient's left, ``v`` to the back, ``a`` toward the feet from the top of C1, centred on
the spinal canal. A study places that frame in patient space with its own scale, rotation and a
gently curved (lordotic) spinal axis.

Why signed distances: the depth below a bone's surface gives the dense cortical shell around
lighter trabecular bone for free, and a fracture can displace a fragment by evaluating the same
solid at shifted coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from .shapes import Annulus, Bar, Capsule, EllipseSlab, mirrored, sphere, union_sdf

VERTEBRA_NAMES = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
LABEL_OF = {name: i + 1 for i, name in enumerate(VERTEBRA_NAMES)}  # 1..7 = C1..C7, 8..19 = T1..T12

AIR_HU = -1000.0
MIN_HU, MAX_HU = -1024.0, 3071.0  # a 12-bit scanner's range with intercept -1024


@dataclass
class Part:
    """A solid drawn into the volume: a vertebra (label 1..19) or another structure (label 0)."""

    name: str
    label: int
    solids: list
    holes: list = field(default_factory=list)
    constant_hu: float | None = None  # discs: one value, no cortex
    cortical: float | None = None  # None: the study's bone values
    trabecular: float | None = None
    # the body: (centre v, half-width, half-depth, top a, bottom a); None for C1
    body: tuple[float, float, float, float, float] | None = None
    canal: tuple[float, float] = (0.0, 0.0)
    arch_thickness: float = 0.0

    @property
    def a_range(self) -> tuple[float, float]:
        ranges = [s.a_range for s in self.solids]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    @property
    def radius(self) -> float:
        """How far from the canal axis the part reaches in u or v (canonical mm); crops are this size."""
        return max(max(abs(b[0]), abs(b[1]), abs(b[2]), abs(b[3])) for b in (s.bbox for s in self.solids))


# ---------------------------------------------------------------------------------------------
# the spine

def _typical_vertebra(name: str, top: float, body_h: float, body_r: tuple[float, float], canal: tuple[float, float],
                      thoracic: bool, spinous_length: float, spinous_tilt_deg: float, foramen: bool) -> Part:
    rx, ry = body_r
    crx, cry = canal
    th = 4.5 if thoracic else 3.5
    bottom = top + body_h
    cv = -(cry + ry + 0.5)  # the body's back wall touches the front of the canal
    h = body_h
    solids: list = [EllipseSlab(0.0, cv, rx, ry, top, bottom)]
    holes: list = []
    # pedicles join the back of the body to the arch; the arch is shorter than the body, leaving
    # the intervertebral foramina between levels
    arch_a0, arch_a1 = top + 0.12 * h, bottom - 0.05 * h
    solids += mirrored(lambda s: Bar((s * 0.7 * rx, cv + 0.5 * ry), (s * (crx + 1.2), -0.25 * cry), 2.4,
                                     top + 0.15 * h, top + 0.65 * h))
    solids.append(Annulus(0.0, 0.0, (crx + th, cry + th), (crx, cry), arch_a0, arch_a1, v_min=-0.35 * cry))
    tilt = np.tan(np.radians(spinous_tilt_deg))
    base = (0.0, cry + th - 1.5, top + 0.45 * h)
    tip = (0.0, cry + th + spinous_length, top + 0.45 * h + spinous_length * tilt)
    solids.append(Capsule(base, tip, 3.5 if thoracic else 2.9))
    if thoracic:
        solids += mirrored(lambda s: Capsule((s * (crx + 2.0), 1.0, top + 0.35 * h),
                                             (s * (crx + 20.0), cry + 9.0, top + 0.3 * h), 4.0))
    else:
        # articular pillars overlap the next level, as the facet joints do
        solids += mirrored(lambda s: EllipseSlab(s * (crx + 3.0), -0.1 * cry, 4.5, 5.5, top - 1.5, bottom + 2.5))
        solids += mirrored(lambda s: Bar((s * (crx + 1.5), -0.6 * cry), (s * (crx + 11.0 + 0.3 * rx), -0.9 * cry), 2.8,
                                         top + 0.3 * h, top + 0.72 * h))
        if foramen:  # the foramen transversarium carries the vertebral artery through C1..C6
            holes += mirrored(lambda s: Bar((s * (crx + 6.5), -0.78 * cry), (s * (crx + 6.5), -0.78 * cry), 2.0,
                                            top, bottom))
        if spinous_length < 25:  # bifid tips C2..C6
            solids += mirrored(lambda s: sphere((s * 3.0, tip[1], tip[2]), 2.5))
    return Part(name, LABEL_OF[name], solids, holes, body=(cv, rx, ry, top, bottom), canal=canal, arch_thickness=th)


def _atlas() -> Part:
    """C1: a ring with lateral masses and no body; the dens of C2 sits inside its front."""
    ring_cv = -4.5
    solids: list = [
        Annulus(0.0, ring_cv, (20.0, 19.0), (15.5, 14.5), 1.5, 9.0),
        sphere((0.0, ring_cv - 19.5, 5.0), 3.5),  # anterior tubercle
        sphere((0.0, ring_cv + 19.0, 5.0), 3.0),  # posterior tubercle
    ]
    solids += mirrored(lambda s: EllipseSlab(s * 15.0, -6.0, 6.5, 9.0, -1.0, 11.0))  # lateral masses
    solids += mirrored(lambda s: Bar((s * 18.0, -5.0), (s * 33.0, -5.5), 3.5, 2.0, 8.5))  # transverse processes
    holes = mirrored(lambda s: Bar((s * 25.0, -5.0), (s * 25.0, -5.0), 2.5, -2.0, 12.0))
    return Part("C1", 1, solids, holes, body=None, canal=(12.0, 9.0), arch_thickness=4.5)


def _axis_vertebra(top: float, bottom: float) -> Part:
    """C2: a tall body with the dens rising into the atlas ring, a large bifid spinous process."""
    rx, ry, crx, cry = 8.5, 8.0, 11.0, 8.0
    part = _typical_vertebra("C2", top, bottom - top, (rx, ry), (crx, cry), thoracic=False,
                             spinous_length=22.0, spinous_tilt_deg=15.0, foramen=True)
    cv = part.body[0]
    part.solids.append(Capsule((0.0, cv + 2.0, top + 6.0), (0.0, -14.0, 2.5), 4.8))  # the dens
    part.solids += mirrored(lambda s: EllipseSlab(s * 13.0, -8.0, 6.0, 7.0, top - 1.0, top + 6.0))  # facets
    return part


def build_spine(rng: np.random.Generator | None = None) -> list[Part]:
    """C1..T12 stacked along ``a``; ``rng`` jitters each level's height and width by a few percent."""
    def jitter():
        return 1.0 if rng is None else float(rng.uniform(0.95, 1.05))

    parts = [_atlas()]
    c2_bottom = 12.0 + 20.0 * jitter()
    parts.append(_axis_vertebra(12.0, c2_bottom))
    a = c2_bottom
    for i, name in enumerate(VERTEBRA_NAMES[2:]):
        thoracic = name.startswith("T")
        j = i - 5 if thoracic else i  # 0 at C3 / T1
        if thoracic:
            disc, height = 4.5 + 0.3 * j, 16.0 + 0.9 * j
            body_r = (12.5 + 0.8 * j, 9.5 + 0.55 * j)
            canal = (8.5, 8.0)
            spinous, tilt = 30.0, 45.0 + 1.5 * j
        else:
            disc, height = 4.5 + 0.2 * j, 13.5 + 0.4 * j
            body_r = (8.5 + 0.6 * j, 7.5 + 0.25 * j)
            canal = (11.5 - 0.2 * j, 7.5)
            spinous, tilt = (14.0 + 1.5 * j, 22.0) if name != "C7" else (28.0, 15.0)
        w = jitter()
        a += disc * jitter()
        parts.append(_typical_vertebra(name, a, height * jitter(), (body_r[0] * w, body_r[1] * w), canal,
                                       thoracic, spinous, tilt, foramen=name != "C7" and not thoracic))
        a = parts[-1].body[4]
    return parts


def build_discs(spine: list[Part], disc_hu: float) -> list[Part]:
    """Intervertebral discs filling the gap between consecutive bodies (C2/C3 downward)."""
    discs = []
    for upper, lower in zip(spine[1:], spine[2:]):
        cv_u, rx_u, ry_u, _, bottom_u = upper.body
        cv_l, rx_l, ry_l, top_l, _ = lower.body
        if top_l - bottom_u <= 0.2:
            continue
        discs.append(Part(f"disc {upper.name}/{lower.name}", 0,
                          [EllipseSlab(0.0, 0.5 * (cv_u + cv_l), 0.5 * (rx_u + rx_l), 0.5 * (ry_u + ry_l),
                                       bottom_u, top_l)], constant_hu=disc_hu))
    return discs


def build_other_bones(spine: list[Part]) -> list[Part]:
    """Bones that are not vertebrae (label 0): skull base, jaw, hyoid, clavicles, sternum, upper ribs."""
    t1_top = spine[7].body[3]
    parts = [
        # the occipital shell behind the brain, the rim of the foramen magnum, the condyles, the clivus
        Part("skull base", 0, [Annulus(0.0, 5.0, (63.0, 67.0), (56.0, 60.0), -60.0, -8.0, v_min=-25.0),
                               Annulus(0.0, 0.0, (25.0, 26.0), (16.5, 18.0), -13.0, -5.0),
                               Capsule((0.0, -27.0, -9.0), (0.0, -38.0, -60.0), 9.0)]
             + mirrored(lambda s: sphere((s * 13.0, -6.0, -3.5), 6.0))
             + mirrored(lambda s: sphere((s * 48.0, 8.0, -22.0), 11.0)),  # mastoids
             cortical=1500.0, trabecular=600.0),
        Part("mandible", 0, [Annulus(0.0, -45.0, (48.0, 52.0), (40.0, 44.0), 18.0, 42.0, v_max=-48.0)]
             + mirrored(lambda s: EllipseSlab(s * 46.0, -30.0, 4.0, 10.0, -20.0, 28.0)),
             cortical=1600.0, trabecular=500.0),
        Part("hyoid", 0, [Annulus(0.0, -52.0, (18.0, 14.0), (14.5, 10.5), 47.0, 52.0, v_max=-52.0)]),
        # partly calcified laryngeal cartilages: thyroid (a V in front of the larynx), cricoid (a ring)
        Part("thyroid cartilage", 0, [Annulus(0.0, -44.0, (16.0, 15.0), (13.5, 12.5), 56.0, 76.0, v_max=-46.0)],
             cortical=350.0, trabecular=150.0),
        Part("cricoid", 0, [Annulus(0.0, -47.0, (13.0, 13.0), (10.5, 10.5), 78.0, 85.0)],
             cortical=300.0, trabecular=150.0),
        Part("clavicles", 0, mirrored(lambda s: Capsule((s * 18.0, -66.0, t1_top + 14.0),
                                                         (s * 95.0, -32.0, t1_top + 2.0), 7.0))),
        Part("sternum", 0, [EllipseSlab(0.0, -70.0, 14.0, 5.0, t1_top + 24.0, t1_top + 120.0)]),
    ]
    for k, rib in enumerate(spine[7:13]):  # ribs of T1..T6 curve round from the spine to the front
        cv, rx, _, top, bottom = rib.body
        a0 = top + 0.3 * (bottom - top)
        reach = 52.0 + 9.0 * k
        path = [(0.9 * rx, cv + 2.0, a0), (rib.canal[0] + 24.0, rib.canal[1] + 6.0, a0 + 4.0),
                (reach, -10.0, a0 + 22.0 + 3.0 * k), (reach - 18.0, -58.0, a0 + 42.0 + 5.0 * k)]
        solids = []
        for p, q in zip(path[:-1], path[1:]):
            solids += mirrored(lambda s, p=p, q=q: Capsule((s * p[0], p[1], p[2]), (s * q[0], q[1], q[2]), 4.0))
        parts.append(Part(f"ribs {rib.name}", 0, solids, cortical=1000.0, trabecular=250.0))
    return parts


# ---------------------------------------------------------------------------------------------
# soft tissue: keypoints along a (canonical mm below the top of C1), interpolated linearly

# a, centre v, half-width, half-depth of the skin outline (head, jaw, neck, shoulders)
OUTLINE = np.array([
    [-60.0, -15.0, 75.0, 95.0], [5.0, -20.0, 70.0, 90.0], [25.0, -20.0, 62.0, 80.0], [45.0, -14.0, 58.0, 71.0],
    [70.0, -10.0, 56.0, 66.0], [105.0, -10.0, 60.0, 65.0], [125.0, -8.0, 90.0, 66.0], [150.0, -5.0, 150.0, 74.0],
    [400.0, 0.0, 165.0, 85.0]])
# a, centre v, half-width, half-depth of the airway (pharynx, larynx, trachea)
AIRWAY = np.array([
    [-25.0, -45.0, 14.0, 9.0], [0.0, -40.0, 15.0, 8.0], [30.0, -37.0, 13.0, 7.0], [50.0, -40.0, 10.0, 8.0],
    [70.0, -45.0, 9.0, 9.0], [100.0, -48.0, 8.0, 8.0], [400.0, -50.0, 9.0, 9.0]])
AIRWAY_TOP = -25.0


def _interp(table: np.ndarray, a: np.ndarray) -> list[np.ndarray]:
    return [np.interp(a, table[:, 0], table[:, k]) for k in range(1, table.shape[1])]


@dataclass
class Tissue:
    """One study's tissue values (HU) and image quality."""

    cortical: float = 1100.0
    trabecular: float = 260.0
    cortex_mm: float = 1.3
    fat: float = -95.0
    muscle: float = 45.0
    csf: float = 20.0
    disc: float = 85.0
    lung: float = -850.0
    table: float = 150.0
    fat_mm: float = 7.0
    neck_width: float = 1.0  # multiplies the outline's half-width
    noise_sd: float = 15.0
    blur_mm: float = 0.45
    fill_outside_fov: bool = False  # -1024 outside the reconstruction circle, as many scanners write


@dataclass
class StudyGeometry:
    """Where the canonical anatomy sits in patient space (LPS, mm) and the slice grid it is sampled on."""

    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), DICOM PixelSpacing order
    origin_xy: tuple[float, float]  # ImagePositionPatient x, y of pixel (0, 0)
    z: np.ndarray  # slice z, head first (descending)
    z_c1_top: float
    scale: float
    rotation: float  # radians, in the axial plane
    axis_xy: tuple[float, float]  # canal centre at the top of C1
    lordosis_mm: float  # how far forward the mid-cervical spine bows
    sway_mm: float  # sideways drift of the spine per 100 mm
    table_y: float  # top of the scanner table (patient y, mm)

    def a_of_z(self, z: np.ndarray) -> np.ndarray:
        return (self.z_c1_top - np.asarray(z, dtype=np.float64)) / self.scale

    def axis(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The canal centre (patient x, y) at canonical heights ``a``: lordotic neck, kyphotic chest."""
        a = np.asarray(a, dtype=np.float64)
        neck = np.clip(a / 130.0, 0.0, 1.0)
        chest = np.clip((a - 130.0) / 200.0, 0.0, 1.0)
        y = -self.lordosis_mm * np.sin(np.pi * neck) + 0.4 * self.lordosis_mm * np.sin(np.pi * chest)
        x = self.sway_mm * a / 100.0
        return self.axis_xy[0] + x * self.scale, self.axis_xy[1] + y * self.scale


@dataclass
class Anatomy:
    spine: list[Part]
    discs: list[Part]
    other: list[Part]

    @classmethod
    def build(cls, rng: np.random.Generator | None, tissue: Tissue) -> "Anatomy":
        spine = build_spine(rng)
        return cls(spine, build_discs(spine, tissue.disc), build_other_bones(spine))

    def vertebra(self, name: str) -> Part:
        return self.spine[LABEL_OF[name] - 1]


# ---------------------------------------------------------------------------------------------
# rendering

def _ellipse_inside(u, v, cu, cv, ru, rv):
    return np.square((u - cu) / ru) + np.square((v - cv) / rv) <= 1.0


class _Painter:
    """Paints soft-tissue ellipses on a chunk, each only on the slices and pixels it can reach.

    Whole-slice work is what makes a 512 x 512 study slow, so every structure gets the slices of its
    height range and a crop round the spinal axis as large as its reach.
    """

    def __init__(self, geom: StudyGeometry, hu, u, v, a, ax, ay, inside_mask):
        self.geom, self.hu, self.u, self.v, self.a, self.ax, self.ay = geom, hu, u, v, a, ax, ay
        self.within = inside_mask

    def paint(self, value: float, a_lo: float, a_hi: float, reach: float, mask_fn) -> None:
        """``mask_fn(u, v, rows)`` -> bool mask on the crop; ``rows`` indexes per-slice parameters."""
        s0, s1 = np.searchsorted(self.a, a_lo, side="left"), np.searchsorted(self.a, a_hi, side="right")
        if s1 <= s0:
            return
        window = _crop(self.geom, self.ax[s0:s1], self.ay[s0:s1], reach * self.geom.scale)
        if window is None:
            return
        rs, cs = window
        mask = mask_fn(self.u[s0:s1, rs, cs], self.v[s0:s1, rs, cs], slice(s0, s1)) & self.within[s0:s1, rs, cs]
        self.hu[s0:s1, rs, cs][mask] = value


def _soft_tissue(geom: StudyGeometry, tissue: Tissue, anatomy: Anatomy, u, v, a, ax, ay, ys) -> np.ndarray:
    hu = np.full(u.shape, AIR_HU, dtype=np.float32)

    def per_slice(table):
        return [x.astype(np.float32)[:, None, None] for x in _interp(table, a)]

    cv, rx, ry = per_slice(OUTLINE)
    rx = rx * np.float32(tissue.neck_width)
    inside = _ellipse_inside(u, v, 0.0, cv, rx, ry)
    fat_c = np.float32(tissue.fat_mm / geom.scale)
    muscle = _ellipse_inside(u, v, 0.0, cv, np.maximum(rx - fat_c, 1.0), np.maximum(ry - fat_c, 1.0))
    hu[inside] = tissue.fat
    hu[muscle] = tissue.muscle
    # the table the patient lies on, fixed to the scanner, not the patient
    table = (ys >= geom.table_y) & (ys < geom.table_y + 6.0)
    hu[:, table, :] = tissue.table
    paint = _Painter(geom, hu, u, v, a, ax, ay, muscle).paint
    acv, aru, arv = per_slice(AIRWAY)
    paint(AIR_HU, AIRWAY_TOP, np.inf, 75.0, lambda u, v, k: _ellipse_inside(u, v, 0.0, acv[k], aru[k], arv[k]))
    # muscles outlined by fat: the sternocleidomastoids in front, fat planes between the back muscles
    for side in (-1.0, 1.0):
        def scm(grow, side=side):
            return lambda u, v, k: _ellipse_inside(u, v, side * 0.6 * rx[k], cv[k] - 0.3 * ry[k], 10.5 + grow, 6.5 + grow)
        paint(tissue.fat, 15.0, 125.0, 110.0, scm(2.5))
        paint(tissue.muscle, 15.0, 125.0, 110.0, scm(0.0))
        # thyroid lobes either side of the trachea, brighter for their iodine
        paint(tissue.muscle + 55.0, 95.0, 135.0, 65.0,
              lambda u, v, k, side=side: _ellipse_inside(u, v, side * 15.0, -47.0, 7.0, 10.0))
    paint(tissue.fat, 15.0, 125.0, 60.0, lambda u, v, k: _ellipse_inside(u, v, 0.0, 42.0, 2.0, 12.0))  # nuchal fat
    paint(tissue.fat, 15.0, 125.0, 50.0, lambda u, v, k: _ellipse_inside(u, v, 0.0, 8.0, 36.0, 38.0)
          & ~_ellipse_inside(u, v, 0.0, 8.0, 34.0, 36.0) & (v > 18.0))
    # lung apices rise to about the bottom of T1
    apex = anatomy.spine[7].body[4]
    depth = np.clip(a - apex, 0.0, None).astype(np.float32)[:, None, None]
    r = np.minimum(32.0, 4.5 * np.sqrt(depth)) + np.float32(1e-3)
    for side in (-1.0, 1.0):
        paint(tissue.lung, apex + 1e-3, np.inf, 110.0, lambda u, v, k, side=side:
              _ellipse_inside(u, v, side * (24.0 + r[k]), 5.0, r[k], 1.35 * r[k]))
    # cerebrospinal fluid and cord in the canal
    centres = np.array([p.body[3] if p.body else 5.0 for p in anatomy.spine])
    crx = np.interp(a, centres, [p.canal[0] for p in anatomy.spine]).astype(np.float32)[:, None, None]
    cry = np.interp(a, centres, [p.canal[1] for p in anatomy.spine]).astype(np.float32)[:, None, None]
    paint(tissue.csf, -np.inf, np.inf, 16.0, lambda u, v, k: _ellipse_inside(u, v, 0.0, 0.0, crx[k], cry[k]))
    paint(tissue.csf + 15.0, -np.inf, np.inf, 10.0,
          lambda u, v, k: _ellipse_inside(u, v, 0.0, 0.0, 0.6 * crx[k], 0.6 * cry[k]))  # the cord
    return hu


def _bone_hu(d: np.ndarray, cortical: float, trabecular: float, cortex: float) -> np.ndarray:
    """Cortical at the surface, trabecular deeper than ``cortex`` mm."""
    depth = np.clip(1.0 + d / cortex, 0.0, 1.0)
    return trabecular + (cortical - trabecular) * depth


def _crop(geom: StudyGeometry, ax: np.ndarray, ay: np.ndarray, radius_mm: float) -> tuple[slice, slice] | None:
    dy, dx = geom.pixel_spacing
    ox, oy = geom.origin_xy
    c0 = int(np.floor((ax.min() - radius_mm - ox) / dx)) - 2
    c1 = int(np.ceil((ax.max() + radius_mm - ox) / dx)) + 3
    r0 = int(np.floor((ay.min() - radius_mm - oy) / dy)) - 2
    r1 = int(np.ceil((ay.max() + radius_mm - oy) / dy)) + 3
    c0, c1, r0, r1 = max(c0, 0), min(c1, geom.cols), max(r0, 0), min(r1, geom.rows)
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _draw_part(part: Part, fractures: list, geom: StudyGeometry, tissue: Tissue, u, v, a, ax, ay,
               hu: np.ndarray, labels: np.ndarray, cleft: np.ndarray) -> None:
    lo, hi = part.a_range
    s0, s1 = np.searchsorted(a, lo, side="left"), np.searchsorted(a, hi, side="right")
    if s1 <= s0:
        return
    window = _crop(geom, ax[s0:s1], ay[s0:s1], part.radius * geom.scale)
    if window is None:
        return
    rs, cs = window
    pu, pv = u[s0:s1, rs, cs], v[s0:s1, rs, cs]
    pa = a[s0:s1, None, None]
    mine = [(i, f) for i, f in enumerate(fractures) if f.label == part.label and part.label > 0]
    for _, f in mine:  # a displaced fragment: the far side of the plane, fading with distance
        pu, pv = f.warp(pu, pv, pa)
    d = union_sdf(part.solids, part.holes, pu, pv, pa)
    inside = d < 0
    if not inside.any():
        return
    if part.constant_hu is not None:
        value = np.full(d.shape, part.constant_hu, dtype=np.float32)
    else:
        cortical = part.cortical if part.cortical is not None else tissue.cortical
        trabecular = part.trabecular if part.trabecular is not None else tissue.trabecular
        value = _bone_hu(d, cortical, trabecular, tissue.cortex_mm / geom.scale)
    cleft_here = np.zeros(d.shape, dtype=np.uint8)
    for i, f in mine:
        in_cleft = f.cleft_mask(u[s0:s1, rs, cs], v[s0:s1, rs, cs], pa) & inside
        value = np.where(in_cleft, value * (1.0 - f.contrast) + f.cleft_hu * f.contrast, value)
        cleft_here[in_cleft] = i + 1
    block = hu[s0:s1, rs, cs]
    block[inside] = value[inside]
    if part.label > 0:
        labels[s0:s1, rs, cs][inside] = part.label
        cleft[s0:s1, rs, cs][inside] = cleft_here[inside]
    else:  # a bone drawn over a vertebra's edge takes the voxel away from it
        labels[s0:s1, rs, cs][inside] = 0
        cleft[s0:s1, rs, cs][inside] = 0


def render(geom: StudyGeometry, tissue: Tissue, anatomy: Anatomy, fractures: list, noise_rng: np.random.Generator,
           max_voxels_per_chunk: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (int16), vertebra labels (uint8) and cleft index (uint8, 0 = none, i+1 = fractures[i]).

    All three are (slices, rows, cols) in the order of ``geom.z`` (head first). Slices are rendered
    in chunks so a full-size study never needs more than a few hundred MB.
    """
    n = len(geom.z)
    hu_out = np.empty((n, geom.rows, geom.cols), dtype=np.int16)
    labels = np.zeros((n, geom.rows, geom.cols), dtype=np.uint8)
    cleft = np.zeros((n, geom.rows, geom.cols), dtype=np.uint8)
    dy, dx = geom.pixel_spacing
    ox, oy = geom.origin_xy
    xs = ox + dx * np.arange(geom.cols)
    ys = oy + dy * np.arange(geom.rows)
    chunk = max(1, max_voxels_per_chunk // (geom.rows * geom.cols))
    cos_r, sin_r = float(np.cos(geom.rotation)), float(np.sin(geom.rotation))  # python floats keep float32
    sigma_px = (max(0.45, tissue.blur_mm / dy), max(0.45, tissue.blur_mm / dx))
    fov_r = 0.5 * min(geom.rows * dy, geom.cols * dx)
    outside_fov = ((xs[None, :] - (ox + 0.5 * (geom.cols - 1) * dx)) ** 2
                   + (ys[:, None] - (oy + 0.5 * (geom.rows - 1) * dy)) ** 2) > fov_r ** 2
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        a = geom.a_of_z(geom.z[start:stop])
        ax, ay = geom.axis(a)
        rel_x = (xs[None, None, :] - ax[:, None, None]).astype(np.float32)
        rel_y = (ys[None, :, None] - ay[:, None, None]).astype(np.float32)
        u = (cos_r * rel_x + sin_r * rel_y) / geom.scale
        v = (-sin_r * rel_x + cos_r * rel_y) / geom.scale
        hu = _soft_tissue(geom, tissue, anatomy, u, v, a, ax, ay, ys)
        lab, clf = labels[start:stop], cleft[start:stop]
        for part in anatomy.discs + anatomy.other + anatomy.spine:
            _draw_part(part, fractures, geom, tissue, u, v, a, ax, ay, hu, lab, clf)
        # partial-volume blur in the slice plane, then scanner noise
        hu = gaussian_filter(hu, sigma=(0.0, *sigma_px), mode="nearest")
        hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * tissue.noise_sd
        np.clip(hu, MIN_HU, MAX_HU, out=hu)
        if tissue.fill_outside_fov:
            hu[:, outside_fov] = MIN_HU
        hu_out[start:stop] = np.rint(hu).astype(np.int16)
    return hu_out, labels, cleft
