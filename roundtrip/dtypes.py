"""Dtype choices and casts. Only floating-point tensors are ever cast.

torch is imported inside the functions: the CLI reads the choices at start-up,
and `clipconv --help` should not wait for torch.
"""

from __future__ import annotations

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


def cast_floats(state_dict: Mapping[str, "torch.Tensor"], choice: str) -> dict[str, "torch.Tensor"]:
    """Apply a --dtype choice: a float dtype name casts every floating tensor, "keep" changes nothing."""
    if choice == "keep":
        return dict(state_dict)
    if choice not in FLOAT_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_CHOICES)} or keep, not {choice!r}")
    target = from_name(choice)
    return {key: t.to(target) if t.is_floating_point() else t for key, t in state_dict.items()}


def restore(state_dict: Mapping[str, "torch.Tensor"], recorded: Mapping[str, str]) -> dict[str, "torch.Tensor"]:
    """Give each tensor the dtype recorded for its key; keys without a record keep theirs."""
    return {key: t.to(from_name(recorded[key])) if key in recorded else t for key, t in state_dict.items()}


def summary(state_dict: Mapping[str, "torch.Tensor"]) -> dict[str, int]:
    """How many tensors of each dtype, e.g. {"float16": 120, "float32": 78}."""
    counts: dict[str, int] = {}
    for tensor in state_dict.values():
        name = dtype_name(tensor.dtype)
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
