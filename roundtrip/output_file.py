"""One large output file, written in aligned blocks that bypass the page cache, each read back as written.

Why not plain buffered writes: a conversion writes gigabytes once and never reads them
again. Through the page cache every written byte first needs a fresh page of memory,
which on a virtual machine costs about 2 s per GB the first time it is touched, and
fsync must flush it all at the end anyway. With O_DIRECT the bytes go from two reused
buffers straight to the disk: memory stays flat however large the model, and the
second thread writes one block while the caller fills the other. Where a filesystem
refuses O_DIRECT (tmpfs, some network filesystems) the same code writes through the
page cache.

After each block is written, the second thread reads it back from the file and
compares it byte for byte (memcmp) with what was sent, so a finished file is one
whose every byte was seen on disk.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

BLOCK_BYTES = 16 * 2**20
ALIGNMENT = 4096  # O_DIRECT needs offsets, lengths and addresses aligned to the device's block size
_memcmp = ctypes.CDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class ReadBackError(OSError):
    """A block read back from the output file differs from what was written."""


class _Buffer:
    """A page-aligned anonymous mapping (so O_DIRECT accepts its address) and that address for memcmp."""

    def __init__(self, size: int):
        self.memory = mmap.mmap(-1, size)
        self._exported = ctypes.c_char.from_buffer(self.memory)
        self.address = ctypes.addressof(self._exported)

    def close(self) -> None:
        del self._exported  # the mapping cannot close while ctypes holds a view of it
        self.memory.close()


class OutputFile:
    """A write-only, append-only binary file: `write`, `tell`, and `close` (which pads, truncates and fsyncs).

    Not seekable, on purpose: zipfile then writes data descriptors instead of seeking back.
    """

    def __init__(self, path: Path, block_bytes: int = BLOCK_BYTES):
        self._fd, self.direct = _open(path)
        self._blocks = [_Buffer(block_bytes), _Buffer(block_bytes)]
        self._check = _Buffer(block_bytes)
        self._current = 0  # index of the block being filled
        self._filled = 0  # bytes in it
        self._offset = 0  # where it goes in the file
        self._pending: Future | None = None  # the other block, being written
        self._writer = ThreadPoolExecutor(max_workers=1)
        self.closed = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._offset + self._filled

    def flush(self) -> None:
        """Nothing to do: blocks go to disk when full, the rest in `close`."""

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            block = self._blocks[self._current].memory
            count = min(len(view) - done, len(block) - self._filled)
            block[self._filled : self._filled + count] = view[done : done + count]
            self._filled += count
            done += count
            if self._filled == len(block):
                self._hand_over_block()
        return done

    def close(self) -> None:
        """Write the last, partial block, cut the padding off, fsync. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            length = self.tell()
            self._hand_over_block()
            self._wait()
            os.ftruncate(self._fd, length)  # O_DIRECT wrote the last block padded to ALIGNMENT
            os.fsync(self._fd)
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without finishing the file (the caller removes it)."""
        if not self.closed:
            self.closed = True
            self._release()

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, error_type, *_) -> None:
        if error_type is None:
            self.close()
        else:
            self.abort()

    def _hand_over_block(self) -> None:
        self._wait()  # the other block is free again once its write is done
        if self._filled:
            self._pending = self._writer.submit(self._write_block, self._blocks[self._current], self._filled,
                                                self._offset)
        self._offset += self._filled
        self._filled = 0
        self._current ^= 1

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # raises the writer thread's error here

    def _write_block(self, block: _Buffer, length: int, offset: int) -> None:
        try:
            self._transfer_block(block, length, offset)
        except OSError as error:
            if not (self.direct and error.errno == errno.EINVAL):
                raise
            # The filesystem took O_DIRECT at open but not these transfers: go through the page cache.
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False
            self._transfer_block(block, length, offset)
        if _memcmp(block.address, self._check.address, length):
            raise ReadBackError(errno.EIO, f"bytes {offset}-{offset + length} read back differently")

    def _transfer_block(self, block: _Buffer, length: int, offset: int) -> None:
        padded = -(-length // ALIGNMENT) * ALIGNMENT if self.direct else length
        block.memory[length:padded] = bytes(padded - length)
        _transfer(os.pwrite, self._fd, memoryview(block.memory)[:padded], offset)
        _transfer(_pread_into, self._fd, memoryview(self._check.memory)[:padded], offset)

    def _release(self) -> None:
        try:
            self._wait()
        except OSError:
            pass  # already reported by the write that failed
        finally:
            self._writer.shutdown(wait=True)
            os.close(self._fd)
            for buffer in (*self._blocks, self._check):
                buffer.close()


def _open(path: Path) -> tuple[int, bool]:
    """The file opened for O_DIRECT writing where the filesystem allows it, else for buffered writing."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o666), True
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o666), False


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    return os.preadv(fd, [view], offset)


def _transfer(call, fd: int, view: memoryview, offset: int) -> None:
    """pwrite or pread all of `view` at `offset`: both may move fewer bytes than asked."""
    done = 0
    while done < len(view):
        count = call(fd, view[done:], offset + done)
        if count == 0:
            raise OSError(errno.EIO, f"short transfer at byte {offset + done}")
        done += count
