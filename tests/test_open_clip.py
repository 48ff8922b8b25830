"""open_clip checkpoints, both ways: configs, weights, logits against open_clip's own code, every source layout."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from roundtrip import hf_config, mapping, open_clip_config, openai_config, references, verify
from roundtrip.architecture import Architecture, ArchitectureError, ResNet, Shapes
from roundtrip.examples import (
    DEMO,
    RELEASED_RESNETS,
    random_open_clip_model,
    random_openai_model,
    random_openai_state_dict,
    save_open_clip_folder,
    training_checkpoint,
)
from roundtrip.facts import OPEN_CLIP_CONFIG
from roundtrip.testing import architectures, open_clip_model_configs, seeds

from conftest import (
    architecture_of,
    assert_identical,
    assert_refused,
    hf_clip_config,
    hf_folder_logits,
    import_clip,
    listing,
    open_clip_logits,
    random_hf_model,
    run_cli,
    shallow,
)

TOLERANCE = 1e-3
MODEL_BUILDING = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONVERTING = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- configs and weights, without files ---------------------------------------------------------------------


@MODEL_BUILDING
@given(st.one_of(open_clip_model_configs(), open_clip_model_configs(vision="resnet")))
def test_the_model_config_written_builds_the_same_shapes_and_reads_back_as_the_architecture(model_cfg):
    from open_clip.model import CLIP

    with torch.device("meta"):
        shapes = {key: tensor.shape for key, tensor in CLIP(**model_cfg).state_dict().items()}
        architecture = architecture_of(model_cfg, CLIP(**model_cfg).state_dict())
        written = open_clip_config.model_config(architecture)
        rebuilt = {key: tensor.shape for key, tensor in CLIP(**written).state_dict().items()}
    assert rebuilt == shapes
    assert open_clip_config.architecture(written, Shapes.of(shapes_as_tensors(shapes))) == architecture


def shapes_as_tensors(shapes: dict) -> dict:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@MODEL_BUILDING
@given(open_clip_model_configs(), seeds)
def test_open_clip_weights_round_trip_through_hf_bit_exact(model_cfg, seed):
    original = random_open_clip_model(model_cfg, seed).state_dict()
    assert_identical(mapping.to_openai(mapping.to_hf(original)), original)


@MODEL_BUILDING
@given(open_clip_model_configs(), seeds)
def test_transformers_reproduces_open_clips_logits_with_the_config_written(model_cfg, seed):
    from transformers import CLIPConfig, CLIPModel

    model = random_open_clip_model(model_cfg, seed)
    architecture = architecture_of(model_cfg, model.state_dict())
    hf_model = CLIPModel.from_pretrained(None, config=CLIPConfig.from_dict(hf_config.config(architecture)),
                                         state_dict=mapping.to_hf(model.state_dict()), dtype=torch.float32).eval()
    with torch.no_grad():
        converted = hf_model(input_ids=verify.probe_tokens(architecture),
                             pixel_values=verify.probe_images(architecture)).logits_per_image
    assert (converted - open_clip_logits(model, architecture)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16-quickgelu", "ViT-H-14", "ViT-bigG-14"])
def test_the_check_catches_a_wrong_activation_or_head_count_in_the_written_config(name):
    model_cfg = shallow(name, layers=1)
    weights = random_open_clip_model(model_cfg).state_dict()
    architecture = architecture_of(model_cfg, weights)
    open_clip_side = verify.Side(references.OPEN_CLIP, model_cfg)

    def gap(config) -> float:
        return verify.check(weights, "openai", open_clip_side, verify.Side(references.HF, config), architecture).logits

    right = hf_config.config(architecture)
    wrong_activation = json.loads(json.dumps(right))
    wrong_activation["vision_config"]["hidden_act"] = "gelu" if "quickgelu" in name else "quick_gelu"
    wrong_heads = json.loads(json.dumps(right))
    wrong_heads["vision_config"]["num_attention_heads"] = architecture.vision.width // 64  # OpenAI's rule
    assert gap(right) <= TOLERANCE
    assert gap(wrong_activation) > TOLERANCE
    if architecture.vision.head_width != 64:
        assert gap(wrong_heads) > TOLERANCE


# The registry's settings that name the tokenizer: not architecture, so not in the config written from one.
TOKENIZER_SETTINGS = ("hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode")
SUPPORTED_REGISTRY_MODELS = [name for name in open_clip_config.registry_names()
                             if not open_clip_config.unsupported(open_clip_config.registry_config(name))]


@pytest.mark.parametrize("name", SUPPORTED_REGISTRY_MODELS)
def test_the_config_written_for_a_registry_model_is_the_registrys_own(name):
    """open_clip's own config for each model clipconv converts, read into an architecture and written again, is
    what open_clip ships (its defaults left out, heads, MLP ratio, activation and text pooling spelled as open_clip
    spells them), but for the settings that name its tokenizer and the digits of an MLP ratio (ViT-g-14's 4.3637
    is written 4.364: both give its MLP width of 6144)."""
    registry = open_clip_config.registry_config(name)
    expected = {**registry, "text_cfg": {key: value for key, value in registry["text_cfg"].items()
                                         if key not in TOKENIZER_SETTINGS}}
    written = open_clip_config.model_config(open_clip_config.claimed_architecture(registry))
    assert mlp_widths(written) == mlp_widths(expected)


def mlp_widths(model_cfg: dict) -> dict:
    """`model_cfg` with each tower's mlp_ratio as the MLP width open_clip builds from it."""
    towers = {name: {**tower, **({"mlp_ratio": int(tower["width"] * tower["mlp_ratio"])} if "mlp_ratio" in tower
                                 else {})}
              for name, tower in model_cfg.items() if name in ("vision_cfg", "text_cfg")}
    return {**model_cfg, **towers}


