"""Promises that a small, realistic bug in the code would break without any other test noticing. Each test's
docstring names the bug it kills: each was planted by hand and seen to fail the test (issue 22)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from roundtrip import references, verify
from roundtrip.errors import VerificationError
from roundtrip.examples import (
    DEMO,
    RELEASED_RESNETS,
    random_open_clip_model,
    random_openai_state_dict,
    save_open_clip_folder,
)
from roundtrip.pipeline import convert_to_diffusers
from roundtrip.testing import assert_equivalent, write_single_file

from conftest import assert_refused, hf_clip_config, random_hf_model, read_json, run_cli, shallow

HF_WEIGHTS = "model.safetensors"


# ---- the logit check: its tolerance, and NaN ------------------------------------------------------------------


def test_a_model_whose_logits_are_nan_is_not_verified(tmp_path):
    """Kills `verify.require_agreement` testing `difference > TOLERANCE`, which NaN passes: a checkpoint whose
    logit_scale is NaN converted with "max |logit difference| = nan", exit 0."""
    state_dict = random_openai_state_dict(DEMO)
    state_dict["logit_scale"] = torch.tensor(float("nan"))
    torch.save(state_dict, tmp_path / "nan.pt")
    assert_refused(run_cli("to-hf", tmp_path / "nan.pt", tmp_path / "hf"), "logits differ", "by nan")
    assert [path.name for path in tmp_path.iterdir()] == ["nan.pt"]


@pytest.mark.parametrize("towers, projected, scope", [
    (("text", "vision"), True, "every layer's output, the pooled output, the projected embedding and the logits"),
    (("text",), True, "every layer's output, the pooled output and the projected embedding"),
    (("text",), False, "every layer's output and the pooled output"),
])
def test_the_verification_line_names_exactly_the_outputs_compared(towers, projected, scope):
    """Kills `Agreement.scope` naming the projected embedding of a tower without one, or leaving out (or
    garbling) the logits of a whole model: what the conversion says it checked is what was compared."""
    tower = dataclasses.replace(DEMO.text, projected=projected)
    vision = {} if "vision" in towers else {"vision": None, "image_resolution": None, "patch_size": None}
    architecture = dataclasses.replace(DEMO, text=tower, embed_dim=DEMO.embed_dim if projected else None, **vision)
    names = references.output_names(architecture)
    assert verify.Agreement(dict.fromkeys(names, 0.0)).scope() == scope


def test_the_verification_line_of_a_resnet_vision_tower_alone_names_no_pooled_output():
    """Kills `Agreement.scope` naming the pooled output where none was compared: a ResNet's attention pool is its
    projection, so its vision tower alone has layers and a projected embedding only."""
    names = references.output_names(RELEASED_RESNETS["RN50"].alone("vision"))
    assert verify.Agreement(dict.fromkeys(names, 0.0)).scope() == "every layer's output and the projected embedding"


@pytest.mark.parametrize("shift, verified", [(2e-3, False), (9e-4, True)])
def test_the_logit_tolerance_is_1e_3_exactly(tmp_path, demo_state_dict_file, monkeypatch, shift, verified):
    """Kills the tolerance loosened 5 times (logits 3e-3 apart passing as verified) or tightened: 2e-3 apart is
    refused, 9e-4 apart is verified."""
    real = verify.reference_outputs  # builds and runs one of the two sides; the other is built beside it
    monkeypatch.setattr(verify, "reference_outputs",
                        lambda *arguments: {**real(*arguments), "logits": real(*arguments)["logits"] + shift})
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    if verified:
        assert result.exit_code == 0, result.output
    else:
        assert_refused(result, "logits differ", "tolerance 0.001")


# ---- compare: what counts as the same model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def port(tmp_path_factory, demo_state_dict_file) -> Path:
    folder = tmp_path_factory.mktemp("port") / "hf"
    assert run_cli("to-hf", demo_state_dict_file, folder).exit_code == 0
    return folder


def test_compare_holds_every_output_to_the_tolerance_given(demo_state_dict_file, port):
    """Kills `compare --tolerance` ignored: a real difference between OpenAI's code and transformers (about
    1e-6) passed "same model" at --tolerance 1e-12."""
    report = json.loads(run_cli("compare", demo_state_dict_file, port, "--json").stdout)
    difference = max(report["outputs"].values())
    assert 1e-12 < difference <= 1e-3  # the frameworks do differ, within the default tolerance
    strict = run_cli("compare", demo_state_dict_file, port, "--tolerance", "1e-12")
    assert strict.exit_code == 1 and "differs by" in strict.stdout and "(tolerance 1e-12)" in strict.stdout, \
        strict.output
    assert run_cli("compare", demo_state_dict_file, port, "--tolerance", str(difference)).exit_code == 0


def test_an_architecture_difference_alone_makes_two_models_different(tmp_path, demo_state_dict_file, port):
    """Kills architecture differences not counted as causes: a port with the wrong hidden_act, compared with
    --no-logits, was "same model", exit 0."""
    shutil.copytree(port, tmp_path / "wrong")
    config = read_json(tmp_path / "wrong" / "config.json")
    config["text_config"]["hidden_act"] = "gelu"
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(config))
    result = run_cli("compare", demo_state_dict_file, tmp_path / "wrong", "--no-logits")
    assert result.exit_code == 1 and "architecture: text.activation is 'quick_gelu' in A, 'gelu' in B" in \
        result.stdout, result.output
    with pytest.raises(AssertionError, match="text.activation"):
        assert_equivalent(demo_state_dict_file, tmp_path / "wrong", logits=False)


def test_where_the_text_is_pooled_alone_makes_two_models_different(tmp_path, port):
    """Kills `Architecture.semantics` losing the fields that are not a tower's: two folders that differ only in
    where transformers pools the text (eos_token_id), compared with --no-logits, were the same model."""
    shutil.copytree(port, tmp_path / "pooled-at-7")
    config = read_json(tmp_path / "pooled-at-7" / "config.json")
    config["text_config"]["eos_token_id"] = 7
    (tmp_path / "pooled-at-7" / "config.json").write_text(json.dumps(config))
    result = run_cli("compare", port, tmp_path / "pooled-at-7", "--no-logits")
    assert result.exit_code == 1 and "architecture: text_pool_token is None in A, 7 in B" in result.stdout, \
        result.output


def test_a_weight_exactly_at_the_weights_tolerance_is_within_it(tmp_path, port):
    """Kills `<` for `<=` in --weights-tolerance: a difference equal to the tolerance failed, against the
    README's "accepts weights within X"."""
    step = 2.0**-10  # 0.5 and 0.5 + 2**-10 are exact in every float dtype: their difference is exactly `step`
    for name, value in (("a", 0.5), ("b", 0.5 + step)):
        shutil.copytree(port, tmp_path / name)
        weights = load_file(tmp_path / name / HF_WEIGHTS)
        weights["text_model.final_layer_norm.bias"][0] = value
        save_file(weights, tmp_path / name / HF_WEIGHTS)
    at = run_cli("compare", tmp_path / "a", tmp_path / "b", "--no-logits", "--weights-tolerance", str(step))
    assert at.exit_code == 0 and "equal within tolerance" in at.stdout, at.output
    below = run_cli("compare", tmp_path / "a", tmp_path / "b", "--no-logits", "--weights-tolerance", str(step / 2))
    assert below.exit_code == 1 and "values differ: text_model.final_layer_norm.bias" in below.stdout, below.output


def strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity, which Python's json module accepts, are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("where", ["weights", "logits"])
def test_nan_and_infinity_are_never_the_same(tmp_path, port, where, value):
    """Kills a threshold that NaN or infinity passes in compare (and so in assert_equivalent): NaN or infinity in
    one side's weights, or logits that are not finite on both sides, are differences."""
    shutil.copytree(port, tmp_path / "a")
    weights = load_file(tmp_path / "a" / HF_WEIGHTS)
    weights["logit_scale" if where == "logits" else "text_model.final_layer_norm.bias"].fill_(float(value))
    save_file(weights, tmp_path / "a" / HF_WEIGHTS)
    other = tmp_path / "a" if where == "logits" else port  # the same logits on both sides, bit for bit
    result = run_cli("compare", tmp_path / "a", other, "--json")
    report = strict_json(result.stdout)
    assert result.exit_code == 1 and report["same"] is False, result.output
    if where == "logits":
        assert report["logits"]["max_abs_difference"] == "nan", report["logits"]
    else:  # NaN or infinity on one side only: an infinite difference
        assert {t["max_abs_difference"] for t in report["tensors"] if t["status"] == "different"} == {"inf"}
    assert any(("logits differ by nan" if where == "logits" else "values differ") in cause
               for cause in report["causes"]), report["causes"]
    with pytest.raises(AssertionError):
        assert_equivalent(tmp_path / "a", other)


