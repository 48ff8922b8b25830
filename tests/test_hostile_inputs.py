"""Hostile and broken inputs, and faults while writing: each is refused in one line, runs nothing from the
input, and leaves nothing behind."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from roundtrip import destination, open_clip_config, output_file, safetensors_file, verify
from roundtrip.examples import DEMO, random_open_clip_model, random_openai_state_dict, save_open_clip_folder
from roundtrip.provenance import MAX_ZIP_RECORD_BYTES, ZIP_RECORD
from roundtrip.strided import as_torch
from roundtrip.torch_zip import read_torchscript_state_dict

from conftest import (
    assert_nothing_left,
    assert_refused,
    listing,
    read_json,
    resnet_clip_state_dict,
    run_cli,
    save_one_tower,
)
from hostile import (
    SystemCall,
    edited_archive,
    f32_entry,
    integer,
    mini_archive_members,
    module,
    safetensors_bytes,
    system_call,
    tensor,
    valid_mini_pickle,
    write_zip,
)

MARKER = "pwned"  # a payload that ran would create this file


# ---- OpenAI-side inputs (clipconv to-hf) ------------------------------------------------------------------


def _mini(data_pkl: bytes, **members):
    return lambda path, marker, archive: write_zip(path, mini_archive_members(data_pkl, **members))


def _edit(edit):
    return lambda path, marker, archive: edited_archive(archive, path, edit)


def _drop(suffix: str):
    return _edit(lambda name, data: [] if name.endswith(suffix) else [(name, data)])


def _resize_record(delta: int):
    def edit(name, data):
        if name.endswith("/data/0"):
            data = data[:delta] if delta < 0 else data + bytes(delta)
        return [(name, data)]
    return _edit(edit)


def _add_setstate(name, data):
    if "/code/" in name and b"class CLIP(Module):\n" in data:
        data = data.replace(b"class CLIP(Module):\n", b"class CLIP(Module):\n  def __setstate__(self, state):\n"
                                                      b"    return None\n", 1)
    return [(name, data)]


def _drop_clip_declaration(name, data):
    return [] if "/code/" in name and b"class CLIP(Module):\n" in data else [(name, data)]


def _duplicate_record(name, data):
    return [(name, data), (name, data)] if name.endswith("/data/0") else [(name, data)]


def _traversing_entry(name, data):
    top = name.split("/", 1)[0]
    extra = [(f"{top}/../evil.py", b"print('hi')")] if name.endswith("data.pkl") else []
    return [(name, data), *extra]


def _truncate(path, marker, archive):
    data = archive.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _reshaped(key: str, change, make_state_dict=lambda: random_openai_state_dict(DEMO)):
    """The demo's state dict (or `make_state_dict()`) with one tensor changed, saved with torch."""
    def build(path, marker, archive):
        state_dict = make_state_dict()
        state_dict[key] = change(state_dict[key]).clone()
        torch.save(state_dict, path)
    return build


def _with_clipconv_record(content: bytes):
    """A torch.save file of OpenAI's layout beside a clipconv provenance record holding `content`."""
    def build(path, marker, archive):
        torch.save(random_openai_state_dict(DEMO), path)
        with zipfile.ZipFile(path, "a") as archive_file:
            top = archive_file.namelist()[0].split("/", 1)[0]
            archive_file.writestr(f"{top}/{ZIP_RECORD}", content)
    return build


OPENAI_FILES = {
    "os.system in a zip .pt": (lambda p, m, a: torch.save({"visual.proj": SystemCall(m)}, p),
                               "refused: data.pkl uses the global posix.system"),
    "os.system in a raw pickle": (lambda p, m, a: p.write_bytes(pickle.dumps(SystemCall(m))),
                                  "not a readable PyTorch checkpoint"),
    "pickled nn.Module": (lambda p, m, a: torch.save(torch.nn.Linear(2, 2), p),
                          "refused: data.pkl uses the global torch.nn.modules.linear.Linear"),
    "TorchScript data.pkl with a foreign global": (
        lambda p, m, a: write_zip(p, mini_archive_members(module({"w": system_call(f"touch {m}")}))),
        "data.pkl uses the global posix.system, which is not allowed"),
    "TorchScript class with __setstate__": (_edit(_add_setstate), "defines __setstate__"),
    "TorchScript storage record too short": (_resize_record(-4), "storage record data/0 holds"),
    "TorchScript storage record too long": (_resize_record(16), "storage record data/0 holds"),
    "TorchScript view past its storage": (_mini(module({"w": tensor("0", 4, 2, (2, 2), (2, 1))})),
                                          "reaches element 5 of a storage of 4"),
    "TorchScript view one element past its storage": (_mini(module({"w": tensor("0", 4, 1, (2, 2), (2, 1))})),
                                                      "reaches element 4 of a storage of 4"),
    "TorchScript negative stride": (_mini(module({"w": tensor("0", 4, 0, (2, 2), (-1, 1))})),
                                    "negative or non-integer"),
    "TorchScript storage of another type than its record": (
        _mini(module({"w": tensor("0", 4, 0, (4,), (1,), storage="DoubleStorage")})), "holds 16 bytes"),
    "TorchScript missing data.pkl": (_drop("/data.pkl"), "data.pkl is missing"),
    "TorchScript missing storage record": (_drop("/data/0"), "storage record data/0 is missing"),
    "TorchScript missing class declaration": (_edit(_drop_clip_declaration), "declaring __torch__."),
    "TorchScript duplicate zip entry": (_edit(_duplicate_record), "appears more than once"),
    "TorchScript path-traversing zip entry": (_edit(_traversing_entry), "points outside the archive"),
    "TorchScript data.pkl that is not a module": (_mini(b"\x80\x02]."), "not a TorchScript module"),
    "random bytes": (lambda p, m, a: p.write_bytes(os.urandom(4096)), "not a readable PyTorch checkpoint"),
    "empty file": (lambda p, m, a: p.write_bytes(b""), "is empty"),
    "truncated archive": (_truncate, "not a readable PyTorch checkpoint"),
    "Git LFS pointer": (lambda p, m, a: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n"),
                        "Git LFS pointer"),
    "a clipconv record that is no JSON": (_with_clipconv_record(b"{not json"), "has malformed clipconv metadata"),
    "a clipconv record too large to be one": (_with_clipconv_record(b" " * (MAX_ZIP_RECORD_BYTES + 1)),
                                              "clipconv.json record of 16,777,217 bytes, more than clipconv's"),
    "a list, not a state dict": (lambda p, m, a: torch.save([torch.zeros(1)], p), "expected a state dict"),
    # Tensors with fewer dimensions than the numbers read off them (architecture._dim).
    "a 1-D text projection": (_reshaped("text_projection", lambda t: t[:, 0]),
                              "text_projection has shape (128,), expected at least 2 dimension(s)"),
    "a 0-D final LayerNorm": (_reshaped("ln_final.weight", lambda t: t[0]),
                              "ln_final.weight has shape (), expected at least 1 dimension(s)"),
    "vision positions that are no square grid": (_reshaped("visual.positional_embedding", lambda t: t[:-1]),
                                                 "vision position embedding has 16 rows, not a square grid plus"),
    "a ResNet attention pool narrower than its last stage": (
        _reshaped("visual.attnpool.c_proj.weight", lambda t: t[:, :1024], resnet_clip_state_dict),
        "visual.attnpool.c_proj.weight has shape (64, 1024): it should take the last stage's output, 32 x the "
        "width 64"),
    # Read only off text_projection before: a model CLIPModel cannot load, written under --no-verify.
    "projections of two widths": (_reshaped("visual.proj", lambda t: t[:, :64]),
                                  "the projections disagree on the embedding width: text_projection gives 128, "
                                  "visual.proj gives 64"),
}


