"""End to end: the clipconv command on real files, both directions, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roundtrip import mapping, references, verify
from roundtrip.architecture import Architecture
from roundtrip.examples import DEMO, random_open_clip_model, save_open_clip_folder
from roundtrip.facts import OPEN_CLIP_CONFIG
from roundtrip.readers import read_hf_folder
from roundtrip.strided import as_torch

from conftest import (
    HF_FOLDER_FILES,
    assert_identical,
    assert_nothing_left,
    assert_refused,
    hf_clip_config,
    import_clip,
    listing,
    random_hf_model,
    read_json,
    resnet_clip_state_dict,
    run_cli,
    save_legacy_pytorch_bin,
)

TOLERANCE = 1e-3


def openai_reference_logits(openai_weights: dict, architecture: Architecture):
    return references.openai_outputs(openai_weights, architecture, verify.probe_images(architecture),
                                 verify.probe_tokens(architecture))["logits"]


@torch.no_grad()
def hf_logits_from_folder(folder: Path, architecture: Architecture):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model(input_ids=verify.probe_tokens(architecture),
                 pixel_values=verify.probe_images(architecture)).logits_per_image


# ---- to-hf ------------------------------------------------------------------------------------------------


def test_help_lists_every_command_whole_with_examples():
    clipconv = Path(sys.executable).parent / "clipconv"
    result = subprocess.run([clipconv, "--help"], capture_output=True, text=True, check=True).stdout
    overview, listing = result.split("Commands:")
    for command in ("to-hf", "to-openai", "to-open-clip", "compare"):
        assert f"\n  {command} " in overview and f"\n  {command} " in listing, command
        text = subprocess.run([clipconv, command, "--help"], capture_output=True, text=True, check=True).stdout
        assert "Examples:" in text and f"clipconv {command} " in text
    assert "..." not in listing  # no summary cut short
    to_hf = " ".join(subprocess.run([clipconv, "to-hf", "--help"], capture_output=True, text=True).stdout.split())
    assert "OpenAI's tokenizer where it fits the model" in to_hf


def test_installed_command_reports_and_exits_as_main_does(tmp_path, demo_state_dict_file):
    clipconv = Path(sys.executable).parent / "clipconv"
    done = subprocess.run([clipconv, "to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"Wrote {tmp_path / 'hf'} " in done.stdout
    same = subprocess.run([clipconv, "compare", demo_state_dict_file, tmp_path / "hf", "--no-logits", "--json"],
                          capture_output=True, text=True)
    assert same.returncode == 0 and json.loads(same.stdout)["same"] is True, same.stderr
    failed = subprocess.run([clipconv, "to-hf", tmp_path / "missing.pt", tmp_path / "other"],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.splitlines()[-1].startswith("clipconv: error: "), failed.stderr
    misused = subprocess.run([clipconv, "compare", demo_state_dict_file], capture_output=True, text=True)
    assert misused.returncode == 2 and "Missing argument 'B'" in misused.stderr, misused.stderr


def test_torchscript_archive_converts_and_comes_back_bit_exact(tmp_path, demo_archive):
    original = torch.jit.load(str(demo_archive)).state_dict()
    result = run_cli("to-hf", demo_archive, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert "verification  max |difference|" in result.stdout
    assert listing(tmp_path / "hf") == HF_FOLDER_FILES

    weights = {k: v for k, v in original.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    gap = (openai_reference_logits(weights, DEMO) - hf_logits_from_folder(tmp_path / "hf", DEMO)).abs().max()
    assert gap <= TOLERANCE

    result = run_cli("to-openai", tmp_path / "hf", tmp_path / "back.pt")
    assert result.exit_code == 0, result.output
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert_identical(back, original)
    assert list(back) == list(original)  # in the archive's own order, too


def _wrapped(state_dict: dict) -> dict:
    return {"state_dict": state_dict, "epoch": 3}


def _data_parallel(state_dict: dict) -> dict:
    return {f"module.{key}": value for key, value in state_dict.items()}


@pytest.mark.parametrize(
    "packaging",
    [dict, _wrapped, _data_parallel, lambda sd: _wrapped(_data_parallel(sd))],
    ids=["plain", "state_dict-wrapped", "module-prefixed", "wrapped-and-prefixed"],
)
def test_state_dict_files_convert_in_every_packaging(tmp_path, demo_state_dict, packaging):
    torch.save(packaging(demo_state_dict), tmp_path / "in.pt")
    if packaging is not dict:  # a training run's packing: OpenAI's architecture only when the user says so
        assert_refused(run_cli("to-hf", tmp_path / "in.pt", tmp_path / "hf"), "--openai-architecture")
    result = run_cli("to-hf", tmp_path / "in.pt", tmp_path / "hf", *([] if packaging is dict else
                                                                      ["--openai-architecture"]))
    assert result.exit_code == 0, result.output
    written = read_hf_folder(tmp_path / "hf").tensors
    expected = {k: v.float() for k, v in mapping.to_hf(demo_state_dict).items()}  # float32 by default
    assert_identical(written, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "keep"])
def test_dtype_option_sets_the_written_dtype_and_to_openai_restores_the_source(tmp_path, demo_state_dict_file,
                                                                               demo_state_dict, dtype):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--dtype", dtype).exit_code == 0
    written = read_hf_folder(tmp_path / "hf").tensors
    source_as_hf = mapping.to_hf(demo_state_dict)
    for key, tensor in written.items():
        expected_dtype = source_as_hf[key].dtype if dtype == "keep" else getattr(torch, dtype)
        assert as_torch(tensor).dtype == expected_dtype, key
    assert run_cli("to-openai", tmp_path / "hf", tmp_path / "back.pt").exit_code == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in demo_state_dict.items()}
    if dtype == "keep":  # bf16 rounds fp32 tensors; keep and fp16 of an fp16 mix do not lose bits
        assert_identical(back, demo_state_dict)


def test_a_pt_file_clipconv_wrote_restores_the_formats_the_weights_were_in_as_a_safetensors_file_does(
        tmp_path, demo_state_dict_file):
    """Kills: the provenance record clipconv writes into a .pt zip not read back (HF float16 came back float32, an
    open_clip config's preprocess_cfg and spelt-out defaults came back as OpenAI's and left out)."""
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf16", "--dtype", "float16").exit_code == 0
    assert run_cli("to-openai", tmp_path / "hf16", tmp_path / "from_hf.pt").exit_code == 0
    assert run_cli("to-hf", tmp_path / "from_hf.pt", tmp_path / "hf_back").exit_code == 0
    assert {as_torch(tensor).dtype for tensor in read_hf_folder(tmp_path / "hf_back").tensors.values()} == \
        {torch.float16}
    assert read_json(tmp_path / "hf_back" / "config.json") == read_json(tmp_path / "hf16" / "config.json")

    model_cfg = {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64,  # its default
                                "patch_size": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1}}
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, tmp_path / "open_clip",
                          preprocess_cfg={"mean": [0.5] * 3, "std": [0.5] * 3})
    assert run_cli("to-openai", tmp_path / "open_clip", tmp_path / "from_open_clip.pt").exit_code == 0
    assert run_cli("to-open-clip", tmp_path / "from_open_clip.pt", tmp_path / "open_clip_back").exit_code == 0
    assert read_json(tmp_path / "open_clip_back" / OPEN_CLIP_CONFIG) == read_json(tmp_path / "open_clip" /
                                                                                   OPEN_CLIP_CONFIG)


def test_large_models_are_sharded_with_an_index_that_transformers_loads(tmp_path, demo_state_dict_file):
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--max-shard-size", "10MB")
    assert result.exit_code == 0, result.output
    files = listing(tmp_path / "hf")
    shards = [name for name in files if name.startswith("model-0")]
    assert len(shards) >= 3 and "model.safetensors.index.json" in files and "model.safetensors" not in files
    index = read_json(tmp_path / "hf" / "model.safetensors.index.json")
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:  # within the limit, unless one tensor alone exceeds it (as in save_pretrained)
        members = [key for key, name in index["weight_map"].items() if name == shard]
        assert (tmp_path / "hf" / shard).stat().st_size <= 10**7 + 10**5 or len(members) == 1
    gap = hf_logits_from_folder(tmp_path / "hf", DEMO) - openai_reference_logits(
        torch.load(demo_state_dict_file, weights_only=True), DEMO)
    assert gap.abs().max() <= TOLERANCE


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o027, 0o750, 0o640), (0o022, 0o755, 0o644)])
def test_written_files_follow_the_umask(tmp_path, demo_state_dict_file, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
        assert run_cli("to-openai", tmp_path / "hf", tmp_path / "model.pt", "--no-verify").exit_code == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "hf").stat().st_mode & 0o7777 == folder_mode
    assert (tmp_path / "hf" / "config.json").stat().st_mode & 0o7777 == file_mode
    assert (tmp_path / "model.pt").stat().st_mode & 0o7777 == file_mode  # a file DEST, staged private


# ---- to-openai from folders written by transformers ---------------------------------------------------------


def _save_safetensors(model, folder: Path) -> None:
    model.save_pretrained(folder)


def _save_sharded(model, folder: Path) -> None:
    model.save_pretrained(folder, max_shard_size="10MB")


HF_LAYOUTS = {
    # name: (text config overrides, how the folder is written)
    "legacy-eos-2": ({"eos_token_id": 2}, _save_safetensors),
    "current-eos-49407": ({"eos_token_id": 49407}, _save_safetensors),
    "sharded": ({}, _save_sharded),
    "pytorch_model.bin-with-position_ids": ({"eos_token_id": 2}, save_legacy_pytorch_bin),
}


@pytest.mark.parametrize("layout", HF_LAYOUTS)
def test_folders_from_transformers_go_to_clip_load_and_back_bit_exact(tmp_path, layout):
    overrides, save = HF_LAYOUTS[layout]
    hf_model = random_hf_model(hf_clip_config(**overrides), seed=5)
    save(hf_model, tmp_path / "hf")
    if layout == "sharded":
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()

    result = run_cli("to-openai", tmp_path / "hf", tmp_path / "model.pt")
    assert result.exit_code == 0, result.output

    clip = import_clip()
    model, _ = clip.load(str(tmp_path / "model.pt"), device="cpu", jit=False)  # halves, then back to fp32
    images, tokens = verify.probe_images(DEMO), verify.probe_tokens(DEMO)
    with torch.no_grad():
        reference = hf_model(input_ids=tokens, pixel_values=images).logits_per_image
        assert (model(images, tokens)[0] - reference).abs().max() <= TOLERANCE

    result = run_cli("to-hf", tmp_path / "model.pt", tmp_path / "hf-again")
    assert result.exit_code == 0, result.output
    # every tensor of the folder, position_ids of a pytorch_model.bin too (put back from the .pt's record)
    assert_identical(read_hf_folder(tmp_path / "hf-again").tensors, read_hf_folder(tmp_path / "hf").tensors)
    architecture_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "hidden_act", "layer_norm_eps", "max_position_embeddings", "vocab_size",
                           "image_size", "patch_size", "num_channels")
    again = read_json(tmp_path / "hf-again" / "config.json")
    for tower in ("text_config", "vision_config"):
        original = hf_model.config.to_dict()[tower]
        for field in architecture_fields:
            if field in original:
                assert again[tower][field] == original[field], (tower, field)
    assert again["projection_dim"] == hf_model.config.projection_dim


def test_configs_openai_cannot_represent_are_refused_listing_every_difference(tmp_path):
    config = hf_clip_config(hidden_act="gelu", layer_norm_eps=1e-6, eos_token_id=7)
    random_hf_model(config, fp16_representable=False).save_pretrained(tmp_path / "laion-style")
    result = run_cli("to-openai", tmp_path / "laion-style", tmp_path / "model.pt")
    assert_refused(result, str(tmp_path / "laion-style"), "text activation is gelu, OpenAI's code uses quick_gelu",
                   "text LayerNorm eps is 1e-06",
                   "text pooling is at the first token 7, OpenAI's code pools at the largest token id (49407)")
    assert not (tmp_path / "model.pt").exists()


def test_head_width_other_than_64_is_refused(tmp_path):
    config = hf_clip_config(num_attention_heads=4)  # 128 wide: OpenAI would use 2 heads of 64
    random_hf_model(config, fp16_representable=False).save_pretrained(tmp_path / "hf")
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "model.pt"),
                   "text has 4 heads of 32, OpenAI's code uses heads of 64")


# ---- refusals: one line, exit 1, nothing left behind ----------------------------------------------------------


def test_a_resnet_to_hf_is_refused_naming_clipmodels_missing_resnet_tower(tmp_path):
    torch.save(resnet_clip_state_dict(), tmp_path / "RN50.pt")
    assert_refused(run_cli("to-hf", tmp_path / "RN50.pt", tmp_path / "out"), "RN50.pt",
                   "transformers' CLIPModel cannot represent this model", "CLIPModel has no ResNet vision tower")
    assert_nothing_left(tmp_path, ["RN50.pt"])


def test_unknown_keys_are_named(tmp_path, demo_state_dict):
    torch.save({**demo_state_dict, "visual.extra_head.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    assert_refused(run_cli("to-hf", tmp_path / "extra.pt", tmp_path / "out"), "visual.extra_head.weight")
    assert_nothing_left(tmp_path, ["extra.pt"])


def test_overwrite_replaces_a_folder_of_clipconvs_own_output(tmp_path, demo_state_dict_file):
    dest = tmp_path / "hf"
    assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify", "--max-shard-size", "10MB").exit_code == 0
    assert_refused(run_cli("to-hf", demo_state_dict_file, dest), str(dest), "already exists", "--overwrite")

    assert run_cli("to-hf", demo_state_dict_file, dest, "--overwrite", "--no-verify").exit_code == 0
    assert listing(dest) == HF_FOLDER_FILES  # the shards and their index are gone with the old folder
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_dest_inside_source_is_refused(tmp_path):
    random_hf_model(hf_clip_config(), fp16_representable=False).save_pretrained(tmp_path / "hf")
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "hf" / "model.pt"), "inside it")
    assert listing(tmp_path / "hf") == ["config.json", "model.safetensors"]


def test_failed_verification_leaves_nothing_behind(tmp_path, demo_state_dict_file, monkeypatch):
    monkeypatch.setattr(verify, "TOLERANCE", 0.0)  # any real difference now fails
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    assert_refused(result, "logits differ")
    assert list(tmp_path.iterdir()) == []


def test_missing_source_and_non_clip_folder_are_refused(tmp_path):
    assert_refused(run_cli("to-hf", tmp_path / "nope.pt", tmp_path / "out"), "does not exist")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert_refused(run_cli("to-openai", tmp_path / "bert", tmp_path / "out.pt"), "not a CLIP config")
    assert_nothing_left(tmp_path, ["bert", "bert/config.json"])


@pytest.mark.parametrize("args", [["to-hf"], ["to-hf", "a.pt", "b", "--dtype", "int8"], ["convert", "a", "b"]])
def test_usage_errors_exit_2(args):
    assert run_cli(*args).exit_code == 2




# Run in a fresh interpreter: the test session itself has imported transformers and clip long ago.
_IMPORTS_AFTER_CONVERTING = """
import sys
from roundtrip.cli import main
main.main(sys.argv[1:], standalone_mode=False)
print(",".join(sorted({name.split(".")[0] for name in sys.modules} & {"torch", "transformers", "clip", "torchvision",
                                                                    "open_clip", "timm"})))
"""


@pytest.mark.slow
def test_no_verify_converts_every_way_without_importing_torch_transformers_clip_or_open_clip(tmp_path,
                                                                                          demo_state_dict_file):
    for args in (["to-hf", demo_state_dict_file, tmp_path / "hf"], ["to-openai", tmp_path / "hf", tmp_path / "back.pt"],
                 ["to-open-clip", tmp_path / "hf", tmp_path / "open-clip"],
                 ["to-hf", tmp_path / "open-clip", tmp_path / "hf-again"],
                 # one tower, in each layout
                 ["to-hf", tmp_path / "hf", tmp_path / "text-hf", "--tower", "text"],
                 ["to-openai", tmp_path / "text-hf", tmp_path / "text.safetensors"],
                 ["to-open-clip", tmp_path / "text.safetensors", tmp_path / "text-open-clip"],
                 ["to-hf", tmp_path / "text-open-clip", tmp_path / "text-hf-again", "--tower", "text"]):
        done = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER_CONVERTING, *map(str, args), "--no-verify"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "", f"{args[0]} --no-verify imported {done.stdout.splitlines()[-1]}"
    assert_identical(torch.load(tmp_path / "back.pt", weights_only=True),
                     torch.load(demo_state_dict_file, weights_only=True))
