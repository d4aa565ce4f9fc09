"""The synthetic dataset generator (src/synth): DICOM round trips, mask orientation, fractures, labels, layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dicomsdl
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy.ndimage import binary_dilation

from src import TARGETS, VERTEBRAE
from src.synth.dicom_writer import TRANSFER_SYNTAXES, stored_values, write_series
from src.synth.fractures import PATIENT_RATE, VERTEBRA_RATES, draw_fractured_vertebrae, target_row
from src.synth.generate import generate_dataset
from src.synth.nifti import write_segmentation
from src.synth.study import SIZES, make_study, slice_numbering

UID = "1.2.826.0.1.3680043.99001"


@pytest.fixture(scope="module")
def fractured_pair():
    """One demo study with C2 and C5 fractured, and the same study rendered without its clefts."""
    study = make_study(UID, 7, fractured=["C2", "C5"])
    twin = make_study(UID, 7, fractured=["C2", "C5"], with_fractures=False)
    return study, twin


def _read_pydicom_hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# ---- DICOM files -----------------------------------------------------------------------------

@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("low_hu", [-1024, -1500])  # -1500 forces signed pixels
def test_series_reads_back_with_pydicom_and_dicomsdl(tmp_path, syntax, low_hu):
    rng = np.random.default_rng(0)
    hu = rng.integers(low_hu, 2000, size=(3, 40, 36)).astype(np.int16)
    paths = write_series(tmp_path / UID, hu, study_uid=UID, slice_numbers=[11, 12, 14], z_positions=[5.0, 4.25, 3.5],
                         pixel_spacing=(0.7, 0.6), slice_thickness=0.75, origin_xy=(-80.5, -60.0),
                         transfer_syntaxes=syntax)
    assert [p.name for p in paths] == ["11.dcm", "12.dcm", "14.dcm"]
    uids = set()
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
        np.testing.assert_array_equal(_read_pydicom_hu(path), hu[i])
        np.testing.assert_array_equal(dicomsdl.open(str(path)).pixelData(), hu[i])
        assert [float(x) for x in ds.ImagePositionPatient] == [-80.5, -60.0, [5.0, 4.25, 3.5][i]]
        assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(x) for x in ds.PixelSpacing] == [0.7, 0.6]
        assert int(ds.InstanceNumber) == [11, 12, 14][i]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (40, 36, 16)
        assert ds.PixelRepresentation == (1 if low_hu < -1024 else 0)
        assert ds.HighBit == ds.BitsStored - 1
        assert ds.StudyInstanceUID == UID
        uids.add(ds.SOPInstanceUID)
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert len(uid) <= 64 and all(part.isdigit() for part in uid.split("."))
    assert len(uids) == 3


def test_series_files_are_deterministic(tmp_path):
    hu = np.random.default_rng(1).integers(-1024, 1500, size=(2, 16, 16)).astype(np.int16)
    digests = []
    for run in ("a", "b"):
        paths = write_series(tmp_path / run / UID, hu, study_uid=UID, slice_numbers=[1, 2], z_positions=[1.0, 0.0],
                             pixel_spacing=(1.0, 1.0), slice_thickness=1.0, transfer_syntaxes=list(TRANSFER_SYNTAXES)[:2])
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
    assert digests[0] == digests[1]


def test_write_series_rejects_bad_input(tmp_path):
    hu = np.zeros((2, 4, 4), dtype=np.int16)
    with pytest.raises(ValueError, match="unique"):
        write_series(tmp_path / "s", hu, study_uid=UID, slice_numbers=[1, 1], z_positions=[1.0, 0.0],
                     pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        write_series(tmp_path / "s", hu, study_uid=UID, slice_numbers=[1, 2], z_positions=[1.0, 0.0],
                     pixel_spacing=(1.0, 1.0), slice_thickness=1.0, transfer_syntaxes="jpeg_lossy")
    with pytest.raises(ValueError, match="int16"):
        stored_values(np.array([-40000.0]), intercept=0.0, slope=1.0)
    assert not (tmp_path / "s").exists()


# ---- one study in memory ---------------------------------------------------------------------

def test_study_geometry_and_numbering(fractured_pair):
    study, _ = fractured_pair
    n, rows, cols = study.hu.shape
    lo, hi = SIZES["demo"]["slices"]
    assert (rows, cols) == (128, 128) and lo <= n <= hi
    assert study.hu.dtype == np.int16 and study.labels.dtype == np.uint8
    assert np.all(np.diff(study.z_positions) < 0), "slice 0 must be the head (largest z)"
    numbers = study.slice_numbers
    assert len(set(numbers.tolist())) == n
    assert np.all(np.diff(numbers) < 0) if study.reversed else np.all(np.diff(numbers) > 0)
    assert set(np.unique(study.labels[study.labels > 0])) >= set(range(1, 8)), "every cervical vertebra in view"


def test_numbering_variety():
    rng = np.random.default_rng(3)
    draws = [slice_numbering(rng, 100) for _ in range(400)]
    reversed_rate = np.mean([r for _, r in draws])
    starts = [nums.min() for nums, _ in draws]
    gaps = [nums.max() - nums.min() + 1 > 100 for nums, _ in draws]
    assert 0.08 < reversed_rate < 0.25
    assert 0.5 < np.mean([s == 1 for s in starts]) < 0.9
    assert 0.03 < np.mean(gaps) < 0.2


def test_labelled_voxels_are_bone(fractured_pair):
    _, twin = fractured_pair
    for label in range(1, 8):
        hu = twin.hu[twin.labels == label]
        assert hu.size > 50
        assert np.mean(hu > 150) > 0.85, f"C{label}: labelled voxels should be bone"
    soft = twin.hu[(twin.labels == 0) & (twin.hu > -200)]
    assert np.median(soft) < 150, "most unlabelled tissue should not be bone"


def test_fractured_vertebrae_have_a_cleft_and_intact_ones_do_not(fractured_pair):
    study, twin = fractured_pair
    assert [f.vertebra for f in study.fractures] == ["C2", "C5"]
    for i, fracture in enumerate(study.fractures):
        cleft = study.cleft == i + 1
        assert cleft.sum() >= 10, f"{fracture.vertebra}: the cleft must cover some voxels"
        assert set(np.unique(study.labels[cleft])) == {fracture.label}
        before = twin.hu[cleft].astype(float).mean()
        after = study.hu[cleft].astype(float).mean()
        expected = fracture.contrast * (before - fracture.cleft_hu)
        assert before - after > 0.4 * expected, f"{fracture.vertebra}: the cleft must be darker than the bone"
        crossed = np.nonzero(cleft.any(axis=(1, 2)))[0]
        assert len(crossed) >= 2, "a cleft should show on several slices"
    # intact vertebrae: no darker voxels at all, and away from the fractured ones (the in-plane blur
    # reaches a pixel or two, the displaced fragment a few mm) the same voxel for voxel
    fractured = np.isin(study.labels, [2, 5]) | np.isin(twin.labels, [2, 5]) | (study.cleft > 0)
    near = binary_dilation(fractured, structure=np.ones((1, 7, 7), dtype=bool))
    for label in (1, 3, 4, 6, 7):
        both = (study.labels == label) & (twin.labels == label)
        # only blur from a neighbour's cleft (tens of HU); a cleft of its own would be hundreds darker
        assert (twin.hu[both].astype(int) - study.hu[both]).max() < 150, f"C{label} is intact"
        np.testing.assert_array_equal(study.hu[both & ~near], twin.hu[both & ~near])
    untouched = ~(study.cleft > 0).any(axis=(1, 2)) & ~(study.labels != twin.labels).any(axis=(1, 2))
    untouched &= ~near.any(axis=(1, 2))
    assert untouched.sum() > 10
    np.testing.assert_array_equal(study.hu[untouched], twin.hu[untouched])


def test_bounding_boxes_cover_the_cleft_slices(fractured_pair):
    study, _ = fractured_pair
    boxes = pd.DataFrame(study.bounding_boxes())
    crossed = np.nonzero((study.cleft > 0).any(axis=(1, 2)))[0]
    assert set(boxes["slice_number"]) == set(study.slice_numbers[crossed].tolist())
    for _, box in boxes.iterrows():
        s = int(np.nonzero(study.slice_numbers == box["slice_number"])[0][0])
        rows, cols = np.nonzero(study.cleft[s])
        inside = ((cols >= box["x"]) & (cols <= box["x"] + box["width"])
                  & (rows >= box["y"]) & (rows <= box["y"] + box["height"]))
        assert inside.any()


def test_same_seed_same_study_and_other_seed_differs():
    a = make_study(UID, 11)
    b = make_study(UID, 11)
    c = make_study(UID, 12)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_label_rates_match_the_real_prevalence():
    rng = np.random.default_rng(0)
    draws = [draw_fractured_vertebrae(rng) for _ in range(40000)]
    overall = np.mean([bool(d) for d in draws])
    assert abs(overall - PATIENT_RATE) < 0.01
    for v in VERTEBRAE:
        rate = np.mean([v in d for d in draws])
        assert abs(rate - VERTEBRA_RATES[v]) < 0.008, f"{v}: {rate:.3f} vs {VERTEBRA_RATES[v]}"
    per_fractured = np.mean([len(d) for d in draws if d])
    assert 1.4 < per_fractured < 1.6


# ---- masks -------------------------------------------------------------------------------------

def _mask_on_dicom_grid_by_affine(nii, z_positions, origin_xy, pixel_spacing, rows, cols) -> np.ndarray:
    """The general mapping: each DICOM pixel's LPS position, to RAS, through the inverse affine."""
    inv = np.linalg.inv(nii.affine)
    data = np.asarray(nii.dataobj)
    dy, dx = pixel_spacing
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    out = np.zeros((len(z_positions), rows, cols), dtype=np.uint8)
    for s, z in enumerate(z_positions):
        lps = np.stack([origin_xy[0] + c * dx, origin_xy[1] + r * dy, np.full(r.shape, z)], axis=-1)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        out[s] = data[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_mask_read_the_kaggle_way_lands_on_the_vertebrae(tmp_path, fractured_pair, reverse):
    _, study = fractured_pair
    numbers = np.arange(1, len(study.z_positions) + 1)
    numbers = numbers[::-1] if reverse else numbers
    folder = tmp_path / UID
    write_series(folder, study.hu, study_uid=UID, slice_numbers=numbers, z_positions=study.z_positions,
                 pixel_spacing=study.pixel_spacing, slice_thickness=study.slice_thickness, origin_xy=study.origin_xy,
                 transfer_syntaxes="explicit_le", intercept=study.intercept)
    path = write_segmentation(tmp_path / f"{UID}.nii", study.labels, study.z_positions, study.pixel_spacing,
                              study.origin_xy)
    nii = nib.load(str(path))
    assert nii.get_data_dtype() == np.uint8
    rows, cols = study.hu.shape[1:]
    assert nii.shape == (cols, rows, len(study.z_positions))
    # the DICOM stack ordered by slice number, read back from the files
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
    stack = np.stack([_read_pydicom_hu(p) for p in files])
    z_by_number = np.array([float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files])
    kaggle = np.asarray(nii.dataobj).transpose(1, 0, 2)[::-1, :, ::-1].transpose(2, 0, 1)  # (slices, rows, cols)
    by_affine = _mask_on_dicom_grid_by_affine(nii, z_by_number, study.origin_xy, study.pixel_spacing, rows, cols)
    expected = study.labels[::-1] if reverse else study.labels
    np.testing.assert_array_equal(by_affine, expected)
    if not reverse:
        np.testing.assert_array_equal(kaggle, expected)
    else:
        assert not np.array_equal(kaggle, expected), "the shortcut must be wrong for a reversed study"
    for label in range(1, 8):
        assert np.mean(stack[by_affine == label] > 150) > 0.85


# ---- the dataset ---------------------------------------------------------------------------------

def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "synth_summary.json"}