def test_the_registry_holds_the_kinds_of_model_clipconv_writes():
    """A control for the test above: it covers heads other than 64, MLP ratios, QuickGELU and text pooling."""
    assert {"ViT-B-32-quickgelu", "ViT-H-14", "ViT-bigG-14", "ViT-H-14-worldwide"} <= set(SUPPORTED_REGISTRY_MODELS)


def test_a_config_that_leaves_every_setting_out_reads_as_what_open_clip_builds_from_it():
    """open_clip fills in each setting a config leaves out (the widths of both towers, layers, heads, patch,
    image size, context, vocabulary, MLP ratio, eps, activation): clipconv reads the same numbers. Kills
    reading a tower's width with no default."""
    from open_clip.model import CLIP

    model_cfg = {"embed_dim": 512, "vision_cfg": {}, "text_cfg": {}}
    with torch.device("meta"):
        built = CLIP(**model_cfg)
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(built.state_dict()))
    text_block, vision_block = built.transformer.resblocks[0], built.visual.transformer.resblocks[0]
    assert (architecture.text.heads, architecture.vision.heads) == (text_block.attn.num_heads,
                                                                    vision_block.attn.num_heads)
    assert (architecture.text.layer_norm_eps, architecture.vision.layer_norm_eps) == (text_block.ln_1.eps,
                                                                                      vision_block.ln_1.eps)
    assert type(text_block.mlp.gelu).__name__ == "GELU" and architecture.text.activation == "gelu"
    assert architecture.text_pool_token is None


def test_a_resnet_config_that_leaves_its_settings_out_reads_as_what_open_clip_builds_from_it():
    """A ResNet's vision_cfg without image_size or head_width: open_clip's defaults (224 px, heads of 64), read
    off the model its CLIP builds. Kills a ResNet's image size read with no default."""
    from open_clip.model import CLIP

    model_cfg = {"embed_dim": 64, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8}, "text_cfg": {}}
    with torch.device("meta"):
        built = CLIP(**model_cfg)
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(built.state_dict()))
    assert architecture.image_resolution == built.visual.image_size == 224
    assert architecture.vision == ResNet((1, 1, 1, 1), 8, built.visual.attnpool.num_heads)


def test_an_mlp_ratio_of_one_or_less_is_a_model_open_clip_builds():
    """open_clip takes any positive mlp_ratio; one of 1 or less is no refusal (kills `ratio <= 1` for `<= 0`)."""
    for ratio in (1, 0.5):
        config = {"embed_dim": 64, "vision_cfg": {"width": 128, "mlp_ratio": ratio}, "text_cfg": {"mlp_ratio": ratio}}
        architecture = open_clip_config.claimed_architecture(config)
        assert (architecture.vision.mlp_width, architecture.text.mlp_width) == (int(128 * ratio), int(512 * ratio))


