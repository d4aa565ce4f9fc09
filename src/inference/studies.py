"""Test studies read ahead of the models, in worker processes, so the GPU does not wait for DICOM.

Called by the inference pipeline (src/inference/pipeline.py). Each study is read straight from its
DICOM folder at every cache size the models need (src/inference/reading.py) and the inputs that need
no localisation are built from those arrays (src/inference/inputs.py); the vertebra crops wait for the
localiser, which runs with the models. Nothing is written to disk.

``workers`` processes (configs/infer.yaml ``workers``) each take one study at a time; results come
back in the order asked, at most ``2 x workers`` studies in flight or waiting. ``workers=0`` reads in
this process. Every failure stays with its study: an unreadable folder becomes a ``ReadStudy`` with a
problem, a failing input an InputFailed in place of its batch, and a reading process that dies (a
decoder crash) breaks only the pool: the pool is started again, and the oldest study in flight is read
alone once more; if it kills its process again it is unreadable, and the others are read as usual.
"""
from __future__ import annotations

import multiprocessing
import time
import warnings
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..data.dicom_reader import StudyReadError
from .fallbacks import one_line
from .inputs import build_inputs
from .reading import read_test_study


@dataclass(frozen=True)
class ReadPlan:
    """What to do with each study: read it at ``sizes``, then build ``specs`` (inputs without localisation)."""

    sizes: tuple[int, ...]
    min_slices: int = 10
    specs: tuple = ()


@dataclass
class ReadStudy:
    """One study as read: its volumes and early inputs, or why there are none (a FallbackLog entry)."""

    uid: str
    volumes: dict | None = None              # {size: (int16 volume, meta)}; None when unreadable
    inputs: dict = field(default_factory=dict)  # spec key -> batch or InputFailed
    problem: tuple[str, str] | None = None   # (kind, detail): the study gets the prior
    skipped: list = field(default_factory=list)  # corrupt slices left out of an otherwise read study
    seconds: dict = field(default_factory=dict)  # read, inputs before localising: where the study was read


def read_study(uid: str, study_dir: Path, plan: ReadPlan) -> ReadStudy:
    """Read one study and build its early inputs; never raises (what went wrong is in ``problem``).
    What a reading process runs; also called in process (``workers=0``) and by the benchmark."""
    start = time.perf_counter()
    try:
        volumes, _ = read_test_study(study_dir, plan.sizes, plan.min_slices)
    except StudyReadError as err:
        return ReadStudy(uid, problem=("unreadable", str(err)), seconds={"read": time.perf_counter() - start})
    except Exception as err:  # an odd file must cost this study, not the run
        return ReadStudy(uid, problem=("unreadable", f"unexpected {one_line(err)}"),
                         seconds={"read": time.perf_counter() - start})
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    inputs = build_inputs(plan.specs, volumes, None)
    skipped = list(next(iter(volumes.values()))[1].get("skipped_files", []))
    return ReadStudy(uid, volumes, inputs, skipped=skipped,
                     seconds={"read": read_s, "inputs before localising": time.perf_counter() - start})


def _quiet_worker() -> None:
    """A reading process: one thread (the processes are the parallelism, as in a DataLoader's workers)
    and no warnings on the progress bar (what matters comes back in the ReadStudy)."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


class StudyReader:
    """``read(jobs)`` yields a ReadStudy per (uid, study folder), in order, ``workers`` processes ahead."""

    def __init__(self, plan: ReadPlan, workers: int = 2, announce=print):
        self.plan = plan
        self.workers = max(0, int(workers))
        self.announce = announce
        # fork, as torch's DataLoader does: the processes start at once and know every registered model
        # and task, including one registered outside src/ (a test's); they never touch the GPU
        self.context = multiprocessing.get_context("fork")

    def read(self, jobs: Iterable[tuple[str, Path]]) -> Iterator[ReadStudy]:
        if self.workers == 0:
            for uid, folder in jobs:
                yield read_study(uid, folder, self.plan)
            return
        jobs = iter(jobs)
        pool = self._pool(self.workers)
        pending: deque = deque()
        try:
            while True:
                while len(pending) < 2 * self.workers and (job := next(jobs, None)) is not None:
                    pending.append((job, self._submit(pool, job)))
                if not pending:
                    return
                job, future = pending.popleft()
                try:
                    study = future.result()
                except BrokenProcessPool:
                    # a reading process died, taking the pool with it; any study in flight may be the cause
                    pool.shutdown(wait=False, cancel_futures=True)
                    study = self._alone(job)
                    pool = self._pool(self.workers)
                    pending = deque((j, f if f.done() and not f.cancelled() and f.exception() is None
                                     else self._submit(pool, j))
                                    for j, f in pending)  # what finished before the break is kept
                except Exception as err:  # the result could not come back (it did not pickle, say)
                    study = ReadStudy(job[0], problem=("unreadable", f"reading process: {one_line(err)}"))
                yield study
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.context, initializer=_quiet_worker)

    def _submit(self, pool: ProcessPoolExecutor, job: tuple[str, Path]) -> Future:
        future = Future()
        try:
            return pool.submit(read_study, *job, self.plan)
        except BrokenProcessPool as err:  # a process died since the last result: handled with that result
            future.set_exception(err)
        except OSError as err:  # no process could start (memory, process limits): read it here instead
            self.announce(f"[read] no reading process could start ({one_line(err)}); {job[0]} read in this process")
            future.set_result(read_study(*job, self.plan))
        return future

    def _alone(self, job: tuple[str, Path]) -> ReadStudy:
        """The study read in a process of its own: its result, or unreadable if that process dies too."""
        pool = self._pool(1)
        try:
            return pool.submit(read_study, *job, self.plan).result()
        except BrokenProcessPool:
            return ReadStudy(job[0], problem=("unreadable", "its reading process died twice (a decoder crash?); "
                                                            "read alone the second time"))
        except Exception as err:
            return ReadStudy(job[0], problem=("unreadable", f"reading process: {one_line(err)}"))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
