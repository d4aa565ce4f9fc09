"""Keeping freed memory for the next study (glibc's allocator; elsewhere nothing changes).

Called once by src/inference/pipeline.py ``load_predictor`` when ``keep_freed_memory`` is on (configs/
infer.yaml). Inference allocates the same large buffers for every study: the decoded volume, the
localiser's grid, the crop input of half a gigabyte at real sizes. By default glibc hands each large
block back to the system when it is freed and maps it anew for the next study, page fault by page fault;
on the 2-core machine this project is measured on (benchmarks/inference.py), those faults were most of
the CPU side of a study. Asking the allocator to keep what is freed (no separate map for large blocks,
no trimming of the heap) lets the next study reuse the same pages. Reading processes forked after this
call inherit it. The price is a resident size that stays at the largest study's, not below it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # the largest value mallopt takes: in effect, never


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the process; False (and nothing changed) on another C library."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
    except (OSError, AttributeError):
        return False