def test_a_changed_logit_scale_is_a_difference_in_values(tmp_path, port):
    """Kills a difference of one-element tensors read as 0: `logit_scale` is the only one, and a port that
    changed it alone passed as "equal within tolerance"."""
    shutil.copytree(port, tmp_path / "a")
    weights = load_file(tmp_path / "a" / HF_WEIGHTS)
    weights["logit_scale"] += 0.5
    save_file(weights, tmp_path / "a" / HF_WEIGHTS)
    result = run_cli("compare", tmp_path / "a", port, "--no-logits")
    assert result.exit_code == 1 and "values differ: logit_scale" in result.stdout, result.output


def test_nan_and_infinity_in_the_same_place_on_both_sides_are_the_same_value(tmp_path, port, recwarn):
    """Kills NaN on both sides at one element counted as a difference, and numpy's warnings about infinity minus
    infinity or a float64 overflow reaching the user: the same non-finite value kept by a port is kept, and
    only the other elements are held to the weights tolerance, quietly."""
    for name, nudge in (("a", 0.0), ("b", 1e-3)):
        shutil.copytree(port, tmp_path / name)
        weights = load_file(tmp_path / name / HF_WEIGHTS)
        bias = weights["text_model.final_layer_norm.bias"]
        bias[0], bias[1], bias[2] = float("nan"), float("inf"), bias[2] + nudge
        weights["text_model.final_layer_norm.weight"] = weights["text_model.final_layer_norm.weight"].double()
        weights["text_model.final_layer_norm.weight"][0] = 1.7e308 if name == "a" else -1.7e308
        save_file(weights, tmp_path / name / HF_WEIGHTS)
    result = run_cli("compare", tmp_path / "a", tmp_path / "b", "--no-logits", "--weights-tolerance", "0.01",
                     "--json")
    report = strict_json(result.stdout)
    assert report["logits"]["max_abs_difference"] is None, report["logits"]
    bias, weight = ({t["name"]: t for t in report["tensors"]}[f"text_model.final_layer_norm.{n}"]
                    for n in ("bias", "weight"))
    assert bias["status"] == "equal within tolerance" and weight["max_abs_difference"] == "inf", (bias, weight)
    assert not [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ---- what a source is, and what comes with it ----------------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    """ViT-B-32's widths at one layer (GELU), with its weights."""
    model_cfg = shallow("ViT-B-32", layers=1)
    return model_cfg, random_open_clip_model(model_cfg, seed=2).state_dict()


def test_a_folder_with_both_formats_is_read_as_the_one_that_is_not_the_target(tmp_path, open_clip_model):
    """Kills a folder holding both formats always read as open_clip: `to-open-clip repo out` refused it as
    "already in the target's format" instead of reading its HF model."""
    model_cfg, weights = open_clip_model
    save_open_clip_folder(weights, model_cfg, tmp_path / "repo")
    assert run_cli("to-hf", tmp_path / "repo", tmp_path / "hf", "--no-verify").exit_code == 0
    for name in ("config.json", HF_WEIGHTS):
        shutil.copy(tmp_path / "hf" / name, tmp_path / "repo" / name)
    result = run_cli("to-open-clip", tmp_path / "repo", tmp_path / "out", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "read as the Hugging Face CLIPModel folder" in result.stdout


def test_an_hf_folders_own_image_normalisation_goes_to_open_clip(tmp_path):
    """Kills an HF folder's preprocessor_config.json ignored: HF -> open_clip wrote OpenAI's mean and std over
    the folder's own (0.5)."""
    from transformers import CLIPImageProcessor

    random_hf_model(hf_clip_config(), fp16_representable=False).save_pretrained(tmp_path / "hf")
    CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2).save_pretrained(tmp_path / "hf")
    assert run_cli("to-open-clip", tmp_path / "hf", tmp_path / "oc", "--no-verify").exit_code == 0
    preprocess_cfg = read_json(tmp_path / "oc" / "open_clip_config.json")["preprocess_cfg"]
    assert preprocess_cfg == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",  # PIL's 2
                              "resize_mode": "shortest", "size": 64}  # the model's resolution


