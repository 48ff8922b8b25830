"""What a source is comes from what is there and from the user, never from a guess: a training run's checkpoint is
not read as OpenAI's unless the user says so, a config beside it is used (and named), and a refusal says what the
source really is (it exists, it is a checkpoint, it is complete) before it says anything else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from roundtrip import hf_config, mapping, open_clip_config, openai_config, references, verify
from roundtrip.architecture import Architecture, ArchitectureError, Shapes, _grid, head_problems
from roundtrip.examples import (
    DEMO,
    RELEASED_RESNETS,
    random_open_clip_model,
    random_openai_state_dict,
    save_open_clip_folder,
    training_checkpoint,
)
from roundtrip.testing import architectures, random_state_dict, seeds

from conftest import (
    ONE_TOWER_CLASSES,
    architecture_of,
    assert_refused,
    hf_clip_config,
    hf_folder_logits,
    open_clip_logits,
    random_hf_model,
    read_json,
    run_cli,
    save_one_tower,
    shallow,
)

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def gelu_model():
    """An open_clip model trained with GELU (as most open_clip runs are): ViT-B-32's widths at one layer."""
    model_cfg = shallow("ViT-B-32", layers=1)
    return model_cfg, random_open_clip_model(model_cfg, seed=7)


def _refused_as_a_training_run(result, *fragments: str) -> None:
    assert_refused(result, "is not a checkpoint as OpenAI released them", "--open-clip-model NAME",
                   "--open-clip-config FILE", "--openai-architecture", *fragments)


def test_an_open_clip_training_checkpoint_is_refused_without_saying_what_it_is(tmp_path, gelu_model):
    model_cfg, model = gelu_model
    torch.save(training_checkpoint(model.state_dict()), tmp_path / "epoch_3.pt")
    _refused_as_a_training_run(run_cli("to-hf", tmp_path / "epoch_3.pt", tmp_path / "out"), "epoch_3.pt",
                               '{"state_dict": ...} with epoch, name, optimizer', 'keys prefixed "module."')
    _refused_as_a_training_run(run_cli("to-hf", tmp_path / "epoch_3.pt", tmp_path / "out", "--no-verify"))
    _refused_as_a_training_run(run_cli("to-open-clip", tmp_path / "epoch_3.pt", tmp_path / "out"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch_3.pt"]


@pytest.mark.parametrize("packing", ["module. prefixes alone", "a bare {state_dict} wrapper"])
def test_each_sign_of_a_training_run_is_enough_to_ask(tmp_path, gelu_model, packing):
    _, model = gelu_model
    weights = model.state_dict()
    content = ({f"module.{key}": tensor for key, tensor in weights.items()} if packing.startswith("module")
               else {"state_dict": weights})
    torch.save(content, tmp_path / "checkpoint.pt")
    _refused_as_a_training_run(run_cli("to-hf", tmp_path / "checkpoint.pt", tmp_path / "out", "--no-verify"))


def test_an_open_clip_weights_file_taken_out_of_its_folder_is_refused(tmp_path, gelu_model):
    model_cfg, model = gelu_model
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "folder")
    (tmp_path / "loose").mkdir()
    (tmp_path / "folder" / "open_clip_model.safetensors").rename(tmp_path / "loose" / "open_clip_model.safetensors")
    _refused_as_a_training_run(run_cli("to-hf", tmp_path / "loose" / "open_clip_model.safetensors", tmp_path / "out"),
                               "named open_clip_model.safetensors")


def test_the_config_beside_a_weights_file_is_used_and_named(tmp_path, gelu_model):
    model_cfg, model = gelu_model
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "oc")
    result = run_cli("to-hf", tmp_path / "oc" / "open_clip_model.safetensors", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert f"read as an open_clip model by the open_clip_config.json beside it ({tmp_path / 'oc'}" in result.stdout
    config = read_json(tmp_path / "hf" / "config.json")
    assert config["vision_config"]["hidden_act"] == config["text_config"]["hidden_act"] == "gelu"
    architecture = architecture_of(model_cfg, model.state_dict())
    assert (hf_folder_logits(tmp_path / "hf", architecture) - open_clip_logits(model, architecture)).abs().max() \
        <= TOLERANCE


def test_a_training_checkpoint_named_by_an_option_converts_exactly(tmp_path, gelu_model):
    model_cfg, model = gelu_model
    torch.save(training_checkpoint(model.state_dict()), tmp_path / "epoch_3.pt")
    (tmp_path / "model.json").write_text(json.dumps(model_cfg))
    result = run_cli("to-hf", tmp_path / "epoch_3.pt", tmp_path / "hf", "--open-clip-config", tmp_path / "model.json")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "hf" / "config.json")["vision_config"]["hidden_act"] == "gelu"
    written = load_file(tmp_path / "hf" / "model.safetensors")
    assert written["text_model.embeddings.token_embedding.weight"].equal(model.state_dict()["token_embedding.weight"])


