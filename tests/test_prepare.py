"""The preprocessing cache: prepare_study in memory, prepare_dataset resumable and safe, the CLI, kill-and-rerun.

Datasets here are a few tiny synthetic studies in the Kaggle layout written with src.synth's DICOM
writer; the slow tests use the generator's full dataset when it is available.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.data.cache import cached_uids, is_cached, load_study
from src.data.dicom_reader import StudyReadError
from src.data.prepare import (SKIPPED_RECORD, missing_studies, prepare_dataset, prepare_study, resize_mask_nearest,
                              resize_slice)
from src.paths import InvalidUID
from src.synth.dicom_writer import write_series

REPO = Path(__file__).resolve().parent.parent
ROWS, COLS = 32, 32
SPACING = (0.5, 0.5)
DZ = 1.0


def volume_for(index: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    base = rng.integers(-1000, 2000, size=(ROWS, COLS))
    return np.stack([base + 11 * i for i in range(n)]).astype(np.int16)


def write_case(data_dir: Path, uid: str, n: int, *, index=0, reversed_storage=False, with_mask=False,
               split="train_images") -> np.ndarray:
    """One study (head-first HU returned); with_mask also writes segmentations/<uid>.nii in the Kaggle layout."""
    hu = volume_for(index, n)
    z = 50.0 - DZ * np.arange(n)
    numbers = np.arange(1, n + 1)[::-1] if reversed_storage else np.arange(1, n + 1)
    write_series(data_dir / split / uid, hu, study_uid=uid, slice_numbers=numbers.tolist(), z_positions=z.tolist(),
                 pixel_spacing=SPACING, slice_thickness=DZ,
                 transfer_syntaxes=["explicit_le", "jpeg_lossless"] * (n // 2) + ["explicit_le"] * (n % 2))
    if with_mask:
        labels = (np.arange(n)[:, None, None] % 8 * np.ones((1, ROWS, COLS))).astype(np.uint8)  # slice i -> label i%8
        labels[:, : ROWS // 2] = 0  # top half background: a row flip would show
        nifti = np.ascontiguousarray(labels[::-1].transpose(2, 1, 0)[:, ::-1, :])
        affine = np.array([[-SPACING[1], 0, 0, 0], [0, SPACING[0], 0, -(ROWS - 1) * SPACING[0]],
                           [0, 0, DZ, float(z.min())], [0, 0, 0, 1]])
        (data_dir / "segmentations").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(nifti, affine), str(data_dir / "segmentations" / f"{uid}.nii"))
    return hu


UIDS = ["1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12", "1.2.826.0.1.3680043.8.498.13"]


@pytest.fixture
def tiny_dataset(tmp_path):
    data = tmp_path / "data"
    volumes = {
        UIDS[0]: write_case(data, UIDS[0], 12, index=0, with_mask=True),
        UIDS[1]: write_case(data, UIDS[1], 11, index=1, reversed_storage=True),
    }
    write_case(data, UIDS[2], 3, index=2)  # too few slices: reported and skipped
    return data, volumes


def test_resize_helpers():
    hu = np.arange(16, dtype=np.int16).reshape(4, 4) * 10
    small = resize_slice(hu, 2)
    assert small.dtype == np.int16 and small.tolist() == [[25, 45], [105, 125]]  # 2x2 block means
    assert resize_slice(hu, 0) is hu
    mask = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert resize_mask_nearest(mask, 2).tolist() == [[[5, 7], [13, 15]]]


def test_prepare_study_in_memory(tiny_dataset):
    data, volumes = tiny_dataset
    uid = UIDS[0]
    volume, meta, mask = prepare_study(data / "train_images" / uid, size=16,
                                       nii_path=data / "segmentations" / f"{uid}.nii", min_slices=5)
    assert volume.dtype == np.int16 and volume.shape == (12, 16, 16)
    expected = volumes[uid].reshape(12, 16, 2, 16, 2).astype(float).mean(axis=(2, 4))
    assert np.abs(volume - expected).max() <= 0.5
    assert meta["slice_numbers"] == list(range(1, 13)) and meta["original_shape"] == [ROWS, COLS]
    assert meta["mask_method"] == "affine" and meta["has_mask"]
    assert mask.shape == (12, 16, 16)
    assert (mask[:, :8] == 0).all() and [int(mask[i, 12, 3]) for i in range(12)] == [i % 8 for i in range(12)]
    assert not list(data.parent.glob("cache*"))  # nothing written


def test_prepare_dataset_caches_reports_and_resumes(tiny_dataset, tmp_path):
    data, volumes = tiny_dataset
    cache = tmp_path / "cache"
    summary = prepare_dataset(data, cache, size=16, workers=1, min_slices=5, progress=False)
    assert summary["done"] == 2 and summary["already_cached"] == 0
    assert [s["uid"] for s in summary["skipped"]] == [UIDS[2]] and "only 3 readable slices" in summary["skipped"][0]["reason"]
    assert summary["masks"] == 1 and summary["slices"] == 23
    assert cached_uids(cache, "train_images") == UIDS[:2]
    reversed_study = load_study(cache, "train_images", UIDS[1])
    assert reversed_study.meta["slice_numbers"] == list(range(11, 0, -1))  # head first although stored feet first
    assert reversed_study.volume.shape == (11, 16, 16) and reversed_study.mask is None
    head = volumes[UIDS[1]][0].reshape(16, 2, 16, 2).mean(axis=(1, 3))
    assert np.abs(reversed_study.volume[0] - head).max() <= 0.5
    assert json.loads((cache / "train_images" / SKIPPED_RECORD).read_text()) == {UIDS[2]: summary["skipped"][0]["reason"]}
    assert missing_studies(data, cache, "train_images") == []

    # a new study appears, and a crash left a temporary folder behind: the rerun does only the new one
    write_case(data, "1.2.826.0.1.3680043.8.498.14", 10, index=4)
    (cache / "train_images" / ".1.2.3.abandoned").mkdir()
    assert missing_studies(data, cache, "train_images") == ["1.2.826.0.1.3680043.8.498.14"]
    again = prepare_dataset(data, cache, size=16, workers=1, min_slices=5, progress=False)
    assert again["done"] == 1 and again["already_cached"] == 2
    assert not (cache / "train_images" / ".1.2.3.abandoned").exists()
    with pytest.raises(ValueError, match="size 16"):
        prepare_dataset(data, cache, size=32, workers=1, min_slices=5, progress=False)


def test_uids_must_be_valid(tiny_dataset, tmp_path):
    data, _ = tiny_dataset
    with pytest.raises(InvalidUID, match="not a valid DICOM UID"):
        prepare_dataset(data, tmp_path / "cache", uids=["../../etc"], progress=False)


def test_stray_folders_are_named_in_one_line_and_passed_over(tiny_dataset, tmp_path, capsys):
    # a zip unpacked on a Mac, a folder made by hand: they used to stop src.prepare with a traceback
    data, _ = tiny_dataset
    for name in ("__MACOSX", "evil..name", "New Folder"):
        (data / "train_images" / name).mkdir()
    (data / "train_images" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    cache = tmp_path / "cache"
    summary = prepare_dataset(data, cache, size=16, workers=1, min_slices=5, progress=False)
    assert summary["done"] == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "__MACOSX" in line]
    assert len(lines) == 1 and "evil..name" in lines[0] and "New Folder" in lines[0] and ".DS_Store" not in lines[0]
    assert missing_studies(data, cache, "train_images") == []
    assert sorted(p.name for p in (cache / "train_images").iterdir() if not p.name.startswith(".")) == \
        sorted(UIDS[:2] + [SKIPPED_RECORD])


def test_the_pixel_bound_reaches_the_reader(tiny_dataset, tmp_path):
    import pydicom

    data, _ = tiny_dataset
    victim = data / "train_images" / UIDS[0] / "4.dcm"
    ds = pydicom.dcmread(victim)
    ds.Rows = ds.Columns = 300  # 90,000 pixels declared over 32 x 32 of data
    ds.save_as(victim)
    summary = prepare_dataset(data, tmp_path / "cache", size=16, workers=1, min_slices=5, progress=False,
                              max_pixels=250 * 250)
    assert summary["skipped_slices"] == {UIDS[0]: ["4.dcm"]}
    meta = load_study(tmp_path / "cache", "train_images", UIDS[0]).meta
    assert "bound of 62500" in meta["skipped_reasons"]["4.dcm"]
    with pytest.raises(StudyReadError, match="only 0 readable slices"), pytest.warns(UserWarning, match="bound of 1023"):
        prepare_study(data / "train_images" / UIDS[1], 16, min_slices=5, max_pixels=ROWS * COLS - 1)


def test_only_requested_uids(tiny_dataset, tmp_path):
    data, _ = tiny_dataset
    summary = prepare_dataset(data, tmp_path / "cache", size=16, workers=1, min_slices=5, progress=False,
                              uids=[UIDS[1], "1.2.3.4"])
    assert summary["done"] == 1 and cached_uids(tmp_path / "cache", "train_images") == [UIDS[1]]
    assert any(s["uid"] == "1.2.3.4" and "no folder" in s["reason"] for s in summary["skipped"])


def test_corrupt_slice_is_reported_in_the_summary(tiny_dataset, tmp_path):
    data, _ = tiny_dataset
    victim = data / "train_images" / UIDS[0] / "5.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])
    summary = prepare_dataset(data, tmp_path / "cache", size=16, workers=1, min_slices=5, progress=False)
    assert summary["skipped_slices"] == {UIDS[0]: ["5.dcm"]} and summary["n_skipped_slices"] == 1
    cached = load_study(tmp_path / "cache", "train_images", UIDS[0])
    assert cached.meta["skipped_files"] == ["5.dcm"] and cached.volume.shape[0] == 11
    assert cached.mask is not None and cached.mask.shape == (11, 16, 16)


def test_a_full_disk_is_not_recorded_as_an_unreadable_study(tiny_dataset, tmp_path, monkeypatch):
    import errno

    import src.data.prepare as prepare_module

    data, _ = tiny_dataset
    cache = tmp_path / "cache"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module, "write_study", disk_full)
    summary = prepare_dataset(data, cache, size=16, workers=1, min_slices=5, progress=False)
    assert summary["done"] == 0 and [item["uid"] for item in summary["failed"]] == UIDS[:2]
    assert list(json.loads((cache / "train_images" / SKIPPED_RECORD).read_text())) == [UIDS[2]]  # the bad one only
    monkeypatch.undo()
    assert missing_studies(data, cache, "train_images") == UIDS[:2]
    assert prepare_dataset(data, cache, size=16, workers=1, min_slices=5, progress=False)["done"] == 2


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "src.prepare", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_cli_with_short_keys_and_a_bad_key(tiny_dataset, tmp_path):
    data, _ = tiny_dataset
    (data / "train.csv").write_text("StudyInstanceUID,patient_overall\n")  # so the real-data path is taken
    (data / "train_images" / "__MACOSX").mkdir()
    cache = tmp_path / "cache"
    done = run_cli(f"data_dir={data}", f"cache_dir={cache}", "workers=1", "size=16", "min_slices=5", "progress=false")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cached 2 studies" in done.stdout and UIDS[2] in done.stdout
    assert "__MACOSX" in done.stdout and "Traceback" not in done.stderr
    assert is_cached(cache, "train_images", UIDS[0])
    wrong = run_cli(f"data_dir={data}", f"cache_dir={cache}", "wokers=1")
    assert wrong.returncode == 2 and "wokers" in wrong.stderr


def test_cli_user_errors_are_one_line_not_a_traceback(tiny_dataset, tmp_path, capsys):
    from src.config import run_main
    from src.prepare import main

    data, _ = tiny_dataset
    (data / "train.csv").write_text("StudyInstanceUID,patient_overall\n")
    cache = tmp_path / "cache"
    # a stand-in demo folder, so that a regression to "no data_dir: generate the demo" stays small and in tmp
    demo = [f"demo.dir={tmp_path / 'demo'}", "demo.n_train=2", "demo.n_test=0"]
    base = [f"cache_dir={cache}", "workers=1", "min_slices=5", "progress=false", *demo]
    assert main([f"data_dir={data}", "size=16", *base])["done"] == 2
    cases = {
        "does not exist": [f"data_dir={tmp_path / 'nowhere'}", "size=16"],
        # an unknown decoder used to fail every study, and record each in skipped.json for good
        "decoder": [f"data_dir={data}", "size=16", "decoder=gdcm", f"cache_dir={tmp_path / 'fresh'}"],
        "max_pixels": [f"data_dir={data}", "size=16", "max_pixels=0"],
        "size 16": [f"data_dir={data}", "size=32"],  # the cache holds size 16 already
    }
    for words, args in cases.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            run_main(main, base + args)  # as `python -m src.prepare` runs it
        err = capsys.readouterr().err.strip()
        assert stopped.value.code == 2, (args, err)
        assert len(err.splitlines()) == 1 and words in err, (args, err)
    assert not (tmp_path / "demo").exists() and not list((tmp_path / "fresh").rglob(SKIPPED_RECORD))
    assert list(json.loads((cache / "train_images" / SKIPPED_RECORD).read_text())) == [UIDS[2]]


@pytest.mark.slow
def test_process_pool_gives_the_same_cache(tiny_dataset, tmp_path):
    data, _ = tiny_dataset
    one = prepare_dataset(data, tmp_path / "one", size=16, workers=1, min_slices=5, progress=False)
    two = prepare_dataset(data, tmp_path / "two", size=16, workers=2, min_slices=5, progress=False)
    assert one["done"] == two["done"] == 2
    for uid in UIDS[:2]:
        a, b = load_study(tmp_path / "one", "train_images", uid), load_study(tmp_path / "two", "train_images", uid)
        assert np.array_equal(a.volume, b.volume) and a.meta == b.meta


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_prepare_then_rerun_leaves_every_study_complete(tmp_path, workers):
    data = tmp_path / "data"
    n_studies, n_slices = 10, 60
    expected = {}
    for k in range(n_studies):
        uid = f"1.2.826.0.1.3680043.8.498.{100 + k}"
        hu = write_case(data, uid, n_slices, index=k, reversed_storage=bool(k % 2), with_mask=k == 3)
        expected[uid] = hu
    (data / "train.csv").write_text("StudyInstanceUID,patient_overall\n")
    cache = tmp_path / "cache"
    args = [f"data_dir={data}", f"cache_dir={cache}", f"workers={workers}", "size=0", "min_slices=5", "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "src.prepare", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(cached_uids(cache, "train_images")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = len(cached_uids(cache, "train_images"))
    assert 1 <= partial < n_studies, f"kill came too late to test anything ({partial} studies cached)"

    time.sleep(1.5)  # let orphaned pool workers notice their parent is gone
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert cached_uids(cache, "train_images") == sorted(expected)
    assert not [p for p in (cache / "train_images").iterdir() if p.name.startswith(".") and p.name != ".locks"]
    for uid, hu in expected.items():
        cached = load_study(cache, "train_images", uid, mmap=False)
        assert np.array_equal(cached.volume, hu), uid
        assert cached.meta["n_slices"] == n_slices and len(cached.meta["z"]) == n_slices


@pytest.mark.slow
def test_generated_demo_dataset_end_to_end(tmp_path):
    from src.synth.generate import generate_dataset

    data = tmp_path / "demo"
    generate_dataset(data, n_train=4, n_test=1, size="demo", seed=3, seg_fraction=0.5, progress=False, workers=1)
    cache = tmp_path / "cache"
    summary = prepare_dataset(data, cache, splits=("train_images", "test_images"), size=64, workers=1,
                              progress=False)
    assert summary["done"] == 5 and not summary["skipped"] and summary["masks"] == 2
    assert missing_studies(data, cache, "train_images") == [] and missing_studies(data, cache, "test_images") == []
    for uid in cached_uids(cache, "train_images"):
        cached = load_study(cache, "train_images", uid, mmap=False)
        assert np.all(np.diff(cached.meta["z"]) < 0)
        assert sorted(cached.meta["slice_numbers"]) == sorted(int(p.stem) for p in (data / "train_images" / uid).glob("*.dcm"))
        if cached.mask is not None:
            assert cached.meta["mask_method"] == "affine"
            # the aligned mask must sit on bone better than any flipped copy of it would
            def contrast(mask):
                vertebra = (mask >= 1) & (mask <= 7)
                return cached.volume[vertebra].mean() - cached.volume[mask == 0].mean()

            aligned = contrast(cached.mask)
            flips = [contrast(cached.mask[::-1]), contrast(cached.mask[:, ::-1]), contrast(cached.mask[:, :, ::-1])]
            assert aligned > max(flips) + 100, (uid, aligned, flips)
