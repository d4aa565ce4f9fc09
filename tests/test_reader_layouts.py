"""Study folders as hospitals export them: the reader finds the slices and keeps the one CT series.

Issue 16: a scout (localiser) slice, a second series, files named ``CT.<uid>`` or ``IM0001`` or
slices one folder down used to cost the whole study. Each case is a small synthetic series written
with src.synth's DICOM writer, plus the odd piece, and the study must come back as the main series
alone, the odd files named in ``skipped_files`` with a reason.
"""
from pathlib import Path

import numpy as np
import pydicom
import pytest

from src.data import dicom_slice
from src.data.dicom_reader import StudyReadError, read_study
from src.synth.dicom_writer import derived_uid, write_series, write_slice

UID = "1.2.826.0.1.3680043.8.498.777"
ROWS, COLS = 12, 10


def series_volume(n: int, rows: int = ROWS, cols: int = COLS, seed: int = 0) -> np.ndarray:
    """Every slice different (slice i has 29*i added), so a slice from elsewhere or a reordering shows."""
    base = np.random.default_rng(seed).integers(-1000, 1500, size=(rows, cols))
    return np.stack([base + 29 * i for i in range(n)]).astype(np.int16)


def write_main_series(folder: Path, n: int = 8, syntaxes="explicit_le") -> np.ndarray:
    """The study's CT series, files 1..n head first; returns its HU head first."""
    hu = series_volume(n)
    write_series(folder, hu, study_uid=UID, slice_numbers=list(range(1, n + 1)),
                 z_positions=[40.0 - 2.0 * i for i in range(n)], pixel_spacing=(0.7, 0.7), slice_thickness=2.0,
                 transfer_syntaxes=syntaxes)
    return hu


def write_odd_slice(path: Path, differs: str) -> None:
    """One slice that does not belong to the main series: another ``size``, ``orientation`` or ``series``.

    The scout of a hospital export differs in all three at once; each is tested alone here so each
    rule is shown to be needed.
    """
    rows, cols = (ROWS + 6, COLS) if differs == "size" else (ROWS, COLS)
    series = derived_uid(UID, "scout") if differs == "series" else derived_uid(UID, "series")
    write_slice(path, series_volume(1, rows, cols, seed=9)[0], study_uid=UID, series_uid=series,
                sop_uid=derived_uid(UID, "odd", path.name), frame_uid=derived_uid(UID, "frame"),
                instance_number=99, position=(0.0, 0.0, 31.0), pixel_spacing=(0.7, 0.7), slice_thickness=2.0)
    if differs == "orientation":
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal: a localiser's view
        ds.save_as(path)


@pytest.mark.parametrize("decoder", ["dicomsdl", "pydicom"])
@pytest.mark.parametrize("differs", ["size", "orientation", "series"])
def test_one_odd_slice_is_skipped_not_the_study(tmp_path, differs, decoder):
    folder = tmp_path / UID
    hu = write_main_series(folder)
    write_odd_slice(folder / "99.dcm", differs)
    with pytest.warns(UserWarning, match=r"99\.dcm") as caught:
        study = read_study(folder, min_slices=5, decoder=decoder)
    assert np.array_equal(study.hu, hu), "the odd slice must not enter the volume"
    assert study.slice_numbers.tolist() == list(range(1, 9))
    assert study.skipped_files == ["99.dcm"]
    expected_words = {"size": f"{ROWS + 6}x{COLS}", "orientation": "not axial", "series": "series"}[differs]
    assert expected_words in study.skipped_reasons["99.dcm"]
    assert any("99.dcm" in str(w.message) and "kept" in str(w.message) for w in caught)


