"""What a CLIP is, whatever its format: the numbers that build one, per tower (a vision transformer or a ResNet).

Tensor shapes say most of it (`Shapes.of`, read as clip.model.build_model reads them). What shapes cannot
say (heads, activation, LayerNorm eps, text pooling) each format says its own way: OpenAI's code fixes it,
an HF config.json or an open_clip config spells it out (`roundtrip.openai_config`, `roundtrip.hf_config`,
`roundtrip.open_clip_config`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from roundtrip.mapping import check_keys, towers_of, vision_kind
from roundtrip.schema import PLACEHOLDER_VALUES, PROJECTIONS, RESNET_SHAPE_SOURCES, SHAPE_SOURCES, STAGE_FIELD, TOWERS

# The numbers of the model that belong to one tower (the rest of a tower's are in its `Tower`); a ResNet has no
# patches.
TOWER_NUMBERS = {"vision": ("image_resolution", "patch_size"), "text": ("context_length", "vocab_size")}
RESNET_NUMBERS = ("image_resolution",)
# clip/model.py's and open_clip's ModifiedResNet: its last stage is 32 x its width wide (4 x the first stage's
# 8 x), and its input 32 x its attention pool's grid.
RESNET_WIDENING = RESNET_DOWNSAMPLING = 32
RESNET_STAGES = len(PLACEHOLDER_VALUES[STAGE_FIELD])  # its layer1 to layer4
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
    projected: bool  # whether it ends in a projection to the shared embedding (embed_dim wide)

    @property
    def head_width(self) -> float:
        return self.width / self.heads


@dataclass(frozen=True)
class ResNet:
    """A ResNet vision tower (clip/model.py's ModifiedResNet, which open_clip's is): a stem of three convolutions,
    four stages of bottleneck blocks, and an attention pool whose last layer projects to the shared embedding.
    Its activations (ReLU) and BatchNorms are fixed by that code."""

    layers: tuple[int, ...]  # bottleneck blocks per stage, as both codes take them (RN50: 3, 4, 6, 3)
    width: int  # the first stage's width (64 in RN50), which doubles per stage
    heads: int  # its attention pool's
    projected: bool = True  # its attention pool always ends in its projection

    @property
    def pool_width(self) -> int:
        """The width its attention pool attends over: the last stage's output."""
        return self.width * RESNET_WIDENING

    @property
    def head_width(self) -> float:
        return self.pool_width / self.heads


@dataclass(frozen=True)
class Architecture:
    """Everything that builds a CLIP of any of the formats, or one of its towers alone, and compares two."""

    embed_dim: int | None  # the width the towers project to; None where no tower present has a projection
    image_resolution: int | None  # with a vision tower; else None
    patch_size: int | None
    context_length: int | None  # with a text tower; else None
    vocab_size: int | None
    vision: Tower | ResNet | None  # None: a text tower alone
    text: Tower | None  # None: a vision tower alone
    # Where the text tower pools: None at the largest token id (argmax: end-of-text, in CLIP's tokenizer), or
    # an id, at its first occurrence (transformers' rule for configs with another eos_token_id). No default:
    # every format says which.
    text_pool_token: int | None

    def __post_init__(self) -> None:
        """Refuse what no model is: no tower, numbers of a tower that is not there, a projection without a width."""
        if not self.towers:
            raise ArchitectureError("an architecture needs a text tower, a vision tower or both")
        for tower, numbers in TOWER_NUMBERS.items():
            present = getattr(self, tower) is not None
            kept = RESNET_NUMBERS if isinstance(getattr(self, tower), ResNet) else numbers
            if any((getattr(self, number) is not None) != (present and number in kept) for number in numbers):
                raise ArchitectureError(f"{', '.join(kept)} belong with a {tower} tower, and only with one")
        if self.text is None and self.text_pool_token is not None:
            raise ArchitectureError("text_pool_token belongs with a text tower")
        projected = any(getattr(self, tower).projected for tower in self.towers)
        if (self.embed_dim is not None) != projected:
            raise ArchitectureError("embed_dim is the width of a projection, and only with one")

    @property
    def towers(self) -> tuple[str, ...]:
        """The towers present, in the order of TOWERS."""
        return tuple(name for name in TOWERS if getattr(self, name) is not None)

    def alone(self, tower: str, projected: bool = True) -> Architecture:
        """This model's `tower` alone: with its projection if it has one, unless `projected` is False."""
        part = getattr(self, tower)
        if part is None:
            raise ArchitectureError(f"this model has no {tower} tower")
        if isinstance(part, ResNet) and not projected:
            raise ArchitectureError("a ResNet vision tower cannot be without its projection: it is the last layer "
                                    "of its attention pool, which its code always runs")
        keep = part.projected and projected
        (other,) = (name for name in TOWERS if name != tower)
        return dataclasses.replace(
            self, **{tower: dataclasses.replace(part, projected=keep), other: None},
            **dict.fromkeys(TOWER_NUMBERS[other]), embed_dim=self.embed_dim if keep else None,
            text_pool_token=self.text_pool_token if tower == "text" else None)

    def describe(self) -> str:
        parts = []
        if isinstance(self.vision, ResNet):
            parts.append(f"ResNet {'-'.join(map(str, self.vision.layers))} blocks, width {self.vision.width}, "
                         f"attention pool of {self.vision.heads} heads, {self.image_resolution}px")
        elif self.vision is not None:
            vision = self.vision
            parts.append(f"ViT {vision.width} wide x {vision.layers} layers, {vision.heads} heads, patch "
                         f"{self.patch_size}, {self.image_resolution}px, {vision.activation}"
                         f"{'' if vision.projected else ', no projection'}")
        if self.text is not None:
            text = self.text
            parts.append(f"text {text.width} wide x {text.layers} layers, {text.heads} heads, context "
                         f"{self.context_length}, vocab {self.vocab_size}, {text.activation}"
                         f"{'' if text.projected else ', no projection'}")
        return "; ".join([*parts, *([f"embed {self.embed_dim}"] if self.embed_dim is not None else [])])

    def semantics(self) -> dict[str, object]:
        """Every number and choice, flat and named (`vision.heads`, ...), for reports and comparisons."""
        flat: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (Tower, ResNet)):
                flat.update({f"{field.name}.{part.name}": getattr(value, part.name) for part in fields(value)})
            else:
                flat[field.name] = value
        return flat


