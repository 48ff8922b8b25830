"""A checkpoint missing any one tensor is refused by name, in both directions, with and without verification."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from roundtrip import hf_config
from roundtrip.examples import random_openai_state_dict
from roundtrip.testing import architectures, openai_dtypes

from conftest import assert_refused, run_cli

VERIFICATION = pytest.mark.parametrize("options", [(), ("--no-verify",)], ids=["verified", "no-verify"])
DELETIONS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _refused_naming(direction: str, source: Path, missing: str, options: tuple[str, ...]) -> None:
    dest = source.parent / "out"
    assert_refused(run_cli(direction, source, dest, *options), str(source), "missing 1 tensor", missing)
    assert not dest.exists()


@VERIFICATION
@DELETIONS
@given(architecture=architectures(vocab_sizes=st.sampled_from([64, 100])), halved=openai_dtypes, data=st.data())
def test_an_openai_checkpoint_without_any_one_tensor_is_refused_naming_it(options, architecture, halved, data):
    _openai_checkpoint_without_one_tensor_is_refused("to-hf", options, architecture, halved, data)


@VERIFICATION
@DELETIONS
@given(architecture=architectures(vocab_sizes=st.sampled_from([64, 100]), vision="resnet"), halved=openai_dtypes,
       data=st.data())
def test_a_resnet_checkpoint_without_any_one_tensor_is_refused_naming_it(options, architecture, halved, data):
    """Every BatchNorm statistic, each stage's downsampling and the attention pool included."""
    _openai_checkpoint_without_one_tensor_is_refused("to-open-clip", options, architecture, halved, data)


def _openai_checkpoint_without_one_tensor_is_refused(direction: str, options, architecture, halved, data) -> None:
    state_dict = random_openai_state_dict(architecture, openai_dtypes=halved)
    missing = data.draw(st.sampled_from(sorted(state_dict)), label="deleted")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "incomplete.pt"
        torch.save({key: tensor for key, tensor in state_dict.items() if key != missing}, source)
        _refused_naming(direction, source, missing, options)


@VERIFICATION
@DELETIONS
@given(architecture=architectures(vocab_sizes=st.sampled_from([64, 100])), data=st.data())
def test_an_hf_folder_without_any_one_tensor_is_refused_naming_it(options, architecture, data):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_dict(hf_config.config(architecture))
    state_dict = CLIPModel(config).state_dict()  # transformers' own names, not this project's schema
    missing = data.draw(st.sampled_from(sorted(state_dict)), label="deleted")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "incomplete-hf"
        source.mkdir()
        config.to_json_file(source / "config.json")
        save_file({key: tensor.contiguous() for key, tensor in state_dict.items() if key != missing},
                  source / "model.safetensors")
        _refused_naming("to-openai", source, missing, options)
