"""`clipconv compare` and `roundtrip.testing.assert_equivalent`: the same model is recognised across every pair of
formats, and each kind of damage a port suffers is caught and named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import load_file, save_file

from roundtrip import open_clip_config
from roundtrip.compare import compare, compare_encoders
from roundtrip.errors import ClipconvError
from roundtrip.examples import DEMO, random_open_clip_model, random_openai_state_dict, save_open_clip_folder
from roundtrip.pipeline import convert_to_diffusers
from roundtrip.testing import assert_equivalent, write_single_file

from conftest import assert_refused, run_cli

HF_WEIGHTS = "model.safetensors"


def shallow_quickgelu() -> dict:
    """An open_clip model OpenAI's code can build too (QuickGELU, heads of 64): every pair of formats."""
    config = open_clip_config.registry_config("ViT-B-16-quickgelu")
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 1
    return config


@pytest.fixture(scope="module")
def sources(tmp_path_factory, demo_state_dict_file) -> dict[str, Path]:
    """The same model in each format (an OpenAI state dict in OpenAI's fp16 mix, an HF folder transformers
    wrote, an open_clip folder), each from its own code."""
    from roundtrip.testing import write_checkpoint

    folder = tmp_path_factory.mktemp("sources")
    model_cfg = shallow_quickgelu()
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, folder / "open_clip")
    return {
        "openai": demo_state_dict_file,
        "hf": write_checkpoint(folder / "hf", DEMO, format="hf"),
        "open_clip": folder / "open_clip",
    }


COMMANDS = {"hf": "to-hf", "openai": "to-openai", "open_clip": "to-open-clip"}
PAIRS = [(source, target) for source in COMMANDS for target in COMMANDS if source != target]


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def test_a_checkpoint_and_its_conversion_are_the_same_model(tmp_path, sources, source, target):
    converted = tmp_path / ("out.pt" if target == "openai" else "out")
    assert run_cli(COMMANDS[target], sources[source], converted).exit_code == 0
    result = run_cli("compare", sources[source], converted)
    assert result.exit_code == 0, result.output
    assert "verdict       same model" in result.stdout
    assert_equivalent(sources[source], converted)


