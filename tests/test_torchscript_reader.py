"""The restricted TorchScript reader gives exactly what torch.jit.load(...).state_dict() gives."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from roundtrip.examples import DEMO, random_openai_model, save_scripted_archive, save_torchscript_archive
from roundtrip.testing import architectures, openai_dtypes
from roundtrip.torch_zip import read_torchscript_state_dict

from conftest import assert_identical

MAKERS = {"trace": save_torchscript_archive, "script": save_scripted_archive}


def jit_state_dict(path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).state_dict()


@pytest.mark.parametrize("halved", [True, False], ids=["fp16-mix", "fp32"])
@pytest.mark.parametrize("maker", MAKERS)
def test_reader_matches_torch_jit_load(tmp_path, maker, halved):
    MAKERS[maker](random_openai_model(DEMO, seed=4, openai_dtypes=halved), tmp_path / "model.pt")
    expected = jit_state_dict(tmp_path / "model.pt")
    found = read_torchscript_state_dict(tmp_path / "model.pt")
    assert list(found) == list(expected)  # same order too
    assert_identical(found, expected)
    assert {"input_resolution", "context_length", "vocab_size"} <= set(found)


@pytest.mark.slow
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(architectures(), openai_dtypes)
def test_reader_matches_torch_jit_load_on_random_architectures(tmp_path, architecture, halved):
    path = tmp_path / "model.pt"
    save_torchscript_archive(random_openai_model(architecture, openai_dtypes=halved), path)
    assert_identical(read_torchscript_state_dict(path), jit_state_dict(path))
