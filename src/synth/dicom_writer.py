"""Write CT slices as DICOM files the way the Kaggle RSNA 2022 studies are stored.

Called by src.synth.generate for every synthetic study, and by tests of the DICOM readers that
need a small study on disk with a known transfer syntax, slice order or numbering. One file per
axial slice, named ``<slice_number>.dcm``; pixels are integers that give Hounsfield units through
RescaleSlope/RescaleIntercept, as on a real scanner.

Transfer syntaxes (names accepted by :func:`write_series`):

- ``explicit_le``        uncompressed, Explicit VR Little Endian
- ``jpeg_lossless``      JPEG Lossless Process 14 SV1 (1.2.840.10008.1.2.4.70), the compressed format
                         of the real data; pydicom cannot encode it, so python-gdcm transcodes the file
- ``rle``                RLE Lossless, encoded by pydicom
- ``jpeg2000_lossless``  JPEG 2000 Lossless, encoded by pydicom through pylibjpeg-openjpeg

Nothing time-dependent goes into a file, and every UID is derived from the study UID, so the same
input always gives byte-identical files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1,
                         RLELossless, generate_uid)

from ..io_utils import atomic_path

TRANSFER_SYNTAXES = {
    "explicit_le": ExplicitVRLittleEndian,
    "jpeg_lossless": JPEGLosslessSV1,
    "rle": RLELossless,
    "jpeg2000_lossless": JPEG2000Lossless,
}

# A root of our own would need registering; pydicom's documented prefix is meant for exactly this.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def derived_uid(study_uid: str, *parts: object) -> str:
    """A valid UID that depends only on ``study_uid`` and ``parts`` (deterministic files)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[study_uid, *map(str, parts)])


def stored_values(hu: np.ndarray, intercept: float, slope: float) -> tuple[np.ndarray, int, int]:
    """The integer pixels for ``hu`` and the (PixelRepresentation, BitsStored) that describe them.

    Unsigned 16-bit when every value is >= 0 (the common case with intercept -1024), signed
    otherwise. BitsStored is 12 when the values fit in 12 bits, as on many scanners, else 16.
    """
    if slope == 0:
        raise ValueError("RescaleSlope must not be 0")
    raw = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    lo, hi = float(raw.min()), float(raw.max())
    if lo >= 0:
        if hi > 65535:
            raise ValueError(f"HU up to {hi * slope + intercept:.0f} do not fit uint16 with intercept {intercept}, slope {slope}")
        bits = 12 if hi < 4096 else 16
        return raw.astype(np.uint16), 0, bits
    if lo < -32768 or hi > 32767:
        raise ValueError(f"HU range [{lo * slope + intercept:.0f}, {hi * slope + intercept:.0f}] does not fit int16 "
                         f"with intercept {intercept}, slope {slope}; change the intercept")
    bits = 12 if (lo >= -2048 and hi < 2048) else 16
    return raw.astype(np.int16), 1, bits


def _resolve_syntax(name: str) -> str:
    try:
        return TRANSFER_SYNTAXES[name]
    except KeyError:
        raise ValueError(f"unknown transfer syntax {name!r}; use one of {', '.join(TRANSFER_SYNTAXES)}") from None


def _base_dataset(study_uid: str, series_uid: str, sop_uid: str, frame_uid: str, instance_number: int,
                  position: Sequence[float], pixel_spacing: tuple[float, float], slice_thickness: float,
                  intercept: float, slope: float) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    # The Kaggle data is anonymised: the patient ID is the study UID, no names or dates.
    ds.PatientID = study_uid.rsplit(".", 1)[-1]
    ds.PatientName = ""
    # present but empty, as anonymised: GDCM would otherwise fill in today's date and time
    for keyword in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, "")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = float(position[2])
    ds.SliceThickness = float(slice_thickness)
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.RescaleIntercept = float(intercept)
    ds.RescaleSlope = float(slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = 400
    ds.WindowWidth = 1800
    ds.KVP = 120
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, pixel_representation: int, bits_stored: int) -> None:
    rows, cols = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    dtype = "<i2" if pixel_representation else "<u2"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()


