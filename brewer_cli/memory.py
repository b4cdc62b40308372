"""Handing memory a run no longer uses back to the system."""

from __future__ import annotations

import ctypes
import sys


def return_freed_memory() -> None:
    """Give the memory that Python, torch and Arrow freed back to the system. The allocators keep
    freed memory for reuse, and what comes next (training, after preparing data or letting a
    teacher go) allocates differently and does not reuse it, so without this the process's
    resident memory — and its peak — keeps what was freed (benchmarks/data_scale.py measured 30-65
    MiB after preparing a corpus)."""
    pyarrow = sys.modules.get("pyarrow")  # not imported here: a process that read no Arrow data has no pool to empty
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc only; other C libraries have no such call
    except (OSError, AttributeError):
        pass
