"""Read one DICOM slice into Hounsfield units: the file-level half of reading a study.

Called by src/data/dicom_reader.py for every file of a study, and by the decode benchmark. Two decoders
give the same stored values:

- dicomsdl, the fast one, tried first for every file;
- pydicom with pylibjpeg/GDCM, the fallback for anything dicomsdl refuses (and the reference the
  tests compare against).

dicomsdl 0.109 crashes the whole process (segfault, not an exception) on a truncated file, so a
file only reaches it after :func:`truncation_problem` has checked that the pixel data is all there;
anything that fails the check goes to pydicom, which raises a proper error. A file that declares more
pixels than ``max_pixels`` is refused from its header, before any pixel memory is taken
(:class:`SliceTooLarge`); any other failure is a :class:`SliceReadError` naming the file.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

DECODERS = ("auto", "dicomsdl", "pydicom")
# The largest frame a file may declare (configs/default.yaml prepare.max_pixels). CT slices are 512 x 512,
# rarely 1024 x 1024; 4096 x 4096 leaves room for any real scanner and caps one slice at 32 MB of int16.
DEFAULT_MAX_PIXELS = 4096 * 4096
PREAMBLE = 128  # bytes before b"DICM" in a standard DICOM file
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
_SEQUENCE_END_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
INT16_MIN, INT16_MAX = -32768, 32767


class SliceReadError(RuntimeError):
    """One DICOM file could not be decoded; the message names the file and the reason."""


class SliceTooLarge(SliceReadError):
    """The file's header declares a frame larger than ``max_pixels``: refused before decoding, by either decoder."""



def has_preamble(raw: bytes) -> bool:
    """True when ``raw`` starts with the standard 128-byte preamble and b"DICM"."""
    return raw[PREAMBLE:PREAMBLE + 4] == b"DICM"


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
    pos = raw.find(_PIXEL_DATA_TAG, PREAMBLE + 4 if has_preamble(raw) else 0)
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
        if stored.dtype == np.uint16 and high > INT16_MAX:
            pass  # cannot reinterpret as int16; the wide path below handles it
        elif INT16_MIN <= low + intercept_i and high + intercept_i <= INT16_MAX:
            hu = stored.view(np.int16) if stored.dtype == np.uint16 else stored
            hu += np.int16(intercept_i)
            return hu
    wide = stored.astype(np.int32) * slope_i + intercept_i
    return np.clip(wide, INT16_MIN, INT16_MAX).astype(np.int16)


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
