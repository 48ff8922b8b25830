"""Full-depth released architectures: OpenAI's ViTs and RN50 (random weights, OpenAI's fp16/fp32 mix) as archive
and state dict, and open_clip's ViT-B-32 and ViT-H-14 (random weights, float32) as hub folders.

Slow (several minutes, a few GB of temporary disk): marked `released`; `make test` runs it, `make test-fast`
leaves it out. Each conversion runs as a user runs it, the installed `clipconv`, and every other step in a
fresh interpreter too (tests/released.py): a ViT-H-14 is 4 GB in float32, and the suite must run on a 16 GB
laptop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from roundtrip.examples import RELEASED

pytestmark = pytest.mark.released
TOLERANCE = 1e-3
CLIPCONV = Path(sys.executable).parent / "clipconv"
STEPS = Path(__file__).resolve().parent / "released.py"


@pytest.fixture(params=["torchscript", "state_dict"])
def file_format(request):
    return request.param


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="clipconv-released-"))
    yield path
    shutil.rmtree(path)  # these are GBs; do not keep them for pytest's last-three-runs cache


def run(*command) -> str:
    done = subprocess.run([*map(str, command)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def clipconv(*arguments) -> None:
    assert "verification  max |difference|" in run(CLIPCONV, *arguments)


def step(*arguments) -> str:
    return run(sys.executable, STEPS, *arguments)


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_converts_within_tolerance_and_returns_bit_exact(name, file_format, workdir):
    step("make-openai", name, file_format, workdir)
    clipconv("to-hf", workdir / "source.pt", workdir / "hf")
    assert float(step("hf-gap", workdir / "hf", workdir / "reference.pt")) <= TOLERANCE
    clipconv("to-openai", workdir / "hf", workdir / "back.pt")
    step("same-openai-tensors", workdir / "source.pt", file_format, workdir / "back.pt")


def test_released_resnet_goes_to_open_clip_with_openais_logits_and_returns_bit_exact(file_format, workdir):
    step("make-openai", "RN50", file_format, workdir)
    clipconv("to-open-clip", workdir / "source.pt", workdir / "open_clip")
    assert float(step("open-clip-gap", workdir / "open_clip", workdir / "reference.pt")) <= TOLERANCE
    clipconv("to-openai", workdir / "open_clip", workdir / "back.pt")
    step("same-openai-tensors", workdir / "source.pt", file_format, workdir / "back.pt")
    assert "verdict       same model" in run(CLIPCONV, "compare", workdir / "source.pt", workdir / "open_clip")


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-H-14"])
def test_released_open_clip_architecture_converts_within_tolerance_and_returns_bit_exact(name, workdir):
    step("make-open-clip", name, workdir)
    clipconv("to-hf", workdir / "source", workdir / "hf")
    assert float(step("hf-gap", workdir / "hf", workdir / "reference.pt")) <= TOLERANCE
    clipconv("to-open-clip", workdir / "hf", workdir / "back")
    step("same-open-clip-tensors", workdir / "source" / "open_clip_pytorch_model.bin",
         workdir / "back" / "open_clip_model.safetensors")