def test_openai_architecture_reads_a_training_checkpoint_as_openais(tmp_path):
    from roundtrip.examples import random_openai_state_dict

    torch.save(training_checkpoint(random_openai_state_dict(DEMO)), tmp_path / "finetuned.pt")
    result = run_cli("to-hf", tmp_path / "finetuned.pt", tmp_path / "hf", "--openai-architecture")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "hf" / "config.json")["vision_config"]["hidden_act"] == "quick_gelu"
    assert_refused(run_cli("to-hf", tmp_path / "finetuned.pt", tmp_path / "other", "--openai-architecture",
                           "--open-clip-model", "ViT-B-32"), "both an open_clip model and OpenAI's architecture")


def test_the_summary_and_the_card_show_each_towers_activation_and_heads(tmp_path, gelu_model):
    model_cfg, model = gelu_model
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "oc")
    result = run_cli("to-hf", tmp_path / "oc", tmp_path / "hf", "--no-verify")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("architecture"))
    assert "ViT 768 wide x 1 layers, 12 heads" in line and "224px, gelu" in line
    assert "text 512 wide x 1 layers, 8 heads" in line and "vocab 49408, gelu" in line
    assert line.split("architecture", 1)[1].strip() in (tmp_path / "hf" / "README.md").read_text()


def test_compare_refuses_a_training_checkpoint_naming_its_sides_options_and_says_what_it_assumed(tmp_path,
                                                                                                gelu_model):
    model_cfg, model = gelu_model
    torch.save(training_checkpoint(model.state_dict()), tmp_path / "epoch_3.pt")
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "oc")
    result = run_cli("compare", tmp_path / "oc", tmp_path / "epoch_3.pt", "--no-logits")
    assert_refused(result, "epoch_3.pt", "--open-clip-model-b NAME", "--open-clip-config-b FILE",
                   "--openai-architecture-b")
    assert "different" not in result.stdout
    # on side A, side A's options
    assert_refused(run_cli("compare", tmp_path / "epoch_3.pt", tmp_path / "oc", "--no-logits"), "epoch_3.pt",
                   "--open-clip-model-a NAME", "--open-clip-config-a FILE", "--openai-architecture-a")
    (tmp_path / "model.json").write_text(json.dumps(model_cfg))
    same = run_cli("compare", tmp_path / "oc", tmp_path / "epoch_3.pt", "--open-clip-config-b", tmp_path / "model.json")
    assert same.exit_code == 0, same.output
    torch.save({key: tensor for key, tensor in model.state_dict().items()}, tmp_path / "bare.pt")
    assumed = run_cli("compare", tmp_path / "bare.pt", tmp_path / "oc", "--json")
    report = json.loads(assumed.stdout)
    assert any("read as OpenAI's CLIP (QuickGELU, heads of 64)" in note for note in report["a"]["notes"])
    assert assumed.exit_code == 1 and "activation" in " ".join(report["causes"])  # what was assumed, caught


def test_text_pooled_at_token_2_is_refused_by_openais_format_by_name_before_anything_is_written(tmp_path):
    model_cfg = shallow("ViT-B-32-quickgelu", layers=1)
    model_cfg["text_cfg"].update(pool_type="eos", eos_id=2)  # as the MetaCLIP 2 worldwide models
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, tmp_path / "worldwide")
    for options in ((), ("--no-verify",)):
        assert_refused(run_cli("to-openai", tmp_path / "worldwide", tmp_path / "out.pt", *options),
                       "text pooling is at the first token 2, OpenAI's code pools at the largest token id")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["worldwide"]


# ---- "nothing to change" is said only of a complete, readable model of the target's format --------------------


def _hf_folder(tmp_path: Path) -> Path:
    random_hf_model(hf_clip_config(), fp16_representable=False).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _resnet_hf_folder(tmp_path: Path) -> Path:
    (tmp_path / "resnet").mkdir()
    (tmp_path / "resnet" / "config.json").write_text('{"model_type": "resnet"}')
    save_file({"embedder.weight": torch.zeros(2)}, tmp_path / "resnet" / "model.safetensors")
    return tmp_path / "resnet"


