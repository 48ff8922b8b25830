"""Dtype choices and casts. Only floating-point tensors are ever cast.

torch is imported inside the functions: the CLI reads the choices at start-up,
and `clipconv --help` should not wait for torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

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


def cast_into(sink: Sink, tensor, dtype: "torch.dtype") -> None:
    """Put the bytes of `tensor` in `dtype`, in C order, into `sink`, casting rows straight into its free
    space: a cast never allocates fresh memory the size of a tensor, which on a virtual machine costs
    more than the cast itself. `tensor` may also be a `mapping.Deferred`."""
    import torch

    if not isinstance(tensor, torch.Tensor):  # computed on demand: small (one fused q/k/v)
        tensor = tensor.to(dtype)
    if tensor.dtype == dtype and tensor.is_contiguous():
        sink.write(raw_bytes(tensor))  # a view of the input's memory map: nothing to cast
        return
    rows = tensor.reshape(1, 1) if tensor.dim() == 0 else tensor.unsqueeze(1) if tensor.dim() == 1 else tensor
    rows = rows.flatten(1)  # a view: OpenAI's 4-D conv weight is contiguous, its 2-D transposes need no flattening
    row_bytes = rows.shape[1] * dtype.itemsize
    start = 0
    while start < rows.shape[0] and row_bytes:
        space = sink.reserve()
        count = min(rows.shape[0] - start, len(space) // row_bytes)
        if count == 0:  # the free space ends inside the next row: cast that row alone
            sink.write(raw_bytes(rows[start : start + 1].to(dtype)))
            start += 1
            continue
        torch.frombuffer(space, dtype=dtype, count=count * rows.shape[1]).view(count, -1).copy_(
            rows[start : start + count])
        sink.commit(count * row_bytes)
        start += count


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