@pytest.mark.parametrize("case", OPENAI_FILES)
def test_hostile_openai_inputs_are_refused_without_running_anything(tmp_path, demo_archive, case):
    build, message = OPENAI_FILES[case]
    source, marker = tmp_path / "input.pt", tmp_path / MARKER
    build(source, marker, demo_archive)
    result = run_cli("to-hf", source, tmp_path / "out")
    assert_refused(result, str(source), message)
    assert not marker.exists()
    assert_nothing_left(tmp_path, ["input.pt"])


def test_the_mini_archive_these_cases_start_from_is_read_correctly(tmp_path):
    # Control for the cases above: without a defect, the same builders give a readable archive.
    write_zip(tmp_path / "mini.pt", mini_archive_members(valid_mini_pickle()))
    state_dict = read_torchscript_state_dict(tmp_path / "mini.pt")
    assert list(state_dict) == ["w"] and torch.equal(as_torch(state_dict["w"]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_integer_opcode_is_signed_so_negative_strides_are_really_negative():
    assert integer(-1) == b"J\xff\xff\xff\xff"


# ---- HF-side inputs (clipconv to-openai) -------------------------------------------------------------------


@pytest.fixture
def converted_folder(tmp_path, demo_state_dict_file) -> Path:
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    return tmp_path / "hf"


def _weights(folder: Path) -> Path:
    return folder / "model.safetensors"


def _replace_weights(content: bytes):
    return lambda folder, marker: _weights(folder).write_bytes(content)


def _rewrite_metadata(folder: Path, marker: Path) -> None:
    tensors, _, _ = safetensors_file.read(_weights(folder))
    tensors = {key: as_torch(value).clone() for key, value in tensors.items()}  # let go of the file first
    safetensors_file.write(_weights(folder), tensors, {"clipconv": '{"source_dtypes": {"x": "os.system"}}'})


def _index(folder: Path, weight_map: dict) -> None:
    _weights(folder).rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _keys(folder: Path) -> list[str]:
    return list(safetensors_file.read(_weights(folder))[0])


def _index_outside(target: str):
    def damage(folder, marker):
        shutil.copy(_weights(folder), folder.parent / "elsewhere.safetensors")
        keys = _keys(folder)
        _index(folder, {key: target.format(parent=folder.parent) for key in keys})
    return damage


def _index_symlink_out(folder, marker):
    shutil.copy(_weights(folder), folder.parent / "elsewhere.safetensors")
    keys = _keys(folder)
    _weights(folder).unlink()
    (folder / "model-00001-of-00001.safetensors").symlink_to(folder.parent / "elsewhere.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {key: "model-00001-of-00001.safetensors" for key in keys}}))


def _index_missing_shard(folder, marker):
    keys = _keys(folder)
    _index(folder, {key: "model-00001-of-00002.safetensors" if i else "model-00002-of-00002.safetensors"
                    for i, key in enumerate(keys)})


def _key_in_two_shards(folder, marker):
    keys = _keys(folder)
    shutil.copy(_weights(folder), folder / "model-00002-of-00002.safetensors")
    _index(folder, {key: "model-00002-of-00002.safetensors" if key == "logit_scale" else
                    "model-00001-of-00002.safetensors" for key in keys})


def _pickle_payload_bin(folder, marker):
    _weights(folder).unlink()
    torch.save({"logit_scale": SystemCall(marker)}, folder / "pytorch_model.bin")


# JSON itself allows repeated names (the last one wins), which would hide a tensor.
DUPLICATE_NAMES = (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                   b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')
HEADER_TOO_LARGE = struct.pack("<Q", 200 * 2**20) + b"{}"

HF_FOLDERS = {
    "os.system in pytorch_model.bin": (_pickle_payload_bin, "refused: data.pkl uses the global posix.system"),
    "safetensors smaller than its header length field": (_replace_weights(b"\x01\x02\x03"), "too small"),
    "safetensors header length past the end": (
        _replace_weights(safetensors_bytes({}, b"", declared_length=999)), "runs past the end"),
    "safetensors header over the 100 MB limit": (_replace_weights(HEADER_TOO_LARGE), "exceeds"),
    "safetensors header not JSON": (_replace_weights(safetensors_bytes(b"{not json", b"")), "not JSON"),
    "safetensors offsets overlapping": (
        _replace_weights(safetensors_bytes({"a": f32_entry(0, 8), "b": f32_entry(4, 12)}, bytes(12))), "overlaps"),
    "safetensors offsets out of range": (
        _replace_weights(safetensors_bytes({"a": f32_entry(0, 8), "b": f32_entry(8, 16)}, bytes(8))),
        "cover 16 bytes of data but the file holds 8"),
    "safetensors shape and dtype disagree with offsets": (
        _replace_weights(safetensors_bytes({"a": f32_entry(0, 8, shape=(3,))}, bytes(8))), "needs 12"),
    "safetensors duplicate tensor names": (
        _replace_weights(safetensors_bytes(DUPLICATE_NAMES, bytes(8))), "appears twice"),
    "safetensors unknown dtype": (
        _replace_weights(safetensors_bytes({"a": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}}, b"x")),
        "unsupported dtype"),
    "malformed clipconv provenance": (_rewrite_metadata, "malformed clipconv metadata"),
    "shard index pointing outside with ..": (_index_outside("../elsewhere.safetensors"), "points outside"),
    "shard index with an absolute path": (_index_outside("{parent}/elsewhere.safetensors"), "points outside"),
    "shard index through a symlink leading out": (_index_symlink_out, "points outside"),
    "shard index naming a missing shard": (_index_missing_shard, "missing shard"),
    "a tensor in two shards": (_key_in_two_shards, "but the index puts it in model-0000"),
    "single file and index together": (
        lambda f, m: (f / "model.safetensors.index.json").write_text('{"weight_map": {}}'), "ambiguous"),
    "config.json not JSON": (lambda f, m: (f / "config.json").write_text("{not json"), "not valid JSON"),
    "config.json of another model": (lambda f, m: (f / "config.json").write_text('{"model_type": "bert"}'),
                                     "not a CLIP config"),
    "no weights": (lambda f, m: _weights(f).unlink(), "has no weights"),
}


@pytest.mark.parametrize("case", HF_FOLDERS)
def test_hostile_hf_folders_are_refused_without_running_anything(tmp_path, converted_folder, case):
    damage, message = HF_FOLDERS[case]
    marker = tmp_path / MARKER
    damage(converted_folder, marker)
    before = listing(tmp_path)
    assert_refused(run_cli("to-openai", converted_folder, tmp_path / "out.pt"), message)
    assert not marker.exists()
    assert listing(tmp_path) == before


# ---- faults while writing ------------------------------------------------------------------------------------


def _fail_on_third_shard(monkeypatch, error: BaseException) -> None:
    real_write, calls = safetensors_file.write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"partial")  # a half-written shard, as a crash would leave it
            raise error
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(safetensors_file, "write", write)


@pytest.mark.parametrize("error, message", [
    (RuntimeError("injected crash"), "internal error: RuntimeError: injected crash"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "could not be written: No space left on device"),
], ids=["crash", "full disk"])
def test_a_fault_while_writing_the_third_shard_leaves_nothing(tmp_path, demo_state_dict_file, monkeypatch,
                                                               error, message):
    _fail_on_third_shard(monkeypatch, error)
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--max-shard-size", "5MB")
    assert_refused(result, message)
    assert list(tmp_path.iterdir()) == []


def _fail_in_the_writer_thread(monkeypatch, fault: str) -> None:
    """A full disk at the third block write, or a block that reads back differently, both in the
    thread that writes blocks out, mid-file."""
    real_pwrite, real_read, writes = os.pwrite, output_file._pread_into, []

    def pwrite(fd, data, offset):
        writes.append(offset)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    def corrupting_read(fd, view, offset):
        count = real_read(fd, view, offset)
        view[count // 2] ^= 1
        return count

    if fault == "full disk":
        monkeypatch.setattr(os, "pwrite", pwrite)
    else:
        monkeypatch.setattr(output_file, "_pread_into", corrupting_read)
    monkeypatch.setattr(output_file, "BLOCK_BYTES", 64 * 1024)  # many blocks, even for the demo model


@pytest.mark.parametrize("fault, message", [
    ("full disk", "could not be written: No space left on device"),
    ("read back differently", "could not be written: bytes 0-65536 read back differently"),
])
@pytest.mark.parametrize("direction", ["to-hf", "to-openai"])
def test_a_fault_in_the_writer_thread_is_one_line_and_leaves_nothing(tmp_path, demo_state_dict_file,
                                                                    demo_hf_folder, monkeypatch, direction,
                                                                    fault, message):
    source = demo_state_dict_file if direction == "to-hf" else demo_hf_folder
    _fail_in_the_writer_thread(monkeypatch, fault)
    result = run_cli(direction, source, tmp_path / "out")
    assert_refused(result, message)
    assert list(tmp_path.iterdir()) == []


def test_with_overwrite_a_fault_leaves_the_old_dest_intact(tmp_path, demo_state_dict_file, monkeypatch):
    dest = tmp_path / "hf"
    assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify").exit_code == 0
    before = {path.name: path.read_bytes() for path in dest.iterdir()}
    _fail_on_third_shard(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    result = run_cli("to-hf", demo_state_dict_file, dest, "--overwrite", "--max-shard-size", "5MB")
    assert_refused(result, "No space left on device")
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


KILLED_AT_THIRD_SHARD = """
import os, signal, sys
from pathlib import Path
import roundtrip
from roundtrip import safetensors_file

real_write, calls = safetensors_file.write, []

def write(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 3:
        path.write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, *args, **kwargs)

safetensors_file.write = write
roundtrip.convert_to_hf(Path(sys.argv[1]), Path(sys.argv[2]), verify_logits=False, max_shard_bytes=5 * 10**6)
"""


def test_a_killed_run_leaves_a_recognisable_temporary_that_the_next_run_removes(tmp_path, demo_state_dict_file):
    dest = tmp_path / "hf"
    child = subprocess.run([sys.executable, "-c", KILLED_AT_THIRD_SHARD, demo_state_dict_file, dest],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = [path.name for path in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".hf.clipconv-new-"), leftovers
    assert not dest.exists()

    assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify").exit_code == 0
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


def test_a_dest_moved_aside_by_a_killed_run_is_given_back(tmp_path, demo_state_dict_file):
    # Where the swap is two renames, a kill between them leaves the old DEST aside; it must come back.
    dead_pid = _a_pid_that_is_not_running()
    aside = tmp_path / f".hf.clipconv-old-{dead_pid}-abc123"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    assert_refused(run_cli("to-hf", demo_state_dict_file, tmp_path / "hf"), "already exists")
    assert listing(tmp_path) == ["hf", "hf/config.json"]


def test_an_old_dest_left_beside_the_new_one_by_a_killed_run_is_removed_and_the_new_one_kept(
        tmp_path, demo_state_dict_file):
    # Killed after the new DEST was moved in, before the old one was removed: the old one must not come back.
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    converted = listing(tmp_path)
    aside = tmp_path / f".hf.clipconv-old-{_a_pid_that_is_not_running()}-abc123"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    assert_refused(run_cli("to-hf", demo_state_dict_file, tmp_path / "hf"), "already exists")
    assert listing(tmp_path) == converted


def _a_pid_that_is_not_running() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---- open_clip sources: variants CLIPModel cannot hold, malformed and contradictory configs ------------------


def _open_clip_config(**changes):
    """A two-layer ViT-B-32 config with `changes` (dotted names for the towers' settings)."""
    config = open_clip_config.registry_config("ViT-B-32")
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 1
    for name, value in changes.items():
        *where, key = name.split(".")
        (config[where[0]] if where else config)[key] = value
    return config


@pytest.fixture(scope="module")
def b32_weights():
    return random_open_clip_model(_open_clip_config()).state_dict()


def _folder(config=None, weights_from=None, raw=None, preprocess=None):
    """An open_clip folder whose tensors are `weights_from`'s model (built by open_clip) or ViT-B-32's, and whose
    open_clip_config.json holds `raw` text or `config` (and `preprocess` as its preprocess_cfg)."""
    def build(tmp_path, b32_weights):
        model_cfg = config if config is not None else _open_clip_config()
        weights = random_open_clip_model(weights_from).state_dict() if weights_from else b32_weights
        save_open_clip_folder(weights, model_cfg, tmp_path / "source", preprocess)
        if raw is not None:
            (tmp_path / "source" / "open_clip_config.json").write_text(raw)
        return [tmp_path / "source"]
    return build


def _file(*options):
    def build(tmp_path, b32_weights):
        torch.save(b32_weights, tmp_path / "epoch_1.pt")
        return [tmp_path / "epoch_1.pt", *options]
    return build


def _file_with_config(config):
    def build(tmp_path, b32_weights):
        torch.save(b32_weights, tmp_path / "epoch_1.pt")
        (tmp_path / "model.json").write_text(json.dumps(config))
        return [tmp_path / "epoch_1.pt", "--open-clip-config", tmp_path / "model.json"]
    return build


def _text_alone(key: str) -> bool:
    return not key.startswith("visual.") and key != "logit_scale"


def _tower_file(config, keep, *options):
    """One tower's weights (those whose keys `keep` takes) in a file, with `config` named for it."""
    def build(tmp_path, b32_weights):
        torch.save({key: tensor for key, tensor in b32_weights.items() if keep(key)}, tmp_path / "tower.pt")
        (tmp_path / "model.json").write_text(json.dumps(config))
        return [tmp_path / "tower.pt", "--open-clip-config", tmp_path / "model.json", *options]
    return build


def _without(config: dict, tower_cfg: str) -> dict:
    return {key: value for key, value in config.items() if key != tower_cfg}


def _folder_with(*options):
    return lambda tmp_path, weights: [*_folder()(tmp_path, weights), *options]


def _folder_without(name: str):
    def build(tmp_path, weights):
        arguments = _folder()(tmp_path, weights)
        (arguments[0] / name).unlink()
        return arguments
    return build


_LAYER_SCALE = _open_clip_config(**{"vision_cfg.ls_init_value": 1e-4, "text_cfg.ls_init_value": 1e-4})
_CLIPA = _open_clip_config(**{"vision_cfg.no_ln_pre": True, "vision_cfg.pool_type": "avg"})

OPEN_CLIP_SOURCES = {
    "layer scale (ViT-M-16-alt style)": (_folder(_LAYER_SCALE, weights_from=_LAYER_SCALE), "layer scale"),
    "CLIPA (no LayerNorm before, average pooling)": (_folder(_CLIPA, weights_from=_CLIPA), "CLIPA"),
    "custom text tower": (_folder(_open_clip_config(custom_text=True)), "custom text tower"),
    "timm vision tower": (_folder(_open_clip_config(**{"vision_cfg.timm_model_name": "vit_base_patch16_224"})),
                          "timm vision tower"),
    "CoCa decoder": (_folder(_open_clip_config(multimodal_cfg={"layers": 1})), "multimodal decoder"),
    "text projection with a bias": (_folder(_open_clip_config(**{"text_cfg.proj_bias": True})), "proj_bias"),
    "SigLIP-style logit bias": (_folder(_open_clip_config(init_logit_bias=-10)), "logit bias"),
    "text pooling at the last token": (_folder(_open_clip_config(**{"text_cfg.pool_type": "last"})),
                                       "text_cfg.pool_type is 'last'"),
    # Each setting below alone, on ViT-B-32's own weights: only its refusal by name stands between it and a
    # model that computes something else (the logit check sees some, --no-verify none).
    "text without the causal mask": (_folder(_open_clip_config(**{"text_cfg.no_causal_mask": True})),
                                     "text attention without the causal mask"),
    "an attentional pooler": (_folder(_open_clip_config(**{"vision_cfg.attentional_pool": True})),
                              "an attentional pooler (attn_pool"),
    "a class token in the text tower": (_folder(_open_clip_config(**{"text_cfg.embed_cls": True})),
                                        "a class token in the text tower"),
    "normalised queries and keys": (_folder(_open_clip_config(**{"vision_cfg.qk_norm": True})),
                                    "a custom attention block (vision_cfg.qk_norm)"),
    "scaled cosine attention": (_folder(_open_clip_config(**{"text_cfg.scaled_cosine_attn": True})),
                                "a custom attention block (text_cfg.scaled_cosine_attn)"),
    "a logit scale of shape [1]": (_folder(_open_clip_config(nonscalar_logit_scale=True)),
                                   "a logit scale of shape [1]"),
    "activation arguments": (_folder(_open_clip_config(**{"vision_cfg.act_kwargs": {"approximate": "tanh"}})),
                             "activation arguments (act_kwargs)"),
    "an MLP ratio the tensors contradict": (_folder(_open_clip_config(**{"vision_cfg.mlp_ratio": 2.0})),
                                            "vision.mlp_width is 1536, the tensors say 3072"),
    "no model_cfg": (_folder(raw='{"preprocess_cfg": {}}'), "has no model_cfg"),
    "open_clip_config.json not JSON": (_folder(raw="{"), "not valid JSON"),
    "model_cfg not an object": (_folder(raw='{"model_cfg": [1]}'), "model_cfg should be a JSON object, found list"),
    "open_clip_config.json a list": (_folder(raw='[{"model_cfg": {}}]'), "is a JSON list, expected an object"),
    "preprocess_cfg not an object": (_folder(raw=json.dumps({"model_cfg": _open_clip_config(), "preprocess_cfg": [1]})),
                                     "preprocess_cfg should be a JSON object, found list"),
    "layers that disagree with the tensors": (_folder(_open_clip_config(**{"vision_cfg.layers": 3})),
                                              "vision.layers is 3, the tensors say 1"),
    "context that disagrees with the tensors": (_folder(_open_clip_config(**{"text_cfg.context_length": 64})),
                                                "context_length is 64, the tensors say 77"),
    "embed_dim that disagrees with the tensors": (_folder(_open_clip_config(embed_dim=256)),
                                                  "embed_dim is 256, the tensors say 512"),
    "image size that disagrees with the tensors": (_folder(_open_clip_config(**{"vision_cfg.image_size": 448})),
                                                   "image_resolution is 448, the tensors say 224"),
    "vocabulary that disagrees with the tensors": (_folder(_open_clip_config(**{"text_cfg.vocab_size": 1000})),
                                                   "vocab_size is 1000, the tensors say 49408"),
    "two numbers that disagree with the tensors": (_folder(_open_clip_config(embed_dim=256,
                                                                             **{"vision_cfg.layers": 3})),
                                                   "the open_clip config does not fit the tensors: embed_dim is 256, "
                                                   "the tensors say 512; vision.layers is 3, the tensors say 1"),
    "a width that disagrees with the tensors": (_folder(_open_clip_config(**{"text_cfg.width": 1024})),
                                                "text.width is 1024, the tensors say 512"),
    "patch that disagrees with the tensors": (_folder(_open_clip_config(**{"vision_cfg.patch_size": 16})),
                                              "patch_size is 16, the tensors say 32"),
    "width not divisible by head_width": (_folder(_open_clip_config(**{"vision_cfg.head_width": 100})),
                                          "width 768 is not a multiple of its head_width 100"),
    "a setting open_clip does not have": (_folder(_open_clip_config(**{"vision_cfg.flux_capacitor": 1})),
                                          "vision_cfg.flux_capacitor is not an open_clip setting"),
    "a width that is not a number": (_folder(_open_clip_config(**{"vision_cfg.width": "768"})),
                                     "vision_cfg.width is '768', expected a positive integer"),
    "a text width that is not a number": (_folder(_open_clip_config(**{"text_cfg.width": "512"})),
                                          "text_cfg.width is '512', expected a positive integer"),
    "an MLP ratio of true": (_folder(_open_clip_config(**{"vision_cfg.mlp_ratio": True})),
                             "vision_cfg.mlp_ratio is True, expected a positive number"),
    "an MLP ratio that is a word": (_folder(_open_clip_config(**{"text_cfg.mlp_ratio": "4"})),
                                    "text_cfg.mlp_ratio is '4', expected a positive number"),
    "an MLP ratio of 0": (_folder(_open_clip_config(**{"text_cfg.mlp_ratio": 0})),
                          "text_cfg.mlp_ratio is 0, expected a positive number"),
    "a LayerNorm eps of true": (_folder(_open_clip_config(**{"vision_cfg.norm_kwargs": {"eps": True}})),
                                "vision_cfg.norm_kwargs.eps is True, expected a positive number"),
    "a LayerNorm eps that is a word": (_folder(_open_clip_config(**{"text_cfg.norm_kwargs": {"eps": "1e-5"}})),
                                       "text_cfg.norm_kwargs.eps is '1e-5', expected a positive number"),
    "a LayerNorm eps of 0": (_folder(_open_clip_config(**{"text_cfg.norm_kwargs": {"eps": 0}})),
                             "text_cfg.norm_kwargs.eps is 0, expected a positive number"),
    "text layers that are not a number": (_folder(_open_clip_config(**{"text_cfg.layers": "1"})),
                                          "text_cfg.layers is '1', expected a positive integer"),
    "vision layers that are not a number": (_folder(_open_clip_config(**{"vision_cfg.layers": 1.0})),
                                            "vision_cfg.layers is 1.0, expected a positive integer"),
    "text heads that are not a number": (_folder(_open_clip_config(**{"text_cfg.heads": "8"})),
                                         "text_cfg.heads is '8', expected a positive integer"),
    # open_clip_config.claimed_architecture's survivors 110, 112-114: no case reached this refusal
    "text heads that do not split its width": (_folder(_open_clip_config(**{"text_cfg.heads": 7})),
                                               "the open_clip config cannot be built: text width 512 does not split "
                                               "into 7 heads"),
    # open_clip_config._number's survivor 6 (`... or bool and < 1`) accepted both of these
    "no text heads": (_folder(_open_clip_config(**{"text_cfg.heads": 0})),
                      "text_cfg.heads is 0, expected a positive integer"),
    "text heads given as true": (_folder(_open_clip_config(**{"text_cfg.heads": True})),
                                 "text_cfg.heads is True, expected a positive integer"),
    "an image size that is not a number": (_folder(_open_clip_config(**{"vision_cfg.image_size": "224"})),
                                           "vision_cfg.image_size is '224', expected a positive integer"),
    "images that are not square": (_folder(_open_clip_config(**{"vision_cfg.image_size": [224, 256]})),
                                   "vision_cfg.image_size is [224, 256]: CLIPModel's images and patches are square"),
    "a patch size of three sides": (_folder(_open_clip_config(**{"vision_cfg.patch_size": [32, 32, 32]})),
                                     "vision_cfg.patch_size is [32, 32, 32]: CLIPModel's images and patches are"),
    "a patch size that is not a number": (_folder(_open_clip_config(**{"vision_cfg.patch_size": "32"})),
                                          "vision_cfg.patch_size is '32', expected a positive integer"),
    "a head width that is not a number": (_folder(_open_clip_config(**{"vision_cfg.head_width": "64"})),
                                          "vision_cfg.head_width is '64', expected a positive integer"),
    "an embed_dim that is not a number": (_folder(_open_clip_config(embed_dim="512")),
                                          "model_cfg.embed_dim is '512', expected a positive integer"),
    "a context length that is not a number": (_folder(_open_clip_config(**{"text_cfg.context_length": "77"})),
                                              "text_cfg.context_length is '77', expected a positive integer"),
    "a vocabulary size that is not a number": (_folder(_open_clip_config(**{"text_cfg.vocab_size": 49408.0})),
                                               "text_cfg.vocab_size is 49408.0, expected a positive integer"),
    "an unknown registry name": (_file("--open-clip-model", "ViT-Q-99"), "not a model in open_clip's registry"),
    "an image mean of two numbers": (_folder(preprocess={"mean": [0.5, 0.5]}),
                                     "preprocess_cfg.mean is [0.5, 0.5], expected three numbers"),
    "an image std of words": (_folder(preprocess={"std": ["a", "b", "c"]}),
                              "preprocess_cfg.std is ['a', 'b', 'c'], expected three numbers"),
    "an image mean of booleans": (_folder(preprocess={"mean": [True, False, True]}),
                                  "preprocess_cfg.mean is [True, False, True], expected three numbers"),
    "an interpolation that is not a name": (_folder(preprocess={"interpolation": 3}),
                                            "preprocess_cfg.interpolation is 3, expected a name"),
    "a resize mode that is not a name": (_folder(preprocess={"resize_mode": None}),
                                         "preprocess_cfg.resize_mode is None, expected a name"),
    "a registry name that leads out of the registry": (_file("--open-clip-model", "../../setup"),
                                                       "not a model in open_clip's registry"),
    "a misspelt registry name": (_file("--open-clip-model", "ViT-B-32-quickgleu"),
                                 "not a model in open_clip's registry (close: ViT-B-32-quickgelu, ViT-B-16-quickgelu"),
    "an empty registry name": (_file("--open-clip-model", ""), "'' is not a model in open_clip's registry"),
    "both a registry name and a config": (_file("--open-clip-model", "ViT-B-32", "--open-clip-config", "x.json"),
                                          "not both"),
    "a registry model whose layers disagree": (_file("--open-clip-model", "ViT-B-32"),
                                               "vision.layers is 12, the tensors say 1"),
    "a registry name spelt as OpenAI does (ViT-B/32)": (_file("--open-clip-model", "ViT-B/32"),
                                                        "vision.layers is 12, the tensors say 1"),
    "a config file that is not open_clip's": (_file_with_config({"hidden_size": 3}), "has no model_cfg"),
    "options for a folder": (_folder_with("--open-clip-model", "ViT-B-32"), "are for checkpoint files"),
    "a folder without weights": (_folder_without("open_clip_model.safetensors"), "has no weights"),
    "a text tower without the projection its config has": (
        _tower_file(_open_clip_config(), lambda key: _text_alone(key) and key != "text_projection", "--tower",
                    "text"), "the text tower has a projection in the config, none in the tensors"),
    # survivors of architecture.disagreements (65, 72-74): the other direction's words
    "a text tower with a projection its config has not": (
        _tower_file(_without(_without(_open_clip_config(), "vision_cfg"), "embed_dim"), _text_alone, "--tower",
                    "text"), "the text tower has no projection in the config, one in the tensors"),
    "a text tower whose config says another width": (
        _tower_file(_open_clip_config(**{"text_cfg.width": 768}), _text_alone, "--tower", "text"),
        "the open_clip config does not fit the tensors: text.width is 768, the tensors say 512"),
    "a vision tower with a config of the text tower alone": (
        _tower_file(_without(_open_clip_config(), "vision_cfg"), lambda key: key.startswith("visual."), "--tower",
                    "vision"), "the config has the text tower(s), the tensors the vision"),
    "a config of neither tower": (_tower_file(_without(_without(_open_clip_config(), "vision_cfg"), "text_cfg"),
                                              _text_alone, "--tower", "text"), "has no model_cfg (nor vision_cfg"),
    "a text tower to to-hf without --tower": (_tower_file(_open_clip_config(), _text_alone),
                                              "it has no vision tower (--tower text writes the text tower alone)"),
    # survivors of open_clip_config.unsupported (21, 23-25; 31; 34, 35; 47, 48): settings no case reached
    "a model_cfg of neither tower": (_folder(raw=json.dumps({"model_cfg": {"embed_dim": 512}})),
                                     "it has neither vision_cfg nor text_cfg"),
    "a text tower alone with a setting CLIPModel lacks": (
        _tower_file(_without(_open_clip_config(**{"text_cfg.no_causal_mask": True}), "vision_cfg"), _text_alone,
                    "--tower", "text"), "text_cfg.no_causal_mask is True"),
    "a vision_cfg that is no object, and a text setting CLIPModel lacks": (
        _folder(_open_clip_config(**{"vision_cfg": "ViT", "text_cfg.no_causal_mask": True})),
        "vision_cfg is not a JSON object; text_cfg.no_causal_mask is True"),
    "a vision LayerNorm setting other than eps": (
        _folder(_open_clip_config(**{"vision_cfg.norm_kwargs": {"eps": 1e-5, "elementwise_affine": False}})),
        "vision_cfg.norm_kwargs sets elementwise_affine, of which CLIPModel's LayerNorm takes only eps"),
    "a text LayerNorm setting other than eps": (
        _folder(_open_clip_config(**{"text_cfg.norm_kwargs": {"bias": False}})),
        "text_cfg.norm_kwargs sets bias, of which CLIPModel's LayerNorm takes only eps"),
    # open_clip_config._against's survivor 9 (`is not` for `is`) accepted this
    "a setting of 0 where open_clip means false": (_folder(_open_clip_config(**{"text_cfg.no_causal_mask": 0})),
                                                   "text_cfg.no_causal_mask is 0"),
    "a ResNet's vision layers": (_folder(_open_clip_config(**{"vision_cfg.layers": [3, 4, 6, 3]})),
                                 "the open_clip config does not fit the tensors: the vision tower is a ResNet in the "
                                 "config, a vision transformer in the tensors"),
}


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "--no-verify"])
@pytest.mark.parametrize("case", OPEN_CLIP_SOURCES)
def test_open_clip_sources_clipmodel_cannot_hold_or_that_contradict_themselves_are_refused(tmp_path, b32_weights,
                                                                                          case, verified):
    build, message = OPEN_CLIP_SOURCES[case]
    arguments = build(tmp_path, b32_weights)
    before = listing(tmp_path)
    options = [] if verified else ["--no-verify"]
    assert_refused(run_cli("to-hf", arguments[0], tmp_path / "out", *arguments[1:], *options), message)
    assert listing(tmp_path) == before


def test_a_registry_name_without_open_clip_installed_is_one_line(tmp_path, b32_weights, monkeypatch):
    """open_clip is a dependency, but an install with --no-deps has none: the registry cannot be read."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "open_clip" else real_find_spec(name, *rest))
    file, *options = _file("--open-clip-model", "ViT-B-32")(tmp_path, b32_weights)
    assert_refused(run_cli("to-hf", file, tmp_path / "out", *options, "--no-verify"),
                   "open_clip is not installed: pip install open-clip-torch")


# ---- promises no other test held (each kills a hand-made mutation of the code) ---------------------------------


def test_logits_that_differ_by_1e_2_are_refused_at_the_real_tolerance(tmp_path, demo_state_dict_file, monkeypatch):
    # The tolerance itself, not a patched one: a check loosened to 1e-1 would let this through.
    real = verify.reference_outputs
    monkeypatch.setattr(verify, "reference_outputs",
                        lambda *arguments: {**real(*arguments), "logits": real(*arguments)["logits"] + 1e-2})
    assert_refused(run_cli("to-hf", demo_state_dict_file, tmp_path / "hf"), "logits differ", "by 0.01")
    assert list(tmp_path.iterdir()) == []


def test_every_written_file_and_the_folder_it_lands_in_are_fsynced(tmp_path, demo_state_dict_file, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(descriptor):
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    assert run_cli("to-openai", tmp_path / "hf", tmp_path / "back.pt", "--no-verify").exit_code == 0
    staged = {(path.parent.name.split(".clipconv-new-")[0], path.name) for path in synced}
    for written in (tmp_path / "hf").iterdir():  # synced under its staging folder's name, before the swap
        assert (".hf", written.name) in staged, written.name
    assert any(path.name.startswith(".back.pt.clipconv-new-") for path in synced)  # the .pt file
    assert synced.count(tmp_path) >= 2  # the folder, after each swap


def test_the_old_dest_survives_when_neither_the_exchange_nor_the_rename_works(tmp_path, demo_state_dict_file,
                                                                              monkeypatch):
    dest = tmp_path / "hf"
    assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify").exit_code == 0
    before = {path.name: path.read_bytes() for path in dest.iterdir()}
    real_replace = os.replace

    def replace(source, target):
        if Path(target) == dest and ".clipconv-new-" in str(source):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # the new one cannot be moved in
        return real_replace(source, target)

    monkeypatch.setattr(destination, "_renameat2", lambda first, second, flags: errno.ENOSYS)  # no renameat2 here
    monkeypatch.setattr(os, "replace", replace)
    assert_refused(run_cli("to-hf", demo_state_dict_file, dest, "--overwrite", "--no-verify"), "could not be written")
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


def test_folders_are_swapped_in_one_exchange(tmp_path, monkeypatch):
    """renameat2(RENAME_EXCHANGE), which Linux offers: both paths exist at every instant. Relative paths, as a
    DEST given on the command line is, are taken from the working directory."""
    monkeypatch.chdir(tmp_path)
    first, second = Path("first"), Path("second")
    first.mkdir()
    second.mkdir()
    (first / "a").write_text("first")
    assert destination._renameat2(first, second, destination.RENAME_EXCHANGE) == 0
    assert (second / "a").read_text() == "first" and not any(first.iterdir())


def test_overwrite_never_moves_the_old_dest_aside_where_it_can_be_exchanged(tmp_path, demo_state_dict_file,
                                                                           monkeypatch):
    dest = tmp_path / "hf"
    assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify").exit_code == 0
    real_replace = os.replace

    def replace(source, target):
        assert Path(source) != dest, "the old DEST was moved aside: not one atomic exchange"
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    assert run_cli("to-hf", demo_state_dict_file, dest, "--overwrite", "--no-verify").exit_code == 0
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


def test_staging_of_a_running_clipconv_is_left_alone_and_ours_from_a_failed_call_is_removed(
        tmp_path, demo_state_dict_file):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # several of each, so that whatever order the folder lists them in, some of ours follow some of theirs
        theirs = [tmp_path / f".hf.clipconv-new-{running.pid}-abc{number}" for number in range(5)]
        ours = [tmp_path / f".hf.clipconv-new-{os.getpid()}-def{number}" for number in range(5)]  # run_cli's
        for path in theirs + ours:
            path.mkdir()
        assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["hf", *(path.name for path in theirs)])
        assert running.poll() is None  # asked whether it runs, not signalled
    finally:
        running.kill()
        running.wait()


def test_names_beside_dest_that_only_look_like_a_staging_are_left_alone(tmp_path, demo_state_dict_file):
    # clean_leftovers removes only ".DEST.clipconv-new|old-PID-..." of a finished process: these are the user's
    mine = [tmp_path / ".hf.clipconv-notes.txt", tmp_path / f".hf.clipconv-new-{_a_pid_that_is_not_running()}"]
    for path in mine:
        path.write_text("mine")
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["hf", *(path.name for path in mine)])


ONE_TOWER_CONFIG_DAMAGE = {
    "another width": ("CLIPTextModel", {"hidden_size": 64}, "text.width is 64, the tensors say 128"),
    "another number of layers": ("CLIPVisionModel", {"num_hidden_layers": 3}, "vision.layers is 3, the tensors say 2"),
    "a projection the weights lack": ("CLIPTextModel", {"architectures": ["CLIPTextModelWithProjection"]},
                                      "it names CLIPTextModelWithProjection, the weights are a CLIPTextModel's"),
    "a vision config for text weights": ("CLIPTextModel", {"model_type": "clip_vision_model"},
                                         "describes a vision tower alone, and the weights (their keys without a "
                                         "prefix) are a text tower's"),
}


@pytest.mark.parametrize("case", ONE_TOWER_CONFIG_DAMAGE)
def test_a_tower_whose_config_and_weights_disagree_is_refused_naming_config_json(tmp_path, case):
    name, changes, message = ONE_TOWER_CONFIG_DAMAGE[case]
    save_one_tower(tmp_path / "hf", name)
    config = read_json(tmp_path / "hf" / "config.json")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **changes}))
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "out.pt", "--no-verify"), "config.json",
                   message)
    assert not (tmp_path / "out.pt").exists()


# ---- diffusion models' single files ----------------------------------------------------------------------------


def _single_file(family: str, edit=lambda tensors: tensors, **options):
    def build(tmp_path: Path) -> Path:
        from safetensors.torch import save_file

        from roundtrip.testing import single_file_tensors

        save_file(edit(single_file_tensors(family, layers=1, vocab_size=64, **options)), tmp_path / "model.safetensors")
        return tmp_path / "model.safetensors"
    return build


def _half_of_sd1_encoder(tensors: dict) -> dict:
    encoder = sorted(key for key in tensors if key.startswith("cond_stage_model."))
    return {key: tensor for key, tensor in tensors.items() if key not in encoder[: len(encoder) // 2]}


def _xl_second_encoder_in_hf_layout(tensors: dict) -> dict:
    from roundtrip import mapping

    prefix = "conditioner.embedders.1.model."
    open_clip_keys = {key for key in tensors if key.startswith(prefix) and not key.endswith("logit_scale")}
    converted = mapping.convert(mapping.without_prefix({key: tensors[key] for key in open_clip_keys}, prefix),
                                "openai", "hf", ("text",))
    return {**{key: tensor for key, tensor in tensors.items() if key not in open_clip_keys},
            **mapping.with_prefix({key: tensor.contiguous() for key, tensor in converted.items()}, prefix)}


def _reversed_position_ids(tensors: dict) -> dict:
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    return {**tensors, key: tensors[key].flip(-1)}


def _xl_projection_of_the_wrong_shape(tensors: dict) -> dict:
    return {**tensors, "conditioner.embedders.1.model.text_projection": torch.zeros(1024, 1280, dtype=torch.float16)}


# case: (command and options, how the source is made, what the one line says)
SINGLE_FILES = {
    "half an encoder": (["to-diffusers"], _single_file("Stable Diffusion 1.x", _half_of_sd1_encoder),
                        "missing"),
    "an encoder in the other key layout": (["to-diffusers"], _single_file("Stable Diffusion XL",
                                                                          _xl_second_encoder_in_hf_layout),
                                           "holds keys under conditioner.embedders.1.model., where Stable Diffusion "
                                           "XL files keep clip_g in open_clip's key layout"),
    "a projection of the wrong shape": (["to-diffusers"], _single_file("Stable Diffusion XL",
                                                                       _xl_projection_of_the_wrong_shape),
                                        "its 1024 rows should be the text tower's width, 1280"),
    "an encoder the file lacks": (["to-hf", "--encoder", "clip_g"], _single_file("Stable Diffusion 1.x"),
                                  "has no text encoder clip_g: it is a Stable Diffusion 1.x checkpoint"),
    "two encoders, none named": (["to-openai"], _single_file("Stable Diffusion XL"),
                                 "text encoders clip_l, clip_g): name one with --encoder"),
    "a standalone encoder of no released width": (["to-diffusers"], _single_file("standalone clip_l", width=512),
                                                  "is a text encoder 512 wide, which no released diffusion model's"),
    "position_ids out of order": (["to-diffusers"], _single_file("Stable Diffusion 1.x", _reversed_position_ids,
                                                                 position_ids=True),
                                  "text_model.embeddings.position_ids is not the positions 0 to n-1 in order"),
    "no diffusion model": (["to-diffusers"], lambda tmp_path: _write_openai_demo(tmp_path),
                           "holds no diffusion model's CLIP text encoder"),
}


def _write_openai_demo(tmp_path: Path) -> Path:
    torch.save(random_openai_state_dict(DEMO), tmp_path / "demo.pt")
    return tmp_path / "demo.pt"


@pytest.mark.parametrize("case", SINGLE_FILES)
def test_hostile_single_files_are_refused_in_one_line_leaving_nothing(tmp_path, case):
    command, build, message = SINGLE_FILES[case]
    source = build(tmp_path)
    out = tmp_path / ("out.pt" if command[0] == "to-openai" else "out")
    assert_refused(run_cli(command[0], source, out, *command[1:], "--no-verify"), str(source), message)
    assert not out.exists()
    assert_nothing_left(tmp_path, [source.name])


def test_open_clip_settings_spelt_out_with_the_values_clipmodel_holds_are_read(tmp_path, b32_weights):
    """Settings CLIPModel has one value of, spelt out with that value, are no refusal (survivors of
    open_clip_config._against 8, 10 refused every one)."""
    config = _open_clip_config(**{"text_cfg.no_causal_mask": False, "text_cfg.proj_bias": False,
                                  "vision_cfg.attentional_pool": False, "nonscalar_logit_scale": False})
    (source,) = _folder(config)(tmp_path, b32_weights)
    result = run_cli("to-hf", source, tmp_path / "out", "--no-verify")
    assert result.exit_code == 0, result.output