def test_an_open_clip_folders_own_image_normalisation_goes_to_hf(tmp_path, open_clip_model):
    """Kills an open_clip folder's preprocess_cfg not passed on: open_clip -> HF wrote OpenAI's mean and std into
    preprocessor_config.json."""
    model_cfg, weights = open_clip_model
    save_open_clip_folder(weights, model_cfg, tmp_path / "oc", {"mean": [0.5] * 3, "std": [0.25] * 3})
    assert run_cli("to-hf", tmp_path / "oc", tmp_path / "hf", "--no-verify").exit_code == 0
    processor = read_json(tmp_path / "hf" / "preprocessor_config.json")
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.25] * 3


def test_an_open_clip_folders_interpolation_and_resize_mode_survive_a_trip_through_hf(tmp_path, open_clip_model):
    """Kills an interpolation or resize mode of open_clip's preprocess_cfg not read or not passed on: the
    folder that comes back would resize images as OpenAI's does."""
    model_cfg, weights = open_clip_model
    preprocess_cfg = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    save_open_clip_folder(weights, model_cfg, tmp_path / "oc", preprocess_cfg)
    assert run_cli("to-hf", tmp_path / "oc", tmp_path / "hf", "--no-verify").exit_code == 0
    processor = read_json(tmp_path / "hf" / "preprocessor_config.json")
    assert processor["resample"] == 2 and processor["do_center_crop"] is False, processor  # PIL's BILINEAR
    assert run_cli("to-open-clip", tmp_path / "hf", tmp_path / "back", "--no-verify").exit_code == 0
    back = read_json(tmp_path / "back" / "open_clip_config.json")["preprocess_cfg"]
    assert back == preprocess_cfg, back  # the record of the source config, given back as it was


