"""Decode speed: slices/s for dicomsdl and pydicom on each transfer syntax, and the ratio between them.

    python benchmarks/decode.py                 # about a minute on one core
    python benchmarks/decode.py --seconds 0.5 --synthetic 4

Files (read from the page cache: this is decoding, not disk):
- real files nobody here made, from the pydicom-data package: 693_UNCR.dcm (512x512 CT, uncompressed),
  693_J2KR.dcm (the same slice, JPEG 2000 lossless), that slice rewritten as JPEG Lossless Process 14
  by python-gdcm (the real competition data's compression), JPEG-LL.dcm (JPEG Lossless NM image);
- full-size (512x512) CT-like synthetic slices written by src.synth.dicom_writer in every syntax it
  knows.

Columns: ``dicomsdl`` and ``pydicom`` are the bare libraries (open + pixels); ``reader`` is
src.data.dicom_slice.read_slice_hu (read the bytes, truncation check, dicomsdl, HU as int16), the
per-slice cost prepare pays. Single process, single thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from src.synth.dicom_writer import gdcm_to_jpeg_lossless  # noqa: E402

SYNTAX_NAMES = {"explicit_le": "uncompressed", "jpeg_lossless": "JPEG Lossless", "rle": "RLE",
                "jpeg2000_lossless": "JPEG 2000"}


def ct_like_slice(rng: np.random.Generator, size: int = 512, level: int = 0) -> np.ndarray:
    """A 512x512 HU slice with CT's structure and noise (air, a body, a bony ring, -2000 outside the
    reconstruction circle), so lossless compressors see realistic entropy, not flat or random data."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    hu = np.full((size, size), -1000.0)
    body = (xx / 0.8) ** 2 + (yy / 0.62) ** 2 < 1
    hu[body] = 40.0
    ring = np.abs(np.hypot(xx / 0.16, (yy - 0.25) / 0.13) - 1) < 0.28 + 0.05 * np.sin(level / 7)
    hu[ring] = 900.0
    hu += rng.normal(0, 18, size=hu.shape) * (body | ring) + rng.normal(0, 4, size=hu.shape)
    hu[np.hypot(xx, yy) > 1] = -2000.0
    return np.rint(hu).astype(np.int16)


def write_synthetic_slices(folder: Path, syntax: str, count: int, seed: int = 0) -> list[Path]:
    from src.synth.dicom_writer import write_series

    rng = np.random.default_rng(seed)
    hu = np.stack([ct_like_slice(rng, level=i) for i in range(count)])
    uid = f"1.2.826.0.1.3680043.8.498.{abs(hash(syntax)) % 10**6}"
    return write_series(folder / syntax, hu, study_uid=uid, slice_numbers=list(range(1, count + 1)),
                        z_positions=[-i * 1.0 for i in range(count)], pixel_spacing=(0.4, 0.4),
                        slice_thickness=1.0, transfer_syntaxes=syntax)


def bare_dicomsdl(path: Path) -> np.ndarray:
    import dicomsdl

    return dicomsdl.open(str(path)).pixelData(storedvalue=True)


def bare_pydicom(path: Path) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(path).pixel_array


def our_reader(path: Path) -> np.ndarray:
    from src.data.dicom_slice import read_slice_hu

    return read_slice_hu(path)[0]


def slices_per_second(decode, paths: list[Path], seconds: float) -> float:
    """Slices per CPU-second of this process: on a shared machine wall time would measure the neighbours."""
    for path in paths:  # warm-up: imports, page cache, codec tables
        decode(path)
    done, start = 0, time.process_time()
    while True:
        for path in paths:
            decode(path)
        done += len(paths)
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    parser.add_argument("--synthetic", type=int, default=6, help="synthetic slices per transfer syntax")
    args = parser.parse_args()

    import cv2
    from pydicom.data import get_testdata_file

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as scratch:
        scratch = Path(scratch)
        groups: list[tuple[str, list[Path]]] = [
            ("pydicom-data 693_UNCR.dcm (CT 512x512, uncompressed)", [Path(get_testdata_file("693_UNCR.dcm"))]),
            ("693_UNCR rewritten as JPEG Lossless (python-gdcm)",
             [gdcm_to_jpeg_lossless(Path(get_testdata_file("693_UNCR.dcm")), scratch / "693_jpegll.dcm")]),
            ("pydicom-data 693_J2KR.dcm (CT 512x512, JPEG 2000)", [Path(get_testdata_file("693_J2KR.dcm"))]),
            ("pydicom-data JPEG-LL.dcm (NM 1024x256, JPEG Lossless)", [Path(get_testdata_file("JPEG-LL.dcm"))]),
        ]
        for syntax, label in SYNTAX_NAMES.items():
            paths = write_synthetic_slices(scratch, syntax, args.synthetic)
            groups.append((f"synthetic CT 512x512, {label}", paths))

        print(f"decode benchmark: slices per CPU-second, one process, one thread, files in the page cache, "
              f"{args.seconds:.1f} CPU-s per cell")
        print(f"{'files':56s} {'KB/file':>8s} {'dicomsdl/s':>11s} {'pydicom/s':>10s} {'ratio':>6s} {'reader/s':>9s}")
        for name, paths in groups:
            kb = np.mean([p.stat().st_size for p in paths]) / 1024
            fast = slices_per_second(bare_dicomsdl, paths, args.seconds)
            slow = slices_per_second(bare_pydicom, paths, args.seconds)
            ours = slices_per_second(our_reader, paths, args.seconds)
            print(f"{name:56s} {kb:8.0f} {fast:11.0f} {slow:10.0f} {fast / slow:5.1f}x {ours:9.0f}", flush=True)


if __name__ == "__main__":
    main()
