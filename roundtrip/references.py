"""Each format's own model code as a reference for the check: built from that format's config and the weights,
run on probe tokens and images, and read out layer by layer under one set of names (`output_names`).

The references are `clip.model.CLIP` for OpenAI, transformers' `CLIPModel` for Hugging Face and open_clip's
`CLIP` for open_clip, all in float32. OpenAI's and open_clip's models are built directly on the meta device, not
with `clip.load`/`build_model`, which first halve the weights to fp16 and would alone move logits by ~5e-3 for
an fp32 checkpoint; the buffers their `__init__` makes are made again by their own code. What each reads out:
the input to each tower's first block, every block's output (off the modules `schema.TOWER_MODULES` names), the
text tower's final LayerNorm over every token, each tower's pooled output and projected embedding, and the
logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING

from roundtrip.architecture import Architecture, ResNet, Tower
from roundtrip.mapping import towers_of
from roundtrip.openai_config import clip_kwargs
from roundtrip.schema import (
    HF_TOWER_PREFIXES,
    PLACEHOLDER_VALUES,
    PROJECTIONS,
    RESNET_MODULES,
    STAGE_FIELD,
    TOWER_MODULES,
    TOWERS,
    TowerModules,
)

if TYPE_CHECKING:
    import torch


@cache
def openai_code(name: str) -> ModuleType:
    """One module of OpenAI's `clip` package ("model"), loaded from its file.

    Importing the package itself runs clip/__init__, which imports torchvision and
    pkg_resources for clip.load alone: about 2 s and 200 MB that conversion never uses.
    """
    package = importlib.util.find_spec("clip")  # finds, does not import
    if package is None or not package.submodule_search_locations:
        raise ImportError("OpenAI's CLIP code is missing: pip install clip-anytorch")
    qualified = f"roundtrip._openai_clip.{name}"
    spec = importlib.util.spec_from_file_location(
        qualified, Path(package.submodule_search_locations[0]) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # so that inspect (and torch.jit.script) can find its source
    spec.loader.exec_module(module)
    return module


def _float32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: in_float32(tensor) for key, tensor in state_dict.items()}


def in_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def openai_model(openai_weights: Mapping, _config, architecture: Architecture):
    """OpenAI's CLIP holding `openai_weights` (float32), of one tower or both."""
    import torch

    with torch.device("meta"):  # no random init, no memory for weights
        model = openai_code("model").CLIP(**clip_kwargs(with_stand_in(architecture)))
    _load_towers(model, openai_weights, architecture)
    # The text tower's causal mask is a plain attribute made in __init__, so it was made on the meta device
    # too: made again by OpenAI's own code, where that code puts it (the vision tower has none).
    mask = model.build_attention_mask()
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    if architecture.text is not None and not architecture.text.projected:
        # OpenAI's encode_text always projects: the identity stands in, so that it returns the pooled output.
        model.text_projection = torch.nn.Parameter(torch.eye(architecture.text.width))
    if architecture.vision is not None and not architecture.vision.projected:
        model.visual.proj = None  # its VisionTransformer then returns the pooled output
    return _nothing_left_on_meta(model).eval()


# The smallest tower OpenAI's and open_clip's CLIP can build, standing in for the one a model of a single tower
# lacks (their CLIP builds both); made empty and never run.
_STAND_IN = Tower(width=64, layers=1, heads=1, mlp_width=256, activation="quick_gelu", layer_norm_eps=1e-5,
                  projected=True)
_STAND_IN_NUMBERS = {"vision": {"image_resolution": 16, "patch_size": 16}, "text": {"context_length": 2,
                                                                                     "vocab_size": 3}}


def with_stand_in(architecture: Architecture) -> Architecture:
    """`architecture` with a stand-in for a tower it lacks (and projections where it has none), so that a CLIP
    of both towers can be built around the tower it has."""
    if architecture.towers == TOWERS:
        return architecture
    (absent,) = (tower for tower in TOWERS if tower not in architecture.towers)
    present = getattr(architecture, architecture.towers[0])
    embed_dim = architecture.embed_dim or present.width
    return dataclasses.replace(architecture, embed_dim=embed_dim, **{absent: _STAND_IN},
                               **_STAND_IN_NUMBERS[absent])


def _load_towers(model, weights: Mapping, architecture: Architecture) -> None:
    """Load `weights` (of the towers of `architecture`, in OpenAI's key layout) into `model`, a CLIP of both
    towers built on the meta device. What the weights may lack (a stand-in tower, an absent projection or
    logit_scale, in a model of one tower) is made empty, never run; any other weight missing, or one the model
    has no place for, is refused."""
    import torch

    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    absent = [key for key in missing if not _may_lack(key, architecture)]
    if unexpected or absent:
        raise ValueError(f"weights the model has no place for: {sorted(unexpected)}; missing: {sorted(absent)}")
    for key in missing:
        owner_name, _, attribute = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        placeholder = torch.empty_like(getattr(owner, attribute), device="cpu")
        if attribute in owner._parameters:
            owner._parameters[attribute] = torch.nn.Parameter(placeholder, requires_grad=False)
        else:
            owner._buffers[attribute] = placeholder


