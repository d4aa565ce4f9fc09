"""The DICOM reader against files nobody here made (pydicom-data) and against small synthetic series.

Real files: the reader's HU must equal pydicom's own ``pixel_array * slope + intercept`` for the
CT slice uncompressed, as JPEG 2000 and re-encoded as JPEG Lossless by GDCM, and the raw values of
a JPEG Lossless NM image without rescale tags. Synthetic series: order by z whatever the file
numbers say, skip a corrupt slice by name, refuse studies that cannot be used.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from src.data.dicom_reader import StudyReadError, read_study
from src.data.dicom_slice import SliceReadError, read_slice_hu, stored_to_hu, truncation_problem
from src.synth.dicom_writer import write_series

REPO = Path(__file__).resolve().parent.parent


def reference_hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    return ds.pixel_array.astype(np.float64) * slope + intercept


@pytest.fixture(scope="module")
def ct_jpeg_lossless(tmp_path_factory) -> Path:
    """The pydicom-data CT slice re-encoded as JPEG Lossless Process 14 (the real data's compression)."""
    from src.synth.dicom_writer import gdcm_to_jpeg_lossless

    out = tmp_path_factory.mktemp("jpegll") / "ct_jpeg_lossless.dcm"
    gdcm_to_jpeg_lossless(Path(get_testdata_file("693_UNCR.dcm")), out)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    return out


def real_files(jpeg_lossless_copy):
    return {
        "693_UNCR.dcm": Path(get_testdata_file("693_UNCR.dcm")),
        "693_J2KR.dcm": Path(get_testdata_file("693_J2KR.dcm")),
        "693 as JPEG Lossless": jpeg_lossless_copy,
        "JPEG-LL.dcm": Path(get_testdata_file("JPEG-LL.dcm")),
    }


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "693_J2KR.dcm", "693 as JPEG Lossless", "JPEG-LL.dcm"])
@pytest.mark.parametrize("decoder", ["dicomsdl", "pydicom", "auto"])
def test_real_files_decode_to_pydicom_hu(name, decoder, ct_jpeg_lossless):
    path = real_files(ct_jpeg_lossless)[name]
    hu, meta = read_slice_hu(path, decoder=decoder)
    expected = reference_hu(path)
    assert hu.shape == expected.shape
    assert np.array_equal(hu.astype(np.float64), expected), f"{name} via {meta['decoder']}"
    assert meta["decoder"] == ("dicomsdl" if decoder == "auto" else decoder)


def test_ct_slice_geometry_and_rescale_read_from_header():
    hu, meta = read_slice_hu(get_testdata_file("693_UNCR.dcm"))
    assert hu.dtype == np.int16  # slope 1, intercept -1024: exact in int16
    assert meta["intercept"] == -1024.0 and meta["slope"] == 1.0
    assert meta["position"] == pytest.approx((-122.5, -112.4, 47.0))
    assert meta["pixel_spacing"] == pytest.approx((0.478516, 0.478516))
    # the three encodings of that one slice give the same HU
    j2k, _ = read_slice_hu(get_testdata_file("693_J2KR.dcm"))
    assert np.array_equal(hu, j2k)


