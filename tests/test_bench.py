"""The benchmark's helpers still run and measure what they claim (`make bench` itself is not part of the suite)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from roundtrip import safetensors_file
from roundtrip.examples import DEMO

from conftest import assert_identical, run_cli

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_baseline_module_copy_writes_the_weights_clipconv_writes(tmp_path, demo_state_dict_file):
    done = subprocess.run([sys.executable, BENCH / "baseline_module_copy.py", demo_state_dict_file, tmp_path / "base"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "ours", "--no-verify").exit_code == 0
    baseline, _, _ = safetensors_file.read(tmp_path / "base" / "model.safetensors")
    ours, _, _ = safetensors_file.read(tmp_path / "ours" / "model.safetensors")
    assert_identical(ours, baseline)


def test_biggest_checkpoint_layout_is_openais_state_dict(demo_state_dict):
    layout = _bench_module("make_biggest").layout(DEMO)
    assert layout == {key: tensor.shape for key, tensor in demo_state_dict.items()}


def test_biggest_checkpoint_records_carry_their_crc(tmp_path):
    """make_biggest writes the data after torch.save laid the archive out: every CRC-32 must be the data's."""
    done = subprocess.run([sys.executable, BENCH / "make_biggest.py", tmp_path / "tiny.pt", "--tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "tiny.pt") as archive:
        assert archive.testzip() is None
    assert run_cli("to-hf", tmp_path / "tiny.pt", tmp_path / "hf", "--no-verify").exit_code == 0


def test_floor_commands_write_as_many_bytes_as_to_hf_and_import_the_checks_frameworks(tmp_path, demo_state_dict_file):
    run = _bench_module("run")
    hf_folder = tmp_path / "hf"
    assert run_cli("to-hf", demo_state_dict_file, hf_folder, "--no-verify").exit_code == 0
    commands = run.variants(demo_state_dict_file, hf_folder, open_clip=False)
    dd = next(command for name, command in commands.items() if name.startswith("dd "))
    subprocess.run(dd(tmp_path / "written"), check=True)
    weights_size = (hf_folder / "model.safetensors").stat().st_size
    assert weights_size <= (tmp_path / "written").stat().st_size < weights_size + run.BLOCK_BYTES
    imports = commands["import the logit check's frameworks"](tmp_path / "unused")
    done = subprocess.run([*imports[:-1], imports[-1] + "; import json, sys; print(json.dumps(list(sys.modules)))"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {"torch", "transformers.models.clip.modeling_clip"} <= set(json.loads(done.stdout))


def test_the_sdxl_bench_file_and_diffusers_route_give_what_to_diffusers_gives(tmp_path):
    """bench/make_sdxl.py --tiny writes an SDXL single file; bench/diffusers_route.py, diffusers' own route, writes
    the components' tensors that clipconv writes."""
    from safetensors.torch import load_file

    done = subprocess.run([sys.executable, BENCH / "make_sdxl.py", tmp_path / "sdxl.safetensors", "--tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert run_cli("to-diffusers", tmp_path / "sdxl.safetensors", tmp_path / "ours", "--no-verify").exit_code == 0
    done = subprocess.run([sys.executable, BENCH / "diffusers_route.py", tmp_path / "sdxl.safetensors",
                           tmp_path / "ours", tmp_path / "theirs"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for component in ("text_encoder", "text_encoder_2"):
        ours = {key.removeprefix("text_model."): tensor for key, tensor in
                load_file(tmp_path / "ours" / component / "model.safetensors").items()}
        theirs = {key.removeprefix("text_model."): tensor for key, tensor in
                  load_file(tmp_path / "theirs" / component / "model.safetensors").items()}
        assert ours.keys() == theirs.keys()
        assert all(ours[key].dtype == theirs[key].dtype and ours[key].equal(theirs[key]) for key in ours)
