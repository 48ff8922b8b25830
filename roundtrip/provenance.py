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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Provenance":
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("source_dtypes"), dict):
            raise ValueError("clipconv provenance metadata is malformed")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
