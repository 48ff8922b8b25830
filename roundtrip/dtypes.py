"""Dtype choices and casts. Only floating-point tensors are ever cast.

torch is imported inside the functions: the CLI reads the choices at start-up,
and `clipconv --help` should not wait for torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

FLOAT_CHOICES = ("float32", "float16", "bfloat16")
TO_HF_CHOICES = (*FLOAT_CHOICES, "keep")  # default float32, the hub convention
TO_OPENAI_CHOICES = ("restore", "keep", *FLOAT_CHOICES)  # default restore what to-hf recorded


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
