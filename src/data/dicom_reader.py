"""Read one CT study (a folder of single-slice DICOM files) into a Hounsfield-unit volume, head to feet.

Called by src.data.prepare (every study, once, into the cache), by inference (test studies straight
from DICOM) and by the decode benchmark. Two decoders give the same stored values:

- dicomsdl, the fast one, tried first for every file;
- pydicom with pylibjpeg/GDCM, the fallback for anything dicomsdl refuses (and the reference the
  tests compare against).

dicomsdl 0.109 crashes the whole process (segfault, not an exception) on a truncated file, so a
file only reaches it after :func:`truncation_problem` has checked that the pixel data is all there;
anything that fails the check goes to pydicom, which raises a proper error.

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

import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

DECODERS = ("auto", "dicomsdl", "pydicom")
# The largest frame a file may declare (configs/default.yaml prepare.max_pixels). CT slices are 512 x 512,
# rarely 1024 x 1024; 4096 x 4096 leaves room for any real scanner and caps one slice at 32 MB of int16.
DEFAULT_MAX_PIXELS = 4096 * 4096
_PREAMBLE = 128  # bytes before b"DICM" in a standard DICOM file
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
_SEQUENCE_END_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
_INT16_MIN, _INT16_MAX = -32768, 32767
# A slice counts as axial when its normal is within 45 degrees of the patient's z axis: a tilted gantry
# (up to ~30 degrees) still gives axial slices, a scout's coronal or sagittal plane does not.
_AXIAL_MIN_COSINE = math.cos(math.radians(45))
_NOT_SLICES = {"DICOMDIR"}  # the media index of a DICOM export: DICOM, but never an image


class SliceReadError(RuntimeError):
    """One DICOM file could not be decoded; the message names the file and the reason."""


class SliceTooLarge(SliceReadError):
    """The file's header declares a frame larger than ``max_pixels``: refused before decoding, by either decoder."""


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


# ---------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------