def test_a_dtype_that_differs_while_every_value_is_equal_is_reported_not_failed(tmp_path, sources):
    assert run_cli("to-hf", sources["openai"], tmp_path / "hf").exit_code == 0  # OpenAI's fp16 written as float32
    result = run_cli("compare", sources["openai"], tmp_path / "hf", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    retyped = [t for t in report["tensors"] if t["a_dtype"] != t["b_dtype"]]
    assert retyped and all(t["status"] == "identical" and t["b_dtype"] == "float32" for t in retyped)
    assert all(t["max_abs_difference"] == 0.0 for t in report["tensors"])  # a number, as for any other tensor
    assert report["verdict"] == "same" and report["logits"]["max_abs_difference"] <= 1e-3
    text = run_cli("compare", sources["openai"], tmp_path / "hf").stdout
    assert f"tensors       {len(report['tensors'])}: {len(report['tensors'])} identical; {len(retyped)} in another " \
           "dtype" in text, text


# ---- damage, each named ---------------------------------------------------------------------------------------


def _edit_weights(edit):
    def damage(folder: Path) -> None:
        weights = load_file(folder / HF_WEIGHTS)
        edit(weights)
        save_file({key: tensor.contiguous() for key, tensor in weights.items()}, folder / HF_WEIGHTS)
    return damage


def _flip_one_element(weights) -> None:
    weights["vision_model.encoder.layers.1.mlp.fc1.weight"][3, 5] *= -1


def _swap_q_and_k(weights) -> None:
    q, k = "text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.encoder.layers.0.self_attn.k_proj.weight"
    weights[q], weights[k] = weights[k], weights[q]


def _untransposed_projection(weights) -> None:
    # DEMO's text projection is square (128 x 128): the shape cannot tell, as in kohya's SDXL converter.
    weights["text_projection.weight"] = weights["text_projection.weight"].t()


def _wrong_activation(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"  # as the hub's MetaCLIP port shipped (transformers#26584)
    (folder / "config.json").write_text(json.dumps(config))


def _missing_tensor(weights) -> None:
    del weights["text_model.final_layer_norm.bias"]


DAMAGE = {
    "a config with the wrong hidden_act": (_wrong_activation, ["vision.activation is 'quick_gelu' in A, 'gelu' in B",
                                                               "vision.layers.0 differs by"]),
    "one flipped weight element": (_edit_weights(_flip_one_element),
                                   ["values differ: visual.transformer.resblocks.1.mlp.c_fc.weight"]),
    "q and k swapped": (_edit_weights(_swap_q_and_k), ["values differ: transformer.resblocks.0.attn.in_proj_weight"]),
    "an untransposed square projection": (_edit_weights(_untransposed_projection),
                                          ["transposed (each the other's transpose", "text_projection"]),
    "a missing tensor": (_edit_weights(_missing_tensor), ["missing 1 tensor", "text_model.final_layer_norm.bias"]),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_to_a_port_is_caught_and_named(tmp_path, sources, case):
    damage, causes = DAMAGE[case]
    assert run_cli("to-hf", sources["openai"], tmp_path / "port").exit_code == 0
    damage(tmp_path / "port")
    result = run_cli("compare", sources["openai"], tmp_path / "port")
    assert result.exit_code == 1, result.output
    for cause in causes:
        assert cause in result.output, result.output
    with pytest.raises(AssertionError) as raised:
        assert_equivalent(sources["openai"], tmp_path / "port")
    assert causes[0] in str(raised.value)


def test_values_changed_by_a_cast_fail_unless_the_weights_tolerance_allows_them(tmp_path):
    torch.save(random_openai_state_dict(DEMO, openai_dtypes=False), tmp_path / "fp32.pt")
    assert run_cli("to-hf", tmp_path / "fp32.pt", tmp_path / "bf16", "--dtype", "bfloat16").exit_code == 0
    strict = run_cli("compare", tmp_path / "fp32.pt", tmp_path / "bf16", "--no-logits")
    assert strict.exit_code == 1 and "values differ" in strict.stdout
    loose = run_cli("compare", tmp_path / "fp32.pt", tmp_path / "bf16", "--no-logits", "--weights-tolerance", "0.02")
    assert loose.exit_code == 0, loose.output
    counts = next(line for line in loose.stdout.splitlines() if line.startswith("tensors"))
    assert "equal within tolerance" in counts and "architecture  the same" in loose.stdout, loose.stdout
    assert "equal within tolerance" in loose.stdout


def test_json_carries_the_verdict_the_tensor_table_and_the_logit_figure(tmp_path, sources):
    port = tmp_path / "port"
    assert run_cli("to-hf", sources["openai"], port).exit_code == 0
    _edit_weights(_flip_one_element)(port)
    result = run_cli("compare", sources["openai"], port, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "different" and report["same"] is False and report["causes"]
    (flipped,) = [t for t in report["tensors"] if t["status"] == "different"]
    assert flipped["name"] == "visual.transformer.resblocks.1.mlp.c_fc.weight" and flipped["max_abs_difference"] > 0
    assert len(report["tensors"]) == len(torch.load(sources["openai"], weights_only=True))
    assert isinstance(report["logits"]["max_abs_difference"], float)
    assert report["a"]["architecture"]["vision.heads"] == 2
    assert (report["tolerance"], report["weights_tolerance"]) == (1e-3, 0.0)
    loose = json.loads(run_cli("compare", sources["openai"], port, "--json", "--weights-tolerance", "0.5").stdout)
    assert loose["weights_tolerance"] == 0.5  # the tolerance the report was judged by, as given


def test_no_logits_is_said_in_the_report_and_no_model_is_run(tmp_path, sources):
    assert run_cli("to-hf", sources["openai"], tmp_path / "hf").exit_code == 0
    report = json.loads(run_cli("compare", sources["openai"], tmp_path / "hf", "--no-logits", "--json").stdout)
    assert report["logits"] == {"max_abs_difference": None, "note": "--no-logits"} and report["outputs"] is None


def test_models_of_other_shapes_are_different_and_no_model_is_run_on_a_probe_that_fits_one(sources):
    result = run_cli("compare", sources["openai"], sources["open_clip"], "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["logits"] == {"max_abs_difference": None, "note": "the shapes differ, so no probe fits both models"}
    assert report["outputs"] is None and report["verdict"] == "different"


def test_compare_from_python_holds_weights_bit_for_bit_and_runs_both_models_unless_told_otherwise(tmp_path,
                                                                                                   sources):
    """compare()'s own defaults, which Python callers get: every weight equal (a weights tolerance of 0) and
    each side's model code run (the outputs compared)."""
    from roundtrip.compare import compare

    assert run_cli("to-hf", sources["openai"], tmp_path / "hf").exit_code == 0
    report = compare(sources["openai"], tmp_path / "hf")
    assert report.same and report.weights_tolerance == 0.0
    assert report.outputs is not None and report.outputs.logits is not None


def test_usage_errors_exit_2_and_unreadable_sources_1(tmp_path, sources):
    assert run_cli("compare", sources["openai"]).exit_code == 2
    assert run_cli("compare", sources["openai"], sources["hf"], "--tolerance", "-1").exit_code == 2
    result = run_cli("compare", sources["openai"], tmp_path / "missing")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = run_cli("compare", sources["openai"], tmp_path / "missing", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["verdict"] == "error"


def test_the_readme_names_every_field_of_the_json_report_as_it_is(tmp_path, sources):
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("`--json` prints one object"):]
    section = " ".join(section[:section.index("\n\n")].split())
    named = set(re.findall(r"`(\w+)`", section))
    assert run_cli("to-hf", sources["openai"], tmp_path / "hf").exit_code == 0
    report = json.loads(run_cli("compare", sources["openai"], tmp_path / "hf", "--json").stdout)
    assert isinstance(report["tensors"], list) and "a list with one object per tensor" in section
    fields = {*report, *report["a"], *report["logits"], *(key for tensor in report["tensors"] for key in tensor)}
    assert fields <= named, sorted(fields - named)


def test_the_text_report_shows_each_sides_dtype_and_shape_and_absent_where_a_side_lacks_a_tensor(tmp_path):
    """Kills mutants of `compare._side_text` (a side's dtype and shape, or "absent", in the people's report)."""
    fp32 = random_openai_state_dict(DEMO, openai_dtypes=False)
    deeper = {**fp32, "token_embedding.weight": fp32["token_embedding.weight"][:-1].clone(),
              "ln_final.weight": fp32["ln_final.weight"] + 0.5}
    deeper.update({key.replace(".1.", ".2.", 1): tensor.clone() for key, tensor in fp32.items()
                   if key.startswith("transformer.resblocks.1.")})
    torch.save(fp32, tmp_path / "a.pt")
    torch.save(deeper, tmp_path / "b.pt")
    result = run_cli("compare", tmp_path / "a.pt", tmp_path / "b.pt", "--no-logits")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"A             {tmp_path / 'a.pt'} (OpenAI CLIP checkpoint, torch.save state dict)",
                         "  note        read as OpenAI's CLIP (QuickGELU, heads of 64); for an open_clip checkpoint "
                         "pass --open-clip-model NAME or --open-clip-config FILE"], lines
    assert lines[2].startswith(f"B             {tmp_path / 'b.pt'} ("), lines
    assert lines[4:10] == [
        "architecture  vocab_size is 49408 in A, 49407 in B",
        "architecture  text.layers is 2 in A, 3 in B",
        "tensors       74: 60 identical, 1 different, 1 shape differs, 12 only in B",
        "  shape differs token_embedding.weight (float32 [49408, 128] / float32 [49407, 128])",
        "  different     ln_final.weight (float32 [128] / float32 [128], max |difference| 0.5)",
        "  only in B     transformer.resblocks.2.attn.in_proj_weight (absent / float32 [384, 128])"], lines
    backwards = run_cli("compare", tmp_path / "b.pt", tmp_path / "a.pt", "--no-logits").stdout
    assert "tensors       74: 60 identical, 1 different, 1 shape differs, 12 only in A" in backwards, backwards
    assert "  only in A     transformer.resblocks.2.ln_1.bias (float32 [128] / absent)" in backwards, backwards


def test_a_float64_weight_and_its_float32_rounding_are_not_the_same_value(tmp_path):
    """Kills a comparison of float64 with float32 done in float32, where the rounding of the one is the other."""
    fp32 = random_openai_state_dict(DEMO, openai_dtypes=False)
    precise = {**fp32, "ln_final.weight": torch.full_like(fp32["ln_final.weight"], 0.1, dtype=torch.float64)}
    rounded = {**fp32, "ln_final.weight": precise["ln_final.weight"].float()}
    torch.save(precise, tmp_path / "a.pt")
    torch.save(rounded, tmp_path / "b.pt")
    result = run_cli("compare", tmp_path / "a.pt", tmp_path / "b.pt", "--no-logits", "--json")
    tensor = next(t for t in json.loads(result.stdout)["tensors"] if t["name"] == "ln_final.weight")
    assert result.exit_code == 1 and tensor["status"] == "different", tensor
    assert tensor["max_abs_difference"] == pytest.approx(abs(0.1 - float(numpy.float32(0.1))), rel=1e-6)


def test_a_transposed_square_tensor_within_the_weights_tolerance_is_equal_within_it(tmp_path):
    """A tensor that is the other's transpose is named so only where the difference is beyond what the weights
    tolerance accepts; at exactly the tolerance it is within it, like any other tensor."""
    fp32 = random_openai_state_dict(DEMO, openai_dtypes=False)
    projection = torch.zeros_like(fp32["text_projection"])  # square in DEMO (128 x 128)
    projection[0, 1] = 0.5  # its transpose differs from it by exactly 0.5
    torch.save({**fp32, "text_projection": projection}, tmp_path / "a.pt")
    torch.save({**fp32, "text_projection": projection.t().contiguous()}, tmp_path / "b.pt")
    for tolerance, status in (("0.5", "equal within tolerance"), ("0.25", "transposed")):
        result = run_cli("compare", tmp_path / "a.pt", tmp_path / "b.pt", "--no-logits", "--json",
                         "--weights-tolerance", tolerance)
        tensor = next(t for t in json.loads(result.stdout)["tensors"] if t["name"] == "text_projection")
        assert (tensor["status"], tensor["max_abs_difference"]) == (status, 0.5), tensor


def test_a_zero_of_the_other_sign_is_an_equal_value_but_not_the_same_bits(tmp_path):
    """Kills floats compared by value where "identical" promises the same bits: -0.0 and 0.0 are equal values."""
    fp32 = random_openai_state_dict(DEMO, openai_dtypes=False)
    zero, negative_zero = (torch.full_like(fp32["ln_final.bias"], value) for value in (0.0, -0.0))
    torch.save({**fp32, "ln_final.bias": zero}, tmp_path / "a.pt")
    torch.save({**fp32, "ln_final.bias": negative_zero}, tmp_path / "b.pt")
    result = run_cli("compare", tmp_path / "a.pt", tmp_path / "b.pt", "--no-logits", "--json")
    tensor = next(t for t in json.loads(result.stdout)["tensors"] if t["name"] == "ln_final.bias")
    assert result.exit_code == 0 and tensor["status"] == "equal within tolerance", tensor
    assert tensor["max_abs_difference"] == 0.0


def test_compare_of_a_single_file_and_its_components_reports_each_encoder(tmp_path):
    """compare SINGLE_FILE FOLDER: one report per encoder, each as diffusers keeps it (SD 2.x's cut too); a
    kohya-converted text_encoder_2 (its projection not transposed) is named, the other encoder is the same."""
    from safetensors.torch import save_file

    sd2 = write_single_file(tmp_path / "sd2.safetensors", "Stable Diffusion 2.x", layers=2, vocab_size=1000)
    convert_to_diffusers(sd2, tmp_path / "sd2-components", verify_logits=False)
    same = run_cli("compare", sd2, tmp_path / "sd2-components")
    assert same.exit_code == 0 and "encoder       clip_h" in same.output and "verdict       same model" in same.output
    found = json.loads(run_cli("compare", sd2, tmp_path / "sd2-components", "--json").stdout)["encoders"]["clip_h"]
    assert found["a"]["path"] == str(sd2) and found["b"]["path"] == str(tmp_path / "sd2-components" / "text_encoder")
    assert found["a"]["format"].startswith("open_clip's ViT-H-14 text encoder (clip_h) of a Stable Diffusion 2.x")
    assert found["a"]["architecture"]["text.layers"] == 1  # side A as diffusers keeps it: cut after block 0
    assert any("left out: block 1, logit_scale, text_projection" in note for note in found["a"]["notes"])
    assert found["outputs"]["text.layers.0"] == 0.0
    # Python's defaults: weights bit for bit, and the models run
    (from_python,) = compare_encoders(sd2, tmp_path / "sd2-components").values()
    assert from_python.weights_tolerance == 0.0 and from_python.outputs is not None
    sdxl = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL", layers=1, vocab_size=1000)
    convert_to_diffusers(sdxl, tmp_path / "kohya", verify_logits=False)
    weights_file = tmp_path / "kohya" / "text_encoder_2" / "model.safetensors"
    weights = load_file(weights_file)
    weights["text_projection.weight"] = weights["text_projection.weight"].t().contiguous()
    save_file(weights, weights_file, metadata={"format": "pt"})
    result = run_cli("compare", sdxl, tmp_path / "kohya", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "different" and report["encoders"]["clip_l"]["same"]
    assert any("transposed (each the other's transpose" in cause for cause in report["encoders"]["clip_g"]["causes"])
    text = run_cli("compare", sdxl, tmp_path / "kohya").stdout
    assert "tensors       17: 16 identical, 1 transposed\n  transposed    text_projection (" in text
    assert re.search(r"  transposed    text_projection \(.*, max \|difference\| [0-9.]+\)\n", text)
    assert_refused(run_cli("compare", sd2, tmp_path / "kohya"),
                   f"holds text_encoder_2/, and {sd2} (a Stable Diffusion 2.x checkpoint")


def test_compare_names_a_projection_copied_without_its_transpose(tmp_path):
    """A kohya-converted SDXL folder: text_encoder_2's projection is the single file's matrix as it is."""
    source = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL")
    convert_to_diffusers(source, tmp_path / "ours", verify_logits=False)
    assert_equivalent(source, tmp_path / "ours" / "text_encoder_2", encoder_a="clip_g")
    weights_file = tmp_path / "ours" / "text_encoder_2" / "model.safetensors"
    weights = load_file(weights_file)
    weights["text_projection.weight"] = weights["text_projection.weight"].t().contiguous()
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(AssertionError) as refused:
        assert_equivalent(source, tmp_path / "ours" / "text_encoder_2", encoder_a="clip_g")
    assert "1 tensor(s) transposed (each the other's transpose" in str(refused.value)
    assert "text_projection" in str(refused.value)


@pytest.mark.parametrize("compared", [compare, compare_encoders])
def test_compare_looks_a_name_up_online_unless_asked_to_stay_offline(tmp_path, monkeypatch, demo_state_dict_file,
                                                                    compared):
    """Kills: `offline` not passed on to the lookup of either side's repository name (compare's A and B, the single
    file and the folder of compare_encoders), or defaulting to True."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = []

    def no_network(repo, *, local_files_only, **settings):  # what the lookup asks for, answered as no network would
        asked.append(local_files_only)
        raise LocalEntryNotFoundError(f"{repo}: no network here")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    present = demo_state_dict_file if compared is compare else tmp_path  # what each side's reader gets past
    for offline in ({}, {"offline": False}, {"offline": True}):
        for a, b in (("org/missing", present), (present, "org/missing")):
            asked.clear()
            with pytest.raises(ClipconvError, match="org/missing: is neither a file or folder here"):
                compared(a, b, **offline)
            assert asked == [offline.get("offline", False)], (a, b, offline)


def test_compare_says_a_local_file_was_read_where_the_cache_holds_a_repository_of_its_name(tmp_path, monkeypatch,
                                                                                           demo_state_dict_file):
    """Kills: the note that a side's name was read as the local path, not the cached repository, left out."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub" / "models--org--model").mkdir(parents=True)  # a repository of that name in the cache
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    shutil.copy(demo_state_dict_file, tmp_path / "org" / "model")
    report = compare("org/model", demo_state_dict_file, logits=False)
    assert report.a.notes[0] == "org/model is the local file, not the Hugging Face repository of that name in the cache"
    assert report.b.notes == [] and report.same
