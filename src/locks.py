"""Exclusive locks between processes, so that two commands never work on the same thing at once.

Used for a study's cache entry (src/data/prepare.py: two ``src.prepare`` runs on one cache) and for a
run folder (src/training/loop.py: two trainings into ``runs/<experiment>/fold<k>/``). A lock is an
``fcntl.flock`` on a small file; the kernel releases it when the holder exits, however it exits, so a
killed process never leaves a lock behind. The file itself stays (deleting lock files races with the
next taker) and holds a line saying who took it, for the message the next process prints.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Busy(RuntimeError):
    """Another process holds the lock; the message names what is locked, by whom, and what to do."""


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 500).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextmanager
def exclusive(lock_file: Path, what: str, wait: bool = False, announce=None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if absent) for the ``with`` block.

    ``what`` names the locked thing in messages. When another process holds it: ``wait=False`` raises
    :class:`Busy` at once; ``wait=True`` says so through ``announce`` (if given) and waits.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise Busy(f"{what} is in use by {holder}; wait for it to finish or stop it, then run again "
                           f"(lock file {lock_file})") from None
            if announce is not None:
                announce(f"[lock] {what} is in use by {holder}: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} " \
                f"({' '.join(sys.argv[:3])[:200]})\n"
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, stamp.encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
