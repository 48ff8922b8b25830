"""The check of a conversion: the source format's own model code and the target format's, each holding the
converted weights, must compute the same thing, layer by layer.

Each format's reference is its own code: `clip.model.CLIP` for OpenAI, transformers' `CLIPModel` for Hugging
Face, open_clip's `CLIP` for open_clip, each built from the config its side declares (none for OpenAI). All
run in float32 on the same probe tokens and images. What is compared is everything a consumer of either tower
reads (`output_names`): the input to the first block, every block's output, the text tower's final LayerNorm
over every token, each tower's pooled output and projected embedding, and the logits. A diffusion model reads
a penultimate layer, so logits that agree are not enough. OpenAI's and open_clip's models are built directly,
not with `clip.load`/`build_model`, which first halve the weights to fp16 and would alone move logits by ~5e-3
for an fp32 checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING

from roundtrip import mapping
from roundtrip.architecture import Architecture
from roundtrip.errors import VerificationError
from roundtrip.facts import OPENAI_MEAN, OPENAI_STD, TOLERANCE
from roundtrip.openai_config import clip_kwargs
from roundtrip.schema import TOWER_MODULES, TOWERS

if TYPE_CHECKING:
    import torch

# The texts the text towers are probed with, and the ids clip.tokenize (and open_clip.tokenize, the same BPE)
# gives them between its start and end-of-text tokens (a test compares). The empty text puts end-of-text,
# where the models pool, at position 1; the caption, repeated, fills any context up to 252 (truncated as with
# truncate=True), so that every position embedding takes part and the models pool at the last position.
# Spelled out: a check needs no tokenizer. (Two rows: each costs a text tower pass over the whole context.)
_CAPTION = (320, 1125, 539, 320, 2368)
PROBE_TEXTS = {
    "": (),
    " ".join(["a photo of a cat"] * 50): _CAPTION * 50,
}
OPENAI_VOCAB_SIZE = 49408
PROBE_IMAGES = 1  # one forward pass per tower on a small batch is enough


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


def probe_tokens(architecture: Architecture) -> torch.Tensor:
    """`clip.tokenize(list(PROBE_TEXTS), context_length, truncate=True)` for OpenAI's vocabulary; for a
    vocabulary of another size, random ids in the same places. Either way the start and end-of-text
    tokens are the two largest ids, as in OpenAI's vocabulary, and padding is 0."""
    import torch

    generator = torch.Generator().manual_seed(0)
    start, end = architecture.vocab_size - 2, architecture.vocab_size - 1
    tokens = torch.zeros(len(PROBE_TEXTS), architecture.context_length, dtype=torch.long)
    for row, body in enumerate(PROBE_TEXTS.values()):
        if architecture.vocab_size != OPENAI_VOCAB_SIZE:
            body = torch.randint(1, start, (len(body),), generator=generator).tolist()
        ids = [start, *body, end][: architecture.context_length]
        ids[-1] = end  # a truncated text still ends with end-of-text, as with truncate=True
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens


def probe_images(architecture: Architecture) -> torch.Tensor:
    import torch

    size = architecture.image_resolution
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(PROBE_IMAGES, 3, size, size, generator=generator)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _float32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: _in_float32(tensor) for key, tensor in state_dict.items()}


def _in_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def openai_model(openai_weights: Mapping, _config, architecture: Architecture):
    """OpenAI's CLIP holding `openai_weights` (float32)."""
    import torch

    with torch.device("meta"):
        model = openai_code("model").CLIP(**clip_kwargs(architecture))  # no random init, no memory for weights
    model.load_state_dict(openai_weights, strict=True, assign=True)
    # The text tower's causal mask is a plain attribute made in __init__, so it was made on the meta device
    # too: made again by OpenAI's own code, where that code puts it (the vision tower has none).
    mask = model.build_attention_mask()
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    return _nothing_left_on_meta(model).eval()


def openai_outputs(openai_weights: Mapping, architecture: Architecture, images, tokens) -> Outputs:
    """What OpenAI's CLIP computes on `openai_weights` (`output_names`)."""
    return _openai_run(openai_model(_float32(openai_weights), None, architecture), images, tokens, architecture)


def _openai_run(model, images, tokens, architecture: Architecture) -> Outputs:
    import torch

    methods = {"encode_text": "text.projected", "encode_image": "vision.projected"}
    with _recording(model, "openai", architecture, sequence_first=True) as seen, \
            _returned(model, methods) as returned, torch.no_grad():
        logits = model(images, tokens)[0]
    vision_pooled = seen.pop("vision.final_layer_norm")  # its ln_post is over the class token alone
    text = seen["text.final_layer_norm"]
    text_pooled = text[torch.arange(text.shape[0]), tokens.argmax(dim=-1)]  # as clip/model.py's encode_text pools
    return _in_order(architecture, {**seen, **returned, "logits": logits, "text.pooled": text_pooled,
                                    "vision.pooled": vision_pooled})