def test_an_image_and_patch_size_given_as_a_square_pair_read_as_their_side():
    """open_clip takes image_size and patch_size as a number or a pair; a square pair is its side."""
    config = {"embed_dim": 64, "vision_cfg": {"image_size": [224, 224], "patch_size": (16, 16)}, "text_cfg": {}}
    architecture = open_clip_config.claimed_architecture(config)
    assert (architecture.image_resolution, architecture.patch_size) == (224, 16)


def test_reading_a_config_clipmodel_cannot_hold_names_every_reason_in_one_line():
    """claimed_architecture refuses on its own (the readers check first, but testing and recorded configs call it
    directly): each reason, joined in one line."""
    config = {"embed_dim": 64, "vision_cfg": {"ls_init_value": 1e-4}, "text_cfg": {"proj_bias": True}}
    with pytest.raises(ArchitectureError) as refused:
        open_clip_config.claimed_architecture(config)
    message = str(refused.value)
    assert message.startswith("clipconv does not convert this open_clip model (transformers' CLIPModel cannot hold "
                              "it): "), message
    reasons = open_clip_config.unsupported(config)
    assert len(reasons) == 2 and message.endswith("it): " + "; ".join(reasons)), message


def test_heads_of_width_1_and_eos_pooling_without_an_id_read_as_open_clip_builds_them():
    """Settings at the edge of what open_clip takes: a head_width of 1 (as many heads as the width), and text
    pooled at 'eos' with no eos_id, which open_clip's CLIPTextCfg fills in."""
    from open_clip.model import CLIPTextCfg

    config = {"embed_dim": 64, "vision_cfg": {"width": 64, "head_width": 1}, "text_cfg": {"pool_type": "eos"}}
    architecture = open_clip_config.claimed_architecture(config)
    assert architecture.vision.heads == 64
    assert architecture.text_pool_token == CLIPTextCfg().eos_id


def test_bigg_mlp_ratio_gives_its_mlp_width_back():
    assert open_clip_config.mlp_ratio(1664, 8192) == 4.9231
    assert int(1664 * open_clip_config.mlp_ratio(1664, 8192)) == 8192


# ---- every source layout, end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def h14(tmp_path_factory):
    """ViT-H-14's widths and heads (vision heads of 80, gelu) at two layers per tower, and its weights."""
    model_cfg = shallow("ViT-H-14")
    model = random_open_clip_model(model_cfg, seed=4)
    return model_cfg, model, tmp_path_factory.mktemp("h14")


LAYOUTS = ["folder with safetensors", "folder with open_clip_pytorch_model.bin", "epoch_N.pt with a model config",
           "epoch_N.pt with an open_clip_config.json"]


