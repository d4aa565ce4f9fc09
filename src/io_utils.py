"""Atomic file writes: a reader (or a resumed run) never sees a half-written cache file or checkpoint.

Everything is written to a temporary file in the destination folder, flushed, and renamed over the
target, which POSIX makes atomic within one file system.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` left in ``folder`` when its writer was killed.

    Only safe while nobody else writes into ``folder``: callers hold its lock (src/locks.py) first.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and ".tmp" in p.name]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_json(target: Path, data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(target: Path, frame) -> None:
    """Write a pandas DataFrame without its index."""
    with atomic_path(target, ".csv") as tmp:
        frame.to_csv(tmp, index=False)


def atomic_torch_save(target: Path, obj: Any) -> None:
    import torch

    with atomic_path(target, ".pt") as tmp:
        torch.save(obj, tmp)