def open_clip_model(weights: Mapping, model_cfg: Mapping, architecture: Architecture):
    """open_clip's CLIP built from `model_cfg`, holding `weights` (float32)."""
    import torch
    from open_clip.model import CLIP
    from open_clip.transformer import TextTransformer

    # open_clip's factory takes custom_text out before building, too
    config = {key: value for key, value in model_cfg.items() if key != "custom_text"}
    with torch.device("meta"):
        model = CLIP(**config)
    model.load_state_dict(weights, strict=True, assign=True)
    # A non-persistent buffer made in __init__, on the meta device: made again by open_clip's own code, where
    # that code makes one (a text tower without the causal mask has None).
    if model.attn_mask is not None:
        model.attn_mask = TextTransformer.build_causal_mask(SimpleNamespace(num_pos=architecture.context_length))
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

    methods = {"encode_text": "text.projected", "encode_image": "vision.projected"}
    with _recording(model, "openai", architecture, sequence_first=False) as seen, \
            _returned(model, methods) as returned, torch.no_grad():
        logits = model.get_logits(images, tokens)[0]
        # Pooled by open_clip's own functions, as its encode_text and VisionTransformer pool.
        text_pooled = text_global_pool(seen["text.final_layer_norm"], tokens, model.text_pool_type,
                                       eos_token_id=getattr(model, "text_eos_id", None))
        vision_pooled, _ = model.visual._global_pool(seen.pop("vision.final_layer_norm"))
    return _in_order(architecture, {**seen, **returned, "logits": logits, "text.pooled": text_pooled,
                                    "vision.pooled": vision_pooled})


