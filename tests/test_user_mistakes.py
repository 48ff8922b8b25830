"""Mistakes a user makes on the command line: each is refused in one clean line with the right exit code, and
every file present before the run (SOURCE included) is byte-identical after it, with nothing added."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import roundtrip
from roundtrip.errors import OutputError
from roundtrip.examples import random_openai_state_dict
from roundtrip.openai_config import from_clip_kwargs

from conftest import run_cli

# Small, so that the table runs in seconds; every case is refused before the logit check anyway.
SMALL = from_clip_kwargs(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                         context_length=8, vocab_size=100, transformer_width=64, transformer_heads=1,
                         transformer_layers=1)


def _without(state_dict: dict, key: str) -> dict:
    return {name: tensor for name, tensor in state_dict.items() if name != key}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder as a user's might look: checkpoints, a converted folder, their own files and folders."""
    root = tmp_path_factory.mktemp("user")
    state_dict = random_openai_state_dict(SMALL)
    torch.save(state_dict, root / "small.pt")
    (root / "cwdtest").mkdir()
    torch.save(state_dict, root / "cwdtest" / "small.pt")
    (root / "cwdtest" / "notes.txt").write_text("my notes")
    assert run_cli("to-hf", root / "small.pt", root / "hf", "--no-verify").exit_code == 0
    (root / "userdir").mkdir()
    (root / "userdir" / "notes.txt").write_text("my notes")
    (root / "link").symlink_to("userdir")
    (root / "afile.txt").write_text("a file")
    shutil.copytree(root / "hf", root / "hub-clone")  # a hub clone: the model plus git's folder and notes
    (root / "hub-clone" / ".git").mkdir()
    (root / "hub-clone" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    shutil.copytree(root / "hf", root / "old-with-bin")
    torch.save(state_dict, root / "old-with-bin" / "pytorch_model.bin")
    torch.save(_without(state_dict, "ln_final.bias"), root / "missing-bias.pt")
    (root / "hf-missing-bias").mkdir()
    shutil.copy(root / "hf" / "config.json", root / "hf-missing-bias")
    hf_weights = load_file(root / "hf" / "model.safetensors")
    save_file(_without(hf_weights, "text_model.final_layer_norm.bias"), root / "hf-missing-bias" / "model.safetensors")
    torch.save({"a": torch.zeros(3)}, root / "plain.pt")
    torch.save({**state_dict, "visual.trunk.stem.0.weight": torch.zeros(4)}, root / "timm.pt")
    torch.save({**state_dict, "text.transformer.embeddings.word_embeddings.weight": torch.zeros(4)},
               root / "custom-text.pt")
    return root


@dataclass(frozen=True)
class Mistake:
    args: tuple[str, ...]
    says: tuple[str, ...]  # fragments of the one error line
    exit_code: int = 1
    cwd: str = "."  # where the command is run, inside the working folder


MISTAKES = {
    # Destinations that overlap the source.
    "DEST is SOURCE": Mistake(("to-hf", "small.pt", "small.pt", "--overwrite"),
                              ("small.pt: is the source or inside it (small.pt)",)),
    "DEST is the folder holding SOURCE": Mistake(
        ("to-hf", "cwdtest/small.pt", "cwdtest", "--overwrite", "--no-verify"),
        ("cwdtest: holds the source cwdtest/small.pt; a conversion never writes over its own input",)),
    "DEST is . holding SOURCE": Mistake(("to-hf", "small.pt", ".", "--overwrite"), (".: holds the source small.pt",),
                                        cwd="cwdtest"),
    "DEST is .. holding SOURCE": Mistake(("to-hf", "small.pt", "..", "--overwrite"), ("..: holds the source small.pt",),
                                         cwd="cwdtest"),
    "DEST is the working folder": Mistake(
        ("to-hf", "../small.pt", ".", "--overwrite"),
        (".: is the working folder or holds it; name a new file or folder inside it instead",), cwd="userdir"),
    "DEST holds the SOURCE folder": Mistake(("to-openai", "hf", ".", "--overwrite"), (".: holds the source hf",)),
    "DEST inside the SOURCE folder": Mistake(("to-openai", "hf", "hf/model.pt"),
                                             ("hf/model.pt: is the source or inside it (hf)",)),
    # A file where a folder goes and the other way round.
    "to-openai onto a folder": Mistake(("to-openai", "hf", "userdir", "--overwrite"),
                                       ("userdir", "a file never replaces a folder")),
    "to-openai DEST with a trailing separator": Mistake(
        ("to-openai", "hf", "newdir/"),
        ("newdir/: ends with a path separator, which names a folder; this conversion writes one file: give its name "
         "(for example ViT-B-32.pt)",)),
    "to-hf onto a file": Mistake(("to-hf", "small.pt", "afile.txt", "--overwrite"),
                                 ("afile.txt", "a folder never replaces a file")),
    "--overwrite onto a symbolic link": Mistake(("to-hf", "small.pt", "link", "--overwrite"), ("symbolic link",)),
    # --overwrite replaces only what a conversion writes.
    "--overwrite onto a hub clone": Mistake(("to-hf", "small.pt", "hub-clone", "--overwrite"), ("holds .git",)),
    "--overwrite onto the user's folder": Mistake(("to-hf", "small.pt", "userdir", "--overwrite"),
                                                  ("holds notes.txt",)),
    "--overwrite onto a folder with other weights": Mistake(("to-hf", "small.pt", "old-with-bin", "--overwrite"),
                                                            ("holds pytorch_model.bin",)),
    "existing DEST without --overwrite": Mistake(("to-hf", "small.pt", "hf"), ("already exists", "--overwrite")),
    "DEST in a folder that does not exist": Mistake(("to-hf", "small.pt", "nowhere/hf"),
                                                     ("nowhere/hf: its parent folder /", "/nowhere does not exist")),
    # Incomplete checkpoints, whatever --no-verify says.
    "OpenAI checkpoint missing a weight": Mistake(("to-hf", "missing-bias.pt", "out"), ("missing 1 tensor",
                                                                                        "ln_final.bias")),
    "OpenAI checkpoint missing a weight, --no-verify": Mistake(("to-hf", "missing-bias.pt", "out", "--no-verify"),
                                                               ("missing 1 tensor", "ln_final.bias")),
    "HF folder missing a weight": Mistake(("to-openai", "hf-missing-bias", "out.pt"),
                                          ("missing 1 tensor", "text_model.final_layer_norm.bias")),
    "HF folder missing a weight, --no-verify": Mistake(("to-openai", "hf-missing-bias", "out.pt", "--no-verify"),
                                                       ("missing 1 tensor", "text_model.final_layer_norm.bias")),
    # Inputs that are something else.
    "a state dict without CLIP keys": Mistake(("to-hf", "plain.pt", "out"), ("not a CLIP checkpoint", "(a)")),
    "an HF model.safetensors to to-hf": Mistake(("to-hf", "hf/model.safetensors", "out"),
                                                ("not an OpenAI CLIP checkpoint", "Hugging Face", "to-openai")),
    "an open_clip timm model": Mistake(("to-hf", "timm.pt", "out"), ("timm vision tower",)),
    "an open_clip custom text model": Mistake(("to-hf", "custom-text.pt", "out"), ("custom text tower",)),
    "a source that does not exist": Mistake(("to-hf", "nope.pt", "out"), ("nope.pt", "does not exist")),
    # Usage.
    "--max-shard-size without a unit": Mistake(("to-hf", "small.pt", "out", "--max-shard-size", "50"),
                                               ("needs a unit",), exit_code=2),
    "an unknown option": Mistake(("to-hf", "small.pt", "out", "--fast"), ("No such option",), exit_code=2),
}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with what it is: a file's SHA-256, a link's target, or a folder."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"link to {path.readlink()}"
        elif path.is_dir():
            found[name] = "folder"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize("case", MISTAKES)
def test_a_mistake_is_one_clean_line_and_changes_nothing(work, monkeypatch, case):
    mistake = MISTAKES[case]
    before = snapshot(work)
    monkeypatch.chdir(work / mistake.cwd)
    result = run_cli(*mistake.args)
    assert result.exit_code == mistake.exit_code, result.output
    assert "Traceback" not in result.output and "\x1b[" not in result.output
    prefix = "clipconv: error: " if mistake.exit_code == 1 else "Error: "
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, result.stderr
    for fragment in mistake.says:
        assert fragment in errors[0], errors[0]
    assert snapshot(work) == before


def test_debug_is_taken_before_and_after_the_command(work, monkeypatch):
    monkeypatch.chdir(work)
    for args in (("--debug", "to-hf", "missing-bias.pt", "out"), ("to-hf", "missing-bias.pt", "out", "--debug")):
        result = run_cli(*args)
        assert result.exit_code == 1, result.output
        assert "Traceback" in result.stderr and result.stderr.splitlines()[-1].startswith("clipconv: error: ")


def test_python_callers_are_told_the_keyword_argument(work):
    with pytest.raises(OutputError, match=r"already exists \(pass overwrite=True to replace it\)"):
        roundtrip.convert_to_hf(work / "small.pt", work / "hf", verify_logits=False)


def test_many_shards_are_summarised_as_a_range_and_the_index(work, tmp_path):
    result = run_cli("to-hf", work / "small.pt", tmp_path / "hf", "--no-verify", "--max-shard-size", "50B")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    count = len(set(index["weight_map"].values()))
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("tensors"))
    assert (f"model-00001-of-{count:05d}.safetensors ... model-{count:05d}-of-{count:05d}.safetensors "
            f"({count} shards), model.safetensors.index.json") in line
    assert line.count(".safetensors") == 3


# A mapping that loses a tensor on the way to transformers, so that building its model fails inside the logit
# check: the failure must be one line, without transformers' own load report. A fresh interpreter, so that
# transformers' logging writes to the real stderr.
_LOSING_A_TENSOR = """
import sys
from roundtrip import cli, mapping

real_to_hf = mapping.to_hf

def losing_to_hf(state_dict, *towers):
    converted = real_to_hf(state_dict, *towers)
    converted.pop("text_model.final_layer_norm.bias")
    return converted

mapping.to_hf = losing_to_hf
cli.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_reference_model_that_cannot_be_built_is_one_line_naming_the_source(work, tmp_path):
    done = subprocess.run([sys.executable, "-c", _LOSING_A_TENSOR, "to-hf", work / "small.pt", tmp_path / "out"],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "LOAD REPORT" not in done.stderr and "\x1b[" not in done.stderr and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"clipconv: error: {work / 'small.pt'}: the check could not run the models"), last
    assert "ln_final.bias" in last or "final_layer_norm.bias" in last  # whichever model failed first, named
    assert list(tmp_path.iterdir()) == []
