"""What a conversion records about its source, so that converting back to the source's format restores it.

Stored as JSON under one key of each written safetensors file's metadata, and in a record of its own in each
torch.save zip written (ZIP_RECORD), so it travels with the weights.
One record per format the weights have been in: its dtypes (OpenAI's releases mix fp16 and fp32, which a
float32 folder would otherwise forget), key order, TorchScript attributes and its own config file (an
open_clip_config.json or config.json holds more than the other formats can say).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from roundtrip import dtypes

METADATA_KEY = "clipconv"
ZIP_RECORD = f"{METADATA_KEY}.json"  # its record's name in a .pt zip, under the archive's top folder
MAX_ZIP_RECORD_BYTES = 16 * 2**20  # a record this large is no clipconv record: refused before it is read
FLOAT_DTYPES = ("float16", "float32", "bfloat16", "float64")
INTEGER_DTYPES = ("int64", "int32", "int16", "int8", "uint8")
MAX_ASIDE_BYTES = 1 << 16  # position_ids of a context of 8192, in int64: more is no bookkeeping tensor
_LEGACY_KINDS = {"torchscript": "openai", "state_dict": "openai"}  # clipconv 0.1 recorded OpenAI sources only


@dataclass(frozen=True)
class Record:
    """One source as it was, in its format's own terms."""

    format: str  # a format's name: "openai", "hf", "open_clip"
    name: str  # the source's file or folder name
    kind: str  # how it was stored: "torchscript", "state_dict", "folder", ...
    dtypes: dict[str, str]  # key (in the format's own layout) -> dtype name
    key_order: list[str] = field(default_factory=list)
    # 0-dim TorchScript attributes (see schema.OPENAI_ARCHIVE_ATTRIBUTES): key -> {"dtype", "shape", "value"}
    attributes: dict[str, dict] = field(default_factory=dict)
    config: dict | None = None  # the format's own config file, as read
    # Tensors the conversion did not carry (an HF folder's position_ids, the logit_scale of a tower taken alone):
    # key (in the format's own layout) -> {"dtype", "shape", "hex": the tensor's bytes}, put back on the way back.
    aside: dict[str, dict] = field(default_factory=dict)
    unprefixed: str = ""  # the tower prefix its keys were stored without (a flat one-tower HF folder)


@dataclass(frozen=True)
class Provenance:
    tool: str
    records: dict[str, Record]  # format name -> the last source in that format

    def to_json(self) -> str:
        return json.dumps({"tool": self.tool, "records": {name: asdict(record) for name, record in
                                                          self.records.items()}}, separators=(",", ":"))

    def adding(self, record: Record, tool: str, dropping: str) -> Provenance:
        """These records plus `record`, without the one of format `dropping` (the output's own format)."""
        kept = {name: old for name, old in self.records.items() if name not in (record.format, dropping)}
        return Provenance(tool, {**kept, record.format: record})

    def without(self, dropping: str, tool: str) -> Provenance:
        """These records but the one of format `dropping` (the output's own format, where the source had it)."""
        return Provenance(tool, {name: old for name, old in self.records.items() if name != dropping})

    @classmethod
    def from_json(cls, text: str | bytes) -> Provenance:
        """Parse and check metadata read from a file (which may come from anyone)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if "records" not in data:
            data = _from_legacy(data)
        records = data["records"]
        if not isinstance(records, dict):
            raise ValueError("records is not a JSON object")
        parsed = {name: _record(name, value) for name, value in records.items()}
        return cls(str(data.get("tool", "")), parsed)


def _from_legacy(data: dict) -> dict:
    """clipconv 0.1's flat record of an OpenAI source."""
    if not isinstance(data.get("source_dtypes"), dict):
        raise ValueError("no source_dtypes table")
    kind = data.get("source_format")
    return {"tool": data.get("tool", ""), "records": {_LEGACY_KINDS.get(kind, "openai"): {
        "format": "openai", "name": data.get("source_name", ""), "kind": kind, "dtypes": data["source_dtypes"],
        "key_order": data.get("key_order", []), "attributes": data.get("archive_attributes", {}),
    }}}


def _record(name: str, value) -> Record:
    if not isinstance(value, dict) or value.get("format") != name:
        raise ValueError(f"record {name!r} is not a record of that format")
    known = {key: value[key] for key in Record.__dataclass_fields__ if key in value}
    record = Record(**{"name": "", "kind": "", "dtypes": {}, **known})
    bad = [f"{key}: {dtype!r}" for key, dtype in _items(record.dtypes) if dtype not in FLOAT_DTYPES + INTEGER_DTYPES]
    if not (isinstance(record.key_order, list) and all(isinstance(key, str) for key in record.key_order)):
        bad.append("key_order")
    bad += [f"{key}: {spec!r}" for key, spec in _items(record.attributes) if not _is_integer_attribute(spec)]
    bad += [f"{key}: {spec!r}" for key, spec in _items(record.aside) if not _is_tensor_bytes(spec)]
    if not isinstance(record.unprefixed, str):
        bad.append("unprefixed")
    if record.config is not None and not isinstance(record.config, dict):
        bad.append("config")
    if not all(isinstance(text, str) for text in (record.name, record.kind)):
        bad.append("name or kind")
    if bad:
        raise ValueError(f"unexpected entries {', '.join(bad[:3])}")
    return record


def _items(table) -> list:
    if not isinstance(table, dict):
        raise ValueError(f"expected a table, found {type(table).__name__}")
    return list(table.items())


def _is_tensor_bytes(spec) -> bool:
    """A small tensor set aside, as recorded: its dtype, shape and exactly as many bytes as they say."""
    if not (isinstance(spec, dict) and spec.keys() == {"dtype", "shape", "hex"} and isinstance(spec["hex"], str)
            and spec["dtype"] in FLOAT_DTYPES + INTEGER_DTYPES and isinstance(spec["shape"], list)
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ASIDE_BYTES
                    for n in spec["shape"])):
        return False
    size = math.prod(spec["shape"]) * dtypes.from_name(spec["dtype"]).itemsize
    return size <= MAX_ASIDE_BYTES and len(spec["hex"]) == 2 * size and _hex_bytes(spec["hex"]) == size


def _hex_bytes(text: str) -> int | None:
    """How many bytes `text` spells in hex (fromhex skips whitespace, which the length above counted)."""
    try:
        return len(bytes.fromhex(text))
    except ValueError:
        return None


def _is_integer_attribute(spec) -> bool:
    return (
        isinstance(spec, dict)
        and spec.get("dtype") in INTEGER_DTYPES
        and isinstance(spec.get("value"), int)
        and isinstance(spec.get("shape"), list)
        and all(isinstance(n, int) and n == 1 for n in spec["shape"])
    )