def _source(layout: str, model_cfg: dict, state_dict: dict, folder: Path) -> tuple[Path, list[str]]:
    if layout.startswith("folder"):
        save_open_clip_folder(state_dict, model_cfg, folder / "source", pickle=layout.endswith(".bin"))
        return folder / "source", []
    torch.save(training_checkpoint(state_dict), folder / "epoch_3.pt")
    config = model_cfg if "model config" in layout else {"model_cfg": model_cfg, "preprocess_cfg": {}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "epoch_3.pt", ["--open-clip-config", str(folder / "config.json")]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_open_clip_layout_converts_to_hf_with_open_clips_logits(tmp_path, h14, layout):
    model_cfg, model, _ = h14
    source, options = _source(layout, model_cfg, model.state_dict(), tmp_path)
    result = run_cli("to-hf", source, tmp_path / "hf", *options)
    assert result.exit_code == 0, result.output
    assert "verification  max |difference|" in result.stdout
    architecture = architecture_of(model_cfg, model.state_dict())
    assert (hf_folder_logits(tmp_path / "hf", architecture) - open_clip_logits(model, architecture)).abs().max() \
        <= TOLERANCE
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_config"]["num_attention_heads"] == 16 and config["vision_config"]["hidden_act"] == "gelu"


@pytest.mark.slow
def test_a_checkpoint_file_named_by_its_registry_model_converts(tmp_path):
    model = random_open_clip_model(open_clip_config.registry_config("ViT-S-32"), seed=1)
    torch.save(training_checkpoint(model.state_dict()), tmp_path / "epoch_1.pt")
    result = run_cli("to-hf", tmp_path / "epoch_1.pt", tmp_path / "hf", "--open-clip-model", "ViT-S-32")
    assert result.exit_code == 0, result.output
    architecture = architecture_of(open_clip_config.registry_config("ViT-S-32"), model.state_dict())
    assert (hf_folder_logits(tmp_path / "hf", architecture) - open_clip_logits(model, architecture)).abs().max() \
        <= TOLERANCE


@pytest.mark.slow
def test_open_clip_to_hf_to_open_clip_gives_back_every_tensor_and_the_config(tmp_path, h14):
    model_cfg, model, _ = h14
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    state_dict = {key: tensor.half() if key.endswith("c_fc.weight") else tensor  # a dtype mix, to be kept
                  for key, tensor in model.state_dict().items()}
    save_open_clip_folder(state_dict, model_cfg, tmp_path / "source", preprocess_cfg)
    assert run_cli("to-hf", tmp_path / "source", tmp_path / "hf").exit_code == 0
    result = run_cli("to-open-clip", tmp_path / "hf", tmp_path / "back")
    assert result.exit_code == 0, result.output
    original, back = (load_file(path / "open_clip_model.safetensors") for path in (tmp_path / "source",
                                                                                     tmp_path / "back"))
    assert_identical(back, original)
    assert list(back) == list(original)
    configs = [json.loads((path / "open_clip_config.json").read_text()) for path in (tmp_path / "source",
                                                                                       tmp_path / "back")]
    assert configs[0] == configs[1]
    assert listing(tmp_path / "back") == ["open_clip_config.json", "open_clip_model.safetensors"]


def test_hf_to_open_clip_to_hf_gives_back_the_folders_tensors_and_config(tmp_path):
    hf_model = random_hf_model(hf_clip_config(hidden_act="gelu"), fp16_representable=False)
    hf_model.config.vision_config.hidden_act = "gelu"
    hf_model.save_pretrained(tmp_path / "hf")
    result = run_cli("to-open-clip", tmp_path / "hf", tmp_path / "open-clip")
    assert result.exit_code == 0, result.output
    assert run_cli("to-hf", tmp_path / "open-clip", tmp_path / "hf-again").exit_code == 0
    assert_identical(load_file(tmp_path / "hf-again" / "model.safetensors"), hf_model.state_dict())
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert json.loads((tmp_path / "hf-again" / "config.json").read_text()) == config


def test_to_open_clip_writes_what_open_clip_loads_with_local_dir_strictly(tmp_path, demo_state_dict_file):
    import open_clip

    result = run_cli("to-open-clip", demo_state_dict_file, tmp_path / "open-clip")
    assert result.exit_code == 0, result.output
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'open-clip'}")
    weights = torch.load(demo_state_dict_file, weights_only=True)
    assert_identical(model.state_dict(), {key: tensor.float() for key, tensor in weights.items()})
    reference = references.openai_outputs(weights, DEMO, verify.probe_images(DEMO), verify.probe_tokens(DEMO))["logits"]
    assert (open_clip_logits(model.eval(), DEMO) - reference).abs().max() <= TOLERANCE
    assert run_cli("to-openai", tmp_path / "open-clip", tmp_path / "back.pt").exit_code == 0
    assert_identical(torch.load(tmp_path / "back.pt", weights_only=True), weights)  # OpenAI's fp16 mix restored


def test_a_quickgelu_model_with_heads_of_64_goes_to_openais_format_and_a_gelu_one_is_refused(tmp_path):
    for name, refused in (("ViT-B-16-quickgelu", False), ("ViT-B-16", True)):
        save_open_clip_folder(random_open_clip_model(shallow(name, 1)).state_dict(), shallow(name, 1),
                              tmp_path / name)
        result = run_cli("to-openai", tmp_path / name, tmp_path / f"{name}.pt")
        if refused:
            assert_refused(result, "OpenAI's CLIP code cannot represent", "activation is gelu")
        else:
            assert result.exit_code == 0, result.output


