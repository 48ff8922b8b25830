"""Write a ViT-bigG-sized state dict (10.2 GB in float32) without holding it in memory.

Usage: .venv/bin/python bench/make_biggest.py DEST [--openai] [--tiny | --layers N]

By default the shapes are open_clip's ViT-bigG-14 (LAION's bigG: vision 1664 wide x 48 layers, heads of 104,
MLP 8192; text 1280 wide x 32 layers, 20 heads; embed 1280), a state dict as open_clip's training writes
it, to convert with `--open-clip-model ViT-bigG-14`. With `--openai`, OpenAI's layout at bigG size: OpenAI's
code fixes the MLP at 4x the width (6656 for the vision tower), so that is the biggest model of that family
`clip.model.CLIP` can load (9.2 GB). All weights are float32.

Memory stays low in two passes:
1. Key names and shapes come from the model code (`clip.model.CLIP` or open_clip's `CLIP`) built on the meta
   device (no storage), and `torch.save` writes the file under `torch.serialization.skip_data`
   from uninitialised tensors, so it lays out the archive without touching them.
2. Each tensor's bytes are then written in place, chunk by chunk, at its offset
   in the archive: random normal values (std 0.02), LayerNorm weights 1 and
   logit_scale log(100), as OpenAI's initialisation has them. Their CRC-32 replaces the one torch.save
   recorded for the unwritten record, where the zip keeps it: the central directory, and the data
   descriptor after the record (or the local header, for a record without one).

`--tiny` writes roundtrip.examples.DEMO (OpenAI's layout) instead (seconds; to check this script);
`--layers N` keeps bigG's widths with N layers per tower (to check memory use).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import torch

from roundtrip import openai_config
from roundtrip.architecture import Architecture
from roundtrip.examples import DEMO
from roundtrip.open_clip_config import registry_config
from roundtrip.openai_config import from_clip_kwargs
from roundtrip.references import openai_code

BIGG = from_clip_kwargs(embed_dim=1280, image_resolution=224, vision_layers=48, vision_width=1664,
                        vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=1280,
                        transformer_heads=20, transformer_layers=32)
CHUNK_ELEMENTS = 2**24  # 64 MB of float32 in memory at a time
INIT_STD = 0.02
LAYER_NORM_WEIGHT = re.compile(r"(^|\.)ln_\w+\.weight$")
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, skipped fields, name length, extra length
ZIP_CENTRAL_HEADER = struct.Struct("<4s24x3H12x")  # signature, skipped fields, name, extra, comment lengths
LOCAL_CRC_OFFSET, CENTRAL_CRC_OFFSET = 14, 16
DATA_DESCRIPTOR_FLAG = 0x08
DATA_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"  # optional before a descriptor's CRC-32


def layout(architecture: Architecture) -> dict[str, torch.Size]:
    """Key names and shapes of OpenAI's state dict, from a model that holds no data."""
    with torch.device("meta"):
        model = openai_code("model").CLIP(**openai_config.clip_kwargs(architecture))
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def open_clip_layout(layers: int | None) -> dict[str, torch.Size]:
    """Key names and shapes of open_clip's ViT-bigG-14 (with `layers` per tower, if given)."""
    from open_clip.model import CLIP

    model_cfg = registry_config("ViT-bigG-14")
    if layers:
        model_cfg["vision_cfg"]["layers"] = model_cfg["text_cfg"]["layers"] = layers
    with torch.device("meta"):
        model = CLIP(**model_cfg)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def write_archive_without_data(shapes: dict[str, torch.Size], dest: Path) -> None:
    # torch.empty only reserves address space; skip_data keeps torch.save from reading it.
    placeholders = {key: torch.empty(shape, dtype=torch.float32) for key, shape in shapes.items()}
    with torch.serialization.skip_data():
        torch.save(placeholders, dest)


class Record(NamedTuple):
    """Where one storage record of the archive lies, and where its CRC-32 is kept."""

    info: zipfile.ZipInfo
    data_offset: int
    central_offset: int  # of its entry in the central directory