def _torchvision_resnet(tmp_path: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, tmp_path / "resnet18.pth")
    return tmp_path / "resnet18.pth"


def _stable_diffusion_file(tmp_path: Path) -> Path:
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)},
              tmp_path / "sd15.safetensors")
    return tmp_path / "sd15.safetensors"


def _write(name: str, content: bytes):
    def build(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(content)
        return tmp_path / name
    return build


NOT_A_MODEL_OF_THE_TARGET = {
    # case: (command, how the source is made, what the one line says)
    "a typo in an HF folder's name": ("to-openai", lambda tmp_path: tmp_path / "my-hf-finetun", "does not exist"),
    "a missing open_clip file": ("to-open-clip", lambda tmp_path: tmp_path / "nosuchfile.pt", "does not exist"),
    "an empty file": ("to-openai", _write("empty.pt", b""), "is empty"),
    "a text file named .pt": ("to-openai", _write("notes.pt", b"hello, world\n" * 10),
                              "neither a zip archive (torch.save, TorchScript), a pickle"),
    "a truncated zip": ("to-openai", _write("cut.pt", b"PK\x03\x04" + bytes(100)),
                        "a zip archive whose end is missing"),
    "a torchvision ResNet": ("to-openai", _torchvision_resnet, "not a CLIP checkpoint"),
    "an HF model.safetensors": ("to-openai", lambda tmp_path: _hf_folder(tmp_path) / "model.safetensors",
                                "its keys are those of a Hugging Face CLIPModel"),
    # read as its text encoder, which holds one tensor of the 21 it needs
    "a Stable Diffusion file with half an encoder": ("to-openai", _stable_diffusion_file,
                                                     "missing 19 tensor(s) that a CLIP of this architecture needs"),
    "an HF folder of another model": ("to-hf", _resnet_hf_folder, "is not a CLIP config (model_type is 'resnet')"),
}


@pytest.mark.parametrize("case", NOT_A_MODEL_OF_THE_TARGET)
def test_a_source_that_is_no_model_of_the_target_is_not_called_one(tmp_path, case):
    command, build, says = NOT_A_MODEL_OF_THE_TARGET[case]
    source = build(tmp_path)
    result = run_cli(command, source, tmp_path / "out.pt" if command == "to-openai" else tmp_path / "out")
    assert_refused(result, says)
    assert "Nothing to change" not in result.output
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out").exists()


def test_a_complete_model_of_the_target_is_called_one(tmp_path):
    result = run_cli("to-hf", _hf_folder(tmp_path), tmp_path / "out")
    assert result.exit_code == 0 and result.stdout.startswith("Nothing to change:"), result.output


# ---- options that cannot apply to a source are refused, not ignored ------------------------------------------


def test_open_clip_options_are_refused_for_an_hf_folder_and_a_torchscript_archive(tmp_path, demo_archive):
    assert_refused(run_cli("to-open-clip", _hf_folder(tmp_path), tmp_path / "out", "--open-clip-model", "ViT-B-32"),
                   "is a model folder with its own config.json", "are for checkpoint files")
    assert_refused(run_cli("to-hf", demo_archive, tmp_path / "out", "--open-clip-model", "ViT-B-32"),
                   "is an OpenAI TorchScript archive", "without --open-clip-model")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


# ---- to-openai writes what DEST's name says ------------------------------------------------------------------


def test_to_openai_writes_safetensors_where_dest_says_so_and_it_converts_back(tmp_path, demo_state_dict_file,
                                                                             demo_state_dict):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    result = run_cli("to-openai", tmp_path / "hf", tmp_path / "model.safetensors")
    assert result.exit_code == 0, result.output
    written = load_file(tmp_path / "model.safetensors")  # the safetensors library reads it
    assert {key: tensor.dtype for key, tensor in written.items()} == \
        {key: tensor.dtype for key, tensor in demo_state_dict.items()}
    assert all(written[key].equal(tensor) for key, tensor in demo_state_dict.items())
    assert run_cli("to-hf", tmp_path / "model.safetensors", tmp_path / "hf-again", "--no-verify").exit_code == 0
    assert load_file(tmp_path / "hf-again" / "model.safetensors").keys() == \
        load_file(tmp_path / "hf" / "model.safetensors").keys()


def test_to_openai_pt_still_loads_with_clip_load(tmp_path, demo_state_dict_file):
    from conftest import import_clip

    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    assert run_cli("to-openai", tmp_path / "hf", tmp_path / "model.pt", "--no-verify").exit_code == 0
    model, _ = import_clip().load(str(tmp_path / "model.pt"), device="cpu", jit=False)
    assert model.visual.input_resolution == DEMO.image_resolution


# ---- one tower on its own (a diffusion model's text encoder, an IP-Adapter's image encoder) -----------------

BUILDING = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    assert None is shapes.vision_kind is shapes.vision_width is shapes.image_resolution is shapes.patch_size \
        is shapes.vision_layers
    architecture = openai_config.architecture(shapes)
    assert architecture.towers == ("text",) and architecture.text.projected is projection
    assert architecture.describe().startswith("text 128 wide x 2 layers")


def test_the_description_names_a_resnets_stages_and_each_tower_left_without_its_projection():
    # the line `to-hf` prints and the model card shows; written out by hand from RN50's and DEMO's numbers
    assert RELEASED_RESNETS["RN50"].describe() == (
        "ResNet 3-4-6-3 blocks, width 64, attention pool of 32 heads, 224px; "
        "text 512 wide x 12 layers, 8 heads, context 77, vocab 49408, quick_gelu; embed 1024")
    assert DEMO.describe() == ("ViT 128 wide x 2 layers, 2 heads, patch 16, 64px, quick_gelu; "
                               "text 128 wide x 2 layers, 2 heads, context 77, vocab 49408, quick_gelu; embed 128")
    assert DEMO.alone("vision", projected=False).describe() == (
        "ViT 128 wide x 2 layers, 2 heads, patch 16, 64px, quick_gelu, no projection")
    assert DEMO.alone("text", projected=False).describe() == (
        "text 128 wide x 2 layers, 2 heads, context 77, vocab 49408, quick_gelu, no projection")


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
    (dict(vision=None), "image_resolution, patch_size belong with a vision tower, and only with one"),
    (dict(text=None), "context_length, vocab_size belong with a text tower, and only with one"),
    (dict(vision=None, image_resolution=None, patch_size=None, text=None, context_length=None, vocab_size=None,
          embed_dim=None), "an architecture needs a text tower, a vision tower or both"),
    (dict(embed_dim=None), "embed_dim is the width of a projection, and only with one"),
    (dict(vision=None, image_resolution=None, patch_size=None,
          text=dataclasses.replace(DEMO.text, projected=False)),
     "embed_dim is the width of a projection, and only with one"),
    (dict(text=None, context_length=None, vocab_size=None, text_pool_token=7),
     "text_pool_token belongs with a text tower"),
])
def test_an_architecture_that_no_model_is_cannot_be_made(change, message):
    with pytest.raises(ArchitectureError) as refusal:
        Architecture(**{**dataclasses.asdict(DEMO) | {"vision": DEMO.vision, "text": DEMO.text}, **change})
    assert str(refusal.value) == message  # the whole line: it is what a user reads


