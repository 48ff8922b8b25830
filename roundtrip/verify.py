"""Logit check: OpenAI's model code and transformers must agree on the converted weights.

Both models run in float32. The OpenAI reference is built from `clip.model.CLIP`
directly, not with `build_model`/`clip.load`, which first halve the weights to
fp16 and would alone move logits by ~5e-3 for an fp32 checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Mapping

from roundtrip.config import Architecture
from roundtrip.errors import VerificationError
from roundtrip.facts import OPENAI_MEAN, OPENAI_STD, TOLERANCE
from roundtrip.schema import OPENAI_SHAPE_SOURCES

if TYPE_CHECKING:
    import torch

# The texts the text towers are probed with, and the ids clip.tokenize gives them between its start and
# end-of-text tokens (a test compares). The empty text puts end-of-text, where both models pool, at
# position 1, the caption further on. Spelled out, so that a check needs no tokenizer.
PROBE_TEXTS = {
    "a photo of a cat": (320, 1125, 539, 320, 2368),
    "": (),
}
OPENAI_VOCAB_SIZE = 49408
PROBE_IMAGES = 1  # one forward pass per tower on a small batch is enough


@lru_cache(maxsize=None)
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


def through_last_pooled(tokens: torch.Tensor) -> torch.Tensor:
    """The columns of `tokens` up to the last position a text tower pools at (end-of-text, the largest id).

    Attention in the text towers is causal: no position sees one after it, so the columns left out
    change no output, while the text towers' work shrinks to the length of the longest probe text.
    """
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


def openai_logits(openai_weights: Mapping, architecture: Architecture, images, tokens) -> torch.Tensor:
    """OpenAI's CLIP on `openai_weights`, for `tokens` of the full context or of fewer columns (then built
    for that many, with the first rows of the text positions: clip.model adds all rows it has)."""
    import torch

    columns = tokens.shape[-1]
    positions, axis = OPENAI_SHAPE_SOURCES["context_length"]
    weights = {**openai_weights, positions: openai_weights[positions].narrow(axis, 0, columns)}
    kwargs = dataclasses.replace(architecture, context_length=columns).clip_kwargs()
    with torch.device("meta"):
        model = openai_code("model").CLIP(**kwargs)  # no random init, no memory for weights
    model.load_state_dict(_float32(weights), strict=True, assign=True)  # use the tensors, don't copy
    # The causal mask is a plain attribute made in __init__, so it was made on the meta device too.
    mask = model.build_attention_mask()
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    with torch.no_grad():
        logits_per_image, _ = model.eval()(images, tokens)
    return logits_per_image


def hf_model(hf_weights: Mapping, hf_config: dict):
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


def hf_logits(model, images, tokens) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return model(input_ids=tokens, pixel_values=images).logits_per_image


@lru_cache(maxsize=1)
def start_imports() -> Future:
    """Import torch and transformers' CLIP model in a thread of their own, from now on (once).

    Seconds of Python that need nothing from the checkpoint: started before the weights are cast and
    written, they run meanwhile, and later beside OpenAI's forward pass (arithmetic that leaves the
    interpreter free). Whoever imports a module this thread is importing waits for it, not twice.
    """
    importer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import")
    imports = importer.submit(_import_frameworks)
    importer.shutdown(wait=False)  # the thread ends once the imports are done
    return imports


def _import_frameworks() -> None:
    importlib.import_module("torch")
    # Building OpenAI's model on the meta device needs torch._dynamo; transformers imports it as well.
    importlib.import_module("torch._dynamo")
    importlib.import_module("transformers.models.clip.modeling_clip")


def max_logit_difference(weights: Mapping, hf_config: dict, architecture: Architecture) -> float:
    """Logits of OpenAI's model and of transformers on the same `weights` (OpenAI's names, in the dtypes
    they are written in), which both share in memory.

    The HF tensors are views of the OpenAI ones (q/k/v are slices of in_proj, the projections
    transposed views), so the model is held in float32 once, not twice: weights already in float32
    are not copied at all.
    """
    from roundtrip import mapping
    from roundtrip.strided import as_torch

    imports = start_imports()
    images, tokens = probe_images(architecture), through_last_pooled(probe_tokens(architecture))  # waits for torch
    weights = {key: _in_float32(as_torch(tensor)) for key, tensor in weights.items()}  # one tensor at a time
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-model") as loader:
        # transformers' model is loaded as soon as transformers is imported, beside OpenAI's forward pass
        converted_model = loader.submit(_once_imported, imports, hf_model, mapping.to_hf(weights), hf_config)
        reference = openai_logits(weights, architecture, images, tokens)
        converted = hf_logits(converted_model.result(), images, tokens)
    return (reference - converted).abs().max().item()


def _once_imported(imports: Future, function, *arguments):
    imports.result()
    return function(*arguments)


def require_agreement(dest, difference: float) -> None:
    if not difference <= TOLERANCE:  # also catches NaN
        raise VerificationError(
            dest, f"logits differ from OpenAI's model by {difference:.3g} (tolerance {TOLERANCE:g}); nothing written"
        )
