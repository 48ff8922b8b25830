"""The check compares what a consumer of either tower reads, layer by layer, not the logits alone: a diffusion model
conditions on a penultimate layer, which logits that agree say nothing about. Where two models part is named."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from roundtrip import formats, hf_config, open_clip_config, references, verify
from roundtrip.examples import DEMO
from roundtrip.testing import architectures, random_state_dict, seeds

from conftest import assert_refused, run_cli

TOLERANCE = 1e-3
BUILDING = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outputs(reference, weights, config, architecture):
    side = verify.Side(reference, config)
    return verify.reference_outputs(side, weights, "openai", architecture, verify.probe_images(architecture),
                                    verify.probe_tokens(architecture))


@BUILDING
@given(architectures(), seeds)
def test_the_three_model_codes_compute_the_same_outputs_layer_by_layer(architecture, seed):
    """OpenAI's, open_clip's and transformers' code, holding the same weights, give the same named outputs, each
    within the tolerance: the recording reads each code's blocks in its own order (OpenAI's sequence first)."""
    weights = random_state_dict(architecture, "openai", seed=seed)
    found = {
        "openai": outputs(references.OPENAI, weights, None, architecture),
        "open_clip": outputs(references.OPEN_CLIP, weights, open_clip_config.model_config(architecture), architecture),
        "hf": outputs(references.HF, weights, hf_config.config(architecture), architecture),
    }
    names = references.output_names(architecture)
    assert names[-1] == "logits" and f"text.layers.{architecture.text.layers - 1}" in names
    for code, computed in found.items():
        assert list(computed) == names, code
    for other in ("open_clip", "hf"):
        agreement = verify.agreement(found["openai"], found[other])
        assert agreement.diverges_at(TOLERANCE) is None, (other, agreement.describe())


def test_the_hidden_states_recorded_are_transformers_own(demo_state_dict):
    """A control on the recording: transformers' own `output_hidden_states` gives each block's input and output,
    and its `pooler_output` and embeddings, the same tensors the hooks recorded."""
    config = hf_config.config(DEMO)
    weights = {key: tensor.float() for key, tensor in demo_state_dict.items()}
    recorded = outputs(references.HF, weights, config, DEMO)
    from roundtrip import mapping

    model = references.hf_model(mapping.to_hf(weights), config, DEMO)
    with torch.no_grad():
        text = model.text_model(input_ids=verify.probe_tokens(DEMO), output_hidden_states=True)
        vision = model.vision_model(pixel_values=verify.probe_images(DEMO), output_hidden_states=True)
    for tower, own in (("text", text), ("vision", vision)):
        names = [f"{tower}.embeddings", *(f"{tower}.layers.{index}" for index in range(DEMO.text.layers))]
        assert len(own.hidden_states) == len(names)
        for name, hidden in zip(names, own.hidden_states, strict=True):
            assert torch.equal(recorded[name], hidden), name
        assert torch.equal(recorded[f"{tower}.pooled"], own.pooler_output)
    assert torch.equal(recorded["text.final_layer_norm"], text.last_hidden_state)


def _wrong_config(change):
    real = hf_config.config

    def config(architecture):
        written = real(architecture)
        change(written)
        return written
    return config


def _text_eps(config):
    config["text_config"]["layer_norm_eps"] = 0.5


def _vision_activation(config):
    config["vision_config"]["hidden_act"] = "gelu"


@pytest.mark.parametrize("change, where", [(_text_eps, "text.layers.0"), (_vision_activation, "vision.layers.0")],
                         ids=["LayerNorm eps", "activation"])
def test_a_wrong_eps_or_activation_in_the_written_config_is_refused_naming_the_layer_it_parts_at(
        tmp_path, demo_state_dict_file, monkeypatch, change, where):
    """A config.json that builds another model from the same weights: the check names the first output that
    differs (the config's eps is every LayerNorm's of its tower, so the first block's already)."""
    monkeypatch.setattr(hf_config, "config", _wrong_config(change))
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    assert_refused(result, f"{where} differs by", "(tolerance 0.001)", "nothing written")
    assert not (tmp_path / "hf").exists()


def test_a_final_layernorm_alone_that_differs_is_named(tmp_path, demo_state_dict_file, monkeypatch):
    """A model whose blocks agree and whose final LayerNorm does not (a diffusion model reading the last layer
    would get other numbers; the logits move too, later): refused at text.final_layer_norm."""
    real = references.HF.build

    def build(*arguments):
        model = real(*arguments)
        model.text_model.final_layer_norm.eps = 0.5
        return model
    patched = dataclasses.replace(references.HF, build=build)
    monkeypatch.setitem(formats.FORMATS, "hf", dataclasses.replace(formats.HF, reference=patched))
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    assert_refused(result, "text.final_layer_norm differs by", "nothing written")


def test_the_summary_names_where_the_largest_difference_is(tmp_path, demo_state_dict_file):
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "verification" in line)
    where = line.split(" at ", 1)[1].split(",", 1)[0]
    assert where in references.output_names(DEMO), line
