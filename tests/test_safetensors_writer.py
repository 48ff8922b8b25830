"""Every safetensors file clipconv writes is what the safetensors library itself reads back: the library is the
independent referee of the writer (and of what `clipconv to-hf` and `to-open-clip` write)."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from roundtrip import safetensors_file
from roundtrip.casting import Cast
from roundtrip.dtypes import DTYPES
from roundtrip.testing import seeds, tensor_specs

from conftest import assert_identical, run_cli


def read_with_the_library(path: Path) -> tuple[dict, dict]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}


def random_tensor(dtype: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == "bool":
        return torch.randint(0, 2, shape, generator=generator).bool()
    if DTYPES[dtype].is_floating_point:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(getattr(torch, dtype))
    return torch.randint(-100 if dtype != "uint8" else 0, 100, shape, generator=generator).to(getattr(torch, dtype))


@settings(max_examples=40, deadline=None)
@given(tensor_specs, st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3), seeds)
def test_the_library_reads_back_every_tensor_and_the_metadata_written(tmp_path_factory, specs, metadata, seed):
    tensors = {key: random_tensor(dtype, shape, seed) for key, (dtype, shape) in specs.items()}
    path = tmp_path_factory.mktemp("written") / "file.safetensors"
    safetensors_file.write(path, tensors, metadata)
    found, found_metadata = read_with_the_library(path)
    assert_identical(found, tensors)
    assert found_metadata == metadata


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["float16", "bfloat16", "float32"]), seeds)
def test_the_library_reads_back_transposed_views_cast_while_written(tmp_path_factory, rows, columns, dtype, seed):
    matrix = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)).t()  # as HF stores projections
    path = tmp_path_factory.mktemp("written") / "file.safetensors"
    safetensors_file.write(path, {"projection": matrix}, {}, Cast(floats_to=dtype))
    found, _ = read_with_the_library(path)
    assert_identical(found, {"projection": matrix.to(getattr(torch, dtype))})


def test_the_library_reads_what_the_commands_write(tmp_path, demo_state_dict_file):
    hf, open_clip = tmp_path / "hf", tmp_path / "open-clip"
    assert run_cli("to-hf", demo_state_dict_file, hf, "--no-verify", "--max-shard-size", "10MB").exit_code == 0
    assert run_cli("to-open-clip", hf, open_clip, "--no-verify").exit_code == 0
    written = [*sorted(hf.glob("*.safetensors")), open_clip / "open_clip_model.safetensors"]
    assert len(written) >= 4  # shards, and open_clip's one file
    for path in written:
        found, metadata = read_with_the_library(path)
        ours, our_metadata, _ = safetensors_file.read(path)
        assert_identical(found, ours)
        assert metadata == our_metadata and "clipconv" in metadata
