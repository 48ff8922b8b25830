"""Element types: this module's own `DType`s, named as torch names them, with what each file format and numpy
call them, so that reading, mapping and writing need no tensor library. The bottom of the tensor modules:
`strided` and `casting` build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    """A tensor element type, by torch's name, with what each file format and numpy call it."""

    name: str  # as torch names it: "float32"
    itemsize: int
    is_floating_point: bool
    safetensors: str  # the safetensors header's name: "F32"
    storage: str  # the storage class torch.save pickles: torch.FloatStorage
    numpy: str | None  # numpy's name; None where numpy has no such type

    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.name)

    def __repr__(self) -> str:
        return self.name


DTYPES = {dtype.name: dtype for dtype in (
    DType("float64", 8, True, "F64", "DoubleStorage", "float64"),
    DType("float32", 4, True, "F32", "FloatStorage", "float32"),
    DType("float16", 2, True, "F16", "HalfStorage", "float16"),
    DType("bfloat16", 2, True, "BF16", "BFloat16Storage", None),
    DType("int64", 8, False, "I64", "LongStorage", "int64"),
    DType("int32", 4, False, "I32", "IntStorage", "int32"),
    DType("int16", 2, False, "I16", "ShortStorage", "int16"),
    DType("int8", 1, False, "I8", "CharStorage", "int8"),
    DType("uint8", 1, False, "U8", "ByteStorage", "uint8"),
    DType("bool", 1, False, "BOOL", "BoolStorage", "bool"),
)}


def from_name(name: str) -> DType:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return DTYPES[name]


def dtype_of(tensor) -> DType:
    """The DType of a `Strided` view, a joined tensor or a torch tensor."""
    dtype = tensor.dtype
    return dtype if isinstance(dtype, DType) else DTYPES[str(dtype).removeprefix("torch.")]


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A torch tensor's raw bytes, little-endian as safetensors and torch.save store them on every host this
    tool supports; copied only when the tensor is not contiguous (a transposed projection)."""
    import torch

    return memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
