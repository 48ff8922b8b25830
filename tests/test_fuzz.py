"""Fuzzing the readers: valid small inputs of every format clipconv reads, mutated (bits flipped, bytes
overwritten, truncated, spliced, headers edited), converted. Every run ends in success, only where no checksum
could see the change, or in exit 1 with one clean line: never a traceback, an internal error, a hang or a
temporary left behind.

`make test` runs a bounded number of mutations; `make fuzz` many more (CLIPCONV_FUZZ_EXAMPLES, default 60).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from roundtrip.examples import (
    random_open_clip_model,
    random_openai_model,
    save_open_clip_folder,
    save_torchscript_archive,
)
from roundtrip.openai_config import from_clip_kwargs
from roundtrip.testing import write_checkpoint

from conftest import run_cli

EXAMPLES = int(os.environ.get("CLIPCONV_FUZZ_EXAMPLES", "60"))
SECONDS_PER_RUN = 120  # a run that takes longer than this has hung
TINY = from_clip_kwargs(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                        context_length=8, vocab_size=100, transformer_width=64, transformer_heads=1,
                        transformer_layers=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, tuple[Path, str, list[str]]]:
    """name -> (a valid input, the command that reads it, the files in it to mutate)."""
    folder = tmp_path_factory.mktemp("valid")
    save_torchscript_archive(random_openai_model(TINY), folder / "archive.pt")
    state_dict = random_openai_model(TINY).state_dict()
    torch.save(state_dict, folder / "zip.pt")
    torch.save(state_dict, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    hf = write_checkpoint(folder / "hf", TINY, format="hf")
    sharded = folder / "sharded"
    shutil.copytree(hf, sharded)
    _shard(sharded)
    model_cfg = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64,
                                                                     "patch_size": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1}}
    open_clip_weights = random_open_clip_model(model_cfg).state_dict()
    save_open_clip_folder(open_clip_weights, model_cfg, folder / "open-clip")
    save_open_clip_folder(open_clip_weights, model_cfg, folder / "open-clip-bin", pickle=True)
    return {
        "TorchScript archive": (folder / "archive.pt", "to-hf", [""]),
        "torch.save zip": (folder / "zip.pt", "to-hf", [""]),
        "legacy pickle": (folder / "legacy.pt", "to-hf", [""]),
        "HF safetensors folder": (hf, "to-openai", ["model.safetensors", "config.json"]),
        "HF sharded folder": (sharded, "to-openai", ["model-00001-of-00002.safetensors",
                                                     "model.safetensors.index.json"]),
        "open_clip folder": (folder / "open-clip", "to-hf", ["open_clip_model.safetensors", "open_clip_config.json"]),
        "open_clip folder with a .bin": (folder / "open-clip-bin", "to-hf", ["open_clip_pytorch_model.bin"]),
    }


def _shard(folder: Path) -> None:
    """Split an HF folder's model.safetensors in two shards with an index, as save_pretrained does."""
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard in shards.items():
        save_file({key: weights[key] for key in shard}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: name for name, shard in shards.items() for key in shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


# ---- mutations ---------------------------------------------------------------------------------------------


def flip_bit(data: bytes, where: float, bit: int) -> bytes:
    position = int(where * (len(data) - 1))
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1:]


def overwrite(data: bytes, where: float, junk: bytes) -> bytes:
    position = int(where * (len(data) - 1))
    return data[:position] + junk + data[position + len(junk):]


def truncate(data: bytes, where: float) -> bytes:
    return data[: int(where * len(data))]


def splice(data: bytes, where: float, source: float, length: int) -> bytes:
    """A run of the file's own bytes copied over another place (a resumed download that went wrong)."""
    start, position = int(source * len(data)), int(where * (len(data) - 1))
    return data[:position] + data[start: start + length] + data[position:]


def edit_header(data: bytes, where: float, junk: bytes) -> bytes:
    """Bytes overwritten in the first 512 bytes (a safetensors header, a zip's first local header or a
    pickle's opening) or the last 512 (a zip's central directory)."""
    head = where < 0.5
    span = min(512, len(data))
    position = int((where * 2 if head else (where - 0.5) * 2) * (span - 1)) + (0 if head else len(data) - span)
    return data[:position] + junk + data[position + len(junk):]


mutations = st.one_of(
    st.builds(lambda w, b: (f"flip bit {b} at {w:.4f}", lambda d: flip_bit(d, w, b)), st.floats(0, 1),
              st.integers(0, 7)),
    st.builds(lambda w, j: (f"overwrite bytes at {w:.4f} with {j!r}", lambda d: overwrite(d, w, j)),
              st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.builds(lambda w: (f"truncate at {w:.4f}", lambda d: truncate(d, w)), st.floats(0, 1)),
    st.builds(lambda w, s, n: (f"splice {n} bytes from {s:.4f} at {w:.4f}", lambda d: splice(d, w, s, n)),
              st.floats(0, 1), st.floats(0, 1), st.integers(1, 4096)),
    st.builds(lambda w, j: (f"edit a header at {w:.4f} with {j!r}", lambda d: edit_header(d, w, j)),
              st.floats(0, 1), st.binary(min_size=1, max_size=8)),
)


def damage_a_checksum_shows(path: Path) -> bool:
    """Whether a zip's own CRC-32s (or its structure) show that it is damaged, as Python's zipfile sees it."""
    try:
        if not zipfile.is_zipfile(path):
            return False  # not a zip (any more): no checksum to consult
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError):
        return True


@contextmanager
def deadline(seconds: int):
    def hung(signum, frame):
        raise TimeoutError(f"a conversion ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_input_converts_only_if_no_checksum_sees_the_damage_and_fails_cleanly_otherwise(
        tmp_path_factory, inputs, data):
    name = data.draw(st.sampled_from(sorted(inputs)), label="input")
    valid, command, mutable = inputs[name]
    member = data.draw(st.sampled_from(mutable), label="file")
    what, mutate = data.draw(mutations, label="mutation")
    work = tmp_path_factory.mktemp("fuzz")
    source = work / valid.name
    (shutil.copytree if valid.is_dir() else shutil.copy)(valid, source)
    target = source / member if member else source
    target.write_bytes(mutate(target.read_bytes()))
    declared_damage = damage_a_checksum_shows(target) if target.suffix in (".pt", ".bin") else False
    before = sorted(path.name for path in work.iterdir())

    with deadline(SECONDS_PER_RUN):
        result = run_cli(command, source, work / "out", "--no-verify")

    event(f"{name}, {what.split(' at ')[0].split(' bit ')[0]}: {'converted' if result.exit_code == 0 else 'refused'}")
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    if result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("clipconv: error:")]
        assert len(errors) == 1, result.stderr
        assert sorted(path.name for path in work.iterdir()) == before  # nothing written, no temporary
    else:
        assert not declared_damage, f"{name}: {what} in {member or valid.name} damaged a record, yet it converted"
        assert sorted(path.name for path in work.iterdir()) == sorted([*before, "out"])
