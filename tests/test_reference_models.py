"""The logit check's reference models are what each format's own public code builds from the format's own
config, down to its buffers. The check builds them faster (on the meta device, taking the weights as they are,
making again the buffers made in __init__): on random configs, that must give the logits the public factory
gives, so that the check cannot be blind to a setting the format's code honours (a text tower without the
causal mask, say, which a check that always masks would not see)."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundtrip import formats, hf_config, mapping, open_clip_config, references, verify
from roundtrip.architecture import Shapes
from roundtrip.examples import DEMO, random_open_clip_model, random_openai_state_dict, save_open_clip_folder
from roundtrip.testing import architectures, open_clip_model_configs, random_state_dict, seeds

from conftest import assert_refused, import_clip, run_cli

# Both run the same operations in float32 on the same values; kernels may round differently (transformers picks
# its attention implementation when loading): float32 rounding, far below the check's 1e-3.
SAME = 1e-5
BUILDING = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def probes(architecture):
    return verify.probe_images(architecture), verify.probe_tokens(architecture)


@torch.no_grad()
def assert_same_logits(public, fast) -> None:
    assert torch.allclose(public, fast, rtol=SAME, atol=SAME), (public - fast).abs().max().item()


@BUILDING
@given(architectures(), seeds)
def test_openais_reference_is_what_clip_model_build_model_builds(architecture, seed):
    state_dict = random_openai_state_dict(architecture, seed)  # OpenAI's fp16 mix: build_model's halving is exact
    public = import_clip().model.build_model(copy.deepcopy(state_dict)).float().eval()
    fast = references.openai_model(references._float32(state_dict), None, architecture)
    images, tokens = probes(architecture)
    with torch.no_grad():
        assert_same_logits(public(images, tokens)[0], fast(images, tokens)[0])


@BUILDING
@given(architectures(), seeds)
def test_transformers_reference_is_what_clipmodel_builds_from_its_config(architecture, seed):
    from transformers import CLIPConfig, CLIPModel

    config = hf_config.config(architecture)
    weights = references._float32(mapping.to_hf(random_openai_state_dict(architecture, seed)))
    public = CLIPModel(CLIPConfig.from_dict(config)).eval()
    public.load_state_dict(weights, strict=False)  # position_ids: a buffer CLIPModel makes itself
    fast = references.hf_model(weights, config, architecture)
    images, tokens = probes(architecture)
    with torch.no_grad():
        assert_same_logits(public(input_ids=tokens, pixel_values=images).logits_per_image,
                           fast(input_ids=tokens, pixel_values=images).logits_per_image)


@BUILDING
@given(open_clip_model_configs(), seeds, st.booleans())
def test_open_clips_reference_is_what_open_clips_factory_builds_from_its_config(model_cfg, seed, causal):
    import open_clip

    architecture = open_clip_config.claimed_architecture(model_cfg)  # the same shapes either way
    if not causal:
        model_cfg = {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "no_causal_mask": True}}
    weights = random_open_clip_model(model_cfg, seed).state_dict()
    with tempfile.TemporaryDirectory() as folder:
        save_open_clip_folder(weights, model_cfg, Path(folder) / "model")
        public, _, _ = open_clip.create_model_and_transforms(f"local-dir:{Path(folder) / 'model'}")
    fast = references.open_clip_model(weights, model_cfg, architecture)
    images, tokens = probes(architecture)
    with torch.no_grad():
        assert_same_logits(public.eval().get_logits(images, tokens)[0], fast.get_logits(images, tokens)[0])


def test_a_buffer_the_fast_path_does_not_make_again_is_refused(monkeypatch):
    """A control for the tests above: a reference left holding a tensor on the meta device is an error, not a
    model that computes something else."""
    from open_clip.transformer import TextTransformer

    model_cfg = open_clip_config.registry_config("ViT-B-32")
    model_cfg["vision_cfg"]["layers"] = model_cfg["text_cfg"]["layers"] = 1
    weights = random_open_clip_model(model_cfg).state_dict()
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(weights))
    monkeypatch.setattr(TextTransformer, "build_causal_mask", lambda self: torch.empty(0, device="meta"))
    with pytest.raises(RuntimeError, match="attn_mask was left on the meta device"):
        references.open_clip_model(weights, model_cfg, architecture)


def _b32_open_clip():
    model_cfg = open_clip_config.registry_config("ViT-B-32")
    model_cfg["vision_cfg"]["layers"] = model_cfg["text_cfg"]["layers"] = 1
    weights = random_open_clip_model(model_cfg).state_dict()
    return model_cfg, weights, open_clip_config.architecture(model_cfg, Shapes.of(weights))


def test_open_clips_reference_takes_custom_text_out_of_the_config_as_its_factory_does():
    """Kills `custom_text` passed on to open_clip's CLIP (which has no such argument): a config that says
    `"custom_text": false`, as open_clip's factory accepts, could not be checked."""
    model_cfg, weights, architecture = _b32_open_clip()
    said = {**model_cfg, "custom_text": False}
    references.open_clip_model(weights, said, architecture)
    assert said["custom_text"] is False  # the caller's config is left as it was


def _with_a_weight_no_model_has(weights: dict) -> dict:
    return {**weights, "visual.extra.weight": torch.zeros(1)}


def test_every_reference_refuses_a_weight_it_has_no_place_for():
    """Kills a reference that loads leniently (`strict=False`): a weight the model has no place for is an error,
    not one left out of the check. (A missing one is refused as a tensor left on the meta device.)"""
    model_cfg, weights, architecture = _b32_open_clip()
    openai_weights = references._float32(weights)  # open_clip's keys are OpenAI's
    hf_weights = references._float32(mapping.to_hf(weights))
    builds = [lambda: references.open_clip_model(_with_a_weight_no_model_has(weights), model_cfg, architecture),
              lambda: references.openai_model(_with_a_weight_no_model_has(openai_weights), None, architecture),
              lambda: references.hf_model({**hf_weights, "vision_model.extra.weight": torch.zeros(1)},
                                          hf_config.config(architecture), architecture)]
    for build in builds:
        with pytest.raises((RuntimeError, ValueError), match="extra"):
            build()


# ---- the check, layer by layer: what a consumer of either tower reads, not the logits alone -------------------

TOLERANCE = 1e-3
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

    def config(architecture, classes=None):
        written = real(architecture, classes)
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


def test_where_two_models_part_is_named_with_the_largest_difference_where_that_is_elsewhere():
    parted = verify.Agreement({"text.layers.0": 0.5, "text.layers.1": 2.0, "logits": 0.0})
    assert parted.describe(1e-3) == ("text.layers.0 differs by 0.5 (tolerance 0.001); the largest difference is 2, "
                                     "at text.layers.1")
    at_the_end = verify.Agreement({"text.layers.0": 0.0, "logits": 0.25})
    assert at_the_end.describe(1e-3) == "logits differ by 0.25 (tolerance 0.001)"
