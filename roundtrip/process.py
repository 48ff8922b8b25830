"""Settings of the `clipconv` process, which computes in C (numpy, torch) beside threads that import Python
modules by the thousand. The program's to choose, not the library's: `clipconv` applies them, `import
roundtrip` does not; the same holds for the exit without teardown that `clipconv` ends with. docs/performance.md
gives what each buys, measured on a whole conversion.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn


def passive_openmp_workers() -> None:
    """torch's idle OpenMP workers sleep instead of spinning on a core the other threads need (read when
    torch loads, which is later, in the logit check)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def no_transparent_huge_pages() -> None:
    """numpy asks for transparent huge pages for arrays from 4 MB; on a virtual machine that hands free memory
    back to its host, a fresh huge page is a fault in the host (read when numpy loads)."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def rare_garbage_collection() -> None:
    """Importing torch and transformers allocates ~670k objects; at the default thresholds the collector walks
    them over and over. Cycles are still collected, just rarely."""
    gc.set_threshold(100_000, 50, 100)


def keep_freed_memory() -> None:
    """glibc hands freed memory back to the kernel eagerly (blocks from 128 KB up are unmapped when freed, a
    heap shrinks as soon as its top is free); a forward pass frees and allocates such blocks at every step, so
    it would fault its memory in again and again. Other C libraries: nothing to do."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest: blocks up to 32 MB come from the heaps
    mallopt(m_trim_threshold, 2**31 - 1)  # never shrink a heap
    mallopt(m_top_pad, 64 * 2**20)  # and grow it in steps of 64 MB


def exit_without_teardown(code: int) -> NoReturn:
    """End the process once the command is done, without tearing the interpreter down. By then every output is
    written, fsynced and moved into place (or, on failure, removed); what teardown would add is freeing the
    ~400k objects of torch and transformers module by module."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


SETTINGS = (passive_openmp_workers, no_transparent_huge_pages, rare_garbage_collection, keep_freed_memory)


def tune() -> None:
    for setting in SETTINGS:
        setting()
