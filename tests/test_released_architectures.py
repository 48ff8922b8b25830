"""Full-depth released architectures: OpenAI's ViTs (random weights, OpenAI's fp16/fp32 mix) as archive and
state dict, and open_clip's ViT-B-32 and ViT-H-14 (random weights, float32) as hub folders.

Slow (several minutes, a few GB of temporary disk): marked `released`;
`make test` runs it, `make test-fast` leaves it out.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from roundtrip import open_clip_config, verify
from roundtrip.architecture import Shapes
from roundtrip.examples import (
    RELEASED,
    random_open_clip_model,
    random_openai_model,
    save_open_clip_folder,
    save_torchscript_archive,
)
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES

from conftest import assert_identical, run_cli

pytestmark = pytest.mark.released
TOLERANCE = 1e-3


@pytest.fixture(params=["torchscript", "state_dict"])
def file_format(request):
    return request.param


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="clipconv-released-"))
    yield path
    shutil.rmtree(path)  # these are GBs; do not keep them for pytest's last-three-runs cache


def save_source(name: str, file_format: str, path: Path) -> dict:
    model = random_openai_model(RELEASED[name], seed=0)
    if file_format == "torchscript":
        save_torchscript_archive(model, path)
        return torch.jit.load(str(path)).state_dict()
    state_dict = model.state_dict()
    torch.save(state_dict, path)
    return state_dict


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_converts_within_tolerance_and_returns_bit_exact(name, file_format, workdir):
    architecture = RELEASED[name]
    original = save_source(name, file_format, workdir / "source.pt")

    result = run_cli("to-hf", workdir / "source.pt", workdir / "hf")
    assert result.exit_code == 0, result.output

    from transformers import CLIPModel

    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    hf_model = CLIPModel.from_pretrained(workdir / "hf", dtype=torch.float32).eval()
    weights = {k: v for k, v in original.items() if k not in OPENAI_ARCHIVE_ATTRIBUTES}
    with torch.no_grad():
        converted = hf_model(input_ids=tokens, pixel_values=images).logits_per_image
    del hf_model
    reference = verify.openai_logits(weights, architecture, images, tokens)
    assert (reference - converted).abs().max() <= TOLERANCE

    result = run_cli("to-openai", workdir / "hf", workdir / "back.pt")
    assert result.exit_code == 0, result.output
    assert_identical(torch.load(workdir / "back.pt", weights_only=True), original)


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-H-14"])
def test_released_open_clip_architecture_converts_within_tolerance_and_returns_bit_exact(name, workdir):
    from safetensors import safe_open
    from transformers import CLIPModel

    model_cfg = open_clip_config.registry_config(name)
    model = random_open_clip_model(model_cfg, seed=0)
    architecture = open_clip_config.architecture(model_cfg, Shapes.of(model.state_dict()))
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    with torch.no_grad():
        reference = model.get_logits(images, tokens)[0]
    save_open_clip_folder(model.state_dict(), model_cfg, workdir / "source")
    del model  # GBs: the conversion below holds the weights once more

    result = run_cli("to-hf", workdir / "source", workdir / "hf")
    assert result.exit_code == 0, result.output
    hf_model = CLIPModel.from_pretrained(workdir / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        converted = hf_model(input_ids=tokens, pixel_values=images).logits_per_image
    del hf_model
    assert (reference - converted).abs().max() <= TOLERANCE

    result = run_cli("to-open-clip", workdir / "hf", workdir / "back")
    assert result.exit_code == 0, result.output
    files = [workdir / folder / "open_clip_model.safetensors" for folder in ("source", "back")]
    with safe_open(files[0], "pt") as original, safe_open(files[1], "pt") as back:
        assert list(back.keys()) == list(original.keys())
        for key in original.keys():  # one tensor at a time: two ViT-H-14s would be 8 GB
            assert_identical({key: back.get_tensor(key)}, {key: original.get_tensor(key)})
