"""Dtype choices and casts. Only floating-point tensors are ever cast."""

from __future__ import annotations

from typing import Mapping

import torch

BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAME_OF = {dtype: name for name, dtype in BY_NAME.items()}

TO_HF_CHOICES = ("float32", "float16", "bfloat16", "keep")  # hub convention: float32
TO_OPENAI_CHOICES = ("restore", "keep", "float32", "float16", "bfloat16")

# safetensors' names for the dtypes a CLIP checkpoint can hold.
SAFETENSORS_NAME = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def cast_floats(state_dict: Mapping[str, torch.Tensor], choice: str) -> dict[str, torch.Tensor]:
    """Apply a --dtype choice: a dtype name casts every floating tensor, "keep" changes nothing."""
    if choice == "keep":
        return dict(state_dict)
    target = BY_NAME[choice]
    return {key: t.to(target) if t.is_floating_point() else t for key, t in state_dict.items()}


def restore(state_dict: Mapping[str, torch.Tensor], recorded: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Give each tensor the dtype recorded for its key; keys without a record keep theirs."""
    return {
        key: t.to(from_name(recorded[key])) if key in recorded else t for key, t in state_dict.items()
    }


def summary(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """How many tensors of each dtype, e.g. {"float16": 120, "float32": 78}."""
    counts: dict[str, int] = {}
    for tensor in state_dict.values():
        name = dtype_name(tensor.dtype)
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
