"""Read one CT study (a folder of single-slice DICOM files) into a Hounsfield-unit volume, head to feet.

Called by src.data.prepare (every study, once, into the cache), by inference (test studies straight
from DICOM) and by the decode benchmark. Each file is decoded by src/data/dicom_slice.py (dicomsdl
first, pydicom as the fallback); this module finds the files, keeps one image set and orders it.

A study folder is what the Kaggle data has (``<uid>/<n>.dcm``) or what a hospital export has: files
named ``CT.<uid>`` or ``IM0001``, a series sub-folder or two, a scout (localiser) image beside the
axial slices. Files are recognised as DICOM by their content (:func:`looks_like_dicom`), not their
extension, in the study folder and one level of sub-folders down. When the slices do not all belong
to one image set (another SeriesInstanceUID, another size, a non-axial orientation), the CT series
with the most axial slices is kept and the other files are skipped by name, with the reason.

Slices are ordered by ImagePositionPatient z, descending (head first), never by file name: the
Kaggle numbering can start anywhere, has gaps, and some studies are stored feet first. A slice that
cannot be read, or that declares more pixels than ``max_pixels`` (checked in the header, before any
pixel memory is taken), is skipped with a warning naming the file; a study that cannot be used at
all raises :class:`StudyReadError`, which callers report and skip.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from .dicom_slice import DEFAULT_MAX_PIXELS, INT16_MAX, INT16_MIN, PREAMBLE, SliceReadError, looks_like_dicom, read_slice_hu

# A slice counts as axial when its normal is within 45 degrees of the patient's z axis: a tilted gantry
# (up to ~30 degrees) still gives axial slices, a scout's coronal or sagittal plane does not.
_AXIAL_MIN_COSINE = math.cos(math.radians(45))
_NOT_SLICES = {"DICOMDIR"}  # the media index of a DICOM export: DICOM, but never an image



class StudyReadError(RuntimeError):
    """A whole study cannot be used (no DICOM files, or too few readable slices in its kept series)."""


@dataclass
class Study:
    """A study read from DICOM. ``hu`` is int16 (slices, rows, cols), head first (``z`` descending)."""

    uid: str
    hu: np.ndarray
    z: np.ndarray  # ImagePositionPatient z per volume slice, descending
    slice_numbers: np.ndarray  # the study's own file numbers, in volume order
    pixel_spacing: tuple[float, float]  # (row, col) mm
    slice_spacing: float  # median distance between neighbouring slices, mm
    skipped_files: list[str] = field(default_factory=list)  # paths relative to the study folder ("7.dcm", "2/7.dcm")
    skipped_reasons: dict = field(default_factory=dict)  # skipped file -> why (unreadable, another series, ...)
    decoder_counts: dict = field(default_factory=dict)
    original_shape: tuple[int, int] = (0, 0)  # (rows, cols) of the DICOM slices, even when hu was resized
    origin_xy: tuple[float, float] = (0.0, 0.0)  # ImagePositionPatient x, y (LPS mm) of the first pixel
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient
    z_gaps: int = 0  # neighbouring slices further apart than 1.5x the usual spacing

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])



def _slice_number(path: Path) -> int | None:
    """The slice number in a file's name (``12.dcm``, ``0012``), or None (``CT.1.2.840...``, ``IM0001``)."""
    name = Path(path).name
    stem = name[:-4] if name.lower().endswith(".dcm") else name
    return int(stem) if stem.isascii() and stem.isdigit() else None


def _as_int16(hu: np.ndarray) -> np.ndarray:
    if hu.dtype == np.int16:
        return hu
    return np.clip(np.rint(hu), INT16_MIN, INT16_MAX).astype(np.int16)


class ImageSet(NamedTuple):
    """What the slices of one volume share; a study folder may hold several (a scout, a second series)."""

    series_uid: str  # SeriesInstanceUID, "" when the files have none
    modality: str  # Modality, upper case, "" when absent
    shape: tuple[int, int]  # (rows, cols) of the DICOM slice
    axial: bool  # see _is_axial