def hf_model(hf_weights: Mapping, hf_config: dict, _architecture=None):
    """transformers' CLIPModel holding `hf_weights`, loaded as from_pretrained loads a folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # one model load is not a long step
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its load report (in terminal colours) would say what the check below says
    try:
        model, info = CLIPModel.from_pretrained(  # takes the given tensors as they are: views stay views
            None,
            config=CLIPConfig.from_dict(hf_config),
            state_dict=_float32(hf_weights),
            dtype=torch.float32,
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

    with _recording(model, "hf", architecture, sequence_first=False) as seen, torch.no_grad():
        logits = model(input_ids=tokens, pixel_values=images).logits_per_image
    seen.pop("vision.final_layer_norm")  # the pooled output, read as the projection's input
    return _in_order(architecture, {**seen, "logits": logits})


# ---- what each reference computes, named alike --------------------------------------------------------------

Outputs = dict  # output name -> tensor (batch first), in the order of `output_names`


def output_names(architecture: Architecture) -> list[str]:
    """What the check compares, in the order the models compute it: per tower, the input to its first block
    (the vision tower's after its first LayerNorm), each block's output, the text tower's final LayerNorm over
    every token, the pooled output (the vision tower's after its final LayerNorm) and the projected embedding;
    then the logits."""
    names = []
    for tower in TOWERS:
        names += [f"{tower}.embeddings", *(f"{tower}.layers.{index}" for index in
                                           range(getattr(architecture, tower).layers))]
        names += ["text.final_layer_norm"] if tower == "text" else []
        names += [f"{tower}.pooled", f"{tower}.projected"]
    return [*names, "logits"]


def _in_order(architecture: Architecture, outputs: Outputs) -> Outputs:
    names = output_names(architecture)
    if set(outputs) != set(names):  # a reference that reads fewer outputs would compare less than it says
        raise RuntimeError(f"the reference gave {sorted(outputs)}, expected {names}")
    return {name: outputs[name] for name in names}


@contextlib.contextmanager
def _recording(model, layout: str, architecture: Architecture, sequence_first: bool) -> Iterator[Outputs]:
    """While `model` runs: each tower's input to its first block, every block's output, its final LayerNorm's
    output and, where the projection is a layer, its input (the pooled output) and output, read off the modules
    `layout` names (`schema.TOWER_MODULES`). Batch first, whatever order the blocks take (`sequence_first`:
    OpenAI's take the sequence first)."""
    modules = dict(model.named_modules())
    seen: Outputs = {}

    def keep(name: str, in_block_order: bool, tensor) -> None:
        tensor = tensor[0] if isinstance(tensor, tuple) else tensor
        seen[name] = tensor.transpose(0, 1) if in_block_order and sequence_first else tensor

    def before(name: str, in_block_order: bool, module, args, kwargs) -> None:
        keep(name, in_block_order, args[0] if args else kwargs["hidden_states"])

    def after(name: str, in_block_order: bool, module, args, result) -> None:
        keep(name, in_block_order, result)

    hooks = []
    for tower in TOWERS:
        parts = TOWER_MODULES[layout][tower]
        blocks = [modules[parts.block.format(i=index)] for index in range(getattr(architecture, tower).layers)]
        hooks.append(blocks[0].register_forward_pre_hook(functools.partial(before, f"{tower}.embeddings", True),
                                                         with_kwargs=True))
        hooks += [block.register_forward_hook(functools.partial(after, f"{tower}.layers.{index}", True))
                  for index, block in enumerate(blocks)]
        hooks.append(modules[parts.final_norm].register_forward_hook(
            functools.partial(after, f"{tower}.final_layer_norm", False)))
        if parts.projection is not None:
            projection = modules[parts.projection]
            hooks.append(projection.register_forward_pre_hook(functools.partial(before, f"{tower}.pooled", False),
                                                              with_kwargs=True))
            hooks.append(projection.register_forward_hook(functools.partial(after, f"{tower}.projected", False)))
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


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


@dataclass(frozen=True)
class Side:
    """One side of the check: a reference and the config it is built from (its format's own config)."""

    reference: Reference
    config: object = None


@cache
def start_imports(frameworks: tuple[str, ...]) -> Future:
    """Import `frameworks` in a thread of their own, from now on (once).

    Seconds of Python that need nothing from the checkpoint: started before the weights are cast and
    written, they run meanwhile, and later beside a forward pass (arithmetic that leaves the interpreter
    free). Whoever imports a module this thread is importing waits for it, not twice.
    """
    importer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import")
    imports = importer.submit(lambda: [importlib.import_module(name) for name in frameworks])
    importer.shutdown(wait=False)  # the thread ends once the imports are done
    return imports


def reference_outputs(side: Side, weights: Mapping, layout: str, architecture: Architecture, images,
                      tokens) -> Outputs:
    """What one side's model computes (`output_names`), built from `weights` (keys of `layout`, any dtypes) and
    its config."""
    from roundtrip.strided import as_torch

    weights = {key: _in_float32(as_torch(tensor)) for key, tensor in weights.items()}  # one tensor at a time
    model = side.reference.build(mapping.convert(weights, layout, side.reference.layout), side.config, architecture)
    return side.reference.run(model, images, tokens, architecture)


def frameworks(*sides: Side) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for side in sides for name in side.reference.frameworks))


@dataclass(frozen=True)
class Agreement:
    """How far apart two models' outputs are: each output's largest |difference|, in the order computed."""

    differences: dict[str, float]

    @property
    def logits(self) -> float:
        return self.differences["logits"]

    @property
    def largest(self) -> tuple[str, float]:
        """The output furthest apart, and by how much (NaN counts as furthest)."""
        return max(self.differences.items(), key=lambda item: math.inf if math.isnan(item[1]) else item[1])

    def diverges_at(self, tolerance: float) -> str | None:
        """The first output further apart than `tolerance` (NaN is): where the two models part; None if none."""
        return next((name for name, difference in self.differences.items() if not difference <= tolerance), None)

    def describe(self, tolerance: float) -> str:
        """Where two models part, for people: "text.layers.1 differs by 0.31 (tolerance 0.001)"; with the
        largest difference where that is elsewhere."""
        where = self.diverges_at(tolerance)
        verb = "differ" if where == "logits" else "differs"
        largest, by = self.largest
        elsewhere = f"; the largest difference is {by:.3g}, at {largest}" if largest != where else ""
        return f"{where} {verb} by {self.differences[where]:.3g} (tolerance {tolerance:g}){elsewhere}"


def agreement(first: Outputs, second: Outputs) -> Agreement:
    """How far apart two models' outputs (`output_names`, the same on both sides) are."""
    return Agreement({name: (first[name] - second[name]).abs().max().item() for name in first})


def check(weights: Mapping, layout: str, source: Side, target: Side, architecture: Architecture) -> Agreement:
    """How far apart the two sides' models are, run on the same `weights` (keys of `layout`, in the dtypes they
    are written in), which both share in memory: each side's tensors are views of one float32 copy (q/k/v are
    slices of in_proj, the projections transposed views)."""
    from roundtrip.strided import as_torch

    imports = start_imports(frameworks(source, target))
    images, tokens = probe_images(architecture), probe_tokens(architecture)  # waits for torch
    weights = {key: _in_float32(as_torch(tensor)) for key, tensor in weights.items()}  # one tensor at a time
    # The side that loads slowly (transformers' from_pretrained) is built as soon as its framework is imported,
    # beside the other side's forward pass.
    beside, first = (source, target) if source.reference.loads_slowly else (target, source)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as loader:
        model = loader.submit(_once_imported, imports, beside.reference.build,
                              mapping.convert(weights, layout, beside.reference.layout), beside.config, architecture)
        first_outputs = reference_outputs(first, weights, layout, architecture, images, tokens)
        beside_outputs = beside.reference.run(model.result(), images, tokens, architecture)
    return agreement(first_outputs, beside_outputs)


def _once_imported(imports: Future, function, *arguments):
    imports.result()
    return function(*arguments)


def require_agreement(dest, found: Agreement) -> None:
    if found.diverges_at(TOLERANCE) is not None:  # also at NaN
        raise VerificationError(dest, f"the converted model's outputs are not the source model's: "
                                      f"{found.describe(TOLERANCE)}; nothing written")