def test_heads_that_do_not_split_a_width_are_named_with_the_width_they_attend_over():
    rn50 = RELEASED_RESNETS["RN50"]  # its attention pool attends over the last stage: 32 x 64 = 2048 wide

    def with_heads(vision: int, text: int) -> Architecture:
        return dataclasses.replace(rn50, vision=dataclasses.replace(rn50.vision, heads=vision),
                                   text=dataclasses.replace(rn50.text, heads=text))

    assert head_problems(rn50) == head_problems(with_heads(128, 512)) == head_problems(with_heads(1, 1)) == []
    assert head_problems(with_heads(3, 0)) == ["text width 512 does not split into 0 heads",
                                               "vision attention pool width 2048 does not split into 3 heads"]


@pytest.mark.parametrize("positions, side", [(2, 1), (5, 2), (50, 7), (577, 24)])
def test_vision_positions_are_a_square_grid_of_patches_and_a_class_token(positions, side):
    assert _grid(positions) == side


@pytest.mark.parametrize("positions", [-3, 0, 1, 3, 49, 51])
def test_vision_positions_of_no_square_grid_and_class_token_are_refused(positions):
    with pytest.raises(ArchitectureError) as refusal:
        _grid(positions)
    assert str(refusal.value) == f"vision position embedding has {positions} rows, not a square grid plus a class token"



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
    assert "verification  max |difference| = " in result.stdout and "over every layer's output" in result.stdout
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


