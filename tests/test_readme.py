"""The README's examples run as printed: its shell and Python blocks, in order, in one folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from roundtrip.examples import (
    DEMO,
    random_open_clip_model,
    random_openai_model,
    save_open_clip_folder,
    save_torchscript_archive,
)
from roundtrip.open_clip_config import model_config
from roundtrip.testing import write_single_file

from conftest import hf_clip_config, put_in_cache, random_hf_model

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(?P<language>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
SETUP = "make install"  # the block of make targets is what CI itself runs, from a fresh clone
TEST_FILE = re.compile(r"# (test_\w+\.py)\n")  # a Python block that is a test file, run by pytest


def code_blocks(text: str) -> list[tuple[str, str]]:
    return [(found["language"], found["code"]) for found in BLOCK.finditer(text)]


def test_code_blocks_are_found():
    # A control for the test below: it must not pass by finding nothing to run.
    blocks = code_blocks(README.read_text(encoding="utf-8"))
    languages = [language for language, _ in blocks]
    assert languages.count("sh") >= 3 and languages.count("python") >= 3
    assert any(TEST_FILE.match(code) for language, code in blocks if language == "python")


def test_every_shell_and_python_block_of_the_readme_runs_in_order(tmp_path):
    # What the quick start assumes the user has: a TorchScript archive as OpenAI releases them (here a small
    # random CLIP under the README's file name, so that the test takes seconds, not a minute).
    save_torchscript_archive(random_openai_model(DEMO), tmp_path / "ViT-B-32.pt")
    # and an SDXL single file (real widths, one block per encoder, a small vocabulary)
    write_single_file(tmp_path / "sd_xl_base_1.0.safetensors", "Stable Diffusion XL", layers=1, vocab_size=1000)
    # and the Hugging Face cache holding the repositories it names (small random models under their names)
    random_hf_model(hf_clip_config()).save_pretrained(tmp_path / "repositories" / "hf")
    model_cfg = model_config(DEMO)
    save_open_clip_folder(random_open_clip_model(model_cfg).state_dict(), model_cfg,
                          tmp_path / "repositories" / "open_clip")
    put_in_cache(tmp_path / "hub", "openai/clip-vit-base-patch32", tmp_path / "repositories" / "hf")
    put_in_cache(tmp_path / "hub", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", tmp_path / "repositories" / "open_clip")
    bin_folder = Path(sys.executable).parent  # where `make install` puts clipconv
    environment = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
                   "HF_HUB_CACHE": str(tmp_path / "hub")}
    ran = 0
    for language, code in code_blocks(README.read_text(encoding="utf-8")):
        if language == "sh" and SETUP in code:
            continue
        command = {"sh": ["bash", "-euo", "pipefail", "-c", code], "python": [sys.executable, "-c", code]}.get(language)
        test_file = TEST_FILE.match(code) if language == "python" else None
        if test_file:  # outside the package and its tests: only what the block imports
            (tmp_path / test_file.group(1)).write_text(code, encoding="utf-8")
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.group(1)]
        if command is None:
            continue
        done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
        assert done.returncode == 0, f"README block failed:\n{code}\n{done.stdout}\n{done.stderr}"
        ran += 1
    assert ran >= 5