def test_nm_image_without_rescale_tags_keeps_raw_values():
    path = get_testdata_file("JPEG-LL.dcm")
    hu, meta = read_slice_hu(path)
    assert meta["slope"] == 1.0 and meta["intercept"] == 0.0
    assert np.array_equal(hu, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_files_are_refused_without_crashing(tmp_path, ct_jpeg_lossless, keep):
    # dicomsdl segfaults on a truncated file, so run the read in a child process: a crash fails the test
    # instead of taking pytest down with it
    for source in (Path(get_testdata_file("693_UNCR.dcm")), ct_jpeg_lossless):
        raw = source.read_bytes()
        cut = tmp_path / f"cut_{source.name}"
        cut.write_bytes(raw[: int(len(raw) * keep)])
        assert truncation_problem(cut.read_bytes()) is not None
        assert truncation_problem(raw) is None
        code = ("import sys; from src.data.dicom_slice import read_slice_hu, SliceReadError\n"
                "try:\n    read_slice_hu(sys.argv[1])\nexcept SliceReadError as e:\n    print('refused:', e)\n")
        done = subprocess.run([sys.executable, "-c", code, str(cut)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"reader crashed on {cut.name}: rc {done.returncode} {done.stderr[-500:]}"
        assert "refused:" in done.stdout and cut.name in done.stdout


def test_stored_to_hu_exact_and_wide_paths():
    stored = np.array([[0, 1000, 4095]], dtype=np.uint16)
    assert stored_to_hu(stored.copy(), 1.0, -1024.0).tolist() == [[-1024, -24, 3071]]
    big = np.array([[0, 40000, 65535]], dtype=np.uint16)  # does not fit int16 before the intercept
    hu = stored_to_hu(big, 1.0, -1024.0)
    assert hu.dtype == np.int16 and hu.tolist() == [[-1024, 32767, 32767]]  # clipped, not wrapped
    signed = np.array([[-2000, 0, 2000]], dtype=np.int16)
    assert stored_to_hu(signed.copy(), 2.0, -1024.0).tolist() == [[-5024, -1024, 2976]]
    fractional = stored_to_hu(np.array([[10, 20]], dtype=np.uint16), 0.5, -1024.0)
    assert fractional.dtype == np.float32 and fractional.tolist() == [[-1019.0, -1014.0]]


# ---------------------------------------------------------------------------------------------
# synthetic series
# ---------------------------------------------------------------------------------------------

UID = "1.2.826.0.1.3680043.8.498.424242"


def slice_pattern(n: int, rows: int, cols: int) -> np.ndarray:
    """A volume whose every slice is different (slice i has i*37 added), so any reordering shows."""
    rng = np.random.default_rng(n * 1000 + rows)
    base = rng.integers(-1000, 1500, size=(rows, cols))
    return np.stack([base + 37 * i for i in range(n)]).astype(np.int16)


def write_study(folder: Path, hu_head_first: np.ndarray, *, head_at_slice_1=True, first_number=1, gap_after=None,
                syntaxes="explicit_le", dz=1.25, spacing=(0.5, 0.6), origin=(-60.0, -40.0)):
    """Write ``hu_head_first`` as a series; returns (slice numbers in head-first order, z head first)."""
    n = hu_head_first.shape[0]
    numbers = list(range(first_number, first_number + n))
    if gap_after is not None:
        numbers = [k if i <= gap_after else k + 5 for i, k in enumerate(numbers)]
    if not head_at_slice_1:
        numbers = numbers[::-1]  # slice with the smallest number is at the feet
    z = [100.0 - dz * i for i in range(n)]
    write_series(folder, hu_head_first, study_uid=folder.name, slice_numbers=numbers, z_positions=z,
                 pixel_spacing=spacing, slice_thickness=dz, origin_xy=origin, transfer_syntaxes=syntaxes)
    return numbers, z


def test_reversed_study_with_gaps_and_corrupt_slice(tmp_path):
    hu = slice_pattern(14, 20, 16)
    folder = tmp_path / UID
    syntaxes = ["explicit_le", "jpeg_lossless", "rle", "explicit_le"] * 3 + ["jpeg_lossless", "explicit_le"]
    numbers, z = write_study(folder, hu, head_at_slice_1=False, first_number=50, gap_after=6, syntaxes=syntaxes)
    corrupt = folder / f"{numbers[9]}.dcm"
    corrupt.write_bytes(corrupt.read_bytes()[:700])  # cut inside the header
    with pytest.warns(UserWarning, match=corrupt.name):
        study = read_study(folder, min_slices=5)
    keep = [i for i in range(14) if i != 9]
    assert study.uid == UID
    assert study.skipped_files == [corrupt.name]
    assert np.array_equal(study.hu, hu[keep])  # head to feet, corrupt slice gone, rest intact
    assert study.slice_numbers.tolist() == [numbers[i] for i in keep]
    assert np.all(np.diff(study.z) < 0) and study.z[0] == pytest.approx(100.0)
    assert study.slice_spacing == pytest.approx(1.25)
    assert study.z_gaps == 1  # the missing slice leaves one 2.5 mm step
    assert study.pixel_spacing == pytest.approx((0.5, 0.6))
    assert study.original_shape == (20, 16) and study.origin_xy == pytest.approx((-60.0, -40.0))
    assert sum(study.decoder_counts.values()) == 13


def test_head_first_study_matches_file_order(tmp_path):
    hu = slice_pattern(12, 8, 10)
    numbers, _ = write_study(tmp_path / UID, hu, head_at_slice_1=True, first_number=3)
    study = read_study(tmp_path / UID, min_slices=5, decoder="pydicom")
    assert np.array_equal(study.hu, hu)
    assert study.slice_numbers.tolist() == numbers
    assert study.decoder_counts == {"pydicom": 12}


def test_both_decoders_agree_on_a_mixed_series(tmp_path):
    hu = slice_pattern(10, 64, 48)  # JPEG 2000's encoder needs some size for its resolution levels
    write_study(tmp_path / UID, hu, syntaxes=["explicit_le", "jpeg_lossless", "rle", "jpeg2000_lossless", "explicit_le"] * 2)
    fast = read_study(tmp_path / UID, min_slices=5, decoder="dicomsdl")
    slow = read_study(tmp_path / UID, min_slices=5, decoder="pydicom")
    assert np.array_equal(fast.hu, slow.hu) and np.array_equal(fast.hu, hu)
    assert fast.decoder_counts == {"dicomsdl": 10}


def test_slice_transform_is_applied_per_slice(tmp_path):
    hu = slice_pattern(10, 8, 8)
    write_study(tmp_path / UID, hu)
    study = read_study(tmp_path / UID, min_slices=5, slice_transform=lambda s: s[::2, ::2])
    assert study.hu.shape == (10, 4, 4) and study.original_shape == (8, 8)
    assert np.array_equal(study.hu, hu[:, ::2, ::2])


def test_too_few_readable_slices_is_a_study_error(tmp_path):
    write_study(tmp_path / UID, slice_pattern(4, 8, 8))
    with pytest.raises(StudyReadError, match=f"{UID}.*only 4 readable slices"):
        read_study(tmp_path / UID, min_slices=10)


def test_a_slice_of_another_size_costs_only_itself(tmp_path):
    # it used to cost the study ("slices disagree in size"); tests/test_reader_layouts.py has the other odd pieces
    folder = tmp_path / UID
    hu = slice_pattern(6, 8, 8)
    write_study(folder, hu)
    other = tmp_path / "other" / UID
    write_study(other, slice_pattern(6, 10, 8))
    (other / "1.dcm").rename(folder / "99.dcm")
    with pytest.warns(UserWarning, match=r"skipped 1 slice\(s\) of size 10x8: 99\.dcm"):
        study = read_study(folder, min_slices=2)
    assert np.array_equal(study.hu, hu) and study.skipped_files == ["99.dcm"]


def test_empty_or_missing_folder_is_a_study_error(tmp_path):
    (tmp_path / UID).mkdir()
    with pytest.raises(StudyReadError, match="no DICOM files"):
        read_study(tmp_path / UID)
    with pytest.raises(StudyReadError, match="does not exist"):
        read_study(tmp_path / "1.2.3")


def test_unreadable_file_error_names_the_file(tmp_path):
    bad = tmp_path / "7.dcm"
    bad.write_bytes(b"not a dicom file at all" * 20)
    with pytest.raises(SliceReadError, match="7.dcm"):
        read_slice_hu(bad)
    with pytest.raises(ValueError, match="decoder"):
        read_slice_hu(bad, decoder="gdcm")