def test_the_open_clip_config_of_a_text_tower_alone_has_no_image_settings(tmp_path):
    """A text tower written for open_clip says nothing of images: no vision_cfg, no preprocess_cfg."""
    save_one_tower(tmp_path / "hf", "CLIPTextModelWithProjection")
    assert run_cli("to-open-clip", tmp_path / "hf", tmp_path / "oc", "--no-verify").exit_code == 0
    config = read_json(tmp_path / "oc" / "open_clip_config.json")
    assert set(config) == {"model_cfg"} and "vision_cfg" not in config["model_cfg"], config


def test_to_hf_tower_vision_of_open_clips_vit_h_14_is_its_visual_tower_layer_by_layer(tmp_path):
    """An open_clip ViT-H-14 (two layers per tower) as an IP-Adapter image encoder: the folder loads into
    CLIPVisionModelWithProjection with no key missing or unexpected, and its image embeddings and every hidden
    state are open_clip's own visual tower's, run block by block."""
    import transformers

    model_cfg = shallow("ViT-H-14")
    model = random_open_clip_model(model_cfg, seed=3)
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "oc")
    result = run_cli("to-hf", tmp_path / "oc", tmp_path / "image_encoder", "--tower", "vision")
    assert result.exit_code == 0, result.output
    assert "Hugging Face CLIPVisionModelWithProjection folder" in result.stdout
    loaded, info = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "image_encoder",
                                                                               output_loading_info=True)
    assert not any(info.values()), info
    images = verify.probe_images(architecture_of(model_cfg, model.state_dict()))
    with torch.no_grad():
        ported = loaded.eval()(pixel_values=images, output_hidden_states=True)
        visual = model.eval().visual
        hidden = [visual._embeds(images)]  # open_clip's own blocks, one after the other
        for block in visual.transformer.resblocks:
            hidden.append(block(hidden[-1]))
        embeds = model.encode_image(images)
    assert len(ported.hidden_states) == len(hidden)
    for own, theirs in zip(hidden, ported.hidden_states, strict=True):
        assert (own - theirs).abs().max() <= TOLERANCE
    assert (embeds - ported.image_embeds).abs().max() <= TOLERANCE


ONE_TOWER_FOLDERS = {
    **{name: (name, False, None) for name in ONE_TOWER_CLASSES},
    "CLIPTextModel-prefixed": ("CLIPTextModel", True, None),
    "CLIPVisionModel-prefixed": ("CLIPVisionModel", True, None),
    "CLIPTextModel-position_ids-int64": ("CLIPTextModel", True, "int64"),
    "CLIPTextModel-flat-position_ids-float32": ("CLIPTextModel", False, "float32"),
    "CLIPVisionModelWithProjection-position_ids-int64": ("CLIPVisionModelWithProjection", False, "int64"),
}


@pytest.mark.parametrize("through", ["openai-safetensors", "open_clip"])
@pytest.mark.parametrize("folder", ONE_TOWER_FOLDERS)
def test_a_tower_alone_goes_to_openais_layout_and_back_to_hf_bit_exact(tmp_path, folder, through):
    """Every tensor comes back, key style (flat or under the tower's prefix) and position_ids included, and
    config.json as it was."""
    from safetensors.torch import load_file as load

    name, prefixed, position_ids = ONE_TOWER_FOLDERS[folder]
    _, weights = save_one_tower(tmp_path / "hf", name, prefixed, position_ids=position_ids)
    tower = ONE_TOWER_CLASSES[name][0]
    # safetensors, which carries clipconv's record of the folder it came from (its config.json)
    middle = tmp_path / ("tower.safetensors" if through == "openai-safetensors" else "oc")
    there = run_cli("to-openai" if through == "openai-safetensors" else "to-open-clip", tmp_path / "hf", middle)
    assert there.exit_code == 0, there.output
    if position_ids:
        assert "position_ids (" in there.stdout and "is set aside" in there.stdout
    back = run_cli("to-hf", middle, tmp_path / "back", "--tower", tower)
    assert back.exit_code == 0, back.output
    again = load(tmp_path / "back" / "model.safetensors")
    assert again.keys() == weights.keys()
    assert all(torch.equal(again[key], weights[key]) and again[key].dtype == weights[key].dtype for key in weights)
    assert read_json(tmp_path / "back" / "config.json") == read_json(tmp_path / "hf" / "config.json")