def test_the_series_with_most_axial_slices_wins_whatever_the_file_order(tmp_path):
    folder = tmp_path / UID
    hu = write_main_series(folder, n=7)
    # a second, shorter axial series of the same size, numbered before the main one
    other = series_volume(4, seed=5)
    for k in range(4):
        write_slice(folder / f"{k + 100}.dcm", other[k], study_uid=UID, series_uid=derived_uid(UID, "second"),
                    sop_uid=derived_uid(UID, "second", k), frame_uid=derived_uid(UID, "frame"), instance_number=k + 1,
                    position=(0.0, 0.0, 40.0 - 2.0 * k), pixel_spacing=(0.7, 0.7), slice_thickness=2.0)
    with pytest.warns(UserWarning, match="another series"):
        study = read_study(folder, min_slices=3)
    assert np.array_equal(study.hu, hu)
    assert study.skipped_files == [f"{k}.dcm" for k in range(100, 104)]


def test_files_are_found_by_content_not_extension(tmp_path):
    folder = tmp_path / UID
    hu = write_main_series(folder, syntaxes=["explicit_le", "rle"] * 4)
    # scanners name files CT.<SOPInstanceUID> or IM0001; the slice number then comes from InstanceNumber
    for k, path in enumerate(sorted(folder.iterdir(), key=lambda p: int(p.stem))):
        path.rename(folder / (f"CT.{derived_uid(UID, 'sop', k)}" if k % 2 else f"IM{k + 1:04d}"))
    (folder / "README.txt").write_text("exported by a PACS\n")
    (folder / "notes").write_bytes(b"\x00" * 300)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" * 40)
    with pytest.warns(UserWarning, match="ignored 2 file.* not DICOM: README.txt, notes"):
        study = read_study(folder, min_slices=5)
    assert np.array_equal(study.hu, hu)
    assert study.slice_numbers.tolist() == list(range(1, 9))
    assert study.skipped_files == []  # what is not DICOM is not a slice, so not a skipped one either


def test_a_file_without_the_preamble_is_still_read(tmp_path):
    folder = tmp_path / UID
    hu = write_main_series(folder)
    raw = (folder / "3.dcm").read_bytes()
    assert raw[128:132] == b"DICM"
    (folder / "3.dcm").unlink()
    (folder / "IMG3").write_bytes(raw[132:])  # the file meta group first, as some old writers do
    for decoder in ("auto", "pydicom"):
        study = read_study(folder, min_slices=5, decoder=decoder)
        assert np.array_equal(study.hu, hu) and study.skipped_files == []


def test_junk_files_never_reach_the_decoders(tmp_path, monkeypatch):
    folder = tmp_path / UID
    write_main_series(folder)
    for k in range(50):
        (folder / f"junk{k}").write_bytes(bytes(range(256)) * 4)
    calls = []
    real = dicom_slice._decode_dicomsdl

    def counting(raw, *args, **kwargs):
        calls.append(1)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(dicom_slice, "_decode_dicomsdl", counting)
    study = read_study(folder, min_slices=5)
    assert study.n_slices == 8 and len(calls) == 8, "a junk file was handed to a decoder"


def test_slices_one_folder_down_are_read(tmp_path):
    folder = tmp_path / UID
    hu = write_main_series(folder / "series_001")
    study = read_study(folder, min_slices=5)
    assert np.array_equal(study.hu, hu) and study.uid == UID


def test_two_series_folders_keep_the_longer_one(tmp_path):
    folder = tmp_path / UID
    hu = write_main_series(folder / "2")
    # a 3-slice scout series in its own folder, listed first
    for k in range(3):
        write_odd_slice(folder / "1" / f"{k + 1}.dcm", "orientation")
    with pytest.warns(UserWarning, match="not axial"):
        study = read_study(folder, min_slices=5)
    assert np.array_equal(study.hu, hu)
    assert study.skipped_files == ["1/1.dcm", "1/2.dcm", "1/3.dcm"]


def test_no_dicom_anywhere_is_a_study_error_naming_the_folder(tmp_path):
    folder = tmp_path / UID
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "readme.txt").write_text("nothing here")
    with pytest.raises(StudyReadError, match=f"{UID}.*no DICOM files"):
        read_study(folder)
