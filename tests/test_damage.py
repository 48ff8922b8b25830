"""Damage that a file declares is refused: one flipped bit in any record of a zip (a TorchScript archive, a
torch.save file, a pytorch_model.bin) fails the record's CRC-32, in every command, with or without
--no-verify, in one line naming the record, with nothing written."""

from __future__ import annotations

import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from roundtrip.examples import DEMO, random_openai_model, save_torchscript_archive
from roundtrip.openai_config import from_clip_kwargs

from conftest import assert_refused, hf_clip_config, random_hf_model, run_cli, save_legacy_pytorch_bin

ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra field length
# Small, so that every record of an archive can be damaged in turn in seconds.
TINY = from_clip_kwargs(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                        context_length=8, vocab_size=100, transformer_width=64, transformer_heads=1,
                        transformer_layers=1)


def records(path: Path) -> dict[str, tuple[int, int]]:
    """Every non-empty record of a zip: name -> (offset of its data, its size as stored)."""
    found = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as file:
        for info in archive.infolist():
            file.seek(info.header_offset)
            _, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(file.read(ZIP_LOCAL_HEADER.size))
            if info.compress_size:
                found[info.filename] = (info.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length,
                                        info.compress_size)
    return found


def flip_one_bit(path: Path, record: str) -> None:
    offset, size = records(path)[record]
    with path.open("r+b") as file:
        file.seek(offset + size // 2)
        byte = file.read(1)[0]
        file.seek(offset + size // 2)
        file.write(bytes([byte ^ 0x10]))
    with zipfile.ZipFile(path) as archive:  # a control: Python's own check sees the damage
        try:
            assert archive.testzip() == record
        except zlib.error:  # a compressed record's stream broke before its CRC-32 was compared
            pass


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("intact")
    model = random_openai_model(TINY)
    save_torchscript_archive(model, folder / "archive.pt")
    torch.save(random_openai_model(TINY).state_dict(), folder / "state-dict.pt")
    save_legacy_pytorch_bin(random_hf_model(hf_clip_config()), folder / "bin-folder")
    return {"TorchScript archive": folder / "archive.pt", "torch.save zip": folder / "state-dict.pt",
            "HF folder with pytorch_model.bin": folder / "bin-folder"}


def _damaged_copy(source: Path, record: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of `source` with one bit flipped in `record`; (what to convert, the zip damaged)."""
    if source.is_dir():
        copy = tmp_path / source.name
        shutil.copytree(source, copy)
        damaged = copy / "pytorch_model.bin"
    else:
        copy = damaged = tmp_path / source.name
        shutil.copy(source, copy)
    flip_one_bit(damaged, record)
    return copy, damaged


def every_record(kind: str, sources_fixture) -> list[str]:
    path = sources_fixture[kind]
    return sorted(records(path / "pytorch_model.bin" if path.is_dir() else path))


COMMAND = {"TorchScript archive": "to-hf", "torch.save zip": "to-hf", "HF folder with pytorch_model.bin": "to-openai"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", COMMAND)
def test_a_flipped_bit_in_any_record_is_refused_naming_the_record(tmp_path, sources, kind):
    names = every_record(kind, sources)
    assert len(names) >= 5
    for number, record in enumerate(names):  # every record, one at a time
        case = tmp_path / str(number)
        case.mkdir()
        source, damaged = _damaged_copy(sources[kind], record, case)
        result = run_cli(COMMAND[kind], source, case / "out", "--no-verify")
        assert_refused(result, str(damaged), f"record {record}: CRC-32 mismatch: the file is damaged")
        assert sorted(path.name for path in case.iterdir()) == [source.name]


@pytest.mark.parametrize("kind", COMMAND)
def test_with_verification_too_the_largest_record_damaged_is_refused(tmp_path, sources, kind):
    # A bit of the token embedding is invisible to a logit probe of a few tokens: only the checksum sees it.
    names = every_record(kind, sources)
    largest = max(names, key=lambda name: records(_zip_of(sources[kind]))[name][1])
    source, damaged = _damaged_copy(sources[kind], largest, tmp_path)
    result = run_cli(COMMAND[kind], source, tmp_path / "out")
    assert_refused(result, str(damaged), f"record {largest}: CRC-32 mismatch")
    assert not (tmp_path / "out").exists()


def _zip_of(source: Path) -> Path:
    return source / "pytorch_model.bin" if source.is_dir() else source


@pytest.mark.parametrize("logits", [[], ["--no-logits"]], ids=["with logits", "no logits"])
def test_compare_refuses_a_damaged_side_naming_the_record(tmp_path, sources, logits):
    source, damaged = _damaged_copy(sources["torch.save zip"], "state-dict/data/3", tmp_path)
    result = run_cli("compare", sources["torch.save zip"], source, *logits)
    assert result.exit_code == 1
    assert f"{damaged}: record state-dict/data/3: CRC-32 mismatch" in result.stderr


def test_the_model_card_gives_the_checksum_a_publisher_gives(tmp_path, demo_state_dict_file):
    # Formats without checksums (safetensors, legacy pickles) are checked by comparing this with the
    # publisher's published SHA-256 (docs/safety.md).
    import hashlib

    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert hashlib.sha256(demo_state_dict_file.read_bytes()).hexdigest() in card


def test_an_intact_demo_archive_has_no_damage_the_check_reports(tmp_path):
    # A control for the tests above: the check itself passes real archives.
    save_torchscript_archive(random_openai_model(DEMO), tmp_path / "archive.pt")
    assert run_cli("to-hf", tmp_path / "archive.pt", tmp_path / "hf", "--no-verify").exit_code == 0