@dataclass(frozen=True)
class Shapes:
    """What a complete state dict's tensor shapes say (OpenAI's key names, which open_clip shares), of the
    towers it holds; the numbers of a tower it does not hold are None."""

    towers: tuple[str, ...]
    projections: tuple[str, ...]  # the towers with a projection
    embed_dim: int | None
    image_resolution: int | None
    patch_size: int | None  # None for a ResNet
    context_length: int | None
    vocab_size: int | None
    vision_kind: str | None  # "vit" or "resnet" (schema.VISION_KINDS)
    vision_width: int | None
    vision_layers: int | tuple[int, ...] | None  # a ResNet's per stage
    vision_mlp_width: int | None  # None for a ResNet
    text_width: int | None
    text_layers: int | None
    text_mlp_width: int | None

    @classmethod
    def of(cls, state_dict: Mapping) -> Shapes:
        towers = towers_of(state_dict.keys(), "openai")
        layers = check_keys(state_dict.keys(), "openai", towers)
        kind = vision_kind(state_dict.keys()) if "vision" in towers else None
        transformers = tuple(tower for tower in towers if (tower, kind) != ("vision", "resnet"))
        dims = {name: None for sources in SHAPE_SOURCES.values() for name in sources}
        dims.update({name: _dim(state_dict, key, axis) for tower in transformers
                     for name, (key, axis) in SHAPE_SOURCES[tower].items()})
        positions = dims.pop("vision_positions")
        image_resolution = None if positions is None else _grid(positions) * dims["patch_size"]
        projections = tuple(tower for tower in transformers if PROJECTIONS[tower][0] in state_dict)
        widths = {PROJECTIONS[tower][0]: _dim(state_dict, *PROJECTIONS[tower]) for tower in projections}
        for tower in projections:  # x @ P: P's rows are the tower's width
            key, axis = PROJECTIONS[tower]
            rows, width = _dim(state_dict, key, 1 - axis), dims[f"{tower}_width"]
            if rows != width:
                raise ArchitectureError(f"{key} has shape {tuple(state_dict[key].shape)} (OpenAI's layout): its "
                                        f"{rows} rows should be the {tower} tower's width, {width}")
        if kind == "resnet":
            dims["vision_width"], image_resolution, key, embed_dim = _resnet_dims(state_dict)
            widths[key] = embed_dim
            projections = tuple(tower for tower in towers if tower in projections or tower == "vision")
        if len(set(widths.values())) > 1:
            raise ArchitectureError("the projections disagree on the embedding width: " + ", ".join(
                f"{key} gives {width}" for key, width in widths.items()))
        return cls(towers=towers, projections=projections, embed_dim=next(iter(widths.values()), None),
                   image_resolution=image_resolution, vision_kind=kind, vision_layers=layers.get("vision"),
                   text_layers=layers.get("text"), **dims)

    def tower(self, name: str, heads: int, activation: str, layer_norm_eps: float) -> Tower:
        """The transformer tower `name` ("vision" or "text") of these shapes, with what shapes cannot say."""
        return Tower(width=getattr(self, f"{name}_width"), layers=getattr(self, f"{name}_layers"), heads=heads,
                     mlp_width=getattr(self, f"{name}_mlp_width"), activation=activation,
                     layer_norm_eps=layer_norm_eps, projected=name in self.projections)

    def resnet(self, heads: int) -> ResNet:
        """The ResNet vision tower of these shapes, with its attention pool's heads (which shapes cannot say)."""
        return ResNet(layers=self.vision_layers, width=self.vision_width, heads=heads)

    def architecture(self, vision: Tower | ResNet | None, text: Tower | None) -> Architecture:
        """The architecture of these shapes with these towers, pooling its text at the largest token id."""
        return Architecture(embed_dim=self.embed_dim, image_resolution=self.image_resolution,
                            patch_size=self.patch_size, context_length=self.context_length,
                            vocab_size=self.vocab_size, vision=vision, text=text, text_pool_token=None)