def _may_lack(key: str, architecture: Architecture) -> bool:
    """Whether a model of `architecture` may lack the weight `key` (OpenAI's layout): one of a tower it does not
    have, the projection of a tower without one, or what the towers share, when it has one tower."""
    if architecture.towers == TOWERS:
        return False
    held = towers_of([key], "openai")
    return not held or held[0] not in architecture.towers or (
        key == PROJECTIONS[held[0]][0] and not getattr(architecture, held[0]).projected)


def openai_outputs(openai_weights: Mapping, architecture: Architecture, images, tokens) -> Outputs:
    """What OpenAI's CLIP computes on `openai_weights` (`output_names`)."""
    return _openai_run(openai_model(_float32(openai_weights), None, architecture), images, tokens, architecture)


def _openai_run(model, images, tokens, architecture: Architecture) -> Outputs:
    import torch

    with _recording(model, _openai_modules(architecture), architecture, sequence_first=True) as seen, \
            _returned(model, _projecting_methods(architecture)) as returned, torch.no_grad():
        found = _run_towers(model, images, tokens, architecture, lambda: model(images, tokens)[0])
    if isinstance(architecture.vision, Tower):
        found["vision.pooled"] = seen.pop("vision.final_layer_norm")  # its ln_post is over the class token alone
    if architecture.text is not None:
        text = seen["text.final_layer_norm"]
        found["text.pooled"] = text[torch.arange(text.shape[0]), tokens.argmax(dim=-1)]  # as its encode_text pools
    return _in_order(architecture, {**seen, **returned, **found})


def open_clip_model(weights: Mapping, model_cfg: Mapping, architecture: Architecture):
    """open_clip's CLIP built from `model_cfg`, holding `weights` (float32), of one tower or both."""
    import torch
    from open_clip.model import CLIP
    from open_clip.transformer import TextTransformer

    from roundtrip.open_clip_config import model_config

    # open_clip's factory takes custom_text out before building, too
    config = {key: value for key, value in model_cfg.items() if key != "custom_text"}
    # A config of one tower (clipconv writes one for a tower alone) gets a stand-in for the other; a config of
    # both is taken as it is.
    stand_in = model_config(with_stand_in(architecture))
    config = {**config, **{key: stand_in[key] for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config}}
    with torch.device("meta"):
        model = CLIP(**config)
    _load_towers(model, weights, architecture)
    # A non-persistent buffer made in __init__, on the meta device: made again by open_clip's own code, where
    # that code makes one (a text tower without the causal mask has None).
    if model.attn_mask is not None:
        model.attn_mask = TextTransformer.build_causal_mask(SimpleNamespace(num_pos=model.context_length))
    if architecture.text is not None and not architecture.text.projected:
        model.text_projection = None  # its encode_text then returns the pooled output
    if architecture.vision is not None and not architecture.vision.projected:
        model.visual.proj = None
    return _nothing_left_on_meta(model).eval()


def _nothing_left_on_meta(model):
    """`model`, once every tensor it holds (parameters, buffers, plain attributes) has real values: one left on the
    meta device is something built in __init__ that the fast path above did not make again."""
    import torch

    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            tensors = value.items() if attribute in ("_parameters", "_buffers") else [(attribute, value)]
            for key, tensor in tensors:
                if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                    raise RuntimeError(f"{name or 'model'}.{key} was left on the meta device")
    return model


def _open_clip_run(model, images, tokens, architecture: Architecture) -> Outputs:
    import torch
    from open_clip.transformer import text_global_pool

    with _recording(model, _openai_modules(architecture), architecture, sequence_first=False) as seen, \
            _returned(model, _projecting_methods(architecture)) as returned, torch.no_grad():
        found = _run_towers(model, images, tokens, architecture, lambda: model.get_logits(images, tokens)[0])
        # Pooled by open_clip's own functions, as its encode_text and VisionTransformer pool.
        if architecture.text is not None:
            found["text.pooled"] = text_global_pool(seen["text.final_layer_norm"], tokens, model.text_pool_type,
                                                    eos_token_id=model.text_eos_id)
        if isinstance(architecture.vision, Tower):
            found["vision.pooled"], _ = model.visual._global_pool(seen.pop("vision.final_layer_norm"))
    return _in_order(architecture, {**seen, **returned, **found})


