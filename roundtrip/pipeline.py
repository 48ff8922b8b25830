"""Overlap preparing the next tensor (cast, checksum) with writing the previous one.

Both sides spend their time in code that releases the GIL (torch casts, zlib,
the write system call), so two threads keep both cores busy; at most two
prepared tensors exist at once, so memory stays flat.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

Item = TypeVar("Item")


def write_behind(write: Callable[[Item], None], items: Iterable[Item]) -> None:
    """Call `write(item)` for each item in order, in a background thread, while `items` yields the next."""
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = None
        for item in items:
            if pending is not None:
                pending.result()  # raises the writer's error, if any, here in the caller
            pending = writer.submit(write, item)
        if pending is not None:
            pending.result()