def test_dataset_layout_trap_and_overwrite(tmp_path):
    out = tmp_path / "demo"
    summary = generate_dataset(out, n_train=3, n_test=2, seed=5, seg_fraction=0.34, plant_test_trap=True,
                               progress=False, workers=1)
    train = pd.read_csv(out / "train.csv")
    assert list(train.columns) == ["StudyInstanceUID", *TARGETS] and len(train) == 3
    assert json.loads((out / "synth_summary.json").read_text())["n_train"] == 3
    assert (train["patient_overall"] == train[VERTEBRAE].max(axis=1)).all()
    train_dirs = {p.name for p in (out / "train_images").iterdir()}
    assert train_dirs == set(train["StudyInstanceUID"])
    assert [p.name for p in (out / "segmentations").iterdir()] and summary["n_segmentations"] == 1
    for seg in (out / "segmentations").iterdir():
        assert seg.name.removesuffix(".nii") in train_dirs
    test_dirs = {p.name for p in (out / "test_images").iterdir()}
    test = pd.read_csv(out / "test.csv")
    assert list(test.columns) == ["row_id", "StudyInstanceUID", "prediction_type"]
    assert (test["row_id"] == test["StudyInstanceUID"] + "_" + test["prediction_type"]).all()
    listed = set(test["StudyInstanceUID"])
    assert listed - test_dirs == {summary["trap"]["listed_without_images"]}
    assert test_dirs - listed == {summary["trap"]["in_images_not_listed"]}
    submission = pd.read_csv(out / "sample_submission.csv")
    assert list(submission["row_id"]) == list(test["row_id"])
    labels = pd.read_csv(out / "test_labels.csv")
    assert set(labels["StudyInstanceUID"]) == test_dirs & listed  # what a submission predicts and can be scored on
    boxes = pd.read_csv(out / "train_bounding_boxes.csv")
    assert list(boxes.columns) == ["StudyInstanceUID", "x", "y", "width", "height", "slice_number"]
    assert set(boxes["StudyInstanceUID"]) <= set(train.loc[train["patient_overall"] == 1, "StudyInstanceUID"])
    for uid, group in boxes.groupby("StudyInstanceUID"):
        files = {int(p.stem) for p in (out / "train_images" / uid).glob("*.dcm")}
        assert set(group["slice_number"]) <= files
    # refuses a non-empty folder unless told; overwrite replaces the dataset
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(out, n_train=1, n_test=1, seed=6, progress=False, workers=1)
    generate_dataset(out, n_train=1, n_test=1, seed=6, progress=False, workers=1, overwrite=True)
    assert len(pd.read_csv(out / "train.csv")) == 1
    assert len(list((out / "train_images").iterdir())) == 1
    assert not (out / "segmentations").exists() or not any((out / "segmentations").iterdir())


