"""Dtype choices and casts. Only floating-point tensors are ever cast.

torch is imported inside the functions: the CLI reads the choices at start-up,
and `clipconv --help` should not wait for torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping

if TYPE_CHECKING:
    import torch

FLOAT_CHOICES = ("float32", "float16", "bfloat16")
TO_HF_CHOICES = (*FLOAT_CHOICES, "keep")  # default float32, the hub convention
TO_OPENAI_CHOICES = ("restore", "keep", *FLOAT_CHOICES)  # default restore what to-hf recorded
SCRATCH_BYTES = 8 * 2**20  # room for one piece of a tensor being cast while written


def dtype_name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")


def from_name(name: str) -> "torch.dtype":
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def raw_bytes(tensor: "torch.Tensor") -> memoryview:
    """A tensor's raw bytes, little-endian as safetensors and torch.save store them on every host this tool
    supports; copied only when the tensor is not contiguous (a transposed projection)."""
    import torch

    return memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def cast_in_pieces(tensor, dtype: "torch.dtype", scratch: "torch.Tensor") -> Iterator[memoryview]:
    """The bytes of `tensor` in `dtype`, in C order, as pieces no larger than `scratch` (a reused uint8
    tensor) unless no cast is needed: a cast never allocates fresh memory the size of a tensor, which on a
    virtual machine costs more than the cast itself. `tensor` may also be a `mapping.Deferred`.
    Each piece is valid until the next one is asked for."""
    import torch

    if not isinstance(tensor, torch.Tensor):  # computed on demand: small (one fused q/k/v)
        yield raw_bytes(tensor.to(dtype))
        return
    if tensor.dtype == dtype and tensor.is_contiguous():
        yield raw_bytes(tensor)  # a view of the input's memory map: nothing to copy
        return
    rows = tensor.reshape(1, 1) if tensor.dim() == 0 else tensor.unsqueeze(1) if tensor.dim() == 1 else tensor
    rows = rows.flatten(1)  # a view: OpenAI's 4-D conv weight is contiguous, its 2-D transposes need no flattening
    row_bytes = rows.shape[1] * dtype.itemsize
    step = max(1, scratch.numel() // max(row_bytes, 1))
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        size = part.numel() * dtype.itemsize
        space = scratch[:size] if size <= scratch.numel() else torch.empty(size, dtype=torch.uint8)
        space.view(dtype).view(part.shape).copy_(part)
        yield memoryview(space.numpy())


@dataclass(frozen=True)
class Cast:
    """The dtype each tensor is written in. Applied one tensor at a time, while writing, so that
    a cast never holds a second copy of the whole model in memory."""

    floats_to: str | None = None  # a float dtype name for every floating tensor; None keeps them
    recorded: Mapping[str, str] = field(default_factory=dict)  # key -> dtype name, wins over floats_to

    @classmethod
    def from_choice(cls, choice: str) -> "Cast":
        """A --dtype choice: a float dtype name casts every floating tensor, "keep" changes nothing."""
        if choice == "keep":
            return cls()
        if choice not in FLOAT_CHOICES:
            raise ValueError(f"dtype must be one of {', '.join(FLOAT_CHOICES)} or keep, not {choice!r}")
        return cls(floats_to=choice)

    def dtype(self, key: str, tensor: "torch.Tensor") -> "torch.dtype":
        if key in self.recorded:
            return from_name(self.recorded[key])
        if self.floats_to and tensor.is_floating_point():
            return from_name(self.floats_to)
        return tensor.dtype

    def __call__(self, key: str, tensor: "torch.Tensor") -> "torch.Tensor":
        return tensor.to(self.dtype(key, tensor))

    def all(self, state_dict: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        return {key: self(key, tensor) for key, tensor in state_dict.items()}

    def summary(self, state_dict: Mapping[str, "torch.Tensor"]) -> dict[str, int]:
        """How many tensors of each dtype this cast writes, e.g. {"float16": 120, "float32": 78}."""
        counts: dict[str, int] = {}
        for key, tensor in state_dict.items():
            name = dtype_name(self.dtype(key, tensor))
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))
