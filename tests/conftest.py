"""Fixtures that build real checkpoints with OpenAI's and Hugging Face's own model code."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import Phase, settings

from roundtrip import hf_config, open_clip_config, verify
from roundtrip.architecture import Shapes
from roundtrip.cli import main as clipconv
from roundtrip.dtypes import dtype_of, raw_bytes
from roundtrip.examples import DEMO, random_openai_model, random_openai_state_dict, save_torchscript_archive
from roundtrip.strided import Strided, as_torch

# Hubs are unreachable here: transformers must load everything from local folders.
os.environ["HF_HUB_OFFLINE"] = "1"

# `make mutate` asks only whether a mutant fails a test: shrinking the failing example to a smaller one (more models
# built, often for minutes) tells it nothing. Loaded before the test modules make their settings from the default.
MUTATION_RUN = bool(os.environ.get("CLIPCONV_MUTATION_RUN"))
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
if MUTATION_RUN:
    settings.load_profile("mutation")


def pytest_collection_modifyitems(config, items):
    """Under `make mutate`, a mutant's tests run fastest first: its run stops at the first failure (-x), and mutmut
    hands them over in no order. Each file's tests stay together, so that its module fixtures are made once."""
    if MUTATION_RUN:
        durations = _mutmut_test_durations()
        duration = {item: durations.get(item.nodeid, float("inf")) for item in items}
        fastest_of_file = {}
        for item in items:
            fastest_of_file[item.path] = min(duration[item], fastest_of_file.get(item.path, float("inf")))
        items.sort(key=lambda item: (fastest_of_file[item.path], str(item.path), duration[item]))


@functools.cache
def _mutmut_test_durations() -> dict[str, float]:
    """Each test's duration when mutmut collected its statistics (none yet while it collects them). Cached in the
    server mutmut's workers fork from."""
    stats = Path("mutmut-stats.json")  # mutmut runs the tests in mutants/
    return json.loads(stats.read_text())["duration_by_test"] if stats.is_file() else {}

# `make test` must run on a 16 GB laptop: no process of the suite (this one, or one it ran) may peak above this.
PEAK_RSS_LIMIT_BYTES = 6 * 2**30


def peak_rss_bytes() -> int:
    """The largest peak resident set size of this process and of every child process it has waited for."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024


def pytest_sessionfinish(session, exitstatus):
    if peak_rss_bytes() > PEAK_RSS_LIMIT_BYTES and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    peak, limit = peak_rss_bytes() / 2**30, PEAK_RSS_LIMIT_BYTES / 2**30
    over = ": over the limit, so the run fails (the suite must run on a 16 GB laptop)" if peak > limit else ""
    terminalreporter.write_line(f"peak RSS of the suite's largest process: {peak:.2f} GB (limit {limit:g} GB){over}")

# What `clipconv to-hf` writes for a checkpoint with OpenAI's vocabulary, as the hub's openai/clip-vit-* folders hold.
HF_FOLDER_FILES = sorted([
    "config.json", "model.safetensors",
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "preprocessor_config.json", "README.md",
])


def import_clip():
    """OpenAI's whole `clip` package (clip.load, clip.tokenize, clip's transform): the reference the tests
    compare with. clipconv itself loads only the model module (roundtrip.references.openai_code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pkg_resources is deprecated
        import clip
        import clip.model
    return clip


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


@pytest.fixture(scope="session")
def demo_hf_folder(tmp_path_factory, demo_state_dict_file) -> Path:
    """`clipconv to-hf` output for the demo state dict, verified (so its model card holds the figure)."""
    folder = tmp_path_factory.mktemp("converted") / "hf"
    result = run_cli("to-hf", demo_state_dict_file, folder)
    assert result.exit_code == 0, result.output
    return folder


def convert_random_checkpoint(folder: Path, architecture, *options: str):
    """Save a random OpenAI checkpoint of `architecture` in `folder`, run to-hf on it; return (result, HF folder)."""
    source = folder / "source.pt"
    torch.save(random_openai_state_dict(architecture), source)
    result = run_cli("to-hf", source, folder / "hf", *options)
    assert result.exit_code == 0, result.output
    return result, folder / "hf"


def image(width: int, height: int, kind: str = "smooth", mode: str = "RGB"):
    """A deterministic test image: smooth colour waves with grain, or pure noise (the hardest case for resizing)."""
    from PIL import Image

    rng = np.random.default_rng(width * 10_000 + height)
    if kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3)).astype(np.float64)
    else:
        y, x = np.mgrid[0:height, 0:width]
        waves = [np.sin(6 * x / width + phase) * np.cos(5 * y / height - phase) for phase in range(3)]
        pixels = 128 + 100 * np.stack(waves, axis=-1) + rng.normal(0, 8, (height, width, 3))
    picture = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    if mode == "RGBA":  # transparent on the left, opaque on the right
        picture.putalpha(Image.linear_gradient("L").rotate(90).resize((width, height)))
    return picture.convert(mode)


