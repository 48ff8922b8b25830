"""What a ViT CLIP is, whatever its format: the numbers that build one, per tower.

Tensor shapes say most of it (`Shapes.of`, read as clip.model.build_model reads them). What shapes cannot
say (heads, activation, LayerNorm eps, text pooling) each format says its own way: OpenAI's code fixes it,
an HF config.json or an open_clip config spells it out (`roundtrip.openai_config`, `roundtrip.hf_config`,
`roundtrip.open_clip_config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from roundtrip.mapping import check_keys
from roundtrip.schema import SHAPE_SOURCES

ACTIVATIONS = ("quick_gelu", "gelu")  # as transformers names them; open_clip's quick_gelu flag picks one
IMAGE_CHANNELS = 3


class ArchitectureError(ValueError):
    """Tensor shapes or a config that no CLIP architecture explains."""


@dataclass(frozen=True)
class Tower:
    """One transformer tower (text or vision)."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    activation: str  # no default: shapes cannot say it, so each format's config (or code) must
    layer_norm_eps: float

    @property
    def head_width(self) -> float:
        return self.width / self.heads


@dataclass(frozen=True)
class Architecture:
    """Everything that builds a ViT CLIP of any of the formats, and compares two of them."""

    embed_dim: int
    image_resolution: int
    patch_size: int
    context_length: int
    vocab_size: int
    vision: Tower
    text: Tower
    # Where the text tower pools: None at the largest token id (argmax: end-of-text, in CLIP's tokenizer), or
    # an id, at its first occurrence (transformers' rule for configs with another eos_token_id). No default:
    # every format says which.
    text_pool_token: int | None

    def describe(self) -> str:
        vision, text = self.vision, self.text
        return (
            f"ViT {vision.width} wide x {vision.layers} layers, {vision.heads} heads, patch {self.patch_size}, "
            f"{self.image_resolution}px, {vision.activation}; text {text.width} wide x {text.layers} layers, "
            f"{text.heads} heads, context {self.context_length}, vocab {self.vocab_size}, {text.activation}; "
            f"embed {self.embed_dim}"
        )

    def semantics(self) -> dict[str, object]:
        """Every number and choice, flat and named (`vision.heads`, ...), for reports and comparisons."""
        flat: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Tower):
                flat.update({f"{field.name}.{part.name}": getattr(value, part.name) for part in fields(value)})
            else:
                flat[field.name] = value
        return flat


@dataclass(frozen=True)
class Shapes:
    """What a complete state dict's tensor shapes say (OpenAI's key names, which open_clip shares)."""

    embed_dim: int
    image_resolution: int
    patch_size: int
    context_length: int
    vocab_size: int
    vision_width: int
    vision_layers: int
    vision_mlp_width: int
    text_width: int
    text_layers: int
    text_mlp_width: int

    @classmethod
    def of(cls, state_dict: Mapping) -> Shapes:
        layers = check_keys(state_dict.keys(), "openai")
        dims = {name: _dim(state_dict, key, axis) for name, (key, axis) in SHAPE_SOURCES.items()}
        positions = dims.pop("vision_positions")
        grid = math.isqrt(max(positions - 1, 0))
        if grid < 1 or grid * grid + 1 != positions:
            raise ArchitectureError(
                f"vision position embedding has {positions} rows, not a square grid plus a class token")
        return cls(image_resolution=grid * dims["patch_size"], vision_layers=layers["vision"],
                   text_layers=layers["text"], **dims)

    def tower(self, name: str, heads: int, activation: str, layer_norm_eps: float) -> Tower:
        """The tower `name` ("vision" or "text") of these shapes, with what shapes cannot say."""
        return Tower(width=getattr(self, f"{name}_width"), layers=getattr(self, f"{name}_layers"), heads=heads,
                     mlp_width=getattr(self, f"{name}_mlp_width"), activation=activation,
                     layer_norm_eps=layer_norm_eps)

    def architecture(self, vision: Tower, text: Tower) -> Architecture:
        """The architecture of these shapes with these towers, pooling its text at the largest token id."""
        return Architecture(embed_dim=self.embed_dim, image_resolution=self.image_resolution,
                            patch_size=self.patch_size, context_length=self.context_length,
                            vocab_size=self.vocab_size, vision=vision, text=text, text_pool_token=None)


def disagreements(claimed: Architecture, shapes: Shapes) -> list[str]:
    """Where a config's architecture says other numbers than the tensors, each as `name is X, the tensors Y`."""
    found = {
        "embed_dim": (claimed.embed_dim, shapes.embed_dim),
        "image_resolution": (claimed.image_resolution, shapes.image_resolution),
        "patch_size": (claimed.patch_size, shapes.patch_size),
        "context_length": (claimed.context_length, shapes.context_length),
        "vocab_size": (claimed.vocab_size, shapes.vocab_size),
    }
    for name in ("vision", "text"):
        tower = getattr(claimed, name)
        for part in ("width", "layers", "mlp_width"):
            found[f"{name}.{part}"] = (getattr(tower, part), getattr(shapes, f"{name}_{part}"))
    return [f"{name} is {said}, the tensors say {real}" for name, (said, real) in found.items() if said != real]


def argmax_pooling_problems(architecture: Architecture, code: str) -> list[str]:
    """OpenAI's and open_clip's code pool the text tower at the largest token id, nowhere else."""
    if architecture.text_pool_token is None:
        return []
    return [f"text pooling is at the first token {architecture.text_pool_token}, {code} pools at the largest "
            f"token id ({architecture.vocab_size - 1})"]


def head_problems(architecture: Architecture) -> list[str]:
    """Heads that do not divide their tower's width: no attention implementation can split it."""
    return [f"{name} width {tower.width} does not split into {tower.heads} heads"
            for name, tower in (("vision", architecture.vision), ("text", architecture.text))
            if tower.heads < 1 or tower.width % tower.heads]


def _dim(state_dict: Mapping, key: str, axis: int) -> int:
    shape = tuple(state_dict[key].shape)
    if len(shape) <= (axis if axis >= 0 else -axis - 1):
        raise ArchitectureError(f"{key} has shape {shape}, expected at least {abs(axis) + (axis >= 0)} dimension(s)")
    return shape[axis]