class _Slice(NamedTuple):
    number: int  # the slice number: from the file name, else InstanceNumber
    position: tuple[float, float, float] | None  # ImagePositionPatient
    hu: np.ndarray  # int16, after slice_transform
    meta: dict  # read_slice_hu's meta
    name: str  # path relative to the study folder, as skipped_files names it
    image_set: ImageSet


def _is_axial(orientation) -> bool:
    """Whether a slice with this ImageOrientationPatient is axial (normal within 45 degrees of the z axis).

    No orientation counts as axial: the reader has always assumed it (Study.orientation's default).
    """
    if orientation is None:
        return True
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(v * v for v in normal))
    return length > 0 and abs(normal[2]) >= _AXIAL_MIN_COSINE * length


def _visible_files(study_dir: Path) -> list[Path]:
    """Files of ``study_dir`` and of its sub-folders one level down (``<study>/<series>/``), hidden ones left out.

    Hidden files are a desktop's (``.DS_Store``) or a writer's unfinished temporaries, never slices.
    """
    files = []
    for entry in study_dir.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files.extend(p for p in entry.iterdir() if not p.name.startswith(".") and p.is_file())
        elif entry.is_file():
            files.append(entry)
    return files


def _worth_decoding(path: Path) -> bool:
    """A ``.dcm`` name, or DICOM content (:func:`looks_like_dicom` on the first 132 bytes).

    A ``.dcm`` file is taken at its word, so a damaged one is reported as an unreadable slice rather
    than passed over, and the Kaggle layout costs no extra read; so is a file that cannot be opened,
    so that read_slice_hu names the error.
    """
    if path.name.upper() in _NOT_SLICES:
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(PREAMBLE + 4)
    except OSError:
        return True
    return looks_like_dicom(head)


def find_study_files(study_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(dicom_files, ignored)``: the files of a study folder (and one sub-folder level) worth decoding, and the rest.

    Called by :func:`read_study`. DICOM files are recognised by content or a ``.dcm`` name, and
    sorted by slice number (file name), non-numeric names last; ``ignored`` is for a warning.
    """
    study_dir = Path(study_dir)
    found, ignored = [], []
    for path in _visible_files(study_dir):
        (found if _worth_decoding(path) else ignored).append(path)

    def order(path: Path):
        number = _slice_number(path)
        return number is None, number or 0, path.relative_to(study_dir).as_posix()

    return sorted(found, key=order), sorted(ignored)


def _some_names(names: list[str], shown: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, ... (40 in all)``: a warning names files without becoming a page long."""
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed}, ... ({len(names)} in all)"


def _read_slices(study_dir: Path, files: list[Path], decoder: str, max_pixels: int,
                 slice_transform: Callable[[np.ndarray], np.ndarray] | None, skipped: dict[str, str]) -> list[_Slice]:
    """Decode every file; what cannot be used goes into ``skipped`` (name -> reason) with a warning."""
    slices = []
    for path in files:
        name = path.relative_to(study_dir).as_posix()
        try:
            hu, meta = read_slice_hu(path, decoder, max_pixels)
        except SliceReadError as err:
            warnings.warn(f"skipping slice: {err}", stacklevel=3)
            skipped[name] = str(err)
            continue
        number = _slice_number(path)
        if number is None:
            number = meta["instance_number"]
            if number < 0:
                warnings.warn(f"skipping slice {path}: file name is not a slice number and it has no InstanceNumber",
                              stacklevel=3)
                skipped[name] = "the file name is not a slice number and the file has no InstanceNumber"
                continue
        image_set = ImageSet(meta["series_uid"], meta["modality"], hu.shape, _is_axial(meta["orientation"]))
        hu = _as_int16(hu)
        if slice_transform is not None:
            meta["shape"] = hu.shape
            hu = slice_transform(hu)
        slices.append(_Slice(number, meta["position"], hu, meta, name, image_set))
    return slices