def _file_meta(sop_uid: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = UID_PREFIX + "1"
    meta.ImplementationVersionName = "RSNA22_SYNTH"
    return meta


def gdcm_to_jpeg_lossless(src: Path, dst: Path) -> Path:
    """Transcode an uncompressed file to JPEG Lossless Process 14 SV1 with GDCM (pydicom has no encoder)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {src} to compress it")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not compress {src} to JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {dst}")
    return dst


def _save(ds: Dataset, pixels: np.ndarray, syntax: str, path: Path, atomic: bool) -> None:
    """Encode ``pixels`` (already in ds.PixelData, uncompressed) as ``syntax`` and write ``path``."""
    ds.file_meta = _file_meta(ds.SOPInstanceUID, ExplicitVRLittleEndian)
    if syntax == JPEGLosslessSV1:
        # GDCM transcodes files, not in-memory datasets: an uncompressed scratch file comes first
        with atomic_path(path) as tmp:
            raw_tmp = tmp.with_name(tmp.name + ".raw")
            try:
                ds.save_as(raw_tmp, enforce_file_format=True)
                gdcm_to_jpeg_lossless(raw_tmp, tmp)
            finally:
                raw_tmp.unlink(missing_ok=True)
        return
    if syntax != ExplicitVRLittleEndian:
        # pydicom sets the new transfer syntax in file_meta and encapsulates the frame
        ds.compress(syntax, pixels, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "",
                    generate_instance_uid=False)
    if atomic:
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)


def write_slice(path: Path, hu: np.ndarray, *, study_uid: str, series_uid: str, sop_uid: str, frame_uid: str,
                instance_number: int, position: Sequence[float], pixel_spacing: tuple[float, float],
                slice_thickness: float, transfer_syntax: str = "explicit_le", intercept: float = -1024.0,
                slope: float = 1.0, pixel_representation: int | None = None, bits_stored: int | None = None) -> Path:
    """Write one axial slice (``hu``: rows x cols) to ``path`` atomically and return the path.

    ``pixel_representation``/``bits_stored`` let a series keep one pixel format across its slices;
    left as None they are chosen from this slice's values.
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"{path}: a slice must be 2-D (rows, cols), got shape {hu.shape}")
    syntax = _resolve_syntax(transfer_syntax)
    pixels, rep, bits = stored_values(hu, intercept, slope)
    if pixel_representation is not None:
        rep = pixel_representation
        bits = bits_stored or 16
        pixels = pixels.astype(np.int16 if rep else np.uint16)
    ds = _base_dataset(study_uid, series_uid, sop_uid, frame_uid, instance_number, position, pixel_spacing,
                       slice_thickness, intercept, slope)
    _set_pixels(ds, pixels, rep, bits)
    path = Path(path)
    _save(ds, pixels, syntax, path, atomic=True)
    return path


def write_series(study_dir: Path, hu: np.ndarray, *, study_uid: str, slice_numbers: Sequence[int],
                 z_positions: Sequence[float], pixel_spacing: tuple[float, float], slice_thickness: float,
                 origin_xy: tuple[float, float] = (0.0, 0.0), transfer_syntaxes: Sequence[str] | str = "explicit_le",
                 intercept: float = -1024.0, slope: float = 1.0) -> list[Path]:
    """Write ``hu`` (slices, rows, cols) as one CT series; slice i becomes ``study_dir/<slice_numbers[i]>.dcm``.

    ``z_positions[i]`` is slice i's ImagePositionPatient z (the head has the largest z);
    ``transfer_syntaxes`` is one name for every slice or one per slice. InstanceNumber equals the
    slice number, as in the Kaggle files. Returns the paths in the order of ``hu``.

    A new ``study_dir`` is built under a hidden name and renamed into place, so a reader never sees
    half a study; into an existing folder each file is written atomically instead.
    """
    hu = np.asarray(hu)
    study_dir = Path(study_dir)
    if hu.ndim != 3:
        raise ValueError(f"{study_dir}: hu must be (slices, rows, cols), got shape {hu.shape}")
    n = hu.shape[0]
    if len(slice_numbers) != n or len(z_positions) != n:
        raise ValueError(f"{study_dir}: {n} slices but {len(slice_numbers)} slice numbers and "
                         f"{len(z_positions)} z positions")
    if len(set(int(s) for s in slice_numbers)) != n:
        raise ValueError(f"{study_dir}: slice numbers must be unique (they name the files)")
    syntaxes = [transfer_syntaxes] * n if isinstance(transfer_syntaxes, str) else list(transfer_syntaxes)
    if len(syntaxes) != n:
        raise ValueError(f"{study_dir}: {n} slices but {len(syntaxes)} transfer syntaxes")
    syntaxes = [_resolve_syntax(name) for name in syntaxes]
    if JPEG2000Lossless in syntaxes and min(hu.shape[1:]) < 32:
        # openjpeg's encoder uses 6 resolution levels, which needs at least 32 pixels a side
        raise ValueError(f"{study_dir}: JPEG 2000 needs slices of at least 32 x 32 pixels, got {hu.shape[1:]}")
    # one pixel format for the whole series, as a scanner would write it
    pixels, rep, bits = stored_values(hu, intercept, slope)
    series_uid = derived_uid(study_uid, "series")
    frame_uid = derived_uid(study_uid, "frame")
    fresh = not study_dir.exists()
    if fresh:
        study_dir.parent.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix=f".{study_dir.name}.", dir=study_dir.parent))
    else:
        target = study_dir
    try:
        # one dataset, updated per slice: building 40 elements per file is most of pydicom's cost
        ds = _base_dataset(study_uid, series_uid, "", frame_uid, 0, (0.0, 0.0, 0.0), pixel_spacing,
                           slice_thickness, intercept, slope)
        for i in range(n):
            number = int(slice_numbers[i])
            ds.SOPInstanceUID = derived_uid(study_uid, "sop", number)
            ds.InstanceNumber = number
            ds.ImagePositionPatient = [float(origin_xy[0]), float(origin_xy[1]), float(z_positions[i])]
            ds.SliceLocation = float(z_positions[i])
            _set_pixels(ds, pixels[i], rep, bits)
            _save(ds, pixels[i], syntaxes[i], target / f"{number}.dcm", atomic=not fresh)
        if fresh:
            os.replace(target, study_dir)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return [study_dir / f"{int(s)}.dcm" for s in slice_numbers]


def read_hu(path: Path) -> np.ndarray:
    """Hounsfield units of one file with pydicom (a reference reader for tests, not the pipeline's)."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
