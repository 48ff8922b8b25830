"""One large output file, written in aligned blocks that bypass the page cache, optionally read back.

Why not plain buffered writes: a conversion writes gigabytes once and never reads them
again. Through the page cache every written byte first needs a fresh page of memory,
which on a virtual machine costs about 2 s per GB the first time it is touched, and
fsync must flush it all at the end anyway. With O_DIRECT the bytes go from a few reused
buffers straight to the disk: memory stays flat however large the model, and two
writer threads keep the disk busy while the caller fills the next block. Where a
filesystem refuses O_DIRECT (some network filesystems, older tmpfs) the same code
writes through the page cache.

With `read_back`, a writer thread reads each block back from the file after writing
it and compares it byte for byte (memcmp) with what was sent. That doubles the disk
traffic, so the converter asks for it when it verifies (the logit check takes longer
than the reading) and not under --no-verify.
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
BLOCKS = 3  # one being filled, two on their way to disk
WRITERS = 2  # two transfers in flight keep the disk busier than one
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
        try:
            self.memory.close()
        except BufferError:  # a failed transfer's traceback still holds a view; unmapped when it goes
            pass


class OutputFile:
    """A write-only, append-only binary file: `write` (or `reserve` and `commit`, to fill a block in place),
    `tell`, and `close` (which pads, truncates and fsyncs).

    Not seekable, on purpose: zipfile then writes data descriptors instead of seeking back.
    """

    def __init__(self, path: Path, read_back: bool = True, block_bytes: int | None = None):
        block_bytes = block_bytes or BLOCK_BYTES
        self.read_back = read_back
        self._fd, self.direct = _open(path)
        self._blocks = [_Buffer(block_bytes) for _ in range(BLOCKS)]
        self._checks = [_Buffer(block_bytes) for _ in range(BLOCKS if read_back else 0)]  # to read each back into
        self._current = 0  # index of the block being filled
        self._filled = 0  # bytes in it
        self._offset = 0  # where it goes in the file
        self._pending: list[Future | None] = [None] * BLOCKS  # each block's write and read-back
        self._writer = ThreadPoolExecutor(max_workers=WRITERS)
        self.closed = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._offset + self._filled

    def flush(self) -> None:
        """Nothing to do: blocks go to disk when full, the rest in `close`."""

    def reserve(self) -> memoryview:
        """The free space of the current block, to fill in place and then `commit`."""
        return memoryview(self._blocks[self._current].memory)[self._filled :]

    def commit(self, count: int) -> None:
        """`count` bytes at the start of the reserved space now hold data."""
        self._filled += count
        if self._filled == len(self._blocks[self._current].memory):
            self._hand_over_block()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            space = self.reserve()
            count = min(len(view) - done, len(space))
            _copy(space[:count], view[done : done + count])
            self.commit(count)
            done += count
        return done

    def close(self) -> None:
        """Write the last, partial block, cut the padding off, fsync. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            length = self.tell()
            self._hand_over_block()
            self._wait_all()
            os.ftruncate(self._fd, length)  # O_DIRECT wrote the last block padded to ALIGNMENT
            os.fsync(self._fd)
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without finishing the file (the caller removes it)."""
        if not self.closed:
            self.closed = True
            self._release()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, error_type, *_) -> None:
        if error_type is None:
            self.close()
        else:
            self.abort()

    def _hand_over_block(self) -> None:
        if self._filled:
            self._pending[self._current] = self._writer.submit(
                self._write_block, self._current, self._filled, self._offset)
        self._offset += self._filled
        self._filled = 0
        self._current = (self._current + 1) % BLOCKS
        self._wait(self._current)  # the next block is free again once its write is done

    def _wait(self, index: int) -> None:
        if self._pending[index] is not None:
            pending, self._pending[index] = self._pending[index], None
            pending.result()  # raises the writer thread's error here

    def _wait_all(self) -> None:
        for index in range(BLOCKS):
            self._wait(index)

    def _write_block(self, index: int, length: int, offset: int) -> None:
        try:
            self._transfer_block(index, length, offset)
        except OSError as error:
            if not (self.direct and error.errno == errno.EINVAL):
                raise
            # The filesystem took O_DIRECT at open but not these transfers: go through the page cache.
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False
            self._transfer_block(index, length, offset)

    def _transfer_block(self, index: int, length: int, offset: int) -> None:
        block = self._blocks[index]
        padded = -(-length // ALIGNMENT) * ALIGNMENT if self.direct else length
        block.memory[length:padded] = bytes(padded - length)
        _transfer(os.pwrite, self._fd, memoryview(block.memory)[:padded], offset)
        if self.read_back:
            check = self._checks[index]
            _transfer(_pread_into, self._fd, memoryview(check.memory)[:padded], offset)
            if _memcmp(block.address, check.address, length):
                raise ReadBackError(errno.EIO, f"bytes {offset}-{offset + length} read back differently")

    def _release(self) -> None:
        try:
            self._wait_all()
        except OSError:
            pass  # already reported by the write that failed
        finally:
            self._writer.shutdown(wait=True)
            os.close(self._fd)
            for buffer in (*self._blocks, *self._checks):
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


def _copy(destination: memoryview, source: memoryview) -> None:
    """destination[:] = source, letting go of the interpreter meanwhile (a memoryview copy holds it): the
    blocks of a model are gigabytes, copied while other threads run Python."""
    import numpy

    numpy.copyto(numpy.frombuffer(destination, numpy.uint8), numpy.frombuffer(source, numpy.uint8))


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
