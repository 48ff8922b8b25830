"""What to-hf records about the source so that to-openai can restore it exactly.

Stored as JSON under one key of each safetensors file's metadata, so it travels
with the weights. OpenAI's releases mix fp16 and fp32 (`clip.model.convert_weights`
halves linear, conv and attention weights and the projections), which a float32
HF folder would otherwise forget.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

METADATA_KEY = "clipconv"


@dataclass(frozen=True)
class Provenance:
    tool: str
    source_name: str
    source_format: str  # "torchscript" or "state_dict"
    source_dtypes: dict[str, str]  # OpenAI key -> dtype name
    # 0-dim archive attributes (see schema.OPENAI_ARCHIVE_ATTRIBUTES): key -> {"dtype", "shape", "value"}
    archive_attributes: dict[str, dict] = field(default_factory=dict)
    key_order: list[str] = field(default_factory=list)  # the source's own order, which to-openai restores

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Provenance":
        """Parse and check metadata read from a file (which may come from anyone)."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("source_dtypes"), dict):
            raise ValueError("no source_dtypes table")
        provenance = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        bad = [f"{key}: {name!r}" for key, name in provenance.source_dtypes.items() if name not in FLOAT_DTYPES]
        if not (isinstance(provenance.key_order, list) and all(isinstance(k, str) for k in provenance.key_order)):
            bad.append("key_order")
        for key, spec in provenance.archive_attributes.items():
            if not _is_integer_attribute(spec):
                bad.append(f"{key}: {spec!r}")
        if bad:
            raise ValueError(f"unexpected entries {', '.join(bad[:3])}")
        return provenance


FLOAT_DTYPES = ("float16", "float32", "bfloat16", "float64")
INTEGER_DTYPES = ("int64", "int32", "int16", "int8", "uint8")


def _is_integer_attribute(spec) -> bool:
    return (
        isinstance(spec, dict)
        and spec.get("dtype") in INTEGER_DTYPES
        and isinstance(spec.get("value"), int)
        and isinstance(spec.get("shape"), list)
        and all(isinstance(n, int) and n == 1 for n in spec["shape"])
    )
