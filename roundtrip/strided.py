"""Tensors as bytes in a buffer, described the way torch describes a view: no tensor library needed.

Converting is moving bytes: transposing a projection or splitting q/k/v only
changes a view's shape, strides and start, and re-fusing them only lists parts
to write one after the other. So readers hand out `Strided` views of the input's
memory map, the schema's operations work on them as on torch tensors (the same
method names), and writers cast them with numpy. torch is imported only when a
tensor is really computed with: the logit check, or bfloat16, which numpy lacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roundtrip.dtypes import DTYPES, DType, dtype_of

if TYPE_CHECKING:
    import numpy
    import torch


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (an extent of 0 counts as 1)."""
    strides, step = [], 1
    for extent in reversed(shape):
        strides.insert(0, step)
        step *= max(extent, 1)
    return tuple(strides)


class _TensorShaped:
    """What writers and the config ask of any tensor: its rank, size and kind, from `shape` and `dtype`."""

    shape: tuple[int, ...]
    dtype: DType

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point


_INTEGER_OF_WIDTH = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}  # bytes -> a dtype numpy has


@dataclass(frozen=True)
class Strided(_TensorShaped):
    """Elements of `dtype` in `buffer`: element [i, j, ...] is at byte `start + (i*strides[0] + j*strides[1] +
    ...) * dtype.itemsize`. The subset of torch.Tensor's interface that reading, mapping and writing use."""

    buffer: object  # anything with the buffer protocol: a memory map, bytes, a numpy array
    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements, as torch counts them
    start: int = 0  # in bytes

    @classmethod
    def of_buffer(cls, buffer, dtype: DType, shape: tuple[int, ...], start: int = 0) -> Strided:
        """A contiguous tensor whose bytes start at `start`."""
        return cls(buffer, dtype, tuple(shape), contiguous_strides(tuple(shape)), start)

    @classmethod
    def of_numpy(cls, array: numpy.ndarray) -> Strided:
        return cls.of_buffer(bytearray(array.tobytes()), DTYPES[array.dtype.name], array.shape)

    @staticmethod
    def joined(parts: tuple[Strided, ...]) -> Joined:
        """Views fused along the first axis, listed, not computed (Concatenate's result for views)."""
        return Joined(parts)

    def is_contiguous(self) -> bool:
        # As torch decides it: extents of 1 may have any stride.
        expected = contiguous_strides(self.shape)
        pairs = zip(self.shape, self.strides, expected, strict=True)
        return all(extent == 1 or stride == want for extent, stride, want in pairs)

    def t(self) -> Strided:
        if self.dim() != 2:
            raise ValueError(f"t() expects a matrix, got shape {self.shape}")
        return Strided(self.buffer, self.dtype, self.shape[::-1], self.strides[::-1], self.start)

    def chunk(self, parts: int, dim: int = 0) -> list[Strided]:
        """Equal parts along `dim` (the caller checks that they divide it)."""
        step = self.shape[dim] // parts
        shape = (*self.shape[:dim], step, *self.shape[dim + 1:])
        return [
            Strided(self.buffer, self.dtype, shape, self.strides, self.start + part * step * self.strides[dim]
                    * self.dtype.itemsize)
            for part in range(parts)
        ]

    def as_strided(self, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> Strided:
        """A view of this one's elements, as torch.as_strided (offset in elements)."""
        return Strided(self.buffer, self.dtype, tuple(shape), tuple(strides), self.start + offset * self.dtype.itemsize)

    def raw(self) -> memoryview:
        """The bytes of a contiguous tensor, not copied."""
        assert self.is_contiguous()
        return memoryview(self.buffer).cast("B")[self.start : self.start + self.numel() * self.dtype.itemsize]

    def numpy(self) -> numpy.ndarray:
        """A numpy view (bfloat16 is not a numpy type: use `torch`)."""
        import numpy

        if self.numel() == 0:
            return numpy.empty(self.shape, dtype=self.dtype.numpy)
        item = self.dtype.itemsize
        return numpy.ndarray(self.shape, self.dtype.numpy, buffer=self.buffer, offset=self.start,
                             strides=tuple(stride * item for stride in self.strides))

    def values(self) -> numpy.ndarray:
        """Its values as a numpy array: a view, except for bfloat16 (which numpy lacks), widened exactly to
        float32 by its bits."""
        import numpy

        if self.dtype.name != "bfloat16":
            return self.numpy()
        return (self._bits().astype(numpy.uint32) << 16).view(numpy.float32)

    def tobytes(self) -> bytes:
        """Its elements' bytes, in order (copied out of a view that is not contiguous)."""
        return bytes(self.raw()) if self.is_contiguous() else self._bits().tobytes()

    def _bits(self) -> numpy.ndarray:
        """Its elements as numpy integers of their width (bfloat16's 16 bits included)."""
        width = DTYPES[_INTEGER_OF_WIDTH[self.dtype.itemsize]]
        return Strided(self.buffer, width, self.shape, self.strides, self.start).numpy().view(f"u{width.itemsize}")

    def torch(self) -> torch.Tensor:
        """A torch view of the same bytes."""
        import torch

        dtype = self.dtype.torch()
        if self.numel() == 0:
            return torch.empty(self.shape, dtype=dtype)
        extent = 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.strides, strict=True))
        flat = torch.frombuffer(self.buffer, dtype=dtype, count=extent, offset=self.start)
        return flat.as_strided(self.shape, self.strides)

    def item(self):
        (value,) = self.numpy().reshape(-1).tolist() if self.dtype.numpy else self.torch().reshape(-1).tolist()
        return value


@dataclass(frozen=True)
class Joined(_TensorShaped):
    """Tensors of one shape and dtype joined along the first axis (q, k and v fused into in_proj), not
    computed: a writer writes the parts one after the other, which is their concatenation's C order."""

    parts: tuple

    @property
    def shape(self) -> tuple[int, ...]:
        first = tuple(self.parts[0].shape)
        return (first[0] * len(self.parts), *first[1:])

    @property
    def dtype(self) -> DType:
        return dtype_of(self.parts[0])

    def chunk(self, parts: int, dim: int = 0) -> tuple:
        """Its parts again (Chunk undoing Concatenate: an HF-layout source to an HF-layout target by way of
        OpenAI's layout); only as they were joined."""
        if dim != 0 or parts != len(self.parts):
            raise ValueError(f"{len(self.parts)} tensors joined along axis 0 cannot be split into {parts} along "
                             f"axis {dim}")
        return self.parts


def as_torch(tensor) -> torch.Tensor:
    """A torch tensor for a `Strided` view (same bytes), a `Joined` one (concatenated) or a torch tensor."""
    import torch

    if isinstance(tensor, Strided):
        return tensor.torch()
    if isinstance(tensor, Joined):
        return torch.cat([as_torch(part) for part in tensor.parts])
    return tensor