def test_the_tokenizer_an_open_clip_config_names_is_not_replaced_by_openais(tmp_path, open_clip_model):
    """Kills the note from an open_clip config's hf_tokenizer_name dropped: OpenAI's tokenizer was written for a
    model that has another, with no note."""
    model_cfg, weights = open_clip_model
    named = {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}
    save_open_clip_folder(weights, named, tmp_path / "oc")
    result = run_cli("to-hf", tmp_path / "oc", tmp_path / "hf", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "no tokenizer written: the open_clip config names the tokenizer timm/ViT-B-16-SigLIP" in result.stdout
    assert not (tmp_path / "hf" / "vocab.json").exists() and not (tmp_path / "hf" / "tokenizer.json").exists()


def test_text_pooled_at_another_token_goes_to_open_clip_and_back(tmp_path, port):
    """Kills the pooling dropped from the open_clip config written (pool_type or eos_id left out or None): an HF
    folder that pools its text at the first token 7 became an open_clip model pooling at the largest id."""
    import open_clip

    shutil.copytree(port, tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    config["text_config"]["eos_token_id"] = 7
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    result = run_cli("to-open-clip", tmp_path / "hf", tmp_path / "oc")  # verified: both pool at the first 7
    assert result.exit_code == 0, result.output
    text_cfg = read_json(tmp_path / "oc" / "open_clip_config.json")["model_cfg"]["text_cfg"]
    assert (text_cfg["pool_type"], text_cfg["eos_id"]) == ("eos", 7)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    assert model.text_pool_type == "eos" and model.text_eos_id == 7
    assert run_cli("to-hf", tmp_path / "oc", tmp_path / "hf-again").exit_code == 0
    assert read_json(tmp_path / "hf-again" / "config.json")["text_config"]["eos_token_id"] == 7


# ---- what a target cannot hold, refused before anything is written -------------------------------------------


def test_an_mlp_width_the_tensors_contradict_is_refused_even_without_verification(tmp_path, port):
    """Kills `architecture.disagreements` no longer checking the MLP width: --no-verify wrote a folder that
    CLIPModel.from_pretrained cannot load."""
    shutil.copytree(port, tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    config["text_config"]["intermediate_size"] = 256  # the tensors say 512
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    for command, dest in (("to-openai", "out.pt"), ("to-open-clip", "out")):
        assert_refused(run_cli(command, tmp_path / "hf", tmp_path / dest, "--no-verify"),
                       "text.mlp_width is 256, the tensors say 512")
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


@pytest.mark.parametrize("heads", [3, 0])
def test_heads_that_do_not_split_the_width_are_refused_even_without_verification(tmp_path, port, heads):
    """Kills `head_problems` testing `heads < 1 and ...` for `or`: 3 heads of a 128-wide tower were let through
    (no attention can split it; --no-verify wrote what CLIPModel cannot build), 0 heads divided by zero."""
    shutil.copytree(port, tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    config["vision_config"]["num_attention_heads"] = heads
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert_refused(run_cli("to-open-clip", tmp_path / "hf", tmp_path / "oc", "--no-verify"),
                   f"vision width 128 does not split into {heads} heads")
    assert not (tmp_path / "oc").exists()


def test_open_clip_refuses_one_activation_per_tower(tmp_path, port):
    """Kills mixed activations (gelu text, QuickGELU vision) no longer refused by to-open-clip: --no-verify wrote
    quick_gelu: true for both towers."""
    shutil.copytree(port, tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    config["text_config"]["hidden_act"] = "gelu"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert_refused(run_cli("to-open-clip", tmp_path / "hf", tmp_path / "oc", "--no-verify"),
                   "activations are quick_gelu (vision) and gelu (text)")
    assert not (tmp_path / "oc").exists()


# ---- a cut model is checked against the whole model it was cut from -----------------------------------------


def _plant_wrong_block_left_out(monkeypatch) -> None:
    """A cut of Stable Diffusion 2.x's encoder that keeps the wrong blocks: the first left out, the rest moved up
    one (so that no key is missing)."""
    from roundtrip import mapping

    kept = mapping.before_block

    def shifted(state_dict, layout, tower, first_left_out):
        renamed = {key.replace(f"resblocks.{index + 1}.", f"resblocks.{index}."): tensor
                   for index in range(first_left_out) for key, tensor in state_dict.items()
                   if f"resblocks.{index + 1}." in key}
        return {**kept(state_dict, layout, tower, first_left_out), **renamed}

    monkeypatch.setattr(mapping, "before_block", shifted)


def test_sd2s_encoder_cut_as_diffusers_keeps_it_is_checked_block_by_block_against_the_whole(tmp_path):
    source = write_single_file(tmp_path / "sd2.safetensors", "Stable Diffusion 2.x", layers=3)
    (summary,) = convert_to_diffusers(source, tmp_path / "out")
    compared = summary.agreement.differences
    assert [name for name in compared if name.endswith(" of the whole model")] == [
        "text.embeddings of the whole model", "text.layers.0 of the whole model", "text.layers.1 of the whole model"]
    assert max(compared.values()) <= 1e-3


def test_a_wrong_cut_of_sd2s_encoder_fails_verification(tmp_path, monkeypatch):
    """The cut model and the target agree (both are built from the cut): only the whole model's blocks tell."""
    source = write_single_file(tmp_path / "sd2.safetensors", "Stable Diffusion 2.x", layers=3)
    _plant_wrong_block_left_out(monkeypatch)
    with pytest.raises(VerificationError, match="text.layers.0 of the whole model differs"):
        convert_to_diffusers(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- the reference models run in float32, whatever a config says ---------------------------------------------


def test_an_hf_folder_saved_in_float16_is_checked_in_float32(tmp_path):
    """transformers writes `"dtype": "float16"` into the config of a float16 model; built with that dtype, the
    reference would compute in float16 and the check would fail a correct conversion (0.0016 apart here)."""
    random_hf_model(hf_clip_config(), seed=3).half().save_pretrained(tmp_path / "hf16")
    assert read_json(tmp_path / "hf16" / "config.json")["dtype"] == "float16"
    result = run_cli("to-openai", tmp_path / "hf16", tmp_path / "out.pt")
    assert result.exit_code == 0, result.output
    assert "verification  max |difference| = " in result.stdout