def _describe(image_set: ImageSet) -> str:
    series = image_set.series_uid or "without SeriesInstanceUID"
    modality = f"{image_set.modality} " if image_set.modality else ""
    rows, cols = image_set.shape
    return f"{modality}series {series}, {rows}x{cols}, {'axial' if image_set.axial else 'not axial'}"


def _difference(other: ImageSet, kept: ImageSet, orientation) -> str:
    """How ``other`` differs from the kept image set, in the words of a skipped file's reason."""
    parts = []
    if other.series_uid != kept.series_uid:
        parts.append(f"another series ({other.series_uid or 'no SeriesInstanceUID'})")
    if other.modality != kept.modality:
        parts.append(f"modality {other.modality or 'none'}")
    if other.shape != kept.shape:
        parts.append(f"size {other.shape[0]}x{other.shape[1]}")
    if other.axial != kept.axial:
        shown = tuple(round(v, 2) for v in orientation) if orientation else None
        parts.append(f"{'axial' if other.axial else 'not axial'} (ImageOrientationPatient {shown})")
    return ", ".join(parts)


def _keep_one_image_set(study_dir: Path, slices: list[_Slice], skipped: dict[str, str]) -> list[_Slice]:
    """The slices of the CT series with the most axial slices; the others go into ``skipped`` with a warning.

    A hospital export puts a scout (another size, a coronal plane) or a second reconstruction beside
    the axial series; stacking them would be wrong and refusing the study would lose it. Ranking:
    axial first, then CT (or no Modality), then the most slices, then the first in file order.
    The decoded slices of every set are held until here (one pass over the files, not two); with
    prepare's resize that is a few hundred KB a slice at most.
    """
    groups: dict[ImageSet, list[_Slice]] = {}
    for item in slices:
        groups.setdefault(item.image_set, []).append(item)
    if len(groups) <= 1:
        return slices
    first_seen = {image_set: k for k, image_set in enumerate(groups)}  # file order breaks a tie
    kept_set = max(groups, key=lambda s: (s.axial, s.modality in ("CT", ""), len(groups[s]), -first_seen[s]))
    kept = groups[kept_set]
    for image_set, group in groups.items():
        if image_set == kept_set:
            continue
        difference = _difference(image_set, kept_set, group[0].meta["orientation"])
        names = [item.name for item in group]
        warnings.warn(f"{study_dir}: kept {len(kept)} slices of {_describe(kept_set)}; skipped {len(group)} "
                      f"slice(s) of {difference}: {_some_names(names)}", stacklevel=3)
        for name in names:
            skipped[name] = f"not the study's kept image set: {difference} (kept: {_describe(kept_set)})"
    return kept


def _head_first(study_dir: Path, kept: list[_Slice], skipped: dict[str, str], min_slices: int) -> list[_Slice]:
    """``kept`` ordered by ImagePositionPatient z, descending; slices without a position dropped when others have one."""
    with_position = [k for k in kept if k.position is not None]
    if len(with_position) == len(kept):
        # head first: largest z first; equal z (duplicates) keep file-number order
        return sorted(kept, key=lambda k: (-k.position[2], k.number))
    if not with_position:
        warnings.warn(f"{study_dir}: no ImagePositionPatient in any slice; ordering by slice number "
                      f"and assuming slice 1 is the head", stacklevel=3)
        return sorted(kept, key=lambda k: k.number)
    for item in kept:
        if item.position is None:
            warnings.warn(f"skipping slice {study_dir / item.name}: no ImagePositionPatient", stacklevel=3)
            skipped[item.name] = "no ImagePositionPatient, which the other slices have"
    if len(with_position) < min_slices:
        raise StudyReadError(f"{study_dir}: only {len(with_position)} slices with a position (minimum {min_slices})")
    return sorted(with_position, key=lambda k: (-k.position[2], k.number))