def resnet_clip_state_dict() -> dict:
    """A small RN50-family CLIP (ModifiedResNet vision tower) from OpenAI's model code."""
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
    """Same keys, dtypes, shapes and bits (so NaN payloads and -0.0 count too). Either side may hold torch
    tensors or clipconv's views of file bytes."""
    assert sorted(actual) == sorted(expected)
    for key in expected:
        found, wanted = as_torch(actual[key]), as_torch(expected[key])
        assert found.dtype == wanted.dtype, key
        assert found.shape == wanted.shape, key
        assert torch.equal(_bits(found), _bits(wanted)), key


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def as_views(state_dict: dict) -> dict:
    """Torch tensors as the readers hand out tensors: views of bytes (here, copies of the tensors' bytes)."""
    return {key: Strided.of_buffer(bytearray(raw_bytes(tensor)), dtype_of(tensor), tuple(tensor.shape))
            for key, tensor in state_dict.items()}


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


# ---- open_clip models, shallow, and their logits --------------------------------------------------------------


def shallow(name: str, layers: int = 2) -> dict:
    """A registry model's config with fewer layers per tower: its widths, heads, MLP ratio and activation."""
    config = open_clip_config.registry_config(name)
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = layers
    return config


def architecture_of(model_cfg: dict, state_dict: dict):
    return open_clip_config.architecture(model_cfg, Shapes.of(state_dict))


@torch.no_grad()
def open_clip_logits(model, architecture) -> torch.Tensor:
    return model.float().get_logits(verify.probe_images(architecture), verify.probe_tokens(architecture))[0]


@torch.no_grad()
def hf_folder_logits(folder: Path, architecture) -> torch.Tensor:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model(input_ids=verify.probe_tokens(architecture),
                 pixel_values=verify.probe_images(architecture)).logits_per_image


# ---- one tower alone, as transformers saves each of its classes ---------------------------------------------

ONE_TOWER_CLASSES = {"CLIPTextModel": ("text", False), "CLIPTextModelWithProjection": ("text", True),
                     "CLIPVisionModel": ("vision", False), "CLIPVisionModelWithProjection": ("vision", True)}


def save_one_tower(folder, name: str, prefixed: bool = False, seed: int = 0, position_ids: str | None = None):
    """A folder as transformers' `save_pretrained` writes one of its one-tower classes (flat keys for the classes
    without a projection in transformers 5.25), or with every key under its tower's prefix, as the hub's are;
    with `position_ids` of that dtype, as older transformers saved them."""
    import transformers
    from safetensors.torch import load_file, save_file

    tower, projected = ONE_TOWER_CLASSES[name]
    architecture = DEMO.alone(tower, projected)
    model_class = getattr(transformers, name)
    torch.manual_seed(seed)
    model_class(model_class.config_class.from_dict(hf_config.config(architecture))).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    prefix = f"{tower}_model."
    flat = not any(key.startswith(prefix) for key in weights)
    if prefixed and flat:
        weights, flat = {prefix + key: tensor for key, tensor in weights.items()}, False
    if position_ids is not None:
        positions = DEMO.context_length if tower == "text" else (DEMO.image_resolution // DEMO.patch_size) ** 2 + 1
        key = ("" if flat else prefix) + "embeddings.position_ids"
        weights[key] = torch.arange(positions, dtype=getattr(torch, position_ids))[None]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return architecture, load_file(folder / "model.safetensors")


def put_in_cache(cache: Path, repo: str, folder: Path, revision: str = "main") -> str:
    """`folder`'s files as huggingface_hub's cache holds a snapshot of `repo` at `revision`: blobs named by their
    content's hash, the snapshot's files relative symlinks to them, refs/REVISION naming the commit."""
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            data = file.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = root / "snapshots" / commit / file.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit
