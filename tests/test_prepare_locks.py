"""Two prepare runs on one cache: nothing lost, nothing overwritten (issue 16).

The other run is played by a child process that holds the same lock a prepare worker would
(src/locks.py, the lock files src.data.cache names), so each race is set up exactly, not hoped for:

- a study the other run is writing keeps its unfinished folder, is left to it, and is not listed
  in skipped.json (it used to be deleted as "stale", and the other run then recorded a healthy
  study as unreadable for good);
- two runs updating skipped.json at once both keep their entries (the second used to overwrite);
- temporaries of a killed skipped.json write are removed at the next start, unless another run
  holds the split's lock.
"""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from src.data.cache import cached_uids, is_cached, split_lock, study_lock
from src.data.prepare import SKIPPED_RECORD, format_summary, missing_studies, prepare_dataset
from src.synth.dicom_writer import write_series

REPO = Path(__file__).resolve().parent.parent
SPLIT = "train_images"
GOOD = ["1.2.826.0.1.3680043.8.498.31", "1.2.826.0.1.3680043.8.498.32"]
BAD = "1.2.826.0.1.3680043.8.498.33"  # three slices: below min_slices, so skipped and recorded


def write_case(data: Path, uid: str, n: int) -> None:
    import numpy as np

    hu = (np.arange(n * 64).reshape(n, 8, 8) % 700 - 200).astype(np.int16)
    write_series(data / SPLIT / uid, hu, study_uid=uid, slice_numbers=list(range(1, n + 1)),
                 z_positions=[20.0 - i for i in range(n)], pixel_spacing=(1.0, 1.0), slice_thickness=1.0)


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    for uid in GOOD:
        write_case(data, uid, 6)
    write_case(data, BAD, 3)
    return data, tmp_path / "cache"


HOLDER = """
import json, sys
from pathlib import Path
from src.io_utils import atomic_write_json
from src.locks import exclusive
lock, action, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with exclusive(lock, "the test's other prepare run"):
    if action == "write_study":  # a study folder under construction, as cache.write_study builds it
        target.mkdir(parents=True)
        (target / "volume.npy").write_bytes(b"half written")
    record = json.loads(target.read_text()) if action == "record" and target.exists() else {}
    print("ready", flush=True)
    sys.stdin.readline()  # the test says when to go on
    if action == "record":  # the other run's read-modify-write of skipped.json, finished late
        record["1.2.826.0.1.3680043.8.498.999"] = "unreadable in the other run"
        atomic_write_json(target, record)
"""


class OtherRun:
    """A child process holding ``lock`` until :meth:`finish`; ``action`` is what it does meanwhile."""

    def __init__(self, lock: Path, action: str, target: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), action, str(target)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def other_runs():
    runs = []
    yield lambda *args: runs.append(OtherRun(*args)) or runs[-1]
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def wait_until_cached(cache: Path, n: int) -> None:
    deadline = time.time() + 60
    while len(cached_uids(cache, SPLIT)) < n and time.time() < deadline:
        time.sleep(0.02)
    assert len(cached_uids(cache, SPLIT)) >= n, "the prepare run did not get to its studies"


def prepare(data, cache):
    return prepare_dataset(data, cache, size=0, workers=1, min_slices=5, progress=False)


def test_a_study_another_run_is_writing_is_left_to_it(dataset, other_runs):
    data, cache = dataset
    unfinished = cache / SPLIT / f".{GOOD[0]}.k3x9q_"
    other = other_runs(study_lock(cache, SPLIT, GOOD[0]), "write_study", unfinished)

    summary = prepare(data, cache)
    assert (unfinished / "volume.npy").read_bytes() == b"half written", "the other run's study folder was deleted"
    assert [b["uid"] for b in summary["busy"]] == [GOOD[0]]
    assert "being prepared by another process" in format_summary(summary)
    assert GOOD[0] not in json.loads((cache / SPLIT / SKIPPED_RECORD).read_text())  # not unreadable for good
    assert cached_uids(cache, SPLIT) == [GOOD[1]] and GOOD[0] in missing_studies(data, cache, SPLIT)

    other.finish()  # it was killed before it could finish: the next run cleans up and does the study
    again = prepare(data, cache)
    assert again["done"] == 1 and not again["busy"] and is_cached(cache, SPLIT, GOOD[0])
    assert not unfinished.exists()


def test_two_runs_recording_skipped_studies_keep_each_others_entries(dataset, other_runs):
    data, cache = dataset
    record = cache / SPLIT / SKIPPED_RECORD
    # the other run has read skipped.json (empty) under the split's lock and is about to add its entry
    other = other_runs(split_lock(cache, SPLIT), "record", record)
    result = {}
    worker = threading.Thread(target=lambda: result.update(prepare(data, cache)))
    worker.start()
    wait_until_cached(cache, 2)
    time.sleep(0.3)  # this run is now at its own skipped.json update
    other.finish()
    worker.join(timeout=60)
    assert not worker.is_alive() and result["done"] == 2
    entries = json.loads(record.read_text())
    assert set(entries) == {BAD, "1.2.826.0.1.3680043.8.498.999"}, "one run's entry was lost"


def test_temporaries_of_a_killed_record_write_are_cleaned_when_nobody_writes(dataset, other_runs):
    data, cache = dataset
    stale = cache / SPLIT / f".{SKIPPED_RECORD}.a8f3k2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("{")
    other = other_runs(split_lock(cache, SPLIT), "hold", cache / "unused")
    run_while_held = threading.Thread(target=prepare, args=(data, cache))  # it waits for the lock at its end
    run_while_held.start()
    wait_until_cached(cache, 2)
    assert stale.exists(), "a temporary was removed while another run held the split's lock"
    other.finish()
    run_while_held.join(timeout=60)
    assert not run_while_held.is_alive()
    prepare(data, cache)
    assert not stale.exists()
    assert not [p.name for p in (cache / SPLIT).iterdir() if p.name.startswith(".") and p.name != ".locks"]