def _openai_modules(architecture: Architecture) -> dict[str, TowerModules]:
    """Where the towers sit in OpenAI's and open_clip's CLIP (the same module paths), by the vision tower's kind."""
    resnet = isinstance(architecture.vision, ResNet)
    return {**TOWER_MODULES["openai"], **({"vision": RESNET_MODULES} if resnet else {})}


def _projecting_methods(architecture: Architecture) -> dict[str, str]:
    """OpenAI's and open_clip's methods that return a tower's projected embedding, for the towers that have one."""
    methods = {"text": "encode_text", "vision": "encode_image"}
    return {methods[tower]: f"{tower}.projected" for tower in architecture.towers
            if getattr(architecture, tower).projected}


def _run_towers(model, images, tokens, architecture: Architecture, logits: Callable) -> Outputs:
    """Run OpenAI's or open_clip's CLIP: to its logits with both towers, else the one tower there is."""
    if architecture.towers == TOWERS:
        return {"logits": logits()}
    if architecture.text is not None:
        model.encode_text(tokens)
    else:
        model.encode_image(images)
    return {}


def hf_model(hf_weights: Mapping, config: dict, architecture: Architecture):
    """The transformers class of `config` that holds `architecture` (`hf_config.config_class`: CLIPModel,
    MetaClip2Model, or a class of one tower), holding `hf_weights` (CLIPModel's key layout, which from_pretrained
    takes for a flat class too), loaded as from_pretrained loads a folder."""
    import torch
    import transformers
    from transformers.utils import logging

    from roundtrip.hf_config import config_class

    held = getattr(transformers, config_class(config, architecture))
    logging.disable_progress_bar()  # one model load is not a long step
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its load report (in terminal colours) would say what the check below says
    try:
        model, info = held.from_pretrained(  # takes the given tensors as they are: views stay views
            None, config=held.config_class.from_dict(config), state_dict=_float32(hf_weights), dtype=torch.float32,
            output_loading_info=True,
        )
    finally:
        logging.set_verbosity(verbosity)
    problems = {name: keys for name, keys in info.items() if keys and name != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ValueError(f"transformers did not load every weight: {problems or info['error_msgs']}")
    return model.eval()


def hf_run(model, images, tokens, architecture: Architecture) -> Outputs:
    import torch

    with _recording(model, _hf_modules(model, architecture), architecture, sequence_first=False) as seen, \
            torch.no_grad():
        if architecture.towers == TOWERS:
            found = {"logits": model(input_ids=tokens, pixel_values=images).logits_per_image}
        else:
            ran = model(input_ids=tokens) if architecture.text is not None else model(pixel_values=images)
            found = {f"{tower}.pooled": ran.pooler_output for tower in architecture.towers
                     if not getattr(architecture, tower).projected}
    if architecture.vision is not None:
        found["vision.pooled"] = seen.pop("vision.final_layer_norm")  # post_layernorm is over the class token
    return _in_order(architecture, {**seen, **found})


def _hf_modules(model, architecture: Architecture) -> dict[str, TowerModules]:
    """Where `model`'s towers sit: CLIPModel's module paths, without the tower's prefix in a flat class."""
    names = {name for name, _ in model.named_modules()}
    modules = {}
    for tower in architecture.towers:
        parts = TOWER_MODULES["hf"][tower]
        prefix = HF_TOWER_PREFIXES[tower]
        flat = not any(name.startswith(prefix) for name in names)
        modules[tower] = dataclasses.replace(parts, block=parts.block.removeprefix(prefix),
                                             final_norm=parts.final_norm.removeprefix(prefix)) if flat else parts
    return modules


# ---- what each reference computes, named alike --------------------------------------------------------------

Outputs = dict  # output name -> tensor (batch first), in the order of `output_names`


def output_names(architecture: Architecture) -> list[str]:
    """What the check compares, in the order the models compute it: per tower, the input to its first block
    (the vision tower's after its first LayerNorm, or a ResNet's stem), each block's output (a ResNet's counted
    across its stages), the text tower's final LayerNorm over every token, the pooled output (the vision
    tower's after its final LayerNorm; a ResNet pools and projects in one) and, where it has a projection, the
    projected embedding; then, with both towers, the logits."""
    names = []
    for tower in architecture.towers:
        parts = getattr(architecture, tower)
        blocks = sum(parts.layers) if isinstance(parts, ResNet) else parts.layers
        names += [f"{tower}.embeddings", *(f"{tower}.layers.{index}" for index in range(blocks))]
        names += ["text.final_layer_norm"] if tower == "text" else []
        names += [] if isinstance(parts, ResNet) else [f"{tower}.pooled"]
        names += [f"{tower}.projected"] if parts.projected else []
    return [*names, *(["logits"] if architecture.towers == TOWERS else [])]


def _in_order(architecture: Architecture, outputs: Outputs) -> Outputs:
    names = output_names(architecture)
    if set(outputs) != set(names):  # a reference that reads fewer outputs would compare less than it says
        raise RuntimeError(f"the reference gave {sorted(outputs)}, expected {names}")
    return {name: outputs[name] for name in names}


@contextlib.contextmanager
def _recording(model, modules: Mapping[str, TowerModules], architecture: Architecture,
               sequence_first: bool) -> Iterator[Outputs]:
    """While `model` runs: each tower's input to its first block, every block's output, its final LayerNorm's
    output and, where its projection is a layer, that layer's input (the pooled output) and output, read off
    the `modules` of each tower (`schema.TOWER_MODULES`). Batch first, whatever order the blocks take
    (`sequence_first`: OpenAI's take the sequence first)."""
    named = dict(model.named_modules())
    seen: Outputs = {}

    def keep(name: str, in_block_order: bool, tensor) -> None:
        tensor = tensor[0] if isinstance(tensor, tuple) else tensor
        seen[name] = tensor.transpose(0, 1) if in_block_order and sequence_first else tensor

    def before(name: str, in_block_order: bool, module, args, kwargs) -> None:
        keep(name, in_block_order, args[0] if args else kwargs["hidden_states"])

    def after(name: str, in_block_order: bool, module, args, result) -> None:
        keep(name, in_block_order, result)

    hooks = []
    for tower in architecture.towers:
        parts = modules[tower]
        blocks = [named[path] for path in _block_paths(parts, getattr(architecture, tower))]
        transformer = not isinstance(getattr(architecture, tower), ResNet)  # a ResNet's are images, batch first
        hooks.append(blocks[0].register_forward_pre_hook(
            functools.partial(before, f"{tower}.embeddings", transformer), with_kwargs=True))
        hooks += [block.register_forward_hook(functools.partial(after, f"{tower}.layers.{index}", transformer))
                  for index, block in enumerate(blocks)]
        if parts.final_norm is not None:
            hooks.append(named[parts.final_norm].register_forward_hook(
                functools.partial(after, f"{tower}.final_layer_norm", False)))
        if parts.projection is not None and getattr(architecture, tower).projected:
            projection = named[parts.projection]
            hooks.append(projection.register_forward_pre_hook(functools.partial(before, f"{tower}.pooled", False),
                                                              with_kwargs=True))
            hooks.append(projection.register_forward_hook(functools.partial(after, f"{tower}.projected", False)))
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def _block_paths(parts: TowerModules, tower: Tower | ResNet) -> list[str]:
    """The module paths of a tower's blocks, in the order they run (a ResNet's stage by stage)."""
    if isinstance(tower, ResNet):
        return [parts.block.format(**{STAGE_FIELD: stage, "i": index})
                for stage, count in zip(PLACEHOLDER_VALUES[STAGE_FIELD], tower.layers, strict=True)
                for index in range(count)]
    return [parts.block.format(i=index) for index in range(tower.layers)]


@contextlib.contextmanager
def _returned(model, methods: dict[str, str]) -> Iterator[Outputs]:
    """What `model`'s methods (name -> output name) return while it runs, unnormalised: a call asking for
    `normalize=True` (open_clip's) gets its result normalised as open_clip does it."""
    import torch

    seen: Outputs = {}

    def recorded(name: str, original: Callable, *args, normalize: bool = False, **kwargs):
        seen[name] = result = original(*args, **kwargs)
        return torch.nn.functional.normalize(result, dim=-1) if normalize else result

    for method, name in methods.items():
        setattr(model, method, functools.partial(recorded, name, getattr(model, method)))
    try:
        yield seen
    finally:
        for method in methods:
            delattr(model, method)  # the class's own method again


@dataclass(frozen=True)
class Reference:
    """A format's own model code, as the logit check builds and runs it."""

    name: str
    layout: str  # the key layout its weights come in
    frameworks: tuple[str, ...]  # what to import ahead, in a thread of its own
    build: Callable  # (weights, config, architecture) -> model
    run: Callable  # (model, images, tokens, architecture) -> Outputs
    loads_slowly: bool = False  # built beside the other side's forward pass, as soon as imported


# Building OpenAI's (or open_clip's) model on the meta device needs torch._dynamo; transformers imports it too.
OPENAI = Reference("OpenAI's model code", "openai", ("torch", "torch._dynamo"), openai_model, _openai_run)
HF = Reference("transformers", "hf", ("torch", "torch._dynamo", "transformers.models.clip.modeling_clip"), hf_model,
               hf_run, loads_slowly=True)
OPEN_CLIP = Reference("open_clip", "openai", ("torch", "torch._dynamo", "open_clip.model"), open_clip_model,
                      _open_clip_run)