@pytest.mark.slow
def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    kwargs = dict(n_train=3, n_test=2, seed=5, seg_fraction=0.34, plant_test_trap=True, progress=False)
    generate_dataset(tmp_path / "one", workers=1, **kwargs)
    generate_dataset(tmp_path / "two", workers=2, **kwargs)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    generate_dataset(tmp_path / "other", workers=1, **dict(kwargs, seed=6))
    assert _digests(tmp_path / "one") != _digests(tmp_path / "other")


def test_cli_rejects_unknown_keys_and_nonempty_folder(tmp_path, capsys):
    from src.config import run_main
    from src.synthesise import main

    with pytest.raises(SystemExit) as err:
        run_main(main, ["n_trian=3"])
    assert err.value.code == 2 and "n_train" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(SystemExit) as err:
        run_main(main, [f"out={tmp_path}", "n_train=1", "n_test=0"])
    assert err.value.code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "x.txt").exists()


@pytest.mark.slow
def test_full_size_study():
    study = make_study(UID, 3, size="full", fractured=["C7"])
    lo, hi = SIZES["full"]["slices"]
    assert study.hu.shape[1:] == (512, 512) and lo <= study.hu.shape[0] <= hi
    assert (study.cleft > 0).sum() > 100
    for label in range(1, 8):
        assert np.mean(study.hu[study.labels == label] > 150) > 0.85


