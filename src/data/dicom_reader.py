"""Read one CT study (a folder of single-slice DICOM files) into a Hounsfield-unit volume, head to feet.

Called by src.data.prepare (every study, once, into the cache), by inference (test studies straight
from DICOM) and by the decode benchmark. Two decoders give the same stored values:

- dicomsdl, the fast one, tried first for every file;
- pydicom with pylibjpeg/GDCM, the fallback for anything dicomsdl refuses (and the reference the
  tests compare against).

dicomsdl 0.109 crashes the whole process (segfault, not an exception) on a truncated file, so a
file only reaches it after :func:`truncation_problem` has checked that the pixel data is all there;
anything that fails the check goes to pydicom, which raises a proper error.

Slices are ordered by ImagePositionPatient z, descending (head first), never by file name: the
Kaggle numbering can start anywhere, has gaps, and some studies are stored feet first. A slice that
cannot be read is skipped with a warning naming the file; a study that cannot be used at all raises
:class:`StudyReadError`, which callers report and skip.
"""
from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

DECODERS = ("auto", "dicomsdl", "pydicom")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
_SEQUENCE_END_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
_INT16_MIN, _INT16_MAX = -32768, 32767


class SliceReadError(RuntimeError):
    """One DICOM file could not be decoded; the message names the file and the reason."""


class StudyReadError(RuntimeError):
    """A whole study cannot be used (no or too few readable slices, slices of different sizes)."""


@dataclass
class Study:
    """A study read from DICOM. ``hu`` is int16 (slices, rows, cols), head first (``z`` descending)."""

    uid: str
    hu: np.ndarray
    z: np.ndarray  # ImagePositionPatient z per volume slice, descending
    slice_numbers: np.ndarray  # the study's own file numbers, in volume order
    pixel_spacing: tuple[float, float]  # (row, col) mm
    slice_spacing: float  # median distance between neighbouring slices, mm
    skipped_files: list[str] = field(default_factory=list)
    decoder_counts: dict = field(default_factory=dict)
    original_shape: tuple[int, int] = (0, 0)  # (rows, cols) of the DICOM slices, even when hu was resized
    origin_xy: tuple[float, float] = (0.0, 0.0)  # ImagePositionPatient x, y (LPS mm) of the first pixel
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient
    z_gaps: int = 0  # neighbouring slices further apart than 1.5x the usual spacing

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


# ---------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------

def truncation_problem(raw: bytes) -> str | None:
    """Why the pixel data of this DICOM file is incomplete, or None when it looks whole.

    A structural check only (no decoding): the PixelData element must be present, a native one
    must have all the bytes its length promises, an encapsulated one must have every fragment and
    the closing sequence delimiter. Costs a few microseconds; keeps truncated files away from
    dicomsdl, which would crash the process on them.
    """
    if len(raw) < 140:
        return f"only {len(raw)} bytes, too short to be a DICOM file"
    pos = raw.find(_PIXEL_DATA_TAG, 132)
    if pos < 0:
        return "no PixelData element (file truncated before the pixels?)"
    vr = raw[pos + 4:pos + 6]
    if vr in (b"OB", b"OW", b"UN"):
        length = int.from_bytes(raw[pos + 8:pos + 12], "little")
        start = pos + 12
    else:  # implicit VR: tag then a 4-byte length
        length = int.from_bytes(raw[pos + 4:pos + 8], "little")
        start = pos + 8
    if length != 0xFFFFFFFF:
        if start + length > len(raw):
            return f"pixel data needs {length} bytes, the file holds {len(raw) - start} (truncated)"
        return None
    # encapsulated: a run of items (offset table, then fragments), closed by a sequence delimiter
    offset = start
    while offset + 8 <= len(raw):
        tag = raw[offset:offset + 4]
        item_length = int.from_bytes(raw[offset + 4:offset + 8], "little")
        if tag == _SEQUENCE_END_TAG:
            return None
        if tag != _ITEM_TAG:
            return f"unexpected tag {tag.hex()} inside the encapsulated pixel data at byte {offset}"
        offset += 8 + item_length
        if offset > len(raw):
            return "a compressed pixel fragment runs past the end of the file (truncated)"
    return "encapsulated pixel data has no closing delimiter (truncated)"


