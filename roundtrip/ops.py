"""Tensor operations used by the schema, each paired with its exact inverse.

An operation takes the tensors matched by a rule's source patterns (in order)
and returns the tensors for its target patterns (in order). Operations only
move bytes: no arithmetic, so every conversion is bit-exact by construction.
Inputs are `strided.Strided` views or torch tensors (both offer the methods used
here); results are views of the inputs, or, for Concatenate on views, a `Joined`
list of parts that writers write one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from roundtrip.dtypes import dtype_of
from roundtrip.strided import Joined, Strided, as_torch


class OperationError(ValueError):
    """A tensor does not fit the operation (for example, a row count not divisible by 3)."""


@dataclass(frozen=True)
class Identity:
    """One tensor in, the same tensor out."""

    arity_in: int = 1
    arity_out: int = 1

    @property
    def inverse(self) -> "Identity":
        return self

    def __call__(self, tensors: Sequence) -> list:
        return [tensors[0]]


@dataclass(frozen=True)
class Transpose:
    """Swap the two axes of a matrix; its own inverse."""

    arity_in: int = 1
    arity_out: int = 1

    @property
    def inverse(self) -> "Transpose":
        return self

    def __call__(self, tensors: Sequence) -> list:
        (matrix,) = tensors
        if matrix.dim() != 2:
            raise OperationError(f"expected a matrix to transpose, got shape {tuple(matrix.shape)}")
        return [matrix.t()]


@dataclass(frozen=True)
class Chunk:
    """Split one tensor into `parts` equal pieces along `dim`; inverse: Concatenate."""

    parts: int
    dim: int = 0

    @property
    def arity_in(self) -> int:
        return 1

    @property
    def arity_out(self) -> int:
        return self.parts

    @property
    def inverse(self) -> "Concatenate":
        return Concatenate(parts=self.parts, dim=self.dim)

    def __call__(self, tensors: Sequence) -> list:
        (whole,) = tensors
        if whole.dim() <= self.dim or whole.shape[self.dim] % self.parts:
            raise OperationError(
                f"cannot split shape {tuple(whole.shape)} into {self.parts} equal parts along dim {self.dim}"
            )
        return list(whole.chunk(self.parts, dim=self.dim))


@dataclass(frozen=True)
class Concatenate:
    """Join `parts` tensors of one shape and dtype along `dim`; inverse: Chunk."""

    parts: int
    dim: int = 0

    @property
    def arity_in(self) -> int:
        return self.parts

    @property
    def arity_out(self) -> int:
        return 1

    @property
    def inverse(self) -> Chunk:
        return Chunk(parts=self.parts, dim=self.dim)

    def __call__(self, tensors: Sequence) -> list:
        first = tensors[0]
        for other in tensors[1:]:
            # Equal pieces, or Chunk would not give them back.
            if tuple(other.shape) != tuple(first.shape) or dtype_of(other) != dtype_of(first):
                raise OperationError(
                    "cannot fuse tensors of different shapes or dtypes: "
                    + ", ".join(f"{tuple(t.shape)} {dtype_of(t)}" for t in tensors)
                )
        if self.dim == 0 and all(isinstance(tensor, Strided) for tensor in tensors):
            return [Joined(tuple(tensors))]  # written part after part: nothing is computed
        import torch  # torch tensors (the logit check, tests) are really concatenated

        return [torch.cat([as_torch(tensor) for tensor in tensors], dim=self.dim)]


Operation = Identity | Transpose | Chunk | Concatenate
