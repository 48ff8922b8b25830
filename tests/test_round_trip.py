"""Weights survive both round trips bit for bit, dtype included, for random architectures."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings

from roundtrip import hf_config, mapping, openai_config
from roundtrip.architecture import Shapes
from roundtrip.examples import random_openai_state_dict
from roundtrip.strided import Joined, as_torch
from roundtrip.testing import architectures, openai_dtypes, seeds

from conftest import as_views, assert_identical, random_hf_model

MODEL_BUILDING = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MODEL_BUILDING
@given(architectures(), openai_dtypes, seeds)
def test_round_trip_is_bit_exact(architecture, halved, seed):
    original = random_openai_state_dict(architecture, seed=seed, openai_dtypes=halved)
    assert_identical(mapping.to_openai(mapping.to_hf(original)), original)


@MODEL_BUILDING
@given(architectures(), seeds)
def test_hf_round_trip_is_bit_exact(architecture, seed):
    from transformers import CLIPConfig

    config = CLIPConfig.from_dict(hf_config.config(architecture))
    original = random_hf_model(config, seed=seed, fp16_representable=False).state_dict()
    assert_identical(mapping.to_hf(mapping.to_openai(original)), original)


@MODEL_BUILDING
@given(architectures(), openai_dtypes, seeds)
def test_config_inferred_from_shapes_is_the_architecture_built(architecture, halved, seed):
    state_dict = random_openai_state_dict(architecture, seed=seed, openai_dtypes=halved)
    assert openai_config.architecture(Shapes.of(state_dict)) == architecture


def test_special_float_bits_survive(demo_state_dict):
    weird = dict(demo_state_dict)
    projection = weird["text_projection"].clone()
    projection.view(-1)[:3] = torch.tensor([float("nan"), -0.0, float("-inf")], dtype=projection.dtype)
    weird["text_projection"] = projection
    assert_identical(mapping.to_openai(mapping.to_hf(weird)), weird)


def test_views_of_bytes_map_to_the_same_tensors_as_torch_tensors(demo_state_dict):
    hf_views = mapping.to_hf(as_views(demo_state_dict))
    assert_identical({key: as_torch(view) for key, view in hf_views.items()}, mapping.to_hf(demo_state_dict))
    openai_views = mapping.to_openai(hf_views)
    assert any(isinstance(value, Joined) for value in openai_views.values())  # q/k/v listed, not computed
    assert_identical({key: as_torch(view) for key, view in openai_views.items()}, demo_state_dict)
