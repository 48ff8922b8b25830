"""Architecture numbers: inferred from OpenAI tensor shapes, written as and checked against HF configs.

OpenAI's model code fixes several choices that an HF config can vary. Those
fixed choices are spelled out here once, in OPENAI_FIXED.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from roundtrip.mapping import check_keys
from roundtrip.schema import OPENAI_SHAPE_SOURCES

HEAD_WIDTH = 64  # clip.model.build_model: heads = width // 64, for both towers
MLP_RATIO = 4  # clip.model.ResidualAttentionBlock: c_fc is width -> 4 * width
OPENAI_FIXED = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
IMAGE_CHANNELS = 3

# transformers pools the text tower at argmax(input_ids), exactly like OpenAI, only
# when eos_token_id is this legacy value (see README, "Text pooling").
ARGMAX_POOLING_EOS_ID = 2


# transformers' CLIPConfig defaults for every field that `openai_incompatibilities` reads: a folder's config.json
# may leave any of them out. Spelled out so that to-openai --no-verify need not import transformers;
# tests/test_config.py checks them against CLIPConfig.
HF_DEFAULTS = {"projection_dim": 512}
HF_TOWER_DEFAULTS = {
    "text_config": {
        "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
        "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "eos_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    },
}
LEGACY_TOWER_KEYS = {"text_config": "text_config_dict", "vision_config": "vision_config_dict"}


class ConfigError(ValueError):
    """Tensor shapes or a config that no OpenAI CLIP architecture explains."""


@dataclass(frozen=True)
class Architecture:
    """The arguments of `clip.model.CLIP.__init__` for a ViT CLIP."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def vision_heads(self) -> int:
        return self.vision_width // HEAD_WIDTH

    def describe(self) -> str:
        return (
            f"ViT {self.vision_width} wide x {self.vision_layers} layers, patch {self.vision_patch_size}, "
            f"{self.image_resolution}px; text {self.transformer_width} wide x {self.transformer_layers} layers, "
            f"context {self.context_length}, vocab {self.vocab_size}; embed {self.embed_dim}"
        )

    def clip_kwargs(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_openai_state_dict(cls, state_dict: Mapping) -> "Architecture":
        layers = check_keys(state_dict.keys(), "openai")
        dims = {name: _dim(state_dict, key, axis) for name, (key, axis) in OPENAI_SHAPE_SOURCES.items()}
        grid = math.isqrt(max(dims["vision_positions"] - 1, 0))
        if grid < 1 or grid * grid + 1 != dims["vision_positions"]:
            raise ConfigError(
                f"vision position embedding has {dims['vision_positions']} rows, not a square grid plus a class token"
            )
        architecture = cls(
            embed_dim=dims["embed_dim"],
            image_resolution=grid * dims["vision_patch_size"],
            vision_layers=layers["vision"],
            vision_width=dims["vision_width"],
            vision_patch_size=dims["vision_patch_size"],
            context_length=dims["context_length"],
            vocab_size=dims["vocab_size"],
            transformer_width=dims["transformer_width"],
            transformer_heads=dims["transformer_width"] // HEAD_WIDTH,
            transformer_layers=layers["text"],
        )
        architecture.check_hf_compatible()
        return architecture

    def check_hf_compatible(self) -> None:
        for tower, width in (("vision", self.vision_width), ("text", self.transformer_width)):
            if width < HEAD_WIDTH or width % HEAD_WIDTH:
                raise ConfigError(
                    f"{tower} width {width} is not a multiple of {HEAD_WIDTH}: OpenAI uses width // {HEAD_WIDTH} "
                    "heads, which transformers' CLIPAttention cannot represent"
                )

    def hf_config(self) -> dict:
        """A complete `config.json` for transformers' CLIPModel."""
        shared = {**OPENAI_FIXED, "projection_dim": self.embed_dim}
        text = {
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size,
            "hidden_size": self.transformer_width,
            "intermediate_size": MLP_RATIO * self.transformer_width,
            "num_hidden_layers": self.transformer_layers,
            "num_attention_heads": self.transformer_heads,
            "max_position_embeddings": self.context_length,
            "eos_token_id": ARGMAX_POOLING_EOS_ID,
            **shared,
        }
        vision = {
            "model_type": "clip_vision_model",
            "hidden_size": self.vision_width,
            "intermediate_size": MLP_RATIO * self.vision_width,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads,
            "num_channels": IMAGE_CHANNELS,
            "image_size": self.image_resolution,
            "patch_size": self.vision_patch_size,
            **shared,
        }
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "text_config": text,
            "vision_config": vision,
        }


def _dim(state_dict: Mapping, key: str, axis: int) -> int:
    shape = tuple(state_dict[key].shape)
    if len(shape) <= (axis if axis >= 0 else -axis - 1):
        raise ConfigError(f"{key} has shape {shape}, expected at least {abs(axis) + (axis >= 0)} dimension(s)")
    return shape[axis]


def resolved_hf_config(config: Mapping) -> dict:
    """The fields of a folder's config.json that this tool reads, with the defaults CLIPConfig fills in."""
    resolved = {**HF_DEFAULTS, **{key: config[key] for key in HF_DEFAULTS if key in config}}
    for tower, defaults in HF_TOWER_DEFAULTS.items():
        given = config.get(tower) or {}
        legacy = config.get(LEGACY_TOWER_KEYS[tower])  # older hub configs; CLIPConfig lets it win over `tower`
        for name, value in ((tower, given), (LEGACY_TOWER_KEYS[tower], legacy or {})):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} should be a JSON object, found {type(value).__name__}")
        fields = {**defaults, **legacy} if legacy else {**defaults, **given}
        resolved[tower] = {key: fields[key] for key in defaults}
    return resolved


def openai_incompatibilities(hf_config: Mapping, architecture: Architecture) -> list[str]:
    """Every way an HF config departs from what OpenAI's model code can represent.

    `hf_config` is resolved (`resolved_hf_config`: defaults filled in);
    `architecture` is what the tensors say. An empty list means faithful.
    """
    wanted = architecture.hf_config()
    problems = []
    if hf_config.get("projection_dim") != architecture.embed_dim:
        problems.append(f"projection_dim is {hf_config.get('projection_dim')!r}, the tensors imply {architecture.embed_dim}")
    for tower in ("text_config", "vision_config"):
        for field, value in wanted[tower].items():
            if field in ("model_type", "eos_token_id", "projection_dim"):
                continue
            found = hf_config[tower].get(field)
            if found != value:
                problems.append(f"{tower}.{field} is {found!r}, OpenAI's model needs {value!r}")
    eos = hf_config["text_config"].get("eos_token_id")
    # With eos = the largest id, "first eos" pooling equals OpenAI's argmax on tokenized text.
    if eos not in (ARGMAX_POOLING_EOS_ID, architecture.vocab_size - 1):
        problems.append(
            f"text_config.eos_token_id is {eos!r}: transformers pools at its first occurrence, "
            f"OpenAI at the largest token id ({architecture.vocab_size - 1})"
        )
    return problems
