"""DICOM studies (and their NIfTI masks) into the study cache, in parallel, resumably.

Called by the ``python -m src.prepare`` command (src/prepare.py), by the training commands
(src.train, src.localise) through :func:`ensure_cache` when studies are missing, and by inference (:func:`prepare_study`, in memory, for test studies). The cache
format itself is src/data/cache.py: int16 HU (slices, size, size) head to feet, an optional uint8
mask on the same grid, and meta.json.

Resumable by construction: a study folder is written whole or not at all (src.data.cache.write_study),
so a re-run skips every study that has its meta.json, cleans the temporaries an interrupted run
left, and does the rest. Studies that cannot be read are reported and listed in
``<cache_dir>/<split>/skipped.json`` so :func:`missing_studies` does not ask for them again.

Safe to run twice at once on one cache (two terminals, two trainings starting together): a worker
holds its study's lock (src.data.cache.study_lock) while it prepares and writes it, and a study
locked by another process is left to that process, reported, and not recorded as unreadable;
leftovers are removed only when no one holds their lock; skipped.json is read, updated and
written under the split's lock, so neither run loses the other's entries.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import numpy as np

from ..io_utils import atomic_write_json, remove_stale_temporaries
from ..locks import Busy, exclusive
from ..paths import InvalidUID, check_uid
from .cache import META, is_cached, remove_stale_study_folders, split_lock, study_lock, write_study
from .dicom_reader import StudyReadError, read_study
from .dicom_slice import DECODERS, DEFAULT_MAX_PIXELS
from .nifti_masks import MaskError, load_mask

SKIPPED_RECORD = "skipped.json"
SEGMENTATIONS = "segmentations"
BUSY = "being prepared by another process; left to it (run again after it to check)"


class PrepareError(ValueError):
    """A user error that stops a prepare run before any study is read; the one-line message names the fix.

    Raised by :func:`prepare_dataset` (a missing data folder, an unknown decoder, a cache built at
    another size, ...); ``python -m src.prepare`` prints it without a traceback.
    """


# ---------------------------------------------------------------------------------------------
# one study, in memory
# ---------------------------------------------------------------------------------------------

def resize_slice(hu: np.ndarray, size: int) -> np.ndarray:
    """One int16 slice to size x size by area averaging (the right filter for shrinking; cv2 does int16 fast)."""
    if size <= 0 or hu.shape == (size, size):
        return hu
    import cv2

    return cv2.resize(hu, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """(S, rows, cols) labels to (S, size, size), each output pixel taking the label under its centre."""
    if size <= 0 or mask.shape[1:] == (size, size):
        return mask
    rows, cols = mask.shape[1:]
    # centre-aligned nearest neighbour, the same grid INTER_AREA averages over
    row_index = np.minimum(((np.arange(size) + 0.5) * rows / size).astype(np.intp), rows - 1)
    col_index = np.minimum(((np.arange(size) + 0.5) * cols / size).astype(np.intp), cols - 1)
    return np.ascontiguousarray(mask[:, row_index][:, :, col_index])


def find_mask_file(data_dir: Path, uid: str) -> Path | None:
    """``segmentations/<uid>.nii`` (or ``.nii.gz``) when it exists."""
    folder = Path(data_dir) / SEGMENTATIONS
    for name in (f"{check_uid(uid)}.nii", f"{uid}.nii.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def prepare_study(study_dir: Path, size: int, nii_path: Path | None = None, min_slices: int = 10,
                  decoder: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Read one study folder into ``(volume int16 (S, size, size), meta, mask uint8 or None)``; writes nothing.

    ``size`` <= 0 keeps the original in-plane size; ``max_pixels`` bounds the frame a DICOM file may
    declare (src.data.dicom_slice.check_declared_frame). Raises StudyReadError when the study cannot
    be used. A mask that cannot be aligned is dropped with a warning (the volume is still good).
    """
    study_dir = Path(study_dir)
    uid = check_uid(study_dir.name, source=str(study_dir))
    study = read_study(study_dir, min_slices=min_slices, decoder=decoder, max_pixels=max_pixels,
                       slice_transform=(lambda hu: resize_slice(hu, size)) if size > 0 else None)
    mask, mask_method = None, None
    if nii_path is not None:
        try:
            full_mask, mask_method = load_mask(nii_path, study)
            mask = resize_mask_nearest(full_mask, size)
        except MaskError as err:
            warnings.warn(f"{uid}: mask dropped: {err}", stacklevel=2)
    volume = study.hu
    meta = {
        "uid": uid,
        "n_slices": int(volume.shape[0]),
        "shape": list(volume.shape),
        "slice_numbers": study.slice_numbers.tolist(),
        "z": study.z.tolist(),
        "pixel_spacing": list(study.pixel_spacing),
        "original_shape": list(study.original_shape),
        "slice_spacing": study.slice_spacing,
        "origin_xy": list(study.origin_xy),
        "skipped_files": study.skipped_files,
        "z_gaps": study.z_gaps,
        "decoder_counts": study.decoder_counts,
        "has_mask": mask is not None,
        "mask_method": mask_method,
    }
    if study.skipped_reasons:
        # only when there is something to say, so a clean study's meta.json stays as it always was
        meta["skipped_reasons"] = study.skipped_reasons
    return volume, meta, mask