def has_preamble(raw: bytes) -> bool:
    """True when ``raw`` starts with the standard 128-byte preamble and b"DICM"."""
    return raw[_PREAMBLE:_PREAMBLE + 4] == b"DICM"


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file whose first bytes are ``head`` (132 are enough) is worth handing to a decoder.

    Called by :func:`find_study_files` for every file of a study folder, whatever its name. True for
    the standard preamble + b"DICM"; also for a file without the preamble that starts with a group
    0002 (file meta) or 0008 element, as some old writers and PACS exports store them. Anything else
    is not a slice, and never costs a decoder's time (a folder of junk stays quick).
    """
    if has_preamble(head):
        return True
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    # a dataset starts at its lowest tag: (0002,0000..0002) or (0008,0005..0020) in practice
    return group in (0x0002, 0x0008) and element < 0x0100


def truncation_problem(raw: bytes) -> str | None:
    """Why the pixel data of this DICOM file is incomplete, or None when it looks whole.

    A structural check only (no decoding): the PixelData element must be present, a native one
    must have all the bytes its length promises, an encapsulated one must have every fragment and
    the closing sequence delimiter. Costs a few microseconds; keeps truncated files away from
    dicomsdl, which would crash the process on them.
    """
    if len(raw) < 140:
        return f"only {len(raw)} bytes, too short to be a DICOM file"
    # the preamble is free-form bytes, so the search starts after it; a file without one starts at 0
    pos = raw.find(_PIXEL_DATA_TAG, _PREAMBLE + 4 if has_preamble(raw) else 0)
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
        # which image set the slice belongs to: read_study keeps one series of one size and orientation
        "series_uid": str(get("SeriesInstanceUID") or "").strip(),
        "modality": str(get("Modality") or "").strip().upper(),
    }


def check_declared_frame(rows, cols, frames, samples, max_pixels: int) -> None:
    """Refuse, from the header alone, a frame that the pipeline cannot use or should not allocate.

    Called by both decoders before they take any pixel memory: a decoder allocates what the header
    declares before it finds out that the data is not there, so a few hundred bytes declaring
    16000 x 16000 would otherwise cost 512 MB or more. Raises :class:`SliceTooLarge` beyond
    ``max_pixels`` a frame, :class:`SliceReadError` for no size, several frames or colour.
    """
    if not rows or not cols:
        raise SliceReadError(f"the header declares no image size (Rows {rows}, Columns {cols})")
    if int(rows) * int(cols) > max_pixels:
        raise SliceTooLarge(f"declares {rows} x {cols} pixels, more than the bound of {max_pixels} pixels a "
                            f"frame (prepare.max_pixels); not decoded. Raise prepare.max_pixels if the file is genuine")
    if samples not in (1, None) or frames not in (1, None):
        raise SliceReadError(f"not a single-frame greyscale image (samples {samples}, frames {frames})")


_dicomsdl_quiet = False
_HEADER_KEYWORDS = ("ImagePositionPatient", "PixelSpacing", "ImageOrientationPatient", "SliceThickness",
                    "InstanceNumber", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation",
                    "TransferSyntaxUID", "SeriesInstanceUID", "Modality")


def _native_length_problem(dataset, rows: int, cols: int, bits_allocated: int) -> str | None:
    """Why uncompressed pixel data cannot hold the declared frame, or None.

    dicomsdl copies Rows x Columns pixels out of a native PixelData without comparing with the
    element's length: a header that promises more than the file holds gives pixels read from past
    the buffer (garbage) or a crash of the whole process. Compressed data is checked by its decoder.
    """
    import dicomsdl

    element = dataset.getDataElement(0x7FE00010)
    if element.vr() == dicomsdl.VR.PIXSEQ:
        return None
    needed = int(rows) * int(cols) * int(bits_allocated) // 8
    if element.length() < needed:
        return f"pixel data holds {element.length()} bytes, {rows} x {cols} pixels need {needed}"
    return None


def _decode_dicomsdl(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    import dicomsdl

    global _dicomsdl_quiet
    if not _dicomsdl_quiet:
        # its C++ logger prints every refusal to stderr; the reason reaches our error message anyway
        dicomsdl.set_loglevel(dicomsdl.LogLevel.DISABLE)
        _dicomsdl_quiet = True
    # copy_data=False: dicomsdl reads straight from our bytes, which outlive the DataSet here
    dataset = dicomsdl.open_memory(raw, copy_data=False)
    info = dataset.getPixelDataInfo()  # the header only: no pixel is decoded yet
    check_declared_frame(info["Rows"], info["Cols"], info["NumberOfFrames"], info["SamplesPerPixel"], max_pixels)
    problem = _native_length_problem(dataset, info["Rows"], info["Cols"], info["BitsAllocated"])
    if problem is not None:
        raise SliceReadError(problem)
    stored = np.empty((info["Rows"], info["Cols"]), dtype=info["dtype"])
    dataset.copyFrameData(0, stored)

    # one call for every header field: attribute access costs ~5 us per keyword, more than a raw decode
    values = dict(zip(_HEADER_KEYWORDS, dataset.getValues(list(_HEADER_KEYWORDS))))
    meta = _header(values.get)
    meta["transfer_syntax"] = str(values["TransferSyntaxUID"] or "")
    return stored, meta


def _decode_pydicom(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's own "end of file" notes; we raise below
        # force: pydicom refuses a file without the preamble, which looks_like_dicom has vouched for
        dataset = pydicom.dcmread(io.BytesIO(raw), force=not has_preamble(raw) and looks_like_dicom(raw))
        # reading the dataset copies the (small) encoded pixel data; decoding allocates what Rows x Columns say
        check_declared_frame(dataset.get("Rows"), dataset.get("Columns"), dataset.get("NumberOfFrames"),
                             dataset.get("SamplesPerPixel"), max_pixels)
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


def read_slice_hu(path: Path, decoder: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode one DICOM file to Hounsfield units.

    Returns ``(hu, meta)``: ``hu`` (rows, cols) int16 when the rescale is exact, float32 otherwise;
    ``meta`` has ``position`` (x, y, z or None), ``pixel_spacing``, ``orientation``, ``slice_thickness``,
    ``instance_number``, ``slope``, ``intercept``, ``series_uid``, ``modality``, ``transfer_syntax``
    and ``decoder`` (which one produced the pixels). Raises :class:`SliceReadError` naming the file
    when neither decoder can read it, and :class:`SliceTooLarge` (no fallback: the other decoder
    would read the same header) when it declares more than ``max_pixels`` pixels a frame.
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
                result = _decode_dicomsdl(raw, max_pixels) + ("dicomsdl",)
            except SliceTooLarge as err:
                raise SliceTooLarge(f"{path}: {err}") from None
            except Exception as err:  # dicomsdl raises its own DicomException and RuntimeErrors
                errors.append(f"dicomsdl: {err}")
    if result is None and decoder in ("auto", "pydicom"):
        try:
            result = _decode_pydicom(raw, max_pixels) + ("pydicom",)
        except SliceTooLarge as err:
            raise SliceTooLarge(f"{path}: {err}") from None
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
    """The slice number in a file's name (``12.dcm``, ``0012``), or None (``CT.1.2.840...``, ``IM0001``)."""
    name = Path(path).name
    stem = name[:-4] if name.lower().endswith(".dcm") else name
    return int(stem) if stem.isascii() and stem.isdigit() else None


def _as_int16(hu: np.ndarray) -> np.ndarray:
    if hu.dtype == np.int16:
        return hu
    return np.clip(np.rint(hu), _INT16_MIN, _INT16_MAX).astype(np.int16)


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
            head = fh.read(_PREAMBLE + 4)
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
