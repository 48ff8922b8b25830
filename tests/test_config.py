"""The config fields to-openai checks are read as transformers reads them, without importing transformers."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from hypothesis import given, settings

from roundtrip.config import (
    HF_DEFAULTS, HF_TOWER_DEFAULTS, ConfigError, openai_incompatibilities, resolved_hf_config,
)

from strategies import hf_configs


def transformers_reading(config: dict) -> dict:
    from transformers import CLIPConfig

    full = CLIPConfig.from_dict(config).to_dict()
    return {
        **{key: full[key] for key in HF_DEFAULTS},
        **{tower: {key: full[tower][key] for key in defaults} for tower, defaults in HF_TOWER_DEFAULTS.items()},
    }


def test_defaults_are_clipconfigs_defaults():
    assert resolved_hf_config({}) == transformers_reading({})


@settings(max_examples=80, deadline=None)
@given(hf_configs())
def test_fields_left_out_resolve_as_clipconfig_resolves_them(case):
    architecture, config = case
    try:
        expected = transformers_reading(config)
    except StrictDataclassClassValidationError:  # CLIPConfig refuses it (e.g. heads that do not divide the width); so must to-openai
        assert openai_incompatibilities(resolved_hf_config(config), architecture)
        return
    assert resolved_hf_config(config) == expected


@pytest.mark.parametrize("config", [{"text_config": [1, 2]}, {"vision_config_dict": "ViT"}])
def test_a_tower_that_is_not_an_object_is_refused(config):
    with pytest.raises(ConfigError, match="should be a JSON object"):
        resolved_hf_config(config)