# ---------------------------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------------------------

def _exit_with_parent(parent_pid: int) -> None:
    # a worker whose parent was killed (SIGKILL, OOM) would otherwise finish studies nobody collects
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _init_worker(parent_pid: int) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)  # one core per worker; threads inside would fight the other workers
    except ImportError:
        pass
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (Linux VmHWM: unlike ru_maxrss it restarts at exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _prepare_and_write(job: dict, result: dict) -> None:
    """Read, then cache, one study; called by :func:`_prepare_one` while it holds the study's lock."""
    cache_dir, split, uid = Path(job["cache_dir"]), job["split"], job["uid"]
    if is_cached(cache_dir, split, uid):
        # another run finished it between our listing and our lock: nothing to redo
        result.update(status="already_cached")
        return
    volume, meta, mask = prepare_study(Path(job["study_dir"]), job["size"], job["nii_path"],
                                       job["min_slices"], job["decoder"], job["max_pixels"])
    write_study(cache_dir, split, uid, volume, meta, mask)
    result.update(skipped_files=meta["skipped_files"], n_slices=meta["n_slices"], has_mask=meta["has_mask"])


def _prepare_one(job: dict) -> dict:
    """Prepare and cache one study under its lock; never raises for a bad study, returns what happened instead.

    ``status``: ``done``; ``skipped`` (the study cannot be used: recorded in skipped.json);
    ``busy`` (another process holds its lock); ``already_cached``; ``failed`` (an OSError: retried next run).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    split, uid = job["split"], job["uid"]
    result = {"split": split, "uid": uid, "status": "done", "reason": "", "skipped_files": [],
              "n_slices": 0, "has_mask": False, "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lock = study_lock(job["cache_dir"], split, uid)
        try:
            with exclusive(lock, f"study {uid} in {Path(job['cache_dir']) / split}"):
                _prepare_and_write(job, result)
        except Busy:
            result.update(status="busy", reason=BUSY)
        except StudyReadError as err:
            result.update(status="skipped", reason=str(err))
        except OSError as err:
            # a full disk, a read-only cache, a folder it may not list: not the study's fault, so it is
            # reported and retried by the next run, not recorded as unreadable for good (slice read
            # errors never get here: the reader turns them into skipped slices)
            result.update(status="failed", reason=f"{type(err).__name__}: {err}")
        except Exception as err:  # a bug or an odd file must not stop the other 2000 studies
            result.update(status="skipped", reason=f"unexpected {type(err).__name__}: {err}")
    result["warnings"] = [str(w.message) for w in caught]
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---------------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------------

def study_folders(data_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """``(uids, strays)``: the study folders under ``data_dir/split``, and the names of the other folders.

    Called by :func:`study_uids` and :func:`prepare_dataset` (which names the strays in one line).
    A folder whose name is not a UID (``__MACOSX`` from a zip, ``New Folder``, ``../x``) is a stray:
    listed by name, never turned into a path. Hidden entries and plain files are passed over.
    """
    root = Path(data_dir) / split
    if not root.is_dir():
        return [], []
    uids, strays = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            uids.append(check_uid(entry.name))
        except InvalidUID:
            strays.append(entry.name)
    return uids, strays


def study_uids(data_dir: Path, split: str) -> list[str]:
    """UIDs of the study folders under ``data_dir/split``; folders not named by a UID are left out."""
    return study_folders(data_dir, split)[0]


def read_skipped(cache_dir: Path, split: str) -> dict[str, str]:
    """skipped.json of a cache split: ``{uid: why it cannot be used}`` ({} when absent)."""
    path = Path(cache_dir) / split / SKIPPED_RECORD
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        warnings.warn(f"{path} is not valid JSON; ignoring it (it is rewritten by the next prepare run)")
        return {}


def missing_studies(data_dir: Path, cache_dir: Path, split: str = "train_images") -> list[str]:
    """Studies in ``data_dir/split`` that are neither cached nor known to be unreadable."""
    known_bad = read_skipped(cache_dir, split)
    return [uid for uid in study_uids(data_dir, split)
            if uid not in known_bad and not is_cached(cache_dir, split, uid)]


def _cached_size(cache_dir: Path, split: str) -> int | None:
    """The in-plane size of a study already in this cache split (None when empty)."""
    root = Path(cache_dir) / split
    if not root.is_dir():
        return None
    for folder in root.iterdir():
        meta_path = folder / META
        if not folder.name.startswith(".") and meta_path.exists():
            shape = json.loads(meta_path.read_text()).get("shape", [])
            return int(shape[-1]) if shape else None
    return None


def _run_jobs(jobs: list[dict], workers: int, on_result) -> None:
    """Run ``_prepare_one`` over ``jobs``: in this process for one worker, else in a spawned pool.

    When a worker process dies (a native decoder crash is the likely cause), the studies it left
    unfinished are retried once in a fresh pool with the pure-Python pydicom decoder.
    """
    if not jobs:
        return
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            on_result(_prepare_one(job))
        return
    pending = list(jobs)
    for attempt in range(2):
        finished = set()
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_prepare_one, job): job for job in pending}
                for future in as_completed(futures):
                    result = future.result()
                    finished.add((result["split"], result["uid"]))
                    on_result(result)
            return
        except BrokenProcessPool:
            pending = [dict(job, decoder="pydicom") for job in pending if (job["split"], job["uid"]) not in finished]
            warnings.warn(f"a prepare worker crashed; {'retrying' if attempt == 0 else 'giving up on'} "
                          f"{len(pending)} unfinished studies" + (" with the pydicom decoder" if attempt == 0 else ""))
    for job in pending:
        on_result({"split": job["split"], "uid": job["uid"], "status": "skipped", "n_slices": 0,
                   "reason": "the worker process crashed twice while reading it", "skipped_files": [],
                   "has_mask": False, "warnings": [], "seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": None})


def _check_arguments(data_dir: Path, splits: list[str], decoder: str, max_pixels: int) -> None:
    """Refuse, before any work, the settings that would otherwise fail every study or do nothing quietly.

    An unknown decoder used to fail each study in turn, and each failure was recorded in skipped.json
    for good; a misspelt data folder only warned, split by split.
    """
    if not data_dir.is_dir():
        raise PrepareError(f"data folder {data_dir} does not exist; set data_dir= to the folder that holds "
                           f"train_images/ (the Kaggle layout)")
    if decoder not in DECODERS:
        raise PrepareError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}; set prepare.decoder")
    if max_pixels < 1:
        raise PrepareError(f"max_pixels must be at least 1 (pixels a frame), got {max_pixels}; set prepare.max_pixels")
    present = [split for split in splits if (data_dir / split).is_dir()]
    if splits and not present:
        folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise PrepareError(f"{data_dir} has none of the image folders {', '.join(splits)} (it holds: "
                           f"{', '.join(folders) or 'no folders'}); set splits= or data_dir=")


def _make_split_folder(cache_dir: Path, split: str) -> None:
    """Create ``<cache_dir>/<split>/.locks/`` up front, so an unwritable cache is one clear message, not a traceback."""
    try:
        split_lock(cache_dir, split).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepareError(f"cannot create the cache folder {cache_dir / split} ({err.strerror}); "
                           f"set cache_dir= to a writable folder") from None


def _clean_split(cache_dir: Path, split: str, say) -> None:
    """Remove what killed runs left in ``<cache_dir>/<split>``, never what a running one is writing.

    Called by :func:`prepare_dataset` at the start of each split. Half-built study folders go only
    while their study's lock is free (src.data.cache.remove_stale_study_folders). Temporaries of a
    killed skipped.json write go under the split's lock, which every writer of skipped.json holds;
    when another run holds it they are left for a later run (they cost nothing meanwhile).
    """
    folders = remove_stale_study_folders(cache_dir, split)
    if folders:
        say(f"[prepare] removed {len(folders)} unfinished study folder(s) left by an interrupted run in {cache_dir / split}")
    try:
        with exclusive(split_lock(cache_dir, split), f"the records of {cache_dir / split}"):
            files = remove_stale_temporaries(cache_dir / split)
    except Busy:
        return
    if files:
        say(f"[prepare] removed {len(files)} temporary file(s) left by an interrupted write in {cache_dir / split}: "
            f"{', '.join(p.name for p in files)}")


def _update_skipped_record(cache_dir: Path, split: str, newly_skipped: dict[str, str], newly_done: set, say) -> None:
    """Add this run's unusable studies to skipped.json and drop the ones it has now cached.

    Called by :func:`prepare_dataset` at the end of a run (also an interrupted one). Read, update and
    write happen under the split's lock, waiting for it if need be, so two runs finishing together
    each keep the other's entries instead of writing back what they read before it.
    """
    if not newly_skipped and not newly_done:
        return
    with exclusive(split_lock(cache_dir, split), f"{cache_dir / split / SKIPPED_RECORD}", wait=True, announce=say):
        record = read_skipped(cache_dir, split)
        before = dict(record)
        record.update(newly_skipped)
        for uid in newly_done:
            record.pop(uid, None)
        if record != before:
            atomic_write_json(cache_dir / split / SKIPPED_RECORD, record)


def prepare_dataset(data_dir: Path, cache_dir: Path, splits: Iterable[str] = ("train_images",), size: int = 256,
                    workers: int = 2, min_slices: int = 10, progress: bool = True,
                    uids: Iterable[str] | None = None, decoder: str = "auto",
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Cache every study of ``splits`` that is not cached yet; returns a summary of what happened.

    Summary keys: ``done`` (studies written now), ``already_cached``, ``skipped`` (list of
    ``{split, uid, reason}``: recorded in skipped.json), ``busy`` (``{split, uid, reason}`` left to
    another process that holds their lock), ``failed`` (``{split, uid, reason}``: an OSError such as
    a full disk; not recorded, retried next run), ``ignored_folders`` (paths of folders not named by a
    UID), ``skipped_slices`` ({uid: [file names]}), ``n_skipped_slices``, ``slices`` (slices written
    now), ``masks``, ``seconds``, ``studies_per_s``, ``slices_per_s``, ``cpu_seconds`` (CPU spent on
    the studies, all workers), ``peak_worker_rss_mb``. ``uids`` restricts the work to those studies
    (each must be a valid UID). Raises :class:`PrepareError` for settings that cannot work.
    """
    from tqdm.auto import tqdm

    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    splits = [splits] if isinstance(splits, str) else list(splits)
    wanted = None if uids is None else {check_uid(u, source="uids argument") for u in uids}
    _check_arguments(data_dir, splits, decoder, int(max_pixels))
    start = time.perf_counter()
    summary = {"done": 0, "already_cached": 0, "skipped": [], "busy": [], "failed": [], "ignored_folders": [],
               "skipped_slices": {}, "n_skipped_slices": 0, "slices": 0, "masks": 0, "cpu_seconds": 0.0,
               "peak_worker_rss_mb": None}
    jobs = []
    prepared_splits = []
    for split in splits:
        if not (data_dir / split).is_dir():
            warnings.warn(f"{data_dir / split} does not exist; nothing to prepare for split {split}")
            continue
        _make_split_folder(cache_dir, split)
        prepared_splits.append(split)
        _clean_split(cache_dir, split, print)
        existing = _cached_size(cache_dir, split)
        if size > 0 and existing is not None and existing != size:
            raise PrepareError(f"{cache_dir / split} already holds studies at size {existing}, not {size}; "
                               f"use another cache_dir or delete that folder")
        available, strays = study_folders(data_dir, split)
        if strays:
            summary["ignored_folders"] += [str(data_dir / split / name) for name in strays]
            print(f"[prepare] ignored {len(strays)} folder(s) in {data_dir / split} not named by a study UID: "
                  f"{', '.join(strays)} (a study folder's name is its StudyInstanceUID)")
        if wanted is not None:
            for uid in sorted(wanted - set(available)):
                summary["skipped"].append({"split": split, "uid": uid, "reason": f"no folder {data_dir / split / uid}"})
            available = [u for u in available if u in wanted]
        for uid in available:
            if is_cached(cache_dir, split, uid):
                summary["already_cached"] += 1
                continue
            jobs.append({"split": split, "uid": uid, "study_dir": str(data_dir / split / uid),
                         "cache_dir": str(cache_dir), "size": int(size), "min_slices": int(min_slices),
                         "nii_path": find_mask_file(data_dir, uid), "decoder": decoder,
                         "max_pixels": int(max_pixels)})

    bar = tqdm(total=len(jobs), unit="study", desc="prepare", disable=not progress or not jobs, smoothing=0.1)
    say = bar.write if progress else print
    newly_skipped: dict[str, dict[str, str]] = {split: {} for split in splits}
    newly_done: dict[str, set] = {split: set() for split in splits}

    def on_result(result: dict) -> None:
        summary["cpu_seconds"] += result["cpu_seconds"]
        if result["peak_rss_mb"] is not None:
            summary["peak_worker_rss_mb"] = max(summary["peak_worker_rss_mb"] or 0.0, result["peak_rss_mb"])
        for message in result["warnings"]:
            say(f"[prepare] warning: {message}")
        status, split, uid = result["status"], result["split"], result["uid"]
        if status == "done":
            summary["done"] += 1
            summary["slices"] += result["n_slices"]
            summary["masks"] += int(result["has_mask"])
            newly_done[split].add(uid)
            if result["skipped_files"]:
                summary["skipped_slices"][uid] = result["skipped_files"]
                summary["n_skipped_slices"] += len(result["skipped_files"])
        elif status == "already_cached":
            summary["already_cached"] += 1
        elif status in ("busy", "failed"):
            summary[status].append({"split": split, "uid": uid, "reason": result["reason"]})
            say(f"[prepare] study {uid}: {result['reason']}")
        else:
            summary["skipped"].append({"split": split, "uid": uid, "reason": result["reason"]})
            newly_skipped[split][uid] = result["reason"]
            say(f"[prepare] skipped study {uid}: {result['reason']}")
        bar.update(1)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(slices_per_s=f"{summary['slices'] / elapsed:.0f}", refresh=False)

    try:
        _run_jobs(jobs, max(1, int(workers)), on_result)
    finally:
        bar.close()
        for split in prepared_splits:
            # remember unreadable studies so missing_studies() does not send train.sh back here for them
            _update_skipped_record(cache_dir, split, newly_skipped[split], newly_done[split], print)

    seconds = time.perf_counter() - start
    summary["seconds"] = seconds
    summary["studies_per_s"] = summary["done"] / seconds if seconds > 0 else 0.0
    summary["slices_per_s"] = summary["slices"] / seconds if seconds > 0 else 0.0
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable lines for the end of a prepare run."""
    lines = [f"[prepare] cached {summary['done']} studies ({summary['slices']} slices, {summary['masks']} with masks) "
             f"in {summary['seconds']:.1f} s: {summary['studies_per_s']:.2f} studies/s, "
             f"{summary['slices_per_s']:.0f} slices/s; {summary['already_cached']} were cached already",
             f"[prepare] skipped {len(summary['skipped'])} studies and {summary['n_skipped_slices']} unreadable slices"]
    for item in summary["skipped"]:
        lines.append(f"  study {item['split']}/{item['uid']}: {item['reason']}")
    for uid, files in summary["skipped_slices"].items():
        lines.append(f"  slices of {uid}: {', '.join(files)}")
    if summary.get("busy"):
        lines.append(f"[prepare] left {len(summary['busy'])} studies to another process preparing them "
                     f"(not recorded as unreadable; run again once it is done to check):")
        lines += [f"  study {item['split']}/{item['uid']}: {BUSY}" for item in summary["busy"]]
    if summary.get("failed"):
        lines.append(f"[prepare] {len(summary['failed'])} studies failed on a file-system error (not recorded; "
                     f"the next run retries them):")
        lines += [f"  study {item['split']}/{item['uid']}: {item['reason']}" for item in summary["failed"]]
    return "\n".join(lines)


def ensure_cache(cfg, data_dir: Path, cache_dir: Path, announce=print) -> None:
    """Prepare the studies of train_images that the cache lacks (all of them on a first run)."""
    missing = missing_studies(data_dir, cache_dir, "train_images")
    if not missing:
        announce(f"[cache] {cache_dir}: every training study is prepared")
        return
    p = cfg["prepare"]
    announce(f"[cache] {len(missing)} studies missing in {cache_dir}, preparing them (size {p['size']}, {p['workers']} workers)")
    summary = prepare_dataset(data_dir, cache_dir, splits=("train_images",), size=p["size"], workers=p["workers"],
                              min_slices=p["min_slices"], progress=cfg["progress"], uids=missing,
                              max_pixels=p["max_pixels"])
    busy = [item["uid"] for item in summary.get("busy", [])]
    if busy:
        # another command is preparing them right now: training on a cache without them would silently
        # drop those studies, so wait for each one's lock (released when it is written or given up)
        announce(f"[cache] {len(busy)} studies are being prepared by another process: waiting for them")
        for uid in busy:
            with exclusive(study_lock(cache_dir, "train_images", uid), f"cached study {uid}", wait=True):
                pass
