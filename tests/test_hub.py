"""Sources named by their Hugging Face repository (ORG/NAME, @REVISION, hf-hub:, a subfolder), read from a cache
laid out as huggingface_hub lays one out (refs, snapshots of symlinks into blobs). Offline: no test touches the
network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roundtrip import convert
from roundtrip.examples import DEMO, random_open_clip_model, save_open_clip_folder
from roundtrip.hub import download_patterns
from roundtrip.open_clip_config import model_config
from roundtrip.testing import write_single_file

from conftest import assert_identical, assert_refused, hf_clip_config, listing, put_in_cache, random_hf_model, run_cli

HF_REPO, OPEN_CLIP_REPO, DIFFUSERS_REPO = "openai/clip-vit-base-patch32", "laion/CLIP-demo", "stabilityai/sdxl-demo"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1) and a working folder of its own."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "hub"


def hf_repository(tmp_path: Path, seed: int = 0) -> Path:
    random_hf_model(hf_clip_config(), seed=seed).save_pretrained(tmp_path / f"hf-{seed}")
    return tmp_path / f"hf-{seed}"


def test_an_hf_repository_converts_by_name_as_by_its_snapshot(tmp_path, cache):
    commit = put_in_cache(cache, HF_REPO, hf_repository(tmp_path))
    snapshot = cache / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / commit
    result = run_cli("to-openai", HF_REPO, "by-name.pt")
    assert result.exit_code == 0, result.output
    assert f"read {HF_REPO} at main (commit {commit}) from the Hugging Face cache: {snapshot}" in result.stdout
    assert run_cli("to-openai", snapshot, "by-path.pt").exit_code == 0
    assert_identical(torch.load("by-name.pt", weights_only=True), torch.load("by-path.pt", weights_only=True))
    compared = run_cli("compare", HF_REPO, "by-name.pt")
    assert compared.exit_code == 0 and "verdict       same model" in compared.stdout, compared.output


def test_an_open_clip_repository_by_its_hf_hub_name_goes_to_hf_and_the_card_names_it(tmp_path, cache):
    model_cfg = model_config(DEMO)
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg, tmp_path / "open_clip")
    commit = put_in_cache(cache, OPEN_CLIP_REPO, tmp_path / "open_clip")
    result = run_cli("to-hf", f"hf-hub:{OPEN_CLIP_REPO}", "hf")
    assert result.exit_code == 0, result.output
    card = Path("hf/README.md").read_text()
    assert f"# {OPEN_CLIP_REPO} in Hugging Face format" in card and f"| repository commit | `{commit}` |" in card
    assert_identical(load_file("hf/model.safetensors"), load_file(hf_repository_of(tmp_path / "open_clip")))


def hf_repository_of(open_clip_folder: Path) -> Path:
    """The same open_clip folder converted by its path."""
    assert run_cli("to-hf", open_clip_folder, open_clip_folder.parent / "hf-by-path").exit_code == 0
    return open_clip_folder.parent / "hf-by-path" / "model.safetensors"


def test_a_diffusers_repositorys_text_encoders_are_read_by_subfolder_and_compared_whole(tmp_path, cache):
    write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL", layers=1)
    assert run_cli("to-diffusers", tmp_path / "sdxl.safetensors", tmp_path / "pipeline").exit_code == 0
    index = {"_class_name": "StableDiffusionXLPipeline"}
    (tmp_path / "pipeline" / "model_index.json").write_text(json.dumps(index))
    put_in_cache(cache, DIFFUSERS_REPO, tmp_path / "pipeline")
    for arguments in ([f"{DIFFUSERS_REPO}/text_encoder_2", "by-name"],
                      [DIFFUSERS_REPO, "by-option", "--subfolder", "text_encoder_2"]):
        result = run_cli("to-open-clip", *arguments)  # CLIP-bigG's text tower alone
        assert result.exit_code == 0, result.output
    assert_identical(*(load_file(f"{name}/open_clip_model.safetensors") for name in ("by-name", "by-option")))
    compared = run_cli("compare", tmp_path / "sdxl.safetensors", DIFFUSERS_REPO)
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.count("verdict       same model") == 2  # clip_l and clip_g, each against its component


def test_a_name_not_in_the_cache_is_refused_offline_saying_how_to_fetch_it(cache):
    for arguments in (["to-hf", "org/missing", "out"], ["to-openai", "org/missing@v2", "out.pt", "--offline"],
                      ["compare", "org/missing", "org/missing"]):
        result = run_cli(*arguments)
        assert_refused(result, "org/missing", "is neither a file or folder here nor a model in the Hugging Face "
                       f"cache (cache: {cache})", "fetch it with `hf download org/missing")
    assert "--revision v2" in run_cli("to-openai", "org/missing@v2", "out.pt").stderr
    assert listing(Path.cwd()) == []


def test_a_local_folder_of_the_same_name_wins_and_nothing_says_the_cache(tmp_path, cache):
    put_in_cache(cache, HF_REPO, hf_repository(tmp_path, seed=0))
    (Path.cwd() / HF_REPO).parent.mkdir()
    hf_repository(tmp_path, seed=1).rename(Path.cwd() / HF_REPO)  # ./openai/clip-vit-base-patch32
    result = run_cli("to-openai", HF_REPO, "out.pt")
    assert result.exit_code == 0, result.output
    assert f"{HF_REPO} is the local folder, not the Hugging Face repository of that name in the cache" \
        in result.stdout
    assert run_cli("to-openai", Path.cwd() / HF_REPO, "local.pt").exit_code == 0
    assert_identical(torch.load("out.pt", weights_only=True), torch.load("local.pt", weights_only=True))


def test_a_revision_or_a_commit_picks_that_snapshot(tmp_path, cache):
    put_in_cache(cache, HF_REPO, hf_repository(tmp_path, seed=0))
    commit = put_in_cache(cache, HF_REPO, hf_repository(tmp_path, seed=1), revision="v1")
    assert run_cli("to-openai", tmp_path / "hf-1", "v1-by-path.pt").exit_code == 0
    for revision in ("v1", commit):
        summary = convert(f"{HF_REPO}@{revision}", f"{revision}.pt", to="openai", offline=True)
        assert f"{HF_REPO} at {revision} (commit {commit})" in " ".join(summary.notes)
        assert_identical(torch.load(f"{revision}.pt", weights_only=True),
                         torch.load("v1-by-path.pt", weights_only=True))


def test_a_download_fetches_only_the_files_clipconv_reads():
    """huggingface_hub matches each pattern against a file's whole path: one without a leading * matches the
    repository's top alone, so a diffusers repository's UNet and VAE stay on the hub."""
    from fnmatch import fnmatch

    wanted = ["config.json", "model.safetensors", "open_clip_model.safetensors", "open_clip_config.json",
              "model-00001-of-00002.safetensors", "tokenizer.json", "merges.txt", "model_index.json",
              "text_encoder/model.safetensors", "text_encoder_2/config.json", "tokenizer_2/vocab.json"]
    unwanted = ["unet/diffusion_pytorch_model.safetensors", "unet/model.safetensors", "vae/config.json",
                "sd_xl_base_1.0.safetensors", "flax_model.msgpack"]
    patterns = download_patterns("")
    assert all(any(fnmatch(name, pattern) for pattern in patterns) for name in wanted)
    assert not any(fnmatch(name, pattern) for name in unwanted for pattern in patterns)
    assert download_patterns("text_encoder_2") == ["text_encoder_2", "text_encoder_2/*"]


def test_the_diffusion_commands_take_names_of_a_single_file_and_of_components(tmp_path, cache):
    (tmp_path / "repo").mkdir()
    write_single_file(tmp_path / "repo" / "sd_xl_base_1.0.safetensors", "Stable Diffusion XL", layers=1)
    put_in_cache(cache, "stabilityai/stable-diffusion-xl-base-1.0", tmp_path / "repo")
    single_file = "stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
    result = run_cli("to-diffusers", single_file, "enc")
    assert result.exit_code == 0, result.output
    assert "read stabilityai/stable-diffusion-xl-base-1.0 at main" in result.stdout
    put_in_cache(cache, "me/sdxl-encoders", Path("enc"))
    back = run_cli("to-single-file", "me/sdxl-encoders", "back.safetensors", "--base", single_file)
    assert back.exit_code == 0, back.output
    assert "read me/sdxl-encoders at main" in back.stdout
    assert_identical(load_file("back.safetensors"), load_file(tmp_path / "repo" / "sd_xl_base_1.0.safetensors"))


def test_offline_is_asked_for_by_the_option_alone_too(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = run_cli("to-openai", "org/missing", "out.pt", "--offline")
    assert_refused(result, "org/missing: is neither a file or folder here nor a model in the Hugging Face cache "
                           f"(cache: {cache})")
    assert "downloaded" not in result.stderr