@pytest.mark.slow
def test_label_rates_of_a_generated_plan():
    from src.synth.generate import plan_dataset

    tasks, _ = plan_dataset(6000, 0, "demo", seed=1, seg_fraction=0.35, plant_test_trap=False)
    frame = pd.DataFrame([{"StudyInstanceUID": t["uid"], **{v: int(v in t["fractured"]) for v in VERTEBRAE}}
                          for t in tasks])
    assert frame["StudyInstanceUID"].is_unique
    assert abs(frame[VERTEBRAE].max(axis=1).mean() - PATIENT_RATE) < 0.02
    for v in VERTEBRAE:
        assert abs(frame[v].mean() - VERTEBRA_RATES[v]) < 0.015
    assert abs(np.mean([t["segmentation"] for t in tasks]) - 0.35) < 0.01


def test_a_fractured_atlas_ring_breaks_in_two_places_on_opposite_sides():
    study = make_study(UID, 5, fractured=["C1"])
    assert [f.vertebra for f in study.fractures] == ["C1", "C1"]
    angles = []
    for i, fracture in enumerate(study.fractures):
        assert fracture.component == "ring"
        assert (study.cleft == i + 1).sum() >= 10, "each break must cut some of the ring"
        u, v, _ = fracture.centre
        angles.append(np.arctan2(u, v + 4.5))  # round the ring's centre
    apart = abs((angles[0] - angles[1] + np.pi) % (2 * np.pi) - np.pi)
    assert apart > np.pi - 0.75, "the two breaks sit on roughly opposite sides of the ring"
    assert target_row(study.fractured)["C1"] == 1 and sum(target_row(study.fractured).values()) == 2