def _as_float(value, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _floats(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        seq = [float(v) for v in (value if isinstance(value, (list, tuple)) else list(value))]
    except (TypeError, ValueError):
        return None
    return tuple(seq) if seq and all(math.isfinite(v) for v in seq) else None


def _header(get) -> dict:
    """The geometry and rescale fields, from a getter that returns None for a missing element."""
    position = _floats(get("ImagePositionPatient"))
    spacing = _floats(get("PixelSpacing"))
    orientation = _floats(get("ImageOrientationPatient"))
    instance = get("InstanceNumber")
    return {
        "position": position if position and len(position) == 3 else None,
        "pixel_spacing": spacing[:2] if spacing and len(spacing) >= 2 else None,
        "orientation": orientation if orientation and len(orientation) == 6 else None,
        "slice_thickness": _as_float(get("SliceThickness"), float("nan")),
        "instance_number": int(_as_float(instance, -1)),
        "slope": _as_float(get("RescaleSlope"), 1.0),
        "intercept": _as_float(get("RescaleIntercept"), 0.0),
        "photometric": str(get("PhotometricInterpretation") or "MONOCHROME2").strip(),
    }


_dicomsdl_quiet = False
_HEADER_KEYWORDS = ("ImagePositionPatient", "PixelSpacing", "ImageOrientationPatient", "SliceThickness",
                    "InstanceNumber", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation",
                    "TransferSyntaxUID")


def _decode_dicomsdl(raw: bytes) -> tuple[np.ndarray, dict]:
    import dicomsdl

    global _dicomsdl_quiet
    if not _dicomsdl_quiet:
        # its C++ logger prints every refusal to stderr; the reason reaches our error message anyway
        dicomsdl.set_loglevel(dicomsdl.LogLevel.DISABLE)
        _dicomsdl_quiet = True
    # copy_data=False: dicomsdl reads straight from our bytes, which outlive the DataSet here
    dataset = dicomsdl.open_memory(raw, copy_data=False)
    info = dataset.getPixelDataInfo()
    if info["SamplesPerPixel"] != 1 or info["NumberOfFrames"] not in (1, None):
        raise SliceReadError(f"not a single-frame greyscale image (samples {info['SamplesPerPixel']}, "
                             f"frames {info['NumberOfFrames']})")
    stored = np.empty((info["Rows"], info["Cols"]), dtype=info["dtype"])
    dataset.copyFrameData(0, stored)

    # one call for every header field: attribute access costs ~5 us per keyword, more than a raw decode
    values = dict(zip(_HEADER_KEYWORDS, dataset.getValues(list(_HEADER_KEYWORDS))))
    meta = _header(values.get)
    meta["transfer_syntax"] = str(values["TransferSyntaxUID"] or "")
    return stored, meta


def _decode_pydicom(raw: bytes) -> tuple[np.ndarray, dict]:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's own "end of file" notes; we raise below
        dataset = pydicom.dcmread(io.BytesIO(raw))
        stored = dataset.pixel_array
    if stored.ndim != 2:
        raise SliceReadError(f"not a single-frame greyscale image (pixel array shape {stored.shape})")

    def get(keyword):
        return dataset.get(keyword)

    meta = _header(get)
    meta["transfer_syntax"] = str(getattr(dataset.file_meta, "TransferSyntaxUID", ""))
    return stored, meta


def stored_to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``stored * slope + intercept``: int16 when that is exact (integer slope and intercept), else float32.

    The usual CT case (slope 1, intercept -1024, values well inside int16) is done in place on the
    decoded buffer, with no wider temporary; values that would overflow int16 are clipped.
    """
    exact = float(slope).is_integer() and float(intercept).is_integer()
    if not exact:
        return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    slope_i, intercept_i = int(slope), int(intercept)
    if slope_i == 1 and stored.dtype in (np.int16, np.uint16):
        low, high = int(stored.min()), int(stored.max())
        if stored.dtype == np.uint16 and high > _INT16_MAX:
            pass  # cannot reinterpret as int16; the wide path below handles it
        elif _INT16_MIN <= low + intercept_i and high + intercept_i <= _INT16_MAX:
            hu = stored.view(np.int16) if stored.dtype == np.uint16 else stored
            hu += np.int16(intercept_i)
            return hu
    wide = stored.astype(np.int32) * slope_i + intercept_i
    return np.clip(wide, _INT16_MIN, _INT16_MAX).astype(np.int16)


def read_slice_hu(path: Path, decoder: str = "auto") -> tuple[np.ndarray, dict]:
    """Decode one DICOM file to Hounsfield units.

    Returns ``(hu, meta)``: ``hu`` (rows, cols) int16 when the rescale is exact, float32 otherwise;
    ``meta`` has ``position`` (x, y, z or None), ``pixel_spacing``, ``orientation``, ``slice_thickness``,
    ``instance_number``, ``slope``, ``intercept``, ``transfer_syntax`` and ``decoder`` (which one
    produced the pixels). Raises :class:`SliceReadError` naming the file when neither decoder can read it.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SliceReadError(f"{path}: cannot read the file ({err})") from err
    problem = truncation_problem(raw)
    errors = []
    result = None
    if decoder in ("auto", "dicomsdl"):
        if problem is not None:
            errors.append(f"dicomsdl not tried: {problem}")
        else:
            try:
                result = _decode_dicomsdl(raw) + ("dicomsdl",)
            except Exception as err:  # dicomsdl raises its own DicomException and RuntimeErrors
                errors.append(f"dicomsdl: {err}")
    if result is None and decoder in ("auto", "pydicom"):
        try:
            result = _decode_pydicom(raw) + ("pydicom",)
        except Exception as err:  # pydicom raises many types for a damaged file
            errors.append(f"pydicom: {type(err).__name__}: {err}")
    if result is None:
        raise SliceReadError(f"{path}: unreadable DICOM slice ({'; '.join(errors)})")
    stored, meta, used = result
    if meta["photometric"] == "MONOCHROME1":
        # inverted greyscale is not expected in CT; flipping it would guess at the rescale, so refuse
        raise SliceReadError(f"{path}: MONOCHROME1 (inverted) pixels are not supported for CT")
    meta["decoder"] = used
    return stored_to_hu(stored, meta["slope"], meta["intercept"]), meta


# ---------------------------------------------------------------------------------------------
# one study
# ---------------------------------------------------------------------------------------------

def _slice_number(path: Path) -> int | None:
    try:
        return int(path.stem)
    except ValueError:
        return None


def _as_int16(hu: np.ndarray) -> np.ndarray:
    if hu.dtype == np.int16:
        return hu
    return np.clip(np.rint(hu), _INT16_MIN, _INT16_MAX).astype(np.int16)


def study_files(study_dir: Path) -> list[Path]:
    """The study's ``*.dcm`` files sorted by slice number (file name), non-numeric names last."""
    files = [p for p in Path(study_dir).iterdir() if p.suffix.lower() == ".dcm" and p.is_file()]
    return sorted(files, key=lambda p: (_slice_number(p) is None, _slice_number(p) or 0, p.name))


def read_study(study_dir: Path, min_slices: int = 10, decoder: str = "auto",
               slice_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Study:
    """Read every slice of ``study_dir`` into a :class:`Study` ordered head to feet.

    ``slice_transform`` (optional) is applied to each slice's int16 HU as it is read (prepare uses
    it to resize), so a long study never sits in memory at full size; ``original_shape`` and
    ``pixel_spacing`` still describe the DICOM slices.
    """
    study_dir = Path(study_dir)
    uid = study_dir.name
    if not study_dir.is_dir():
        raise StudyReadError(f"{study_dir}: study folder does not exist")
    files = study_files(study_dir)
    if not files:
        raise StudyReadError(f"{study_dir}: no .dcm files in the study folder")

    skipped: list[str] = []
    kept: list[tuple[int, tuple[float, float, float] | None, np.ndarray, dict]] = []
    decoders: Counter = Counter()
    shapes: Counter = Counter()
    for path in files:
        number = _slice_number(path)
        try:
            hu, meta = read_slice_hu(path, decoder)
        except SliceReadError as err:
            warnings.warn(f"skipping slice: {err}", stacklevel=2)
            skipped.append(path.name)
            continue
        if number is None:
            number = meta["instance_number"]
            if number < 0:
                warnings.warn(f"skipping slice {path}: file name is not a slice number and it has no InstanceNumber",
                              stacklevel=2)
                skipped.append(path.name)
                continue
        shapes[hu.shape] += 1
        decoders[meta["decoder"]] += 1
        hu = _as_int16(hu)
        if slice_transform is not None:
            meta["shape"] = hu.shape
            hu = slice_transform(hu)
        kept.append((number, meta["position"], hu, meta))

    if len(shapes) > 1:
        raise StudyReadError(f"{study_dir}: slices disagree in size ({dict(shapes)}); the study is skipped")
    if len(kept) < min_slices:
        raise StudyReadError(f"{study_dir}: only {len(kept)} readable slices (minimum {min_slices}; "
                             f"{len(skipped)} unreadable)")

    with_position = [k for k in kept if k[1] is not None]
    if len(with_position) == len(kept):
        # head first: largest z first; equal z (duplicates) keep file-number order
        kept.sort(key=lambda k: (-k[1][2], k[0]))
    elif not with_position:
        warnings.warn(f"{study_dir}: no ImagePositionPatient in any slice; ordering by slice number "
                      f"and assuming slice 1 is the head", stacklevel=2)
        kept.sort(key=lambda k: k[0])
    else:
        for number, position, _, _ in kept:
            if position is None:
                warnings.warn(f"skipping slice {study_dir / f'{number}.dcm'}: no ImagePositionPatient", stacklevel=2)
                skipped.append(f"{number}.dcm")
        kept = sorted(with_position, key=lambda k: (-k[1][2], k[0]))
        if len(kept) < min_slices:
            raise StudyReadError(f"{study_dir}: only {len(kept)} slices with a position (minimum {min_slices})")

    numbers = np.array([k[0] for k in kept], dtype=np.int64)
    if kept[0][1] is not None:
        z = np.array([k[1][2] for k in kept], dtype=np.float64)
    else:
        z = -np.arange(len(kept), dtype=np.float64)  # unknown geometry: 1 mm apart, head first
    steps = np.abs(np.diff(z))
    moving = steps[steps > 1e-4]
    first = kept[0][3]
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
    volume = np.stack([k[2] for k in kept])
    original = first.get("shape", kept[0][2].shape)
    return Study(
        uid=uid, hu=volume, z=z, slice_numbers=numbers,
        pixel_spacing=(float(spacing[0]), float(spacing[1])), slice_spacing=slice_spacing,
        skipped_files=sorted(skipped, key=lambda name: (_slice_number(Path(name)) is None, _slice_number(Path(name)) or 0)),
        decoder_counts=dict(decoders), original_shape=(int(original[0]), int(original[1])),
        origin_xy=(float(position[0]), float(position[1])),
        orientation=tuple(first["orientation"] or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)), z_gaps=z_gaps,
    )