def test_a_plain_float32_state_dict_is_read_as_openais_and_the_summary_says_how_to_say_otherwise(tmp_path):
    torch.save(random_openai_state_dict(DEMO, openai_dtypes=False), tmp_path / "fp32.pt")
    result = run_cli("to-hf", tmp_path / "fp32.pt", tmp_path / "hf", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "--open-clip-model NAME" in result.stdout


def test_a_hub_folder_with_both_formats_is_read_as_open_clip_for_to_hf(tmp_path, h14):
    model_cfg, model, _ = h14
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "repo")
    assert run_cli("to-hf", tmp_path / "repo", tmp_path / "hf", "--no-verify").exit_code == 0
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tmp_path / "hf" / name, tmp_path / "repo" / name)
    result = run_cli("to-hf", tmp_path / "repo", tmp_path / "hf-again", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "read as the open_clip model" in result.stdout


# ---- MetaCLIP 2 worldwide: text pooled at the first token 2, into MetaClip2Model ------------------------------


def _worldwide_tokens(vocab_size: int, context: int) -> torch.Tensor:
    """Token ids as XLM-V's tokenizer gives them (0 start, 1 padding, 2 end), the end at several places, and a
    second 2 after the first in one row: MetaClip2Model and open_clip pool at the first."""
    tokens = torch.randint(3, vocab_size, (3, context), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    for row, end in enumerate((5, 20, context - 1)):
        tokens[row, end] = 2
        tokens[row, end + 1:] = 1
    tokens[0, 9] = 2
    return tokens


@pytest.mark.parametrize("name", ["ViT-H-14-worldwide", "ViT-bigG-14-worldwide"])
def test_metaclip_2_worldwide_goes_to_metaclip2model_with_open_clips_logits_and_back_bit_exact(tmp_path, name):
    from transformers import MetaClip2Model

    model_cfg = shallow(name, layers=1)
    model_cfg["text_cfg"]["vocab_size"] = 1000  # 901,629 in the release: its embedding alone would be GBs
    model = random_open_clip_model(model_cfg, seed=8)
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "worldwide")
    result = run_cli("to-hf", tmp_path / "worldwide", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert "Hugging Face MetaClip2Model folder" in result.stdout
    assert "no tokenizer written: the open_clip config names the tokenizer facebook/xlm-v-base" in result.stdout
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["text_config"]["eos_token_id"]) == (
        "metaclip_2", ["MetaClip2Model"], 2)
    converted = MetaClip2Model.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    size = model_cfg["vision_cfg"]["image_size"]
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    tokens = _worldwide_tokens(1000, model_cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        expected = model.eval().get_logits(images, tokens)[0]
        found = converted(input_ids=tokens, pixel_values=images).logits_per_image
    assert (found - expected).abs().max() <= TOLERANCE
    back = run_cli("to-open-clip", tmp_path / "hf", tmp_path / "back")
    assert back.exit_code == 0, back.output
    assert_identical(load_file(tmp_path / "back" / "open_clip_model.safetensors"), model.state_dict())
    assert json.loads((tmp_path / "back" / "open_clip_config.json").read_text())["model_cfg"] == model_cfg
    assert run_cli("compare", tmp_path / "worldwide", tmp_path / "back").exit_code == 0


def test_metaclip_2_worldwides_text_tower_alone_goes_to_metaclip2textmodelwithprojection(tmp_path):
    from transformers import MetaClip2TextModelWithProjection

    model_cfg = shallow("ViT-H-14-worldwide", layers=1)
    model_cfg["text_cfg"]["vocab_size"] = 1000
    model = random_open_clip_model(model_cfg, seed=9).eval()
    save_open_clip_folder(model.state_dict(), model_cfg, tmp_path / "worldwide")
    result = run_cli("to-hf", tmp_path / "worldwide", tmp_path / "text", "--tower", "text")
    assert result.exit_code == 0, result.output
    converted = MetaClip2TextModelWithProjection.from_pretrained(tmp_path / "text", dtype=torch.float32).eval()
    tokens = _worldwide_tokens(1000, model_cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        found = converted(input_ids=tokens).text_embeds
        assert (found - model.encode_text(tokens)).abs().max() <= TOLERANCE



def test_a_metaclip2model_folder_that_pools_as_clipmodel_would_stays_a_metaclip2model(tmp_path):
    """Its eos id is the largest, so CLIPModel would compute the same; the folder names MetaClip2Model, and the
    check runs that class, the summary names it, and a re-typed copy stays one."""
    from transformers import MetaClip2Config, MetaClip2Model

    config = hf_config.config(DEMO)
    config.update(model_type="metaclip_2", architectures=["MetaClip2Model"])
    config["text_config"].update(model_type="metaclip_2_text_model", eos_token_id=DEMO.vocab_size - 1)
    config["vision_config"]["model_type"] = "metaclip_2_vision_model"
    torch.manual_seed(0)
    MetaClip2Model(MetaClip2Config.from_dict(config)).save_pretrained(tmp_path / "metaclip")
    result = run_cli("to-hf", tmp_path / "metaclip", tmp_path / "fp16", "--dtype", "float16")
    assert result.exit_code == 0, result.output
    assert "(Hugging Face MetaClip2Model folder)" in result.stdout
    written = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == ("metaclip_2", ["MetaClip2Model"])
    weights = load_file(tmp_path / "metaclip" / "model.safetensors")
    assert type(references.hf_model(weights, written, DEMO)) is MetaClip2Model
    assert type(references.hf_model(weights, hf_config.config(DEMO), DEMO)).__name__ == "CLIPModel"


def test_metaclip_2_classes_are_written_for_a_clip_when_asked_and_compute_what_clipmodel_does(tmp_path,
                                                                                             demo_state_dict_file):
    """--metaclip-2: MetaClip2Model, its eos id the largest (first-eos pooling, where argmax pools), with
    CLIPModel's logits; the weights come back to OpenAI's format bit for bit; a tower alone gets its class too."""
    from transformers import MetaClip2Model

    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "metaclip", "--metaclip-2")
    assert result.exit_code == 0, result.output
    assert "(Hugging Face MetaClip2Model folder)" in result.stdout
    config = json.loads((tmp_path / "metaclip" / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["text_config"]["eos_token_id"]) == (
        "metaclip_2", ["MetaClip2Model"], DEMO.vocab_size - 1)
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "clip").exit_code == 0
    converted = MetaClip2Model.from_pretrained(tmp_path / "metaclip", dtype=torch.float32).eval()
    with torch.no_grad():
        found = converted(input_ids=verify.probe_tokens(DEMO), pixel_values=verify.probe_images(DEMO))
    assert (found.logits_per_image - hf_folder_logits(tmp_path / "clip", DEMO)).abs().max() <= TOLERANCE
    assert run_cli("to-openai", tmp_path / "metaclip", tmp_path / "back.pt").exit_code == 0
    assert_identical(torch.load(tmp_path / "back.pt", weights_only=True),
                     torch.load(demo_state_dict_file, weights_only=True))
    text = run_cli("to-hf", demo_state_dict_file, tmp_path / "text", "--metaclip-2", "--tower", "text")
    assert text.exit_code == 0 and "(Hugging Face MetaClip2TextModelWithProjection folder)" in text.stdout


def test_metaclip_2_classes_are_asked_for_of_hf_alone(tmp_path, demo_state_dict_file):
    from roundtrip import convert

    assert run_cli("to-openai", demo_state_dict_file, tmp_path / "out.pt", "--metaclip-2").exit_code == 2
    with pytest.raises(ValueError, match="metaclip_2=True names transformers' classes: it needs to='hf'"):
        convert(demo_state_dict_file, tmp_path / "out", to="open_clip", metaclip_2=True)
    assert list(tmp_path.iterdir()) == []

# ---- ResNet CLIPs (OpenAI's RN50 family, open_clip's RN50 configs), between OpenAI's format and open_clip's ----
# Bit-exact round trips both ways, and the logits of each format's own loader within 1e-3 (HF's refusal is in
# tests/test_cli.py).

RESNET_CONVERTING = settings(max_examples=6, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def openai_logits(state_dict: dict, architecture: Architecture) -> torch.Tensor:
    """What OpenAI's own code computes in float32: clip.model.build_model reads the architecture off the
    tensors (and halves the weights, so they are loaded again as they are, in float32)."""
    clip = import_clip()
    model = clip.model.build_model(dict(state_dict)).float().eval()
    model.load_state_dict({key: tensor.float() if tensor.is_floating_point() else tensor
                           for key, tensor in state_dict.items()})
    with torch.no_grad():
        return model(verify.probe_images(architecture), verify.probe_tokens(architecture))[0]


def open_clip_folder_logits(folder: Path, architecture: Architecture) -> torch.Tensor:
    """What open_clip computes from a folder, loaded as its users load one (`local-dir:`)."""
    import open_clip

    model = open_clip.create_model_and_transforms(f"local-dir:{folder}")[0].float().eval()
    with torch.no_grad():
        return model.get_logits(verify.probe_images(architecture), verify.probe_tokens(architecture))[0]


def converted(*arguments) -> None:
    result = run_cli(*arguments)
    assert result.exit_code == 0, result.output
    assert "verification  max |difference|" in result.stdout


@RESNET_CONVERTING
@given(architectures(family="openai", vision="resnet"), st.booleans(), seeds)
def test_openai_resnets_go_to_open_clip_with_openais_logits_and_come_back_bit_exact(tmp_path_factory, architecture,
                                                                                     openai_dtypes, seed):
    folder = tmp_path_factory.mktemp("resnet")
    model = random_openai_model(architecture, seed, openai_dtypes)
    torch.save(model.state_dict(), folder / "source.pt")
    source = torch.load(folder / "source.pt", weights_only=True)
    converted("to-open-clip", folder / "source.pt", folder / "open_clip")
    gap = (open_clip_folder_logits(folder / "open_clip", architecture) - openai_logits(source, architecture))
    assert gap.abs().max().item() <= TOLERANCE
    converted("to-openai", folder / "open_clip", folder / "back.pt")
    back = torch.load(folder / "back.pt", weights_only=True)
    assert list(back) == list(source)
    assert_identical(back, source)


@RESNET_CONVERTING
@given(open_clip_model_configs(vision="resnet"), seeds)
def test_open_clip_resnets_go_to_openai_where_its_code_builds_them_and_come_back_bit_exact(tmp_path_factory,
                                                                                            model_cfg, seed):
    folder = tmp_path_factory.mktemp("resnet")
    model = random_open_clip_model(model_cfg, seed)
    save_open_clip_folder(model.state_dict(), model_cfg, folder / "source")
    architecture = open_clip_config.claimed_architecture(model_cfg)
    problems = openai_config.incompatibilities(architecture)
    result = run_cli("to-openai", folder / "source", folder / "openai.pt")
    if problems:  # GELU text, or attention-pool heads other than OpenAI's 64 wide
        assert_refused(result, "OpenAI's CLIP code cannot represent this model", problems[0])
        assert sorted(path.name for path in folder.iterdir()) == ["source"]
        return
    assert result.exit_code == 0, result.output
    openai = torch.load(folder / "openai.pt", weights_only=True)
    with torch.no_grad():
        expected = model.get_logits(verify.probe_images(architecture), verify.probe_tokens(architecture))[0]
    assert (openai_logits(openai, architecture) - expected).abs().max().item() <= TOLERANCE
    converted("to-open-clip", folder / "openai.pt", folder / "back")
    assert_identical(load_safetensors(folder / "back"), model.state_dict())
    written = json.loads((folder / "back" / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    assert written == model_cfg  # restored from what the first conversion recorded of it


def load_safetensors(folder: Path) -> dict:
    return load_file(folder / "open_clip_model.safetensors")


def reduced(architecture: Architecture) -> Architecture:
    """A released ResNet with one block per stage and one text layer: its widths, heads and resolution."""
    return dataclasses.replace(architecture, vision=dataclasses.replace(architecture.vision, layers=(1, 1, 1, 1)),
                               text=dataclasses.replace(architecture.text, layers=1))


@pytest.mark.parametrize("name", RELEASED_RESNETS)
def test_every_released_resnet_shape_goes_to_open_clips_own_config_and_back_bit_exact(tmp_path, name):
    architecture = reduced(RELEASED_RESNETS[name])
    torch.save(random_openai_model(architecture).state_dict(), tmp_path / "source.pt")
    converted("to-open-clip", tmp_path / "source.pt", tmp_path / "open_clip")
    written = json.loads((tmp_path / "open_clip" / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    registry = open_clip_config.registry_config(f"{name}-quickgelu")  # OpenAI's text towers run QuickGELU
    registry["vision_cfg"]["layers"], registry["text_cfg"]["layers"] = [1, 1, 1, 1], 1
    assert written == registry
    converted("to-openai", tmp_path / "open_clip", tmp_path / "back.pt")
    source, back = (torch.load(tmp_path / name, weights_only=True) for name in ("source.pt", "back.pt"))
    assert list(back) == list(source)
    assert_identical(back, source)
    result = run_cli("compare", tmp_path / "source.pt", tmp_path / "open_clip")
    assert result.exit_code == 0 and "verdict       same model" in result.stdout, result.output


def test_open_clips_gelu_rn50_is_refused_by_openai_naming_the_activation(tmp_path):
    model_cfg = open_clip_config.registry_config("RN50")
    model_cfg["vision_cfg"]["layers"], model_cfg["text_cfg"]["layers"] = [1, 1, 1, 1], 1
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, tmp_path / "RN50")
    assert_refused(run_cli("to-openai", tmp_path / "RN50", tmp_path / "out.pt"),
                   "text activation is gelu, OpenAI's code uses quick_gelu")


def test_a_resnet_config_reads_as_open_clip_builds_it():
    architecture = open_clip_config.claimed_architecture(open_clip_config.registry_config("RN50x4"))
    assert architecture.vision == ResNet(layers=(4, 6, 10, 6), width=80, heads=40)  # 80 * 32 // 64
    assert (architecture.image_resolution, architecture.patch_size, architecture.embed_dim) == (288, None, 640)
    assert architecture.text.activation == "gelu"  # RN50x4-quickgelu is OpenAI's
    openai = RELEASED_RESNETS["RN50x4"]
    assert dataclasses.replace(architecture, text=dataclasses.replace(architecture.text, activation="quick_gelu")) \
        == openai


@pytest.mark.parametrize(("vision_cfg", "reason"), [
    ({"layers": [3, 4, 6]}, "vision_cfg.layers is [3, 4, 6]: a ResNet's are 4 positive integers"),
    ({"layers": [3, 4, 0, 3]}, "vision_cfg.layers is [3, 4, 0, 3]"),
    ({"layers": [3, 4, 6, 3], "head_width": 48}, "vision_cfg.head_width 48 does not divide the ResNet's attention "
                                                 "pool width, 2048"),
])
def test_a_resnet_config_open_clip_cannot_build_is_refused_with_the_reason(vision_cfg, reason):
    model_cfg = open_clip_config.registry_config("RN50")
    model_cfg["vision_cfg"].update(vision_cfg)
    with pytest.raises(ArchitectureError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        open_clip_config.claimed_architecture(model_cfg)


def test_a_resnet_vision_tower_is_never_left_without_its_projection(tmp_path):
    torch.save(random_openai_model(reduced(RELEASED_RESNETS["RN50"])).state_dict(), tmp_path / "RN50.pt")
    assert_refused(run_cli("to-openai", tmp_path / "RN50.pt", tmp_path / "vision.pt", "--tower", "vision",
                           "--without-projection"),
                   "RN50.pt: a ResNet vision tower cannot be without its projection")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["RN50.pt"]


def test_compare_of_a_vit_and_a_resnet_names_what_only_one_of_them_has(tmp_path, demo_state_dict):
    torch.save(demo_state_dict, tmp_path / "vit.pt")
    torch.save(random_openai_model(reduced(RELEASED_RESNETS["RN50"])).state_dict(), tmp_path / "rn50.pt")
    result = run_cli("compare", tmp_path / "vit.pt", tmp_path / "rn50.pt")
    assert result.exit_code == 1, result.output
    assert "architecture  vision.layers is 2 in A, (1, 1, 1, 1) in B" in result.stdout
    assert "architecture  vision.mlp_width is 512 in A, absent in B" in result.stdout
