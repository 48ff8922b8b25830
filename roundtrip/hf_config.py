"""transformers' `CLIPConfig` (a folder's config.json): read into an architecture, written from one.

Read without importing transformers: the defaults CLIPConfig fills in for fields a config.json leaves out
are spelled out here (tests/test_config.py checks them against CLIPConfig).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

from roundtrip import dtypes
from roundtrip.architecture import (
    IMAGE_CHANNELS,
    Architecture,
    ArchitectureError,
    ResNet,
    Shapes,
    Tower,
    disagreements,
    head_problems,
)
from roundtrip.schema import TOWERS

# transformers' CLIPModel pools the text tower at argmax(input_ids), exactly like OpenAI, only when eos_token_id is
# this legacy value (see README, "Text pooling"); with another value, at its first occurrence. MetaClip2Model
# (MetaCLIP 2 worldwide, whose end-of-text id is 2) has no legacy branch: it always pools at the first eos id.
ARGMAX_POOLING_EOS_ID = 2

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


def resolved_hf_config(config: Mapping) -> dict:
    """The fields of a folder's config.json that this tool reads, with the defaults CLIPConfig fills in."""
    resolved = {**HF_DEFAULTS, **{key: config[key] for key in HF_DEFAULTS if key in config}}
    for tower, defaults in HF_TOWER_DEFAULTS.items():
        given = config.get(tower) or {}
        legacy = config.get(LEGACY_TOWER_KEYS[tower])  # older hub configs; CLIPConfig lets it win over `tower`
        for name, value in ((tower, given), (LEGACY_TOWER_KEYS[tower], legacy or {})):
            if not isinstance(value, Mapping):
                raise ArchitectureError(f"{name} should be a JSON object, found {type(value).__name__}")
        fields = {**defaults, **legacy} if legacy else {**defaults, **given}
        resolved[tower] = {key: fields[key] for key in defaults}
    _check_types(resolved)
    return resolved


def _check_types(resolved: dict) -> None:
    """A config.json may come from anyone: every field read must have the kind CLIPConfig gives it."""
    wrong = [f"projection_dim is {resolved['projection_dim']!r}"] if not _is_count(resolved["projection_dim"]) else []
    for tower in HF_TOWER_DEFAULTS:
        for key, value in resolved[tower].items():
            if key == "hidden_act":
                ok = isinstance(value, str)
            elif key == "layer_norm_eps":
                ok = isinstance(value, Real) and not isinstance(value, bool) and value > 0
            else:
                ok = _is_count(value)
            if not ok:
                wrong.append(f"{tower}.{key} is {value!r}")
    if wrong:
        raise ArchitectureError("fields of an unexpected kind: " + "; ".join(wrong))


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tower(fields: Mapping, projected: bool) -> Tower:
    return Tower(width=fields["hidden_size"], layers=fields["num_hidden_layers"],
                 heads=fields["num_attention_heads"], mlp_width=fields["intermediate_size"],
                 activation=fields["hidden_act"], layer_norm_eps=fields["layer_norm_eps"], projected=projected)


# model_type -> the towers a config of that type describes (a tower alone: its own config, at the top level)
MODEL_TYPES = {"clip": TOWERS, "clip_text_model": ("text",), "clip_vision_model": ("vision",),
               "metaclip_2": TOWERS, "metaclip_2_text_model": ("text",), "metaclip_2_vision_model": ("vision",)}
# The model types whose text tower pools at its first eos_token_id whatever the id (no legacy argmax branch)
FIRST_EOS_POOLING_TYPES = ("metaclip_2", "metaclip_2_text_model")