def read_study(study_dir: Path, min_slices: int = 10, decoder: str = "auto",
               slice_transform: Callable[[np.ndarray], np.ndarray] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Study:
    """Read the slices of ``study_dir`` into a :class:`Study` ordered head to feet.

    Called by src.data.prepare.prepare_study (the cache, and inference's test studies) and by tests.
    Files are found by content in the folder and one level of sub-folders; of several image sets
    the CT series with the most axial slices is kept. ``slice_transform`` (optional) is applied to
    each slice's int16 HU as it is read (prepare uses it to resize), so a long study never sits in
    memory at full size; ``original_shape`` and ``pixel_spacing`` still describe the DICOM slices.
    ``max_pixels`` bounds the frame a file may declare (:func:`check_declared_frame`).
    """
    study_dir = Path(study_dir)
    uid = study_dir.name
    if not study_dir.is_dir():
        raise StudyReadError(f"{study_dir}: study folder does not exist")
    files, ignored = find_study_files(study_dir)
    if ignored:
        warnings.warn(f"{study_dir}: ignored {len(ignored)} file(s) that are not DICOM: "
                      f"{_some_names([p.relative_to(study_dir).as_posix() for p in ignored])}", stacklevel=2)
    if not files:
        raise StudyReadError(f"{study_dir}: no DICOM files in the study folder or its sub-folders "
                             f"(files are recognised by content, whatever their names)")

    skipped: dict[str, str] = {}
    slices = _read_slices(study_dir, files, decoder, max_pixels, slice_transform, skipped)
    unreadable = len(skipped)
    kept = _keep_one_image_set(study_dir, slices, skipped)
    if len(kept) < max(min_slices, 1):  # min_slices=0 still needs one slice to make a volume
        others = len(skipped) - unreadable
        raise StudyReadError(f"{study_dir}: only {len(kept)} readable slices (minimum {min_slices}; "
                             f"{unreadable} unreadable" + (f", {others} of other image sets" if others else "") + ")")
    decoders = Counter(item.meta["decoder"] for item in kept)
    kept = _head_first(study_dir, kept, skipped, min_slices)

    numbers = np.array([k.number for k in kept], dtype=np.int64)
    if kept[0].position is not None:
        z = np.array([k.position[2] for k in kept], dtype=np.float64)
    else:
        z = -np.arange(len(kept), dtype=np.float64)  # unknown geometry: 1 mm apart, head first
    steps = np.abs(np.diff(z))
    moving = steps[steps > 1e-4]
    first = kept[0].meta
    thickness = first["slice_thickness"]
    slice_spacing = float(np.median(moving)) if moving.size else (thickness if math.isfinite(thickness) else 1.0)
    z_gaps = int(np.sum(steps > 1.5 * slice_spacing)) if moving.size else 0
    duplicates = int(steps.size - moving.size)
    if duplicates:
        warnings.warn(f"{study_dir}: {duplicates} slices share a z position with a neighbour", stacklevel=2)
    if z_gaps:
        warnings.warn(f"{study_dir}: {z_gaps} gaps in z larger than 1.5x the slice spacing "
                      f"{slice_spacing:.3g} mm (missing slices?)", stacklevel=2)

    spacing = first["pixel_spacing"] or (1.0, 1.0)
    position = first["position"] or (0.0, 0.0, 0.0)
    volume = np.stack([k.hu for k in kept])
    original = kept[0].image_set.shape
    names = sorted(skipped, key=lambda name: (_slice_number(Path(name)) is None, _slice_number(Path(name)) or 0))
    return Study(
        uid=uid, hu=volume, z=z, slice_numbers=numbers,
        pixel_spacing=(float(spacing[0]), float(spacing[1])), slice_spacing=slice_spacing,
        skipped_files=names, skipped_reasons={name: skipped[name] for name in names},
        decoder_counts=dict(decoders), original_shape=(int(original[0]), int(original[1])),
        origin_xy=(float(position[0]), float(position[1])),
        orientation=tuple(first["orientation"] or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)), z_gaps=z_gaps,
    )