def _resnet_dims(state_dict: Mapping) -> tuple[int, int, str, int]:
    """A ResNet vision tower's width, image resolution and projection (its key, and the width it projects to)."""
    dims = {name: _dim(state_dict, key, axis) for name, (key, axis) in RESNET_SHAPE_SOURCES.items()}
    key = RESNET_SHAPE_SOURCES["pool_width"][0]
    if dims["pool_width"] != RESNET_WIDENING * dims["vision_width"]:
        raise ArchitectureError(f"{key} has shape {tuple(state_dict[key].shape)}: it should take the last stage's "
                                f"output, {RESNET_WIDENING} x the width {dims['vision_width']}")
    return dims["vision_width"], _grid(dims["vision_positions"]) * RESNET_DOWNSAMPLING, key, dims["embed_dim"]


def _grid(positions: int) -> int:
    """The side of the square grid of patches that `positions` (the grid's and the class token's) embed."""
    grid = math.isqrt(max(positions - 1, 0))
    if grid < 1 or grid * grid + 1 != positions:
        raise ArchitectureError(f"vision position embedding has {positions} rows, not a square grid plus a class token")
    return grid


def disagreements(claimed: Architecture, shapes: Shapes) -> list[str]:
    """Where a config's architecture says other numbers than the tensors, each as `name is X, the tensors Y`."""
    if claimed.towers != shapes.towers:
        return [f"the config has the {' and '.join(claimed.towers)} tower(s), the tensors the "
                f"{' and '.join(shapes.towers)}"]
    found = {
        "embed_dim": (claimed.embed_dim, shapes.embed_dim),
        "image_resolution": (claimed.image_resolution, shapes.image_resolution),
        "patch_size": (claimed.patch_size, shapes.patch_size),
        "context_length": (claimed.context_length, shapes.context_length),
        "vocab_size": (claimed.vocab_size, shapes.vocab_size),
    }
    kinds = []
    for name in claimed.towers:
        tower = getattr(claimed, name)
        kind = kind_of(tower)
        if name == "vision" and kind != shapes.vision_kind:
            kinds.append(f"the vision tower is a {_KIND_NAMES[kind]} in the config, a "
                         f"{_KIND_NAMES[shapes.vision_kind]} in the tensors")
            del found["patch_size"]  # a ResNet has none
            continue
        for part in ("width", "layers") if kind == "resnet" else ("width", "layers", "mlp_width"):
            found[f"{name}.{part}"] = (getattr(tower, part), getattr(shapes, f"{name}_{part}"))
    problems = kinds + [f"{name} is {said}, the tensors say {real}" for name, (said, real) in found.items()
                        if said != real]
    return problems + [f"the {name} tower has {'a' if getattr(claimed, name).projected else 'no'} projection in "
                       f"the config, {'one' if name in shapes.projections else 'none'} in the tensors"
                       for name in claimed.towers if getattr(claimed, name).projected != (name in shapes.projections)]


def argmax_pooling_problems(architecture: Architecture, code: str) -> list[str]:
    """OpenAI's and open_clip's code pool the text tower at the largest token id, nowhere else."""
    if architecture.text_pool_token is None:
        return []
    return [f"text pooling is at the first token {architecture.text_pool_token}, {code} pools at the largest "
            f"token id ({architecture.vocab_size - 1})"]


def head_problems(architecture: Architecture) -> list[str]:
    """Heads that do not divide the width they attend over: no attention implementation can split it."""
    problems = []
    for name in architecture.towers:
        tower = getattr(architecture, name)
        width = tower.pool_width if isinstance(tower, ResNet) else tower.width
        if tower.heads < 1 or width % tower.heads:
            pool = " attention pool" if isinstance(tower, ResNet) else ""
            problems.append(f"{name}{pool} width {width} does not split into {tower.heads} heads")
    return problems


def kind_of(vision: Tower | ResNet) -> str:
    """What a vision tower is (schema.VISION_KINDS)."""
    return "resnet" if isinstance(vision, ResNet) else "vit"


_KIND_NAMES = {"vit": "vision transformer", "resnet": "ResNet"}


def _dim(state_dict: Mapping, key: str, axis: int) -> int:
    shape = tuple(state_dict[key].shape)
    if len(shape) <= (axis if axis >= 0 else -axis - 1):
        raise ArchitectureError(f"{key} has shape {shape}, expected at least {abs(axis) + (axis >= 0)} dimension(s)")
    return shape[axis]