def test_open_clips_text_tower_alone_with_its_models_config_goes_to_hf_and_back_bit_exact(tmp_path):
    """Stable Diffusion 2's text encoder: an open_clip ViT-H-14's text tower with its logit_scale, in open_clip's
    layout, read with the whole model's config. The HF folder loads into CLIPTextModelWithProjection with no key
    missing or unexpected, and the way back gives every tensor, logit_scale included, bit for bit."""
    import transformers

    model_cfg = shallow("ViT-H-14")
    text = text_alone(random_open_clip_model(model_cfg, seed=4).state_dict())
    save_file({key: tensor.contiguous() for key, tensor in text.items()}, tmp_path / "text.safetensors")
    (tmp_path / "ViT-H-14.json").write_text(json.dumps(model_cfg))
    result = run_cli("to-hf", "--tower", "text", tmp_path / "text.safetensors", tmp_path / "text_encoder",
                     "--open-clip-config", tmp_path / "ViT-H-14.json")
    assert result.exit_code == 0, result.output
    assert "logit_scale left out" in result.stdout
    _, info = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path / "text_encoder",
                                                                       output_loading_info=True)
    assert not any(info.values()), info
    back = run_cli("to-open-clip", tmp_path / "text_encoder", tmp_path / "back")
    assert back.exit_code == 0, back.output
    again = load_file(tmp_path / "back" / "open_clip_model.safetensors")
    assert again.keys() == text.keys()
    assert all(torch.equal(again[key], text[key]) and again[key].dtype == text[key].dtype for key in text)


def test_position_ids_out_of_order_are_refused_naming_the_folder_and_the_key(tmp_path):
    from safetensors.torch import load_file as load

    save_one_tower(tmp_path / "hf", "CLIPTextModel", position_ids="int64")
    weights = load(tmp_path / "hf" / "model.safetensors")
    weights["embeddings.position_ids"] = weights["embeddings.position_ids"].flip(-1).contiguous()
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "out.pt", "--no-verify"), str(tmp_path / "hf"),
                   "text_model.embeddings.position_ids is not the positions 0 to n-1 in order (int64, shape [1, 77])")


def test_a_tower_the_source_lacks_is_refused_by_name(tmp_path):
    save_one_tower(tmp_path / "hf", "CLIPTextModelWithProjection")
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "out.pt", "--tower", "vision"),
                   "has no vision tower (it holds the text tower alone)")
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "out")
    assert result.exit_code == 0 and result.stdout.startswith("Nothing to change:"), result.output


def test_a_tower_taken_alone_keeps_its_own_settings_and_cannot_be_one_it_lacks():
    """Architecture.alone: the text tower keeps where it pools, the vision tower drops it; a tower the model
    lacks is refused by name (the pipeline refuses first, naming the source; Python callers reach this)."""
    pooled_at_7 = dataclasses.replace(DEMO, text_pool_token=7)
    assert pooled_at_7.alone("text").text_pool_token == 7
    assert pooled_at_7.alone("vision").text_pool_token is None
    with pytest.raises(ArchitectureError, match="this model has no vision tower"):
        DEMO.alone("text").alone("vision")


@pytest.mark.parametrize("architecture, missing", [(DEMO, "ln_final.bias"),
                                                   (DEMO.alone("text", projected=False), "ln_final.bias")],
                         ids=["both towers", "a text tower without its projection"])
def test_a_reference_refuses_weights_that_lack_one_of_its_own(architecture, missing):
    """The references load leniently only what a model of one tower may lack (the other tower, an absent
    projection, logit_scale): a weight of its own tower missing is refused, not made empty."""
    weights = mapping.of_towers(random_openai_state_dict(DEMO, openai_dtypes=False), "openai", architecture.towers,
                                tuple(name for name in architecture.towers if getattr(architecture, name).projected))
    del weights[missing]
    with pytest.raises(ValueError, match=f"missing: \\['{missing}'\\]"):
        references.openai_model(weights, None, architecture)


def _with_aside(path, change) -> None:
    """Rewrite the record of the HF folder that the safetensors file at `path` came from: `change(aside)`."""
    from safetensors import safe_open
    from safetensors.torch import load_file as load

    with safe_open(path, "pt") as opened:
        metadata = opened.metadata()
    record = json.loads(metadata["clipconv"])
    change(record["records"]["hf"]["aside"])
    weights = load(path)
    save_file(weights, path, metadata={**metadata, "clipconv": json.dumps(record)})


def _reversed(spec: dict) -> dict:
    values = bytes.fromhex(spec["hex"])
    return {**spec, "hex": b"".join(values[i:i + 8] for i in range(len(values) - 8, -1, -8)).hex()}


