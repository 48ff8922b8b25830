"""Conversions within one format: a source already in the target's format is written in that format's canonical
form (an OpenAI TorchScript archive or training checkpoint as the plain state dict `clip.load` takes, an
open_clip training checkpoint as a folder `local-dir:` loads, an HF folder re-typed, re-sharded or moved off
pickles), bit for bit and verified; one that would change nothing says so and writes nothing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from roundtrip import verify
from roundtrip.examples import DEMO, random_open_clip_model, random_openai_state_dict, training_checkpoint
from roundtrip.readers import read_hf_folder

from conftest import (
    assert_identical,
    hf_clip_config,
    import_clip,
    random_hf_model,
    read_json,
    run_cli,
    save_legacy_pytorch_bin,
    save_one_tower,
    shallow,
)

VERIFIED_EXACTLY = "verification  max |difference| = 0.00e+00"


def _converted(*args) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _as_torch(tensors: dict) -> dict:
    from roundtrip.strided import as_torch

    return {key: as_torch(tensor) for key, tensor in tensors.items()}


# ---- OpenAI: what clip.load(..., jit=False) takes ---------------------------------------------------------------


def test_a_torchscript_archive_becomes_the_plain_state_dict_clip_load_takes_bit_exact(tmp_path, demo_archive):
    assert VERIFIED_EXACTLY in _converted("to-openai", demo_archive, tmp_path / "plain.pt")
    written = torch.load(tmp_path / "plain.pt", weights_only=True)
    # every weight and the archive's three 0-dim attributes, as its state dict holds them
    assert_identical(written, torch.jit.load(demo_archive, map_location="cpu").state_dict())
    model, _ = import_clip().load(str(tmp_path / "plain.pt"), device="cpu", jit=False)
    assert model.visual.input_resolution == DEMO.image_resolution


def test_a_training_checkpoint_of_openais_model_becomes_a_plain_state_dict(tmp_path):
    weights = random_openai_state_dict(DEMO, seed=3)
    torch.save(training_checkpoint(weights), tmp_path / "epoch_3.pt")
    assert VERIFIED_EXACTLY in _converted("to-openai", tmp_path / "epoch_3.pt", tmp_path / "plain.pt",
                                          "--openai-architecture")
    written = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert list(written) == list(weights)  # no module. prefix, no wrapping, nothing of the optimizer
    assert_identical(written, weights)
    import_clip().load(str(tmp_path / "plain.pt"), device="cpu", jit=False)


def test_an_openai_state_dict_as_it_already_is_changes_nothing_and_nothing_is_written(tmp_path):
    torch.save(random_openai_state_dict(DEMO), tmp_path / "small.pt")
    result = run_cli("to-openai", tmp_path / "small.pt", tmp_path / "again.pt", "--no-verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Nothing to change: {tmp_path / 'small.pt'} already is what")
    assert len(result.stdout.splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["small.pt"]


def test_an_openai_state_dict_written_as_safetensors_is_a_change(tmp_path):
    weights = random_openai_state_dict(DEMO)
    torch.save(weights, tmp_path / "small.pt")
    _converted("to-openai", tmp_path / "small.pt", tmp_path / "small.safetensors", "--no-verify")
    assert_identical(load_file(tmp_path / "small.safetensors"), weights)


# ---- open_clip: a folder local-dir: loads -------------------------------------------------------------------


@pytest.mark.parametrize("config", ["a model config", "an open_clip_config.json"])
def test_an_open_clip_training_checkpoint_becomes_a_folder_local_dir_loads_bit_exact(tmp_path, config):
    import open_clip

    model_cfg = shallow("ViT-B-32", layers=1)
    weights = random_open_clip_model(model_cfg, seed=5).state_dict()
    torch.save(training_checkpoint(weights), tmp_path / "epoch_3.pt")
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    given = model_cfg if config == "a model config" else {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (tmp_path / "cfg.json").write_text(json.dumps(given))
    assert VERIFIED_EXACTLY in _converted("to-open-clip", tmp_path / "epoch_3.pt", tmp_path / "out",
                                          "--open-clip-config", tmp_path / "cfg.json")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    assert_identical(model.state_dict(), weights)
    written = read_json(tmp_path / "out" / "open_clip_config.json")
    assert written["model_cfg"] == model_cfg
    if config != "a model config":
        assert written["preprocess_cfg"] == preprocess_cfg


# ---- Hugging Face: re-typed, re-sharded, off pickles --------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_model(hf_clip_config(), seed=7, fp16_representable=False)


def test_an_hf_folder_is_written_in_float16_when_asked(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    assert "verification  max |difference|" in _converted("to-hf", tmp_path / "hf", tmp_path / "hf16",
                                                           "--dtype", "float16")
    written = read_hf_folder(tmp_path / "hf16").tensors
    assert {tensor.dtype.name for tensor in written.values()} == {"float16"}
    assert_identical(_as_torch(written), {key: tensor.half() for key, tensor in hf_model.state_dict().items()})


def test_an_hf_folders_config_is_kept_as_it_is(tmp_path, hf_model):
    """A config written by transformers 4.x (its fields, its version) is not replaced by one made anew."""
    hf_model.save_pretrained(tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    config.update(transformers_version="4.40.0", initializer_factor=1.0, custom_field="kept")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    _converted("to-hf", tmp_path / "hf", tmp_path / "hf16", "--dtype", "float16", "--no-verify")
    assert read_json(tmp_path / "hf16" / "config.json") == {**config, "dtype": "float16"}  # the weights' own


def test_a_re_typed_hf_folder_loads_in_the_dtype_written_by_default(tmp_path, hf_model):
    """from_pretrained's default (dtype="auto") loads the weights in the dtype config.json records: a kept
    config records the one they are written in (transformers 4's torch_dtype too)."""
    from transformers import CLIPModel

    hf_model.save_pretrained(tmp_path / "hf")
    config = read_json(tmp_path / "hf" / "config.json")
    assert config["dtype"] == "float32"
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
    _converted("to-hf", tmp_path / "hf", tmp_path / "bf16", "--dtype", "bfloat16", "--no-verify")
    written = read_json(tmp_path / "bf16" / "config.json")
    assert (written["dtype"], written["torch_dtype"]) == ("bfloat16", "bfloat16")
    assert CLIPModel.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_an_hf_folder_is_sharded_at_the_size_asked_and_read_back_whole(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    _converted("to-hf", tmp_path / "hf", tmp_path / "sharded", "--max-shard-size", "1MB")
    index = read_json(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) > 1
    assert_identical(_as_torch(read_hf_folder(tmp_path / "sharded").tensors), hf_model.state_dict())


def test_an_hf_folder_of_pickles_becomes_safetensors_with_its_position_ids(tmp_path, hf_model):
    save_legacy_pytorch_bin(hf_model, tmp_path / "hf")
    _converted("to-hf", tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    expected = torch.load(tmp_path / "hf" / "pytorch_model.bin", weights_only=True)
    assert_identical(load_file(tmp_path / "out" / "model.safetensors"), expected)


def test_an_hf_folder_as_it_already_is_changes_nothing_and_nothing_is_written(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Nothing to change: {tmp_path / 'hf'} already is what")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


def test_a_float32_hf_folder_changed_in_one_tensor_dtype_is_a_change(tmp_path, hf_model):
    """What decides "nothing to change" is every tensor's dtype, not the dtypes' count."""
    hf_model.save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    weights["logit_scale"] = weights["logit_scale"].double()
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    _converted("to-hf", tmp_path / "hf", tmp_path / "out", "--dtype", "float32", "--no-verify")
    assert load_file(tmp_path / "out" / "model.safetensors")["logit_scale"].dtype == torch.float32


def test_a_same_format_conversion_is_checked_by_running_the_model_on_both_sides(tmp_path, monkeypatch, hf_model):
    """The check still runs (it checks the reading and the writing): a model that disagrees with itself is
    refused."""
    hf_model.save_pretrained(tmp_path / "hf")
    real = verify.agreement
    monkeypatch.setattr(verify, "agreement", lambda first, second: verify.Agreement(
        {**real(first, second).differences, "logits": 1.0}))
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "out", "--dtype", "float16")
    assert result.exit_code != 0 and "logits differ" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("name, prefixed", [("CLIPTextModel", False), ("CLIPVisionModelWithProjection", True)])
def test_a_tower_alone_stays_that_tower_with_its_keys_as_they_were(tmp_path, name, prefixed):
    save_one_tower(tmp_path / "hf", name, prefixed=prefixed)
    assert VERIFIED_EXACTLY.split(" = ")[0] in _converted("to-hf", tmp_path / "hf", tmp_path / "out",
                                                          "--dtype", "float16")
    source = load_file(tmp_path / "hf" / "model.safetensors")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert_identical(written, {key: tensor.half() if tensor.is_floating_point() else tensor
                               for key, tensor in source.items()})
    assert read_json(tmp_path / "out" / "config.json")["architectures"] == [name]


def test_an_hf_folders_own_tokenizer_and_image_processor_files_are_kept_as_they_are(tmp_path, hf_model):
    """Re-typing a folder loses nothing beside the weights: its tokenizer (here not OpenAI's) and its
    preprocessor_config.json come through byte for byte, not replaced by the ones made for a CLIP."""
    hf_model.save_pretrained(tmp_path / "hf")
    vocab = {f"token{index}": index for index in range(49408)}
    own = {"vocab.json": json.dumps(vocab), "merges.txt": "#version: 0.2\r\nt o\r\n",
           "tokenizer_config.json": '{"model_max_length": 77, "custom": true}\n',
           "preprocessor_config.json": json.dumps({
               "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 64},
               "resample": 3, "do_center_crop": True, "crop_size": {"height": 64, "width": 64},
               "do_normalize": True, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]}, indent=4)}
    for name, text in own.items():
        (tmp_path / "hf" / name).write_bytes(text.encode())
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "out", "--dtype", "float16", "--no-verify")
    assert result.exit_code == 0, result.output
    for name, text in own.items():
        assert (tmp_path / "out" / name).read_bytes() == text.encode(), name
    assert not (tmp_path / "out" / "tokenizer.json").exists()  # not half OpenAI's tokenizer beside its own


def test_an_hf_folders_tokenizer_file_that_is_not_text_is_refused_by_name_and_nothing_is_written(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_bytes(b'{"\xff": 0}')
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "out", "--dtype", "float16", "--no-verify")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"clipconv: error: {tmp_path / 'hf' / 'vocab.json'}: "
                                                             "is not UTF-8 text")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


def test_a_tower_taken_out_of_an_hf_folder_gets_its_own_config_and_keeps_its_dtypes(tmp_path, hf_model):
    copy.deepcopy(hf_model).half().save_pretrained(tmp_path / "hf")
    result = run_cli("to-hf", tmp_path / "hf", tmp_path / "text", "--tower", "text", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "no longer fits" not in result.stdout  # the whole model's config is not this tower's, as expected
    config = read_json(tmp_path / "text" / "config.json")
    assert (config["architectures"], config["model_type"]) == (["CLIPTextModelWithProjection"], "clip_text_model")
    written = load_file(tmp_path / "text" / "model.safetensors")
    assert {tensor.dtype for tensor in written.values()} == {torch.float16}  # the folder's, restored from itself
