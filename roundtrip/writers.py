"""All writing of output files: HF and open_clip model folders and OpenAI state-dict files, each re-checked once
written, and how each is recognised as clipconv's own output (what `overwrite` may replace).

Where they are written (a staging path beside DEST) is `roundtrip.destination`'s job.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from roundtrip import safetensors_file, torch_zip
from roundtrip.casting import Cast
from roundtrip.destination import OutputKind
from roundtrip.dtypes import dtype_of
from roundtrip.errors import OutputError
from roundtrip.facts import (
    HF_CONFIG,
    HF_SAFETENSORS,
    HF_SAFETENSORS_INDEX,
    HF_SHARD,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_SAFETENSORS,
    hf_folder_may_hold,
    open_clip_folder_may_hold,
)
from roundtrip.provenance import METADATA_KEY, ZIP_RECORD
from roundtrip.safetensors_file import Written

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # the hub's long-standing default shard size, "5GB"
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

Progress = Callable[[int, int], None]  # called with (bytes written so far, bytes to write)


def _safetensors_written_here(path: Path) -> bool:
    try:
        return METADATA_KEY in safetensors_file.metadata(path)
    except (OSError, safetensors_file.SafetensorsError):
        return False


def _weights_written_here(folder: Path, weights: Callable[[str], bool]) -> bool:
    """Whether a folder's weight files (those whose names `weights` picks) are all clipconv's, and there are some."""
    files = [path for path in folder.iterdir() if weights(path.name)]
    return bool(files) and all(_safetensors_written_here(path) for path in files)


def _openai_file_written_here(path: Path) -> bool:
    return path.is_file() and (ZIP_RECORD in torch_zip.record_names(path) or _safetensors_written_here(path))


HF_FOLDER = OutputKind(is_folder=True, title="Hugging Face CLIPModel folder", may_hold=hf_folder_may_hold,
                       written_here=lambda folder: folder.is_dir() and (folder / HF_CONFIG).is_file() and
                       _weights_written_here(folder, lambda name: name.endswith(".safetensors")))
OPEN_CLIP_FOLDER = OutputKind(is_folder=True, title="open_clip model folder", may_hold=open_clip_folder_may_hold,
                              written_here=lambda folder: folder.is_dir() and (folder / OPEN_CLIP_CONFIG).is_file()
                              and _weights_written_here(folder, lambda name: name == OPEN_CLIP_SAFETENSORS))
OPENAI_FILE = OutputKind(is_folder=False, title="OpenAI CLIP state-dict file", written_here=_openai_file_written_here)
SINGLE_FILE = OutputKind(is_folder=False, title="diffusion model single file",
                         written_here=lambda path: path.is_file() and _safetensors_written_here(path))


def write_hf_folder(
    folder: Path,
    config: dict,
    tensors: Mapping,
    metadata: dict[str, str],
    cast: Cast = Cast(),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress = lambda done, total: None,
    after_each: Callable[[], None] = lambda: None,
    read_back: bool = True,
) -> dict[str, dict[str, Written]]:
    """Write config.json and model.safetensors (or shards plus an index), reading each block back if asked.

    Returns, per weight file name, what each of its tensors must read back as.
    """
    _write_json(folder / HF_CONFIG, config)
    sizes = {key: tensor.numel() * cast.dtype(key, tensor).itemsize for key, tensor in tensors.items()}
    shards = _split_into_shards(sizes, max_shard_bytes)
    if len(shards) == 1:
        names = [HF_SAFETENSORS]
    else:
        names = [HF_SHARD.format(index=n, count=len(shards)) for n in range(1, len(shards) + 1)]
    files = dict(zip(names, shards, strict=True))
    written = _write_weight_files(folder, files, tensors, metadata, cast, sum(sizes.values()), progress, after_each,
                                  read_back)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        _write_json(folder / HF_SAFETENSORS_INDEX, index)
    return written


def write_open_clip_folder(
    folder: Path,
    config: dict,
    tensors: Mapping,
    metadata: dict[str, str],
    cast: Cast = Cast(),
    progress: Progress = lambda done, total: None,
    after_each: Callable[[], None] = lambda: None,
    read_back: bool = True,
) -> dict[str, dict[str, Written]]:
    """Write open_clip_config.json (in its own key order, as open_clip's files are) and one
    open_clip_model.safetensors (open_clip loads no shards), reading each block back if asked."""
    _write_json(folder / OPEN_CLIP_CONFIG, config, sort_keys=False)
    total = sum(tensor.numel() * cast.dtype(key, tensor).itemsize for key, tensor in tensors.items())
    return _write_weight_files(folder, {OPEN_CLIP_SAFETENSORS: list(tensors)}, tensors, metadata, cast, total,
                               progress, after_each, read_back)


def _write_weight_files(folder: Path, files: Mapping[str, list[str]], tensors: Mapping, metadata: dict[str, str],
                        cast: Cast, total: int, progress: Progress, after_each: Callable[[], None],
                        read_back: bool) -> dict[str, dict[str, Written]]:
    """Each file of `files` (name -> its keys) as safetensors; what each tensor must read back as."""
    advance = _byte_counter(total, progress, after_each)
    return {name: safetensors_file.write(folder / name, {key: tensors[key] for key in keys}, metadata, cast, advance,
                                         read_back)
            for name, keys in files.items()}


def _write_json(path: Path, content: dict, sort_keys: bool = True) -> None:
    _write_text(path, json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")


def write_text_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write {file name: text} into folder as UTF-8; return the paths."""
    for name, text in files.items():
        _write_text(folder / name, text)
    return [folder / name for name in files]


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _byte_counter(total: int, progress: Progress, after_each: Callable[[], None]) -> Callable[[int], None]:
    """Called after each tensor is written: reports progress and lets the caller release memory."""
    done = 0

    def advance(written: int) -> None:
        nonlocal done
        done += written
        after_each()
        progress(done, total)

    return advance


def byte_size(value: int | str) -> int:
    """A size in bytes: a positive int, or text with a unit ("500MB", "2GiB", "50B"); ValueError saying what
    is wrong otherwise. A bare number is refused: "5" is too easily meant as 5 GB."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value) if isinstance(value, str) else None
    unit = match.group(2).upper() if match else None
    if match and not unit:
        raise ValueError(f"{value!r} needs a unit, like {value}MB, {value}GB or {value}B for bytes")
    if not match or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a size like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def _split_into_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(sizes):
        if shards[-1] and size + sizes[key] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += sizes[key]
    return shards


def confirm_safetensors(folder: Path, expected: dict[str, dict[str, Written]], dest: Path) -> None:
    """Every weight file's header, re-read from disk, lists exactly the tensors written, in their dtypes and
    shapes (with `read_back`, their bytes were also compared block by block while writing)."""
    for name, tensors in expected.items():
        if safetensors_file.layout(folder / name) != tensors:
            raise OutputError(dest, f"{name} does not read back as written")


def write_openai_file(
    path: Path, state_dict: Mapping, metadata: dict[str, str], cast: Cast = Cast(),
    progress: Progress = lambda done, total: None, after_each: Callable[[], None] = lambda: None,
    read_back: bool = True, as_safetensors: bool = False,
) -> dict[str, Written]:
    """A state dict in OpenAI's layout, written one tensor at a time, reading each block back if asked: in
    torch.save's format, which `clip.load(path, jit=False)` reads (with `metadata`'s provenance record in a
    record of its own), or `as_safetensors`. Returns what each tensor must read back as."""
    total = sum(t.numel() * cast.dtype(key, t).itemsize for key, t in state_dict.items())
    advance = _byte_counter(total, progress, after_each)
    if as_safetensors:
        return safetensors_file.write(path, state_dict, metadata, cast, advance, read_back)
    records = torch_zip.write_state_dict(path, state_dict, cast, advance, read_back,
                                         records={ZIP_RECORD: metadata[METADATA_KEY].encode("utf-8")})
    return {key: Written(*record) for key, record in records.items()}


def write_single_file(path: Path, tensors: Mapping, metadata: dict[str, str], cast: Cast,
                      progress: Progress = lambda done, total: None, after_each: Callable[[], None] = lambda: None,
                      read_back: bool = True, order: list[str] | None = None) -> dict[str, Written]:
    """A diffusion model's single file: `tensors` as safetensors, in `order` (the base file's) if given, calling
    `after_each` after each tensor (to hand the inputs' mapped pages back)."""
    total = sum(t.numel() * cast.dtype(key, t).itemsize for key, t in tensors.items())
    return safetensors_file.write(path, tensors, metadata, cast, _byte_counter(total, progress, after_each),
                                  read_back, order=order)


def confirm_tensors(found: Mapping, expected: dict[str, Written], dest: Path) -> None:
    """The tensors a written file's index gives, re-read from disk, are the ones written, in order, with
    their dtypes and shapes (with `read_back`, their bytes were also compared block by block while writing)."""
    actual = {key: Written(dtype_of(tensor), tuple(tensor.shape)) for key, tensor in found.items()}
    if list(actual.items()) != list(expected.items()):
        different = sorted(key for key in set(actual) | set(expected) if actual.get(key) != expected.get(key))
        what = ", ".join(different[:5]) or "their order"
        raise OutputError(dest, f"tensors read back differently from what was written: {what}")
