"""Fixtures that build real checkpoints with OpenAI's and Hugging Face's own model code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from roundtrip.cli import main as clipconv
from roundtrip.examples import DEMO, random_openai_model, save_torchscript_archive


def run_cli(*args: str | Path):
    """Run clipconv in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(clipconv, [str(arg) for arg in args])


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="session")
def demo_model():
    """A small clip.model.CLIP with random weights, in OpenAI's fp16/fp32 mix."""
    return random_openai_model(DEMO, seed=1)


@pytest.fixture(scope="session")
def demo_state_dict(demo_model) -> dict:
    return {key: tensor.clone() for key, tensor in demo_model.state_dict().items()}


@pytest.fixture(scope="session")
def demo_state_dict_file(tmp_path_factory, demo_state_dict) -> Path:
    path = tmp_path_factory.mktemp("openai") / "demo-state-dict.pt"
    torch.save(demo_state_dict, path)
    return path


@pytest.fixture(scope="session")
def demo_archive(tmp_path_factory) -> Path:
    """A TorchScript archive made like OpenAI's releases (trace, plus the 0-dim metadata tensors)."""
    path = tmp_path_factory.mktemp("openai") / "demo-torchscript.pt"
    save_torchscript_archive(random_openai_model(DEMO, seed=2), path)
    return path


def resnet_clip_state_dict() -> dict:
    """A small RN50-family CLIP (ModifiedResNet vision tower) from OpenAI's model code."""
    from roundtrip.verify import import_clip

    model = import_clip().model.CLIP(
        embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=64, vision_patch_size=None,
        context_length=8, vocab_size=64, transformer_width=64, transformer_heads=1, transformer_layers=1,
    )
    return model.state_dict()


def hf_clip_config(**text_overrides):
    """A transformers CLIPConfig in OpenAI's family, small (same shape as DEMO)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
    text.update(text_overrides)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=16, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def random_hf_model(config, seed: int = 0, fp16_representable: bool = True):
    """transformers' CLIPModel with its own random init.

    With `fp16_representable`, weights are rounded through fp16 once, so that
    clip.load (which halves weights) reproduces them exactly.
    """
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    if fp16_representable:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
    return model


def save_legacy_pytorch_bin(model, folder: Path) -> None:
    """The older hub layout: config.json plus pytorch_model.bin that still holds *.position_ids."""
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = model.text_model.embeddings.position_ids.clone()
    state["vision_model.embeddings.position_ids"] = model.vision_model.embeddings.position_ids.clone()
    torch.save(state, folder / "pytorch_model.bin")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_identical(actual: dict, expected: dict) -> None:
    """Same keys, dtypes, shapes and bits (so NaN payloads and -0.0 count too)."""
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(_bits(actual[key]), _bits(tensor)), key


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)
def assert_refused(result, *fragments: str) -> None:
    """Exit code 1, no traceback, and one error line that says what is wrong (never: disable weights_only)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("clipconv: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_nothing_left(folder: Path, expected: list[str]) -> None:
    assert listing(folder) == sorted(expected)

