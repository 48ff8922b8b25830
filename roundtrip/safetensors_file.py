"""The safetensors format, read strictly and written in a streaming way.

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded
with spaces to a multiple of 8), then the tensors' raw little-endian bytes,
back to back. The header maps each name to dtype, shape and [begin, end)
offsets into the data; "__metadata__" maps strings to strings.

The reader checks what the official library checks and a little more (duplicate
names, which a JSON object silently collapses), so every problem gets a clear
message before any tensor is touched. Tensors are views of a private memory
map of the file: nothing is copied until used.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from roundtrip.casting import Cast, cast_into
from roundtrip.dtypes import DTYPES as ELEMENT_TYPES
from roundtrip.dtypes import DType
from roundtrip.output_file import OutputFile
from roundtrip.strided import Strided

MAX_HEADER_BYTES = 100 * 2**20  # the official library's limit
HEADER_ALIGNMENT = 8
METADATA = "__metadata__"

DTYPES = {dtype.safetensors: dtype for dtype in ELEMENT_TYPES.values()}  # "F32" -> float32, ...


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file."""


@dataclass(frozen=True)
class Written:
    """What a tensor written to disk must read back as: its name's dtype and shape in the file's index."""

    dtype: DType
    shape: tuple[int, ...]


def read(path: Path) -> tuple[dict[str, Strided], dict[str, str], Callable[[], None]]:
    """All tensors of a safetensors file (memory-mapped), its metadata, and a function that hands
    the mapped pages back to the kernel (they are read again if used again)."""
    with open(path, "rb") as handle:
        entries, metadata, data_start = _read_header(handle)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
    tensors = {name: _view(mapped, data_start, *entry) for name, entry in entries.items()}
    return tensors, metadata, lambda: mapped.madvise(mmap.MADV_DONTNEED)


def layout(path: Path) -> dict[str, Written]:
    """Name, dtype and shape of every tensor in a file, from its header alone, checked as `read` checks it."""
    with open(path, "rb") as handle:
        entries, _, _ = _read_header(handle)
    return {name: Written(dtype, tuple(shape)) for name, (dtype, shape, _, _) in entries.items()}


def stored_order(path: Path) -> list[str]:
    """The names of a file's tensors in the order of their bytes in it."""
    with open(path, "rb") as handle:
        entries, _, _ = _read_header(handle)
    return sorted(entries, key=lambda name: entries[name][2:])


def metadata(path: Path) -> dict[str, str]:
    """The __metadata__ of a file, from its header alone, checked as `read` checks it."""
    with open(path, "rb") as handle:
        return _read_header(handle)[1]


def _read_header(handle) -> tuple[dict, dict[str, str], int]:
    size = os.fstat(handle.fileno()).st_size
    if size < 8:
        raise SafetensorsError(f"{size} bytes is too small for a header")
    (header_length,) = struct.unpack("<Q", os.pread(handle.fileno(), 8, 0))
    if header_length > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {header_length} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_length > size:
        raise SafetensorsError(f"header length {header_length} runs past the end of the {size}-byte file")
    header = _parse_header(os.pread(handle.fileno(), header_length, 8))
    metadata = _metadata(header.pop(METADATA, None))
    data_start = 8 + header_length
    entries = {name: _entry(name, spec) for name, spec in header.items()}
    _check_layout(entries, size - data_start)
    return entries, metadata, data_start


def _parse_header(raw: bytes) -> dict:
    def no_duplicates(pairs):
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise SafetensorsError(f"tensor name {duplicate!r} appears twice in the header")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SafetensorsError(f"header is not JSON ({type(error).__name__})") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    return header


def _metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("__metadata__ is not a map of strings")
    return metadata


def _entry(name: str, spec) -> tuple[DType, list[int], int, int]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"tensor {name!r}: entry needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
        raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    numel = 1
    for extent in shape:
        numel *= extent
    expected = numel * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise SafetensorsError(
            f"tensor {name!r}: {end - begin} bytes at data_offsets {offsets} but shape {shape} of {dtype} "
            f"needs {expected}"
        )
    return DTYPES[dtype], shape, begin, end


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(entries: dict, data_length: int) -> None:
    # As the official library requires: tensors tile the data area exactly, without gaps or overlaps.
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] {problem}")
        position = end
    if position != data_length:
        raise SafetensorsError(f"tensors cover {position} bytes of data but the file holds {data_length}")


def _view(mapped: mmap.mmap, data_start: int, dtype: DType, shape: list[int], begin: int, end: int) -> Strided:
    if begin == end:
        return Strided.of_buffer(bytearray(), dtype, tuple(shape))
    return Strided.of_buffer(mapped, dtype, tuple(shape), start=data_start + begin)


def write(
    path: Path,
    tensors: Mapping,
    metadata: Mapping[str, str],
    cast: Cast = Cast(),
    advance: Callable[[int], None] = lambda _: None,
    read_back: bool = True,
    order: Sequence[str] | None = None,
) -> dict[str, Written]:
    """Stream tensors into one safetensors file, casting while writing; return what must read back.
    With `read_back`, every block of the file is read back from disk and compared as it is written. `order`:
    the tensors' order in the file (that of a file being copied); by default larger elements first, as the
    official library writes them, so that every tensor starts aligned."""
    dtypes = {name: cast.dtype(name, tensor) for name, tensor in tensors.items()}
    order = sorted(tensors, key=lambda name: (-dtypes[name].itemsize, name)) if order is None else list(order)
    header: dict = {METADATA: dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        size = tensors[name].numel() * dtypes[name].itemsize
        header[name] = {"dtype": dtypes[name].safetensors, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
    with OutputFile(path, read_back) as output:
        output.write(struct.pack("<Q", len(encoded)))
        output.write(encoded)
        for name in order:
            cast_into(output, tensors[name], dtypes[name])
            advance(header[name]["data_offsets"][1] - header[name]["data_offsets"][0])
    return {name: Written(dtypes[name], tuple(tensors[name].shape)) for name in order}