def towers(config: object) -> tuple[str, ...]:
    """The towers a config.json describes, by its model_type."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    if model_type not in MODEL_TYPES:
        raise ArchitectureError(f"is not a CLIP config (model_type is {model_type!r})")
    return MODEL_TYPES[model_type]


def architecture(config: Mapping, shapes: Shapes) -> Architecture:
    """What a folder's config.json builds (CLIPModel's, or one tower's), which must agree with its tensors'
    shapes. A tower alone has its projection where its weights do (the class with one, CLIPTextModelWithProjection
    and the like); a config that names the other class is refused."""
    held = towers(config)
    whole = config if held == TOWERS else {  # a tower's own config, read as that tower of a CLIPConfig
        **{key: config[key] for key in HF_DEFAULTS if key in config}, f"{held[0]}_config": config}
    resolved = resolved_hf_config(whole)
    text, vision = resolved["text_config"], resolved["vision_config"]
    projected = {tower: held == TOWERS or tower in shapes.projections for tower in held}
    claimed = Architecture(
        embed_dim=resolved["projection_dim"] if any(projected.values()) else None,
        image_resolution=vision["image_size"] if "vision" in held else None,
        patch_size=vision["patch_size"] if "vision" in held else None,
        context_length=text["max_position_embeddings"] if "text" in held else None,
        vocab_size=text["vocab_size"] if "text" in held else None,
        vision=_tower(vision, projected["vision"]) if "vision" in held else None,
        text=_tower(text, projected["text"]) if "text" in held else None,
        text_pool_token=_pool_token(text, config.get("model_type") in FIRST_EOS_POOLING_TYPES)
        if "text" in held else None,
    )
    problems = disagreements(claimed, shapes) + head_problems(claimed)
    if "vision" in held and vision["num_channels"] != IMAGE_CHANNELS:
        problems.append(f"vision_config.num_channels is {vision['num_channels']}, CLIP's images have 3")
    named = [name for name in config.get("architectures") or [] if name in _CLASS_NAMES]
    if named and not set(named) & _holders(claimed):
        problems.append(f"it names {named[0]}, the weights are a {model_class(claimed)}'s")
    if problems:
        raise ArchitectureError("config.json does not fit the tensors: " + "; ".join(problems))
    return claimed


def _pool_token(text: Mapping, first_eos_always: bool) -> int | None:
    eos = text["eos_token_id"]
    # With eos = the largest id, "first eos" pooling equals OpenAI's argmax on tokenized text.
    legacy = () if first_eos_always else (ARGMAX_POOLING_EOS_ID,)
    return None if eos in (*legacy, text["vocab_size"] - 1) else eos


# The transformers class that holds each kind of model: both towers, or one tower with or without its projection;
# for CLIPModel's family, and for MetaClip2Model's (text pooled at the first token 2, which CLIPModel cannot say).
MODEL_CLASSES = {
    "clip": {
        ("text", "vision"): "CLIPModel",
        ("text",): {True: "CLIPTextModelWithProjection", False: "CLIPTextModel"},
        ("vision",): {True: "CLIPVisionModelWithProjection", False: "CLIPVisionModel"},
    },
    "metaclip_2": {
        ("text", "vision"): "MetaClip2Model",
        ("text",): {True: "MetaClip2TextModelWithProjection", False: "MetaClip2TextModel"},
        ("vision",): {True: "MetaClip2VisionModelWithProjection", False: "MetaClip2VisionModel"},
    },
}


_CLASS_NAMES = {name for family in MODEL_CLASSES.values() for held in family.values()
                for name in ([held] if isinstance(held, str) else held.values())}


def family(architecture: Architecture) -> str:
    """Which family of transformers classes holds `architecture`: MetaClip2's where the text tower pools at the
    first token 2, which a CLIPConfig cannot say (eos_token_id 2 means argmax there); else CLIP's."""
    return "metaclip_2" if architecture.text_pool_token == ARGMAX_POOLING_EOS_ID else "clip"


def model_class(architecture: Architecture) -> str:
    """The name of the transformers class that holds a model of `architecture`."""
    return _class_in(MODEL_CLASSES[family(architecture)], architecture)


def config_class(config: Mapping | None, architecture: Architecture) -> str:
    """The transformers class a config.json is for (its model_type's family), where that class holds
    `architecture` (a MetaClip2Model folder whose eos id is the largest computes what a CLIPModel would, and
    stays a MetaClip2Model); else `model_class`."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    held = _class_in(MODEL_CLASSES[_FAMILIES.get(model_type, "clip")], architecture)
    return held if held in _holders(architecture) else model_class(architecture)


# model_type -> its family of classes (MODEL_CLASSES)
_FAMILIES = {model_type: model_type.removesuffix("_text_model").removesuffix("_vision_model")
             for model_type in MODEL_TYPES}


def _holders(architecture: Architecture) -> set[str]:
    """The classes that hold a model of `architecture`: its family's; where its text pools as CLIPModel's can,
    every family's (a MetaClip2Model whose eos id is the largest computes what a CLIPModel does)."""
    if family(architecture) != "clip":
        return {model_class(architecture)}
    return {_class_in(classes, architecture) for classes in MODEL_CLASSES.values()}


