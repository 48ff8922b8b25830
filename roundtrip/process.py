"""Settings of the `clipconv` process, which computes in C (numpy, torch) beside threads that import Python
modules by the thousand. The program's to choose, not the library's: `clipconv` applies them, `import
roundtrip` does not; the same holds for the exit without teardown that `clipconv` ends with, and for stopping
on SIGTERM and SIGHUP as on Ctrl-C. docs/performance.md gives what each setting buys, measured on a whole
conversion.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from roundtrip.errors import Interrupted


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C; timeout, Slurm, docker stop, systemd; a hangup


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within this, each of STOP_SIGNALS raises `Interrupted` in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so that an output being written is removed on the way out. Once: a second signal does
    not interrupt that cleanup (SIGKILL still ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals
        return

    def stop(number: int, _frame) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(number, signal.Signals(number).name)

    previous = {each: signal.signal(each, stop) for each in STOP_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


SETTINGS = (passive_openmp_workers, no_transparent_huge_pages, rare_garbage_collection, keep_freed_memory)


def tune() -> None:
    for setting in SETTINGS:
        setting()