POSITION_IDS = "text_model.embeddings.position_ids"
BAD_ASIDE = {
    "bytes that do not fill the shape": (lambda aside: aside[POSITION_IDS].update(hex=aside[POSITION_IDS]["hex"][:-2]),
                                         "malformed clipconv metadata"),
    "a dtype no tensor has": (lambda aside: aside[POSITION_IDS].update(dtype="object"), "malformed clipconv metadata"),
    "whitespace in the bytes, which spell fewer of them": (
        lambda aside: aside[POSITION_IDS].update(hex=aside[POSITION_IDS]["hex"][:-2] + "\n\n"),
        "malformed clipconv metadata"),
    "a shape larger than a bookkeeping tensor": (
        lambda aside: aside[POSITION_IDS].update(shape=[1, 1 << 20], hex="00" * (8 << 20)), "malformed clipconv"),
    "position_ids out of order": (lambda aside: aside.update({POSITION_IDS: _reversed(aside[POSITION_IDS])}),
                                  f"{POSITION_IDS} is not the positions 0 to n-1 in order (int64, shape [1, 77])"),
}


@pytest.mark.parametrize("case", BAD_ASIDE)
def test_a_tensor_set_aside_that_a_record_garbles_is_refused_and_nothing_is_written(tmp_path, case):
    change, message = BAD_ASIDE[case]
    save_one_tower(tmp_path / "hf", "CLIPTextModel", prefixed=True, position_ids="int64")
    assert run_cli("to-openai", tmp_path / "hf", tmp_path / "tower.safetensors", "--no-verify").exit_code == 0
    _with_aside(tmp_path / "tower.safetensors", change)
    assert_refused(run_cli("to-hf", tmp_path / "tower.safetensors", tmp_path / "back", "--tower", "text",
                           "--no-verify"), "tower.safetensors", message)
    assert not (tmp_path / "back").exists()


def test_a_record_puts_back_only_what_a_conversion_sets_aside(tmp_path):
    """A key the schema does not set aside, slipped into a record, is not written: no output holds a tensor
    that was not in a source."""
    from safetensors.torch import load_file as load

    save_one_tower(tmp_path / "hf", "CLIPTextModel", prefixed=True, position_ids="int64")
    assert run_cli("to-openai", tmp_path / "hf", tmp_path / "tower.safetensors", "--no-verify").exit_code == 0
    _with_aside(tmp_path / "tower.safetensors",
                lambda aside: aside.update({"text_model.extra": {"dtype": "float32", "shape": [], "hex": "0000803f"}}))
    assert run_cli("to-hf", tmp_path / "tower.safetensors", tmp_path / "back", "--tower", "text").exit_code == 0
    assert "text_model.extra" not in load(tmp_path / "back" / "model.safetensors")


def test_compare_tower_tells_an_image_encoder_from_another_and_from_itself_in_another_format(tmp_path):
    """Is this IP-Adapter's image encoder really open_clip's ViT-H-14? Its vision tower, compared with the whole
    model's: the same (exit 0) against the model it came from, and not (exit 1) against another one."""
    model_cfg = shallow("ViT-H-14", layers=1)
    for name, seed in (("oc", 3), ("other", 4)):
        save_open_clip_folder(random_open_clip_model(model_cfg, seed=seed).state_dict(), model_cfg, tmp_path / name)
    assert run_cli("to-hf", tmp_path / "oc", tmp_path / "image_encoder", "--tower", "vision").exit_code == 0

    same = run_cli("compare", tmp_path / "image_encoder", tmp_path / "oc", "--tower", "vision")
    assert same.exit_code == 0, same.output
    assert "image_encoder (Hugging Face CLIPVisionModelWithProjection folder, folder)" in same.stdout
    assert "over every layer's output, the pooled output and the projected embedding" in same.stdout
    other = run_cli("compare", tmp_path / "image_encoder", tmp_path / "other", "--tower", "vision", "--json")
    assert other.exit_code == 1, other.output
    report = json.loads(other.stdout)
    assert not report["same"] and {row["name"] for row in report["tensors"]} == set(
        load_file(tmp_path / "image_encoder" / "model.safetensors"))
    assert set(report["outputs"]) == {"vision.embeddings", "vision.layers.0",
                                      "vision.pooled", "vision.projected"}
    assert report["outputs"]["vision.embeddings"] > 1e-3


