"""The config fields to-openai checks are read as transformers reads them, without importing transformers."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from hypothesis import given, settings

from roundtrip import hf_config
from roundtrip.architecture import Architecture, ArchitectureError, Shapes
from roundtrip.hf_config import HF_DEFAULTS, HF_TOWER_DEFAULTS, resolved_hf_config
from roundtrip.testing import hf_configs


def transformers_reading(config: dict) -> dict:
    from transformers import CLIPConfig

    full = CLIPConfig.from_dict(config).to_dict()
    return {
        **{key: full[key] for key in HF_DEFAULTS},
        **{tower: {key: full[tower][key] for key in defaults} for tower, defaults in HF_TOWER_DEFAULTS.items()},
    }


def shapes_of(architecture: Architecture) -> Shapes:
    """What the tensors of a model of `architecture` would say."""
    return Shapes(towers=architecture.towers,
                  projections=tuple(name for name in architecture.towers if getattr(architecture, name).projected),
                  embed_dim=architecture.embed_dim, image_resolution=architecture.image_resolution,
                  patch_size=architecture.patch_size, context_length=architecture.context_length, vision_kind="vit",
                  vocab_size=architecture.vocab_size, **{
                      f"{name}_{part}": getattr(getattr(architecture, name), part)
                      for name in ("vision", "text") for part in ("width", "layers", "mlp_width")})


def test_defaults_are_clipconfigs_defaults():
    assert resolved_hf_config({}) == transformers_reading({})


@settings(max_examples=80, deadline=None)
@given(hf_configs())
def test_fields_left_out_resolve_as_clipconfig_resolves_them(case):
    architecture, config = case
    try:
        expected = transformers_reading(config)
    except StrictDataclassClassValidationError:  # CLIPConfig refuses it (heads that do not divide the width)
        with pytest.raises(ArchitectureError):  # so does clipconv, whatever the tensors are
            hf_config.architecture(config, shapes_of(architecture))
        return
    assert resolved_hf_config(config) == expected


@pytest.mark.parametrize("config", [{"text_config": [1, 2]}, {"vision_config_dict": "ViT"}])
def test_a_tower_that_is_not_an_object_is_refused(config):
    with pytest.raises(ArchitectureError, match="should be a JSON object"):
        resolved_hf_config(config)


@settings(max_examples=40, deadline=None)
@given(hf_configs())
def test_the_config_to_hf_writes_reads_back_as_the_architecture(case):
    architecture, _ = case
    assert hf_config.architecture(hf_config.config(architecture), shapes_of(architecture)) == architecture


@pytest.mark.parametrize("field, value", [("hidden_size", "128"), ("layer_norm_eps", -1), ("hidden_act", 3),
                                          ("num_hidden_layers", True)])
def test_fields_of_the_wrong_kind_are_refused_by_name(field, value):
    with pytest.raises(ArchitectureError, match=f"text_config.{field} is"):
        resolved_hf_config({"text_config": {field: value}})