def _class_in(classes: Mapping, architecture: Architecture) -> str:
    held = classes[architecture.towers]
    return held if isinstance(held, str) else held[getattr(architecture, architecture.towers[0]).projected]


def config(architecture: Architecture, classes: str | None = None) -> dict:
    """A complete config.json for the transformers class that holds `architecture` (`model_class`), or its class
    in the family `classes` (MODEL_CLASSES: "metaclip_2" for a CLIP that pools as CLIPModel does): CLIPModel's
    for both towers, a tower's own config (CLIPTextConfig, CLIPVisionConfig) for one."""
    def tower(part: Tower) -> dict:
        return {"hidden_size": part.width, "intermediate_size": part.mlp_width, "num_hidden_layers": part.layers,
                "num_attention_heads": part.heads, "hidden_act": part.activation,
                "layer_norm_eps": part.layer_norm_eps,
                **({"projection_dim": architecture.embed_dim} if part.projected else {})}

    model_type = classes or family(architecture)
    held = _class_in(MODEL_CLASSES[model_type], architecture)
    if held not in _holders(architecture):
        raise ArchitectureError(f"transformers' {held} cannot hold this model: its text pools at the first token "
                                f"{architecture.text_pool_token}, which only {model_class(architecture)} can say")
    towers = {}
    if architecture.text is not None:
        towers["text_config"] = {
            "model_type": f"{model_type}_text_model",
            "vocab_size": architecture.vocab_size,
            "max_position_embeddings": architecture.context_length,
            "eos_token_id": _eos_token_id(architecture, model_type),
            # MetaClip2TextConfig's defaults are CLIP's tokenizer's ids; the model reads neither, and only the
            # tokenizer (MetaCLIP 2's is XLM-V's, not shipped here) knows them
            **({"bos_token_id": None, "pad_token_id": None} if model_type == "metaclip_2" else {}),
            **tower(architecture.text),
        }
    if architecture.vision is not None:
        towers["vision_config"] = {
            "model_type": f"{model_type}_vision_model",
            "num_channels": IMAGE_CHANNELS,
            "image_size": architecture.image_resolution,
            "patch_size": architecture.patch_size,
            **tower(architecture.vision),
        }
    if len(towers) == 1:
        return {"architectures": [held], **next(iter(towers.values()))}
    return {"architectures": [held], "model_type": model_type,
            "projection_dim": architecture.embed_dim, **towers}


def _eos_token_id(architecture: Architecture, model_type: str) -> int:
    """Where the text pools, as the family's config says it: CLIPConfig's legacy 2 for argmax; for MetaClip2Config
    (first eos, always), the largest id, whose first occurrence is where argmax pools."""
    if architecture.text_pool_token is not None:
        return architecture.text_pool_token
    return architecture.vocab_size - 1 if model_type == "metaclip_2" else ARGMAX_POOLING_EOS_ID


def incompatibilities(architecture: Architecture) -> list[str]:
    """What transformers' classes cannot hold: a ResNet vision tower, heads that do not split their tower's
    width."""
    if isinstance(architecture.vision, ResNet):
        return ["its vision tower is a ResNet (the RN50 family's ModifiedResNet), and CLIPModel has no ResNet vision "
                "tower"]
    return head_problems(architecture)


# Where a config.json records the dtype of its weights: transformers 5's name, and 4's. from_pretrained's default
# (dtype="auto") loads the weights in it.
DTYPE_FIELDS = ("dtype", "torch_dtype")


def with_written_dtype(config: dict | None, written: Mapping[str, int]) -> dict | None:
    """`config` recording the floating dtype the weights are written in (`written`: dtype -> tensors), where it
    records one and they have one (a folder kept as it is, re-typed with --dtype)."""
    floating = [name for name in written if dtypes.from_name(name).is_floating_point]
    if config is None or len(floating) != 1:
        return config
    return {**config, **{field: floating[0] for field in DTYPE_FIELDS if field in config}}