def test_a_projection_is_left_out_only_when_asked_and_the_summary_names_it(tmp_path, demo_state_dict_file):
    """Stable Diffusion 1's text encoder: OpenAI's text tower without its projection, a CLIPTextModel, as
    transformers loads it (no key missing or unexpected); the summary names what was left out."""
    import transformers

    kept = run_cli("to-hf", demo_state_dict_file, tmp_path / "with", "--tower", "text")
    assert kept.exit_code == 0 and "CLIPTextModelWithProjection" in kept.stdout and "projection" not in " ".join(
        line for line in kept.stdout.splitlines() if "note" in line), kept.output
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "text_encoder", "--tower", "text",
                     "--without-projection")
    assert result.exit_code == 0, result.output
    assert "Hugging Face CLIPTextModel folder" in result.stdout
    assert "text_projection left out (--without-projection)" in result.stdout
    _, info = transformers.CLIPTextModel.from_pretrained(tmp_path / "text_encoder", output_loading_info=True)
    assert not any(info.values()), info
    assert not any("projection" in key for key in load_file(tmp_path / "text_encoder" / "model.safetensors"))


def test_without_projection_is_refused_without_a_tower_or_for_a_tower_that_has_none(tmp_path, demo_state_dict_file):
    usage = run_cli("to-hf", demo_state_dict_file, tmp_path / "out", "--without-projection")
    assert usage.exit_code == 2 and "give --tower text or --tower vision too" in usage.output
    assert not (tmp_path / "out").exists()
    save_one_tower(tmp_path / "hf", "CLIPTextModel")
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "out.pt", "--tower", "text",
                           "--without-projection"), "its text tower has no projection to leave out")


# safetensors for OpenAI's layout too: it carries clipconv's record of the source, which the way back restores
@pytest.mark.parametrize("name", ONE_TOWER_CLASSES)
def test_a_tower_alone_in_openais_dtype_mix_halves_what_openai_halves(name):
    """roundtrip.testing's OpenAI mix for each HF class of one tower (flat keys included): fp16 for the linear
    layers and projections, fp32 for the embeddings' positions and the LayerNorms."""
    tower, projected = ONE_TOWER_CLASSES[name]
    weights = random_state_dict(DEMO.alone(tower, projected), "hf", "openai")
    dtypes = {key.split("model.", 1)[-1] if key.startswith(f"{tower}_model.") else key: tensor.dtype
              for key, tensor in weights.items()}
    assert dtypes["encoder.layers.0.self_attn.q_proj.weight"] == torch.float16
    assert dtypes["encoder.layers.0.layer_norm1.weight"] == torch.float32
    assert dtypes["embeddings.position_embedding.weight"] == torch.float32
    projection = "text_projection.weight" if tower == "text" else "visual_projection.weight"
    assert (projection in dtypes) is projected and (not projected or dtypes[projection] == torch.float16)


TARGETS = {"openai": ("to-openai", "tower.safetensors"), "hf": ("to-hf", "tower-hf"),
           "open_clip": ("to-open-clip", "tower-oc")}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(["openai", "open_clip"]), data=st.data())
def test_a_tower_alone_of_any_architecture_goes_between_every_pair_of_layouts_and_back_exactly(
        tmp_path_factory, family, data):
    """A random text or vision tower (with or without its projection) in each layout converts into each other,
    checked layer by layer, and back: the same tensors, bit for bit, and the same outputs."""
    from roundtrip.testing import assert_equivalent, write_checkpoint

    architecture = data.draw(architectures(family, towers="one"), "architecture")
    usable = [name for name in TARGETS if name != "openai" or not openai_config.incompatibilities(architecture)]
    source = data.draw(st.sampled_from(usable), "source")
    target = data.draw(st.sampled_from([name for name in usable if name != source]), "target")
    folder = tmp_path_factory.mktemp("tower")
    written = write_checkpoint(folder / ("source.pt" if source == "openai" else "source"), architecture, source,
                               seed=data.draw(seeds, "seed"), prefixed=data.draw(st.booleans(), "prefixed"))
    tower = ("--tower", architecture.towers[0])
    command, name = TARGETS[target]
    there = run_cli(command, written, folder / name, *tower)
    assert there.exit_code == 0, there.output
    assert "over every layer's output" in there.stdout
    command, name = TARGETS[source]
    back = run_cli(command, folder / TARGETS[target][1], folder / f"back-{name}", *tower)
    assert back.exit_code == 0, back.output
    assert_equivalent(written, folder / f"back-{name}")
    if source == "hf":  # the key style (flat, or under the tower's prefix) as it was
        assert load_file(folder / f"back-{name}" / "model.safetensors").keys() == load_file(
            written / "model.safetensors").keys()
