"""open_clip's model configs: read into an architecture (refusing what CLIPModel cannot hold), written from one.

A model config is `{"embed_dim", "quick_gelu", "vision_cfg": {...}, "text_cfg": {...}}` as in open_clip's
`model_configs/*.json`; a hub folder's `open_clip_config.json` wraps it as `{"model_cfg", "preprocess_cfg"}`.
Field names and defaults are open_clip 3.3's `CLIPVisionCfg`, `CLIPTextCfg` and `PreprocessCfg` (model.py,
transform.py). The registry is read from open_clip's package data, without importing open_clip.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Mapping
from numbers import Real
from pathlib import Path

from roundtrip.architecture import (
    RESNET_STAGES,
    RESNET_WIDENING,
    TOWER_NUMBERS,
    Architecture,
    ArchitectureError,
    ResNet,
    Shapes,
    Tower,
    disagreements,
    head_problems,
)
from roundtrip.preprocessing import Preprocessing

HEAD_WIDTH = 64  # CLIPVisionCfg.head_width's default
MLP_RATIO = 4.0  # both towers' default
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, unless norm_kwargs says otherwise
IMAGE_SIZE, VISION_LAYERS, VISION_WIDTH, PATCH_SIZE = 224, 12, 768, 16  # CLIPVisionCfg's defaults
CONTEXT_LENGTH, VOCAB_SIZE, TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS = 77, 49408, 512, 8, 12  # CLIPTextCfg's

# Settings whose default is the only value CLIPModel can hold: setting -> (values it holds, what others mean).
_CUSTOM_BLOCK = "a custom attention block ({name}), which CLIPModel's attention does not have"
_OFF = (False, None)
TOWER_CONFIGS = {"vision": "vision_cfg", "text": "text_cfg"}  # each tower's settings in a model config
_TOWER_FIXED = {
    "ls_init_value": ((None,), "layer scale (ls_1.gamma, ls_2.gamma), which CLIPModel's layers do not have"),
    "act_kwargs": ((None, {}), "activation arguments (act_kwargs), which CLIPModel's activations do not take"),
    "block_type": ((None, "default"), _CUSTOM_BLOCK), "qk_norm": (_OFF, _CUSTOM_BLOCK),
    "scaled_cosine_attn": (_OFF, _CUSTOM_BLOCK), "scale_heads": (_OFF, _CUSTOM_BLOCK),
    "scale_attn_inner": (_OFF, _CUSTOM_BLOCK), "scale_attn": (_OFF, _CUSTOM_BLOCK),
    "scale_fc": (_OFF, _CUSTOM_BLOCK),
}
_VISION_FIXED = {
    **_TOWER_FIXED,
    "timm_model_name": ((None,), "a timm vision tower (visual.trunk), which CLIPModel does not have"),
    "attentional_pool": (_OFF, "an attentional pooler (attn_pool, as in CoCa), which CLIPModel does not have"),
    "no_ln_pre": (_OFF, "no LayerNorm before the vision transformer (CLIPA), where CLIPModel has one"),
    "pool_type": (("tok",), "image pooling other than the class token (CLIPA), which CLIPModel cannot do"),
}
_TEXT_FIXED = {
    **_TOWER_FIXED,
    "hf_model_name": ((None,), "a Hugging Face text tower, which CLIPModel's text model is not"),
    "embed_cls": (_OFF, "a class token in the text tower (cls_emb), which CLIPModel does not have"),
    "no_causal_mask": (_OFF, "text attention without the causal mask (CLIPA), which CLIPModel always applies"),
    "proj_bias": (_OFF, "a text projection with a bias (proj_bias), which CLIPModel's has not"),
    "proj_type": (("linear",), "a text projection other than a matrix, which CLIPModel cannot hold"),
}
_MODEL_FIXED = {
    "custom_text": (_OFF, "a custom text tower (text.* keys), which CLIPModel's text model is not"),
    "multimodal_cfg": ((None,), "a multimodal decoder (CoCa's text_decoder), which CLIPModel does not have"),
    "init_logit_bias": ((None,), "a logit bias (SigLIP-style logit_bias), which CLIPModel does not have"),
    "nonscalar_logit_scale": (_OFF, "a logit scale of shape [1], where CLIPModel's is a scalar"),
}
# Settings that change nothing CLIPModel computes at inference (training-only, or equal for class-token and
# argmax pooling): accepted whatever their value.
_VISION_FREE = {"patch_dropout", "attn_pooler_queries", "attn_pooler_heads", "pos_embed_type", "final_ln_after_pool",
                "output_tokens", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
                "timm_drop_path"}
_TEXT_FREE = {"hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "pad_id", "eos_id", "final_ln_after_pool",
              "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_MODEL_FREE = {"init_logit_scale", "output_dict", "cast_dtype"}
_VISION_CORE = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "norm_kwargs"}
_TEXT_CORE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs", "pool_type"}
_TEXT_POOL_TYPES = ("argmax", "eos")  # the text poolings CLIPModel reproduces (argmax; eos = first eos_id)


def registry_names() -> list[str]:
    return sorted(path.stem for path in _registry_folder().glob("*.json"))


def registry_config(name: str) -> dict:
    """The model config open_clip's registry holds under `name` (as `open_clip.create_model(name)` finds it)."""
    cleaned = name.replace("/", "-")  # open_clip's own spelling rule; with no "/" left, no path leads out
    path = _registry_folder() / f"{cleaned}.json"
    if not path.is_file():
        close = difflib.get_close_matches(cleaned, registry_names(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ArchitectureError(f"{name!r} is not a model in open_clip's registry{hint}")
    return json.loads(path.read_text(encoding="utf-8"))


def _registry_folder() -> Path:
    package = importlib.util.find_spec("open_clip")  # finds, does not import
    if package is None or not package.submodule_search_locations:
        raise ArchitectureError("open_clip is not installed: pip install open-clip-torch")
    return Path(package.submodule_search_locations[0]) / "model_configs"


def split_config(config) -> tuple[dict, dict]:
    """(model config, preprocess config) of either a model config or an open_clip_config.json."""
    if not isinstance(config, Mapping):
        raise ArchitectureError(f"is a JSON {type(config).__name__}, expected an object")
    if "model_cfg" in config:
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg") or {}
    elif config.keys() & set(TOWER_CONFIGS.values()):
        model_cfg, preprocess_cfg = config, {}
    else:
        raise ArchitectureError("has no model_cfg (nor vision_cfg or text_cfg): not an open_clip model config")
    for name, value in (("model_cfg", model_cfg), ("preprocess_cfg", preprocess_cfg)):
        if not isinstance(value, Mapping):
            raise ArchitectureError(f"{name} should be a JSON object, found {type(value).__name__}")
    return dict(model_cfg), dict(preprocess_cfg)


def unsupported(model_cfg: Mapping) -> list[str]:
    """Every setting of `model_cfg` that transformers' CLIPModel cannot hold, each named with what it is."""
    problems = _against(model_cfg, _MODEL_FIXED, _MODEL_FREE | {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"},
                        "")
    if not model_cfg.keys() & set(TOWER_CONFIGS.values()):
        problems.append("it has neither vision_cfg nor text_cfg")
    for name, fixed, free, core in (("vision_cfg", _VISION_FIXED, _VISION_FREE, _VISION_CORE),
                                    ("text_cfg", _TEXT_FIXED, _TEXT_FREE, _TEXT_CORE)):
        if name not in model_cfg:
            continue  # a tower alone (clipconv writes such a config for one)
        tower = model_cfg[name]
        if not isinstance(tower, Mapping):
            problems.append(f"{name} is not a JSON object")
            continue
        problems += _against(tower, fixed, free | core, f"{name}.")
    text = model_cfg.get("text_cfg")
    if isinstance(text, Mapping) and text.get("pool_type", "argmax") not in _TEXT_POOL_TYPES:
        problems.append(f"text_cfg.pool_type is {text['pool_type']!r}: text pooling (CLIPA) other than at the "
                        "end-of-text token, which CLIPModel cannot do")
    for name in ("vision_cfg", "text_cfg"):
        tower = model_cfg.get(name)
        norm = tower.get("norm_kwargs") if isinstance(tower, Mapping) else None
        if norm and set(norm) - {"eps"}:
            problems.append(f"{name}.norm_kwargs sets {', '.join(sorted(set(norm) - {'eps'}))}, of which CLIPModel's "
                            "LayerNorm takes only eps")
    return problems


def _against(settings: Mapping, fixed: Mapping, known: set, where: str) -> list[str]:
    problems = []
    for key, value in settings.items():
        if key in fixed:
            holds, meaning = fixed[key]
            if not any(value == held and type(value) is type(held) for held in holds):
                problems.append(f"{where}{key} is {value!r}: {meaning.format(name=where + key)}")
        elif key not in known:
            problems.append(f"{where}{key} is not an open_clip setting clipconv knows")
    return problems


def architecture(model_cfg: Mapping, shapes: Shapes) -> Architecture:
    """What open_clip builds from `model_cfg` (refused if CLIPModel cannot hold it), which must agree with the
    tensors' shapes."""
    claimed = claimed_architecture(model_cfg)
    if len(claimed.towers) > len(shapes.towers) == 1:
        # one tower's weights with its whole model's config, as Stable Diffusion keeps open_clip's text tower
        claimed = claimed.alone(*shapes.towers)
    problems = disagreements(claimed, shapes)
    if problems:
        raise ArchitectureError("the open_clip config does not fit the tensors: " + "; ".join(problems))
    return claimed


def claimed_architecture(model_cfg: Mapping) -> Architecture:
    """What open_clip builds from `model_cfg`, refused if CLIPModel cannot hold it."""
    problems = unsupported(model_cfg)
    if problems:
        raise ArchitectureError("clipconv does not convert this open_clip model (transformers' CLIPModel cannot hold "
                                "it): " + "; ".join(problems))
    activation = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    vision, text = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    # open_clip always projects; clipconv writes the config of a tower alone without one with no embed_dim
    unprojected = (vision is None or text is None) and "embed_dim" not in model_cfg
    if unprojected and vision is not None and isinstance(vision.get("layers"), (list, tuple)):
        raise ArchitectureError("model_cfg has no embed_dim, which a ResNet vision tower's attention pool projects to")
    embed_dim = None if unprojected else _number(model_cfg, "embed_dim", None, "model_cfg")
    claimed = Architecture(
        embed_dim=embed_dim,
        **(_absent("vision") if vision is None else _vision_part(vision, activation, not unprojected)),
        **(_absent("text") if text is None else _text_part(text, activation, not unprojected)),
        text_pool_token=None if text is None or text.get("pool_type", "argmax") != "eos" else text.get("eos_id", 2),
    )
    problems = head_problems(claimed)
    if problems:
        raise ArchitectureError("the open_clip config cannot be built: " + "; ".join(problems))
    return claimed


def _absent(tower: str) -> dict:
    return dict.fromkeys((tower, *TOWER_NUMBERS[tower]))


def _vision_part(vision: Mapping, activation: str, projected: bool) -> dict:
    width = _number(vision, "width", VISION_WIDTH, "vision_cfg")
    head_width = _number(vision, "head_width", HEAD_WIDTH, "vision_cfg")
    if isinstance(vision.get("layers"), (list, tuple)):
        return _resnet_part(vision, width, head_width)
    if head_width < 1 or width % head_width:
        raise ArchitectureError(f"vision_cfg.width {width} is not a multiple of its head_width {head_width}")
    return {"vision": _tower(vision, "vision_cfg", width // head_width, VISION_LAYERS, VISION_WIDTH, activation,
                             projected),
            "image_resolution": _square(vision, "image_size", IMAGE_SIZE),
            "patch_size": _square(vision, "patch_size", PATCH_SIZE)}


def _resnet_part(vision: Mapping, width: int, head_width: int) -> dict:
    """open_clip's ModifiedResNet: four stages of `layers`, and heads = width * 32 // head_width."""
    layers = vision["layers"]
    if len(layers) != RESNET_STAGES or not all(
            isinstance(count, int) and not isinstance(count, bool) and count >= 1 for count in layers):
        raise ArchitectureError(f"vision_cfg.layers is {layers!r}: a ResNet's are {RESNET_STAGES} positive "
                                "integers, its blocks per stage")
    pool_width = width * RESNET_WIDENING
    if pool_width % head_width:
        raise ArchitectureError(f"vision_cfg.head_width {head_width} does not divide the ResNet's attention pool "
                                f"width, {pool_width} ({RESNET_WIDENING} x width)")
    return {"vision": ResNet(tuple(layers), width, pool_width // head_width),
            "image_resolution": _square(vision, "image_size", IMAGE_SIZE), "patch_size": None}


def _text_part(text: Mapping, activation: str, projected: bool) -> dict:
    return {"text": _tower(text, "text_cfg", _number(text, "heads", TEXT_HEADS, "text_cfg"), TEXT_LAYERS, TEXT_WIDTH,
                           activation, projected),
            "context_length": _number(text, "context_length", CONTEXT_LENGTH, "text_cfg"),
            "vocab_size": _number(text, "vocab_size", VOCAB_SIZE, "text_cfg")}


def _tower(settings: Mapping, where: str, heads: int, layers: int, width: int, activation: str,
           projected: bool) -> Tower:
    width = _number(settings, "width", width, where)
    ratio = settings.get("mlp_ratio", MLP_RATIO)
    if not isinstance(ratio, Real) or isinstance(ratio, bool) or ratio <= 0:
        raise ArchitectureError(f"{where}.mlp_ratio is {ratio!r}, expected a positive number")
    eps = (settings.get("norm_kwargs") or {}).get("eps", LAYER_NORM_EPS)
    if not isinstance(eps, Real) or isinstance(eps, bool) or eps <= 0:
        raise ArchitectureError(f"{where}.norm_kwargs.eps is {eps!r}, expected a positive number")
    return Tower(width=width, layers=_number(settings, "layers", layers, where), heads=heads,
                 mlp_width=int(width * ratio), activation=activation, layer_norm_eps=eps, projected=projected)


def _number(settings: Mapping, key: str, default, where: str) -> int:
    value = settings.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArchitectureError(f"{where}.{key} is {value!r}, expected a positive integer")
    return value


def _square(settings: Mapping, key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ArchitectureError(f"vision_cfg.{key} is {value!r}: CLIPModel's images and patches are square")
        value = value[0]
    return _number({key: value}, key, default, "vision_cfg")


def incompatibilities(architecture: Architecture) -> list[str]:
    """What open_clip's CLIP cannot build: one activation for both towers, vision heads of a whole width."""
    problems = head_problems(architecture)
    towers = _transformers(architecture)
    activations = {getattr(architecture, tower).activation for tower in towers}
    if len(activations) > 1 or not activations <= {"gelu", "quick_gelu"}:
        problems.append("activations are " + " and ".join(f"{getattr(architecture, tower).activation} ({tower})"
                                                          for tower in reversed(towers))
                        + "; open_clip uses gelu or quick_gelu for both")
    return problems


def _transformers(architecture: Architecture) -> tuple[str, ...]:
    """The towers that are transformers: a ResNet's activation is its code's own (ReLU), whatever quick_gelu."""
    return tuple(tower for tower in architecture.towers if isinstance(getattr(architecture, tower), Tower))


def model_config(architecture: Architecture) -> dict:
    """The model config that makes open_clip build exactly this architecture (its defaults left out); of a tower
    alone, that tower's settings (open_clip itself builds both towers, so only clipconv reads such a config)."""
    vision, text = architecture.vision, architecture.text
    config = {"embed_dim": architecture.embed_dim} if architecture.embed_dim is not None else {}
    if any(getattr(architecture, tower).activation == "quick_gelu" for tower in _transformers(architecture)):
        config["quick_gelu"] = True
    if isinstance(vision, ResNet):
        config["vision_cfg"] = {
            "image_size": architecture.image_resolution, "layers": list(vision.layers), "width": vision.width,
            **({"head_width": vision.pool_width // vision.heads} if vision.pool_width != HEAD_WIDTH * vision.heads
               else {}),
            "patch_size": None}
    elif vision is not None:
        config["vision_cfg"] = {
            "image_size": architecture.image_resolution, "layers": vision.layers, "width": vision.width,
            **({"head_width": vision.width // vision.heads} if vision.width != HEAD_WIDTH * vision.heads else {}),
            **_tower_extras(vision), "patch_size": architecture.patch_size}
    if text is not None:
        config["text_cfg"] = {"context_length": architecture.context_length, "vocab_size": architecture.vocab_size,
                              "width": text.width, "heads": text.heads, "layers": text.layers, **_tower_extras(text)}
        if architecture.text_pool_token is not None:
            config["text_cfg"].update(pool_type="eos", eos_id=architecture.text_pool_token)
    return config


def _tower_extras(tower: Tower) -> dict:
    extras = {}
    if tower.mlp_width != int(tower.width * MLP_RATIO):
        extras["mlp_ratio"] = mlp_ratio(tower.width, tower.mlp_width)
    if tower.layer_norm_eps != LAYER_NORM_EPS:
        extras["norm_kwargs"] = {"eps": tower.layer_norm_eps}
    return extras


def mlp_ratio(width: int, mlp_width: int) -> float:
    """The shortest decimal r with int(width * r) == mlp_width, which open_clip turns back into the MLP width
    (ViT-bigG-14: 1664 wide, MLP 8192: 4.9231)."""
    for digits in range(1, 18):
        ratio = round(mlp_width / width, digits)
        if int(width * ratio) == mlp_width:
            return ratio
    raise ArchitectureError(f"no mlp_ratio gives an MLP width of {mlp_width} for width {width}")


def preprocessing(preprocess_cfg: Mapping) -> Preprocessing:
    """The image preprocessing an open_clip config asks for (PreprocessCfg's defaults for what it leaves out)."""
    default = Preprocessing()
    mean, std = preprocess_cfg.get("mean", default.mean), preprocess_cfg.get("std", default.std)
    for name, value in (("mean", mean), ("std", std)):
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(
                isinstance(x, Real) and not isinstance(x, bool) for x in value)):
            raise ArchitectureError(f"preprocess_cfg.{name} is {value!r}, expected three numbers")
    interpolation = preprocess_cfg.get("interpolation", default.interpolation)
    resize_mode = preprocess_cfg.get("resize_mode", default.resize_mode)
    for name, value in (("interpolation", interpolation), ("resize_mode", resize_mode)):
        if not isinstance(value, str):
            raise ArchitectureError(f"preprocess_cfg.{name} is {value!r}, expected a name")
    return Preprocessing(tuple(mean), tuple(std), interpolation, resize_mode)


def preprocess_config(preprocessing: Preprocessing, image_resolution: int) -> dict:
    """open_clip_config.json's preprocess_cfg for this preprocessing."""
    return {"mean": list(preprocessing.mean), "std": list(preprocessing.std),
            "interpolation": preprocessing.interpolation, "resize_mode": preprocessing.resize_mode,
            "size": image_resolution}


def config_file(architecture: Architecture, preprocessing: Preprocessing) -> dict:
    """The whole open_clip_config.json of a folder that `local-dir:` loads."""
    images = {} if architecture.vision is None else {
        "preprocess_cfg": preprocess_config(preprocessing, architecture.image_resolution)}
    return {"model_cfg": model_config(architecture), **images}
