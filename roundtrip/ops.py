"""Tensor operations used by the schema, each paired with its exact inverse.

An operation takes the tensors matched by a rule's source patterns (in order)
and returns the tensors for its target patterns (in order). Operations only
move bytes: no arithmetic, so every conversion is bit-exact by construction.
Inputs are anything shaped like a torch tensor (torch tensors, or clipconv's views
of file bytes, which offer the methods used here); results are views of the inputs,
or, for Concatenate of a type that can list its parts (`joined`), such a list,
which writers write one after the other. This module imports nothing of clipconv's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class OperationError(ValueError):
    """A tensor does not fit the operation (for example, a row count not divisible by 3)."""


@dataclass(frozen=True)
class Identity:
    """One tensor in, the same tensor out."""

    arity_in: int = 1
    arity_out: int = 1

    @property
    def inverse(self) -> Identity:
        return self

    def __call__(self, tensors: Sequence) -> list:
        return [tensors[0]]


@dataclass(frozen=True)
class Transpose:
    """Swap the two axes of a matrix; its own inverse."""

    arity_in: int = 1
    arity_out: int = 1

    @property
    def inverse(self) -> Transpose:
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
    def inverse(self) -> Concatenate:
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
            if tuple(other.shape) != tuple(first.shape) or str(other.dtype) != str(first.dtype):
                raise OperationError(
                    "cannot fuse tensors of different shapes or dtypes: "
                    + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in tensors)
                )
        joined = getattr(type(first), "joined", None)
        if self.dim == 0 and joined is not None and all(type(tensor) is type(first) for tensor in tensors):
            return [joined(tuple(tensors))]  # views of bytes: written part after part, nothing computed
        import torch  # torch tensors (the logit check, tests) are really concatenated

        return [torch.cat([t if isinstance(t, torch.Tensor) else t.torch() for t in tensors], dim=self.dim)]


Operation = Identity | Transpose | Chunk | Concatenate
