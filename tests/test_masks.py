"""NIfTI masks onto the DICOM grid: through the affine (right for head-first and reversed studies) or,
when the affine cannot be trusted, the Kaggle transform (right only for head-first studies).

The truth is a label volume we make ourselves, written in the layout docs/data.md#mask-orientation describes for the real
segmentations: array (columns, rows, slices) = [col, rows-1-row, slice in ascending z], RAS affine.
"""
import nibabel as nib
import numpy as np
import pytest

from src.data.dicom_reader import Study, read_study
from src.data.nifti_masks import MaskError, align_mask, load_mask, read_mask, vertebra_presence
from src.synth.dicom_writer import write_series

UID = "1.2.826.0.1.3680043.8.498.777"
ROWS, COLS, SLICES = 12, 9, 10  # rows != cols so a row/column swap cannot pass
ROW_SPACING, COL_SPACING, DZ = 0.7, 0.5, 1.5
ORIGIN = (-30.0, -20.0)
Z_TOP = 60.0


def truth_labels() -> np.ndarray:
    """(slices, rows, cols) head first; every voxel's label differs from its mirror images in x, y and z."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 20, size=(SLICES, ROWS, COLS)).astype(np.uint8)
    labels[0, 0, 0], labels[-1, -1, -1] = 1, 7
    return labels


def to_nifti_array(truth_head_first: np.ndarray) -> np.ndarray:
    ascending = truth_head_first[::-1]  # k = 0 is the lowest z (feet)
    return np.ascontiguousarray(ascending.transpose(2, 1, 0)[:, ::-1, :])


def nifti_affine(z_min: float) -> np.ndarray:
    ox, oy = ORIGIN
    return np.array([[-COL_SPACING, 0, 0, -ox],
                     [0, ROW_SPACING, 0, -(oy + (ROWS - 1) * ROW_SPACING)],
                     [0, 0, DZ, z_min],
                     [0, 0, 0, 1]], dtype=float)


def make_study(reversed_storage: bool, drop=()) -> Study:
    """A Study as the reader returns it (head first); ``reversed_storage`` numbers the files feet first."""
    z = Z_TOP - DZ * np.arange(SLICES)
    numbers = np.arange(1, SLICES + 1)
    if reversed_storage:
        numbers = numbers[::-1]
    keep = [i for i in range(SLICES) if i not in drop]
    return Study(uid=UID, hu=np.zeros((len(keep), ROWS, COLS), np.int16), z=z[keep], slice_numbers=numbers[keep],
                 pixel_spacing=(ROW_SPACING, COL_SPACING), slice_spacing=DZ,
                 skipped_files=[f"{numbers[i]}.dcm" for i in drop], original_shape=(ROWS, COLS), origin_xy=ORIGIN)


@pytest.mark.parametrize("reversed_storage", [False, True])
def test_affine_path_recovers_the_truth(reversed_storage):
    truth = truth_labels()
    study = make_study(reversed_storage)
    mask, method = align_mask(to_nifti_array(truth), nifti_affine(Z_TOP - DZ * (SLICES - 1)), study)
    assert method == "affine"
    assert mask.dtype == np.uint8 and mask.shape == (SLICES, ROWS, COLS)
    assert np.array_equal(mask, truth)


def test_affine_path_with_a_skipped_slice():
    truth = truth_labels()
    study = make_study(True, drop=(4,))
    mask, method = align_mask(to_nifti_array(truth), nifti_affine(Z_TOP - DZ * (SLICES - 1)), study)
    assert method == "affine" and np.array_equal(mask, np.delete(truth, 4, axis=0))


def oblique_affine() -> np.ndarray:
    affine = nifti_affine(Z_TOP - DZ * (SLICES - 1))
    affine[0, 1] = 0.2  # a shear: not axis-aligned, so not trusted
    return affine


def test_untrusted_affine_falls_back_to_kaggle_transform_with_a_warning():
    truth = truth_labels()
    with pytest.warns(UserWarning, match="Kaggle transform"):
        mask, method = align_mask(to_nifti_array(truth), oblique_affine(), make_study(False), source="x.nii")
    assert method == "kaggle" and np.array_equal(mask, truth)  # right for a head-first study
    with pytest.warns(UserWarning, match="Kaggle transform"):
        flipped, _ = align_mask(to_nifti_array(truth), oblique_affine(), make_study(True))
    # ...and upside down for a reversed one: exactly why the affine is preferred
    assert np.array_equal(flipped, truth[::-1])


def test_kaggle_fallback_keeps_alignment_around_a_skipped_slice():
    truth = truth_labels()
    with pytest.warns(UserWarning):
        mask, _ = align_mask(to_nifti_array(truth), oblique_affine(), make_study(False, drop=(3,)))
    assert np.array_equal(mask, np.delete(truth, 3, axis=0))


@pytest.mark.parametrize("change", ["z_shift", "spacing", "slices"])
def test_affine_inconsistent_with_the_stack_is_not_trusted(change):
    truth = truth_labels()
    affine = nifti_affine(Z_TOP - DZ * (SLICES - 1))
    labels = to_nifti_array(truth)
    if change == "z_shift":
        affine[2, 3] += 40.0  # mask covers another z range
    elif change == "spacing":
        affine[0, 0] *= 1.5
    else:
        labels = labels[:, :, 2:]  # fewer mask slices than the stack spans
        affine[2, 3] += 2 * DZ
    with pytest.warns(UserWarning, match="affine not used"):
        if change == "slices":
            with pytest.raises(MaskError, match="does not match"):
                align_mask(labels, affine, make_study(False), source="bad.nii")
        else:
            _, method = align_mask(labels, affine, make_study(False))
            assert method == "kaggle"


def test_mask_of_the_wrong_shape_names_the_file():
    study = make_study(False)
    with pytest.raises(MaskError, match="bad.nii"):
        align_mask(np.zeros((5, 5)), np.eye(4), study, source="bad.nii")


@pytest.mark.parametrize("reversed_storage", [False, True])
def test_on_disk_series_and_nifti_round_trip(tmp_path, reversed_storage):
    truth = truth_labels()
    hu = (truth.astype(np.int16) * 50 - 500)
    z = Z_TOP - DZ * np.arange(SLICES)
    numbers = np.arange(1, SLICES + 1)[::-1] if reversed_storage else np.arange(1, SLICES + 1)
    study_dir = tmp_path / "train_images" / UID
    write_series(study_dir, hu, study_uid=UID, slice_numbers=numbers.tolist(), z_positions=z.tolist(),
                 pixel_spacing=(ROW_SPACING, COL_SPACING), slice_thickness=DZ, origin_xy=ORIGIN)
    nii = tmp_path / f"{UID}.nii"
    nib.save(nib.Nifti1Image(to_nifti_array(truth), nifti_affine(float(z.min()))), str(nii))
    study = read_study(study_dir, min_slices=5)
    mask, method = load_mask(nii, study)
    assert method == "affine" and np.array_equal(mask, truth)
    assert np.array_equal(read_mask(nii, study), truth)


def test_damaged_nifti_is_a_mask_error(tmp_path):
    bad = tmp_path / "broken.nii"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(MaskError, match="broken.nii"):
        load_mask(bad, make_study(False))


def test_vertebra_presence_per_slice():
    mask = np.zeros((4, 5, 5), np.uint8)
    mask[0, 1, 1] = 1
    mask[1, 2, 2] = 7
    mask[1, 0, 0] = 2
    mask[2, :, :] = 9  # thoracic only
    presence = vertebra_presence(mask)
    assert presence.shape == (4, 7) and presence.dtype == bool
    assert presence[0].tolist() == [True] + [False] * 6
    assert presence[1].tolist() == [False, True, False, False, False, False, True]
    assert not presence[2].any() and not presence[3].any()


@pytest.mark.parametrize("seed", [pytest.param(3, marks=pytest.mark.slow), 6])  # 3: head first, 6: reversed
def test_synthetic_demo_study_mask_matches_the_generators_truth(tmp_path, seed):
    from src.synth.nifti import write_segmentation
    from src.synth.study import make_study

    synth = make_study("1.2.826.0.1.3680043.10999", seed, size="demo")
    study_dir = tmp_path / "train_images" / synth.study_uid
    write_series(study_dir, synth.hu, study_uid=synth.study_uid, slice_numbers=synth.slice_numbers,
                 z_positions=synth.z_positions, pixel_spacing=synth.pixel_spacing,
                 slice_thickness=synth.slice_thickness, origin_xy=synth.origin_xy,
                 transfer_syntaxes=synth.transfer_syntax, intercept=synth.intercept, slope=synth.slope)
    nii = write_segmentation(tmp_path / f"{synth.study_uid}.nii", synth.labels, synth.z_positions,
                             synth.pixel_spacing, synth.origin_xy)
    study = read_study(study_dir)
    head_first = np.argsort(-np.asarray(synth.z_positions), kind="stable")
    assert np.array_equal(study.hu, np.rint(synth.hu[head_first]).astype(np.int16))
    assert study.slice_numbers.tolist() == np.asarray(synth.slice_numbers)[head_first].tolist()
    mask, method = load_mask(nii, study)
    assert method == "affine"
    assert np.array_equal(mask, synth.labels[head_first])
    assert vertebra_presence(mask).any(axis=0).all()  # every cervical vertebra is on some slice
