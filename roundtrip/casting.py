"""Casts, and the dtype choices they come from. Only floating-point tensors are ever cast.

numpy casts while writing, straight into the output's free space; torch is imported only for bfloat16 (which
numpy lacks). A verified conversion casts once into memory instead (`Cast.in_memory`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from roundtrip.dtypes import DType, dtype_of, from_name
from roundtrip.strided import Joined, Strided

if TYPE_CHECKING:
    import numpy
    import torch

FLOAT_CHOICES = ("float32", "float16", "bfloat16")
DTYPE_CHOICES = ("restore", "keep", *FLOAT_CHOICES)  # --dtype; "restore" is the converter's to resolve
SCRATCH_BYTES = 8 * 2**20  # room for one piece of a tensor being cast while written
PARALLEL_CAST_ELEMENTS = 2**18  # pieces at least this large are cast on two cores


class Sink(Protocol):
    """Where cast bytes go: free space to cast into (`reserve`, then `commit` what was filled), or `write`."""

    def reserve(self) -> memoryview: ...

    def commit(self, count: int) -> None: ...

    def write(self, data) -> int: ...


def scratch_space() -> memoryview:
    """Room to cast one piece of a tensor in, for a ScratchSink; made once per file and reused."""
    return memoryview(bytearray(SCRATCH_BYTES))


class ScratchSink:
    """A Sink for a destination that only takes `write` (a zip record), casting into reused scratch space."""

    def __init__(self, write: Callable[[memoryview], object], scratch: memoryview):
        self.write = write
        self._scratch = scratch

    def reserve(self) -> memoryview:
        return self._scratch

    def commit(self, count: int) -> None:
        self.write(self._scratch[:count])


def cast_into(sink: Sink, tensor, dtype: DType, *, cores: int = 2) -> None:
    """Put the bytes of `tensor` in `dtype`, in C order, into `sink`, casting rows straight into its free
    space: a cast never allocates fresh memory the size of a tensor, which on a virtual machine costs
    more than the cast itself. `tensor` is a `Strided` view, a `Joined` one, or a torch tensor.

    numpy casts wherever it knows both types; it keeps every bit of a NaN's payload (torch sets the
    quiet bit), so a float16 -> float32 -> float16 round trip is bit-exact even for NaNs. With `cores=2`
    it splits large pieces between this thread and a helper.
    """
    if tensor.numel() == 0:
        return
    if isinstance(tensor, Joined):
        for part in tensor.parts:  # joined along the first axis: C order is one part after the other
            cast_into(sink, part, dtype, cores=cores)
        return
    if isinstance(tensor, Strided):
        if tensor.dtype == dtype and tensor.is_contiguous():
            sink.write(tensor.raw())  # a view of the input's memory map: nothing to cast
            return
        if tensor.dtype.numpy and dtype.numpy:
            _cast_rows(sink, _rows(tensor.numpy()), dtype, _numpy_copy if cores > 1 else _numpy_copy_here)
            return
        tensor = tensor.torch()
    _cast_rows(sink, _rows(tensor), dtype, _torch_copy)


def _rows(array):
    """A 2-D view whose rows are consecutive runs of elements in C order (numpy array or torch tensor)."""
    if array.ndim == 0:
        return array.reshape(1, 1)
    return array.reshape(array.shape[0], -1)  # a view: 4-D conv weights are contiguous, transposes 2-D


def _cast_rows(sink: Sink, rows, dtype: DType, copy: Callable) -> None:
    row_bytes = rows.shape[1] * dtype.itemsize
    start = 0
    while start < rows.shape[0]:
        space = sink.reserve()
        count = min(rows.shape[0] - start, len(space) // row_bytes)
        if count == 0:  # the free space ends inside the next row: cast that row alone
            row = bytearray(row_bytes)
            copy(memoryview(row), rows[start : start + 1], dtype)
            sink.write(row)
            start += 1
            continue
        copy(space[: count * row_bytes], rows[start : start + count], dtype)
        sink.commit(count * row_bytes)
        start += count


def _numpy_copy(space: memoryview, rows: numpy.ndarray, dtype: DType) -> None:
    """numpy casts on one core; large pieces are split between this thread and a helper (numpy lets go
    of the interpreter while it casts), as torch would use both cores."""
    if rows.size < PARALLEL_CAST_ELEMENTS:
        _numpy_copy_here(space, rows, dtype)
        return
    middle = rows.shape[0] // 2
    split = middle * rows.shape[1] * dtype.itemsize  # where the second half's rows start, in bytes
    helper = _cast_helper().submit(_numpy_copy_here, space[split:], rows[middle:], dtype)
    _numpy_copy_here(space[:split], rows[:middle], dtype)
    helper.result()


def _numpy_copy_here(space: memoryview, rows: numpy.ndarray, dtype: DType) -> None:
    import numpy

    numpy.copyto(numpy.frombuffer(space, dtype=dtype.numpy).reshape(rows.shape), rows, casting="unsafe")


def _cast_copy(tensor, dtype: DType):
    import numpy

    if dtype_of(tensor) == dtype:
        return tensor
    memory = numpy.empty(tensor.numel() * dtype.itemsize, dtype=numpy.uint8)  # every byte is cast into
    # One core: this runs while torch and transformers are imported on the other (measured: ~0.3 s
    # sooner done overall than splitting the cast over both).
    cast_into(_FillSink(memoryview(memory)), tensor, dtype, cores=1)
    return Strided.of_buffer(memory, dtype, tuple(tensor.shape))


class _FillSink:
    """A Sink that fills one buffer from its start."""

    def __init__(self, buffer: memoryview):
        self._buffer, self._filled = buffer, 0

    def reserve(self) -> memoryview:
        return self._buffer[self._filled :]

    def commit(self, count: int) -> None:
        self._filled += count

    def write(self, data) -> int:
        count = memoryview(data).nbytes
        self._buffer[self._filled : self._filled + count] = memoryview(data).cast("B")
        self._filled += count
        return count


@functools.lru_cache(maxsize=1)
def _cast_helper() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="cast")


def _torch_copy(space: memoryview, rows: torch.Tensor, dtype: DType) -> None:
    import torch

    torch.frombuffer(space, dtype=dtype.torch()).view(rows.shape).copy_(rows)


@dataclass(frozen=True)
class Cast:
    """The dtype each tensor is written in. Applied one tensor at a time, while writing, so that
    a cast never holds a second copy of the whole model in memory."""

    floats_to: str | None = None  # a float dtype name for every floating tensor; None keeps them
    recorded: Mapping[str, str] = field(default_factory=dict)  # key -> dtype name, wins over floats_to

    @classmethod
    def from_choice(cls, choice: str) -> Cast:
        """A --dtype choice: a float dtype name casts every floating tensor, "keep" changes nothing."""
        if choice == "keep":
            return cls()
        if choice not in FLOAT_CHOICES:
            raise ValueError(f"dtype must be one of {', '.join(FLOAT_CHOICES)} or keep, not {choice!r}")
        return cls(floats_to=choice)

    def dtype(self, key: str, tensor) -> DType:
        if key in self.recorded:
            return from_name(self.recorded[key])
        if self.floats_to and tensor.is_floating_point():
            return from_name(self.floats_to)
        return dtype_of(tensor)

    def in_memory(self, tensors: Mapping, after_each: Callable[[], None] = lambda: None) -> dict:
        """Every tensor in the dtype it is written in, each cast once into memory of its own (a tensor
        already in that dtype stays the view it is), calling `after_each` after each. For when the writer
        and the logit check both need the written values: casting while writing holds less memory, but
        would cast everything twice."""
        cast = {}
        for key, tensor in tensors.items():
            cast[key] = _cast_copy(tensor, self.dtype(key, tensor))
            after_each()
        return cast

    def summary(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """How many tensors of each dtype this cast writes, e.g. {"float16": 120, "float32": 78}."""
        counts: dict[str, int] = {}
        for key, tensor in state_dict.items():
            name = self.dtype(key, tensor).name
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))
