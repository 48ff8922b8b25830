"""One tower on its own (a diffusion model's text encoder, an IP-Adapter's image encoder): what its tensors say."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundtrip import hf_config, mapping, open_clip_config, openai_config, references, verify
from roundtrip.architecture import Architecture, ArchitectureError, Shapes
from roundtrip.examples import DEMO, random_openai_state_dict
from roundtrip.testing import architectures, random_state_dict, seeds

from conftest import assert_refused, run_cli


@pytest.fixture(scope="module")
def whole():
    return random_openai_state_dict(DEMO)


def text_alone(state_dict, projection=True, logit_scale=True):
    return {key: tensor for key, tensor in state_dict.items() if not key.startswith("visual.")
            and (projection or key != "text_projection") and (logit_scale or key != "logit_scale")}


def vision_alone(state_dict, projection=True):
    return {key: tensor for key, tensor in state_dict.items()
            if key.startswith("visual.") and (projection or key != "visual.proj")}


@pytest.mark.parametrize("projection", [True, False], ids=["with its projection", "without"])
@pytest.mark.parametrize("logit_scale", [True, False], ids=["with logit_scale", "without"])
def test_a_text_tower_alone_reads_as_its_numbers_and_no_vision(whole, projection, logit_scale):
    shapes = Shapes.of(text_alone(whole, projection, logit_scale))
    assert shapes.towers == ("text",) and shapes.projections == (("text",) if projection else ())
    assert (shapes.text_width, shapes.text_layers, shapes.context_length, shapes.vocab_size) == (
        DEMO.text.width, DEMO.text.layers, DEMO.context_length, DEMO.vocab_size)
    assert shapes.embed_dim == (DEMO.embed_dim if projection else None)
    assert None is shapes.vision_width is shapes.image_resolution is shapes.patch_size is shapes.vision_layers
    architecture = openai_config.architecture(shapes)
    assert architecture.towers == ("text",) and architecture.text.projected is projection
    assert architecture.describe().startswith("text 128 wide x 2 layers")


@pytest.mark.parametrize("projection", [True, False], ids=["with its projection", "without"])
def test_a_vision_tower_alone_reads_as_its_numbers_and_no_text(whole, projection):
    shapes = Shapes.of(vision_alone(whole, projection))
    assert shapes.towers == ("vision",) and shapes.projections == (("vision",) if projection else ())
    assert (shapes.vision_width, shapes.vision_layers, shapes.patch_size, shapes.image_resolution) == (
        DEMO.vision.width, DEMO.vision.layers, DEMO.patch_size, DEMO.image_resolution)
    assert None is shapes.text_width is shapes.context_length is shapes.vocab_size
    assert openai_config.architecture(shapes).vision.projected is projection


def test_a_whole_model_needs_both_projections_and_logit_scale(whole):
    for key in ("text_projection", "visual.proj", "logit_scale"):
        with pytest.raises(mapping.IncompleteCheckpoint, match="missing 1 tensor"):
            Shapes.of({name: tensor for name, tensor in whole.items() if name != key})


def test_a_tower_alone_still_needs_every_weight_of_its_blocks(whole):
    text = text_alone(whole)
    del text["transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(mapping.IncompleteCheckpoint, match="transformer.resblocks.1.ln_2.bias"):
        Shapes.of(text)


def test_the_towers_of_a_state_dict_are_those_it_holds_weights_of(whole):
    assert mapping.towers_of(whole, "openai") == ("text", "vision")
    assert mapping.towers_of(text_alone(whole), "openai") == ("text",)
    assert mapping.towers_of(vision_alone(whole), "openai") == ("vision",)
    assert mapping.towers_of({"logit_scale": None}, "openai") == ()
    assert mapping.towers_of(mapping.to_hf(text_alone(whole), ("text",)), "hf") == ("text",)


def test_a_text_tower_alone_maps_to_hf_and_back_with_its_logit_scale(whole):
    text = text_alone(whole)
    hf = mapping.to_hf(text, ("text",))
    assert "logit_scale" in hf and not any(key.startswith("vision_model.") for key in hf)
    assert mapping.to_openai(hf, ("text",)).keys() == text.keys()


@pytest.mark.parametrize("change, message", [
    (dict(vision=None), "image_resolution, patch_size belong with a vision tower"),
    (dict(text=None), "context_length, vocab_size belong with a text tower"),
    (dict(vision=None, image_resolution=None, patch_size=None, text=None, context_length=None, vocab_size=None,
          embed_dim=None), "needs a text tower, a vision tower or both"),
    (dict(embed_dim=None), "embed_dim is the width of a projection"),
    (dict(vision=None, image_resolution=None, patch_size=None,
          text=dataclasses.replace(DEMO.text, projected=False)), "embed_dim is the width of a projection"),
    (dict(text=None, context_length=None, vocab_size=None, text_pool_token=7), "text_pool_token belongs with"),
])
def test_an_architecture_that_no_model_is_cannot_be_made(change, message):
    with pytest.raises(ArchitectureError, match=message):
        Architecture(**{**dataclasses.asdict(DEMO) | {"vision": DEMO.vision, "text": DEMO.text}, **change})


BUILDING = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BUILDING
@given(architectures(), seeds, st.sampled_from(["text", "vision"]), st.booleans())
def test_a_tower_alone_computes_the_same_outputs_in_the_three_model_codes(architecture, seed, tower, projected):
    """OpenAI's and open_clip's code (which build both towers: a stand-in for the other, never run) and
    transformers' class of one tower (CLIPTextModel, CLIPVisionModelWithProjection, ...) give the same outputs
    of one tower, every layer, with and without its projection."""
    alone = architecture.alone(tower, projected)
    weights = mapping.of_towers(random_state_dict(architecture, "openai", seed=seed), "openai", alone.towers,
                                (tower,) if projected else ())
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    found = {name: verify.reference_outputs(verify.Side(reference, config), weights, "openai", alone, images, tokens)
             for name, reference, config in (
                 ("openai", references.OPENAI, None),
                 ("open_clip", references.OPEN_CLIP, open_clip_config.model_config(alone)),
                 ("hf", references.HF, hf_config.config(alone)))}
    names = references.output_names(alone)
    assert (f"{tower}.projected" in names) is projected and "logits" not in names
    for code, computed in found.items():
        assert list(computed) == names, code
    for other in ("open_clip", "hf"):
        agreement = verify.agreement(found["openai"], found[other])
        assert agreement.diverges_at(1e-3) is None, (other, agreement.describe(1e-3))


# ---- one tower from the command line -----------------------------------------------------------------------

ONE_TOWER_CLASSES = {"CLIPTextModel": ("text", False), "CLIPTextModelWithProjection": ("text", True),
                     "CLIPVisionModel": ("vision", False), "CLIPVisionModelWithProjection": ("vision", True)}


def save_one_tower(folder, name: str, prefixed: bool = False, seed: int = 0):
    """A folder as transformers' `save_pretrained` writes one of its one-tower classes (flat keys for the classes
    without a projection in transformers 5.25), or with every key under its tower's prefix, as the hub's are."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    tower, projected = ONE_TOWER_CLASSES[name]
    architecture = DEMO.alone(tower, projected)
    model_class = getattr(transformers, name)
    torch.manual_seed(seed)
    model_class(model_class.config_class.from_dict(hf_config.config(architecture))).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    if prefixed and not projected:
        save_file({f"{tower}_model.{key}": tensor for key, tensor in weights.items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
    return architecture, load_file(folder / "model.safetensors")


@pytest.mark.parametrize("target", ["to-openai", "to-open-clip"])
@pytest.mark.parametrize("name, prefixed", [(name, False) for name in ONE_TOWER_CLASSES] + [
    ("CLIPTextModel", True), ("CLIPVisionModel", True)])
def test_each_hf_class_of_one_tower_converts_checked_layer_by_layer_into_that_towers_weights(
        tmp_path, name, prefixed, target):
    import torch
    from safetensors.torch import load_file

    architecture, weights = save_one_tower(tmp_path / "hf", name, prefixed)
    dest = tmp_path / ("out.pt" if target == "to-openai" else "out")
    result = run_cli(target, tmp_path / "hf", dest)
    assert result.exit_code == 0, result.output
    tower = architecture.towers[0]
    assert f"it holds the {tower} tower alone" in result.stdout
    assert "verification  max |difference| = " in result.stdout and f" at {tower}." in result.stdout
    written = torch.load(dest, weights_only=True) if target == "to-openai" else load_file(dest /
                                                                                           "open_clip_model.safetensors")
    prefix = f"{tower}_model."
    canonical = {key if key.startswith(prefix) or "projection" in key else prefix + key: tensor
                 for key, tensor in weights.items()}
    expected = mapping.to_openai(canonical, (tower,))
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], expected[key]) for key in expected)


def test_a_tower_alone_is_refused_by_to_hf_naming_the_tower_it_lacks(tmp_path):
    save_one_tower(tmp_path / "hf", "CLIPTextModelWithProjection")
    result = run_cli("to-openai", tmp_path / "hf", tmp_path / "text.pt", "--no-verify")
    assert result.exit_code == 0, result.output
    assert_refused(run_cli("to-hf", tmp_path / "text.pt", tmp_path / "back"), "holds the text tower alone",
                   "it has no vision tower")


def test_a_config_that_names_a_class_with_a_projection_the_weights_lack_is_refused(tmp_path):
    import json

    save_one_tower(tmp_path / "hf", "CLIPTextModel")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["architectures"] = ["CLIPTextModelWithProjection"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "out.pt", "--no-verify"),
                   "config.json does not fit the tensors: it names CLIPTextModelWithProjection, the weights are a "
                   "CLIPTextModel's")
