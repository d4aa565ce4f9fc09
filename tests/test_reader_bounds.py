"""What one DICOM file may demand: a declared size beyond the bound is refused before any pixel memory.

Issue 16: a small RLE file that declares 16000 x 16000 pixels took 1 GB for one slice. The files here
declare 5000 x 5000 (more than the default bound of 4096 x 4096) over a few hundred bytes of
pixel data; the reader must refuse them by the size in the header, naming the file and the bound,
and peak Python-side memory (numpy and pydicom buffers are traced) must stay far below one such
frame (50 MB). A file whose pixel data is shorter than its Rows x Columns promise is refused too:
dicomsdl would read past the end of the buffer (garbage, or a crash of the whole process).
"""
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from src.data.dicom_reader import read_study
from src.data.dicom_slice import DEFAULT_MAX_PIXELS, SliceReadError, read_slice_hu
from src.synth.dicom_writer import write_series

REPO = Path(__file__).resolve().parent.parent
UID = "1.2.826.0.1.3680043.8.498.4096"
HUGE = 5000  # 25 M pixels a frame: 50 MB of uint16 before the decoder finds the data is missing


def write_small_study(folder: Path, n: int, syntax: str) -> np.ndarray:
    hu = (np.arange(n * 64).reshape(n, 8, 8) % 900 - 300).astype(np.int16)
    write_series(folder, hu, study_uid=UID, slice_numbers=list(range(1, n + 1)),
                 z_positions=[10.0 - i for i in range(n)], pixel_spacing=(1.0, 1.0), slice_thickness=1.0,
                 transfer_syntaxes=syntax)
    return hu


def declare_size(source: Path, target: Path, rows: int, cols: int) -> Path:
    """A copy of ``source`` whose header claims ``rows`` x ``cols`` while its pixel data stays as small as it was."""
    ds = pydicom.dcmread(source)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(target)
    return target


@pytest.mark.parametrize("decoder", ["auto", "dicomsdl", "pydicom"])
def test_a_huge_declared_rle_frame_is_refused_by_its_header(tmp_path, decoder):
    write_small_study(tmp_path / UID, 2, "rle")
    huge = declare_size(tmp_path / UID / "2.dcm", tmp_path / "huge.dcm", HUGE, HUGE)
    assert huge.stat().st_size < 4000
    tracemalloc.start()
    try:
        with pytest.raises(SliceReadError) as refused:
            read_slice_hu(huge, decoder=decoder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB taken for a file that should be refused by its header"
    message = str(refused.value)
    assert "huge.dcm" in message and f"{HUGE} x {HUGE}" in message
    assert str(DEFAULT_MAX_PIXELS) in message and "max_pixels" in message


def test_the_bound_is_configurable_and_passed_down_by_read_study(tmp_path):
    folder = tmp_path / UID
    hu = write_small_study(folder, 6, "explicit_le")  # 8 x 8 = 64 pixels a slice
    with pytest.raises(SliceReadError, match="more than the bound of 63"):
        read_slice_hu(folder / "1.dcm", max_pixels=63)
    assert read_slice_hu(folder / "1.dcm", max_pixels=64)[0].shape == (8, 8)
    # in a study the refused slice is skipped by name; the others are read
    declare_size(folder / "3.dcm", folder / "3.dcm", HUGE, HUGE)
    with pytest.warns(UserWarning, match=r"3\.dcm.*bound"):
        study = read_study(folder, min_slices=3)
    assert study.skipped_files == ["3.dcm"] and "bound" in study.skipped_reasons["3.dcm"]
    assert np.array_equal(study.hu, hu[[0, 1, 3, 4, 5]])


def test_native_pixel_data_shorter_than_the_header_promises_is_refused(tmp_path):
    # dicomsdl reads past the buffer on such a file (garbage, or a segfault): run it in a child process
    write_small_study(tmp_path / UID, 1, "explicit_le")
    liar = declare_size(tmp_path / UID / "1.dcm", tmp_path / "liar.dcm", 64, 64)  # 8x8 pixels of data
    code = ("import sys; from src.data.dicom_slice import read_slice_hu, SliceReadError\n"
            "for decoder in ('dicomsdl', 'auto'):\n"
            "    try:\n        read_slice_hu(sys.argv[1], decoder=decoder)\n        print('read', decoder)\n"
            "    except SliceReadError as e:\n        print('refused', decoder, e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(liar)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"reader crashed: rc {done.returncode} {done.stderr[-500:]}"
    assert "read " not in done.stdout, done.stdout
    assert done.stdout.count("refused") == 2 and "liar.dcm" in done.stdout and "8192" in done.stdout