def data_records(dest: Path) -> list[Record]:
    """The storage records, in the order torch.save numbered them (state-dict order)."""
    with zipfile.ZipFile(dest) as archive, dest.open("rb") as file:
        central_offsets, position = {}, archive.start_dir
        for info in archive.infolist():  # the central directory's order
            file.seek(position)
            signature, *lengths = ZIP_CENTRAL_HEADER.unpack(file.read(ZIP_CENTRAL_HEADER.size))
            assert signature == b"PK\x01\x02", "not a zip central directory header"
            central_offsets[info.filename] = position
            position += ZIP_CENTRAL_HEADER.size + sum(lengths)
        records = {int(info.filename.rsplit("/", 1)[1]): info
                   for info in archive.infolist() if re.search(r"/data/\d+$", info.filename)}
        found = []
        for number in range(len(records)):
            info = records[number]
            file.seek(info.header_offset)
            signature, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(file.read(ZIP_LOCAL_HEADER.size))
            assert signature == b"PK\x03\x04", "not a zip local file header"
            data_offset = info.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length
            found.append(Record(info, data_offset, central_offsets[info.filename]))
    return found


def record_crc(file, record: Record, crc: int) -> None:
    """Write `crc` wherever the zip keeps the record's CRC-32."""
    packed = struct.pack("<I", crc)
    file.seek(record.central_offset + CENTRAL_CRC_OFFSET)
    file.write(packed)
    if not record.info.flag_bits & DATA_DESCRIPTOR_FLAG:
        file.seek(record.info.header_offset + LOCAL_CRC_OFFSET)
        file.write(packed)
        return
    descriptor = record.data_offset + record.info.file_size
    file.seek(descriptor)
    has_signature = file.read(len(DATA_DESCRIPTOR_SIGNATURE)) == DATA_DESCRIPTOR_SIGNATURE
    file.seek(descriptor + (len(DATA_DESCRIPTOR_SIGNATURE) if has_signature else 0))
    file.write(packed)


def fill_chunks(key: str, numel: int, generator: torch.Generator):
    for start in range(0, numel, CHUNK_ELEMENTS):
        count = min(CHUNK_ELEMENTS, numel - start)
        if key == "logit_scale":
            yield torch.full((count,), math.log(100.0))
        elif LAYER_NORM_WEIGHT.search(key):
            yield torch.ones(count)
        else:
            yield torch.randn(count, generator=generator) * INIT_STD


def write_data(shapes: dict[str, torch.Size], dest: Path, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with dest.open("r+b") as file:
        for (key, shape), record in zip(shapes.items(), data_records(dest), strict=True):
            file.seek(record.data_offset)
            crc = 0
            for chunk in fill_chunks(key, shape.numel(), generator):
                file.write(chunk.numpy().data)
                crc = zlib.crc32(chunk.numpy().data, crc)
            record_crc(file, record, crc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--openai", action="store_true", help="OpenAI's layout at bigG size, not open_clip's bigG")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="write the small demo architecture instead")
    size.add_argument("--layers", type=int, help="bigG widths with this many layers per tower")
    arguments = parser.parse_args()
    if arguments.openai or arguments.tiny:
        architecture = DEMO if arguments.tiny else BIGG
        if arguments.layers:
            architecture = dataclasses.replace(
                architecture, vision=dataclasses.replace(architecture.vision, layers=arguments.layers),
                text=dataclasses.replace(architecture.text, layers=arguments.layers))
        shapes, what = layout(architecture), architecture.describe()
    else:
        shapes, what = open_clip_layout(arguments.layers), "open_clip's ViT-bigG-14"
    partial = arguments.dest.with_name(arguments.dest.name + ".partial")
    write_archive_without_data(shapes, partial)
    write_data(shapes, partial)
    os.replace(partial, arguments.dest)  # appears only once complete
    print(f"Wrote {arguments.dest}: {what}, {arguments.dest.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
