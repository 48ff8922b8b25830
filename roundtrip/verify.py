"""The check of a conversion: the source format's own model code and the target format's, each holding the
converted weights, must compute the same thing, layer by layer, on the same probe tokens and images.

What is compared is everything a consumer of either tower reads (`references.output_names`): every block's
output, the final LayerNorm, the pooled and projected embeddings, and the logits. A diffusion model reads a
penultimate layer, so logits that agree are not enough.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from roundtrip import mapping
from roundtrip.architecture import Architecture
from roundtrip.errors import VerificationError
from roundtrip.facts import OPENAI_MEAN, OPENAI_STD, TOLERANCE
from roundtrip.references import Outputs, Reference, in_float32

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


def probe_tokens(architecture: Architecture) -> torch.Tensor | None:
    """`clip.tokenize(list(PROBE_TEXTS), context_length, truncate=True)` for OpenAI's vocabulary; for a
    vocabulary of another size, random ids in the same places. Either way the start and end-of-text
    tokens are the two largest ids, as in OpenAI's vocabulary, and padding is 0. None without a text tower."""
    import torch

    if architecture.text is None:
        return None
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


def probe_images(architecture: Architecture) -> torch.Tensor | None:
    """Random images at the model's resolution, normalised as clip's transform does; None without a vision
    tower."""
    import torch

    if architecture.vision is None:
        return None
    size = architecture.image_resolution
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(PROBE_IMAGES, 3, size, size, generator=generator)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


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

    weights = {key: in_float32(as_torch(tensor)) for key, tensor in weights.items()}  # one tensor at a time
    model = side.reference.build(mapping.convert(weights, layout, side.reference.layout), side.config, architecture)
    return side.reference.run(model, images, tokens, architecture)


def frameworks(*sides: Side) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for side in sides for name in side.reference.frameworks))


@dataclass(frozen=True)
class Agreement:
    """How far apart two models' outputs are: each output's largest |difference|, in the order computed."""

    differences: dict[str, float]

    @property
    def logits(self) -> float | None:
        """None for a tower alone, which has no logits."""
        return self.differences.get("logits")

    @property
    def largest(self) -> tuple[str, float]:
        """The output furthest apart, and by how much (NaN counts as furthest)."""
        return max(self.differences.items(), key=lambda item: math.inf if math.isnan(item[1]) else item[1])

    def scope(self) -> str:
        """What was compared, for people: "every layer's output, the pooled output, ... and the logits"."""
        kinds = ["every layer's output"]
        kinds += ["the pooled output"] if any(name.endswith(".pooled") for name in self.differences) else []
        kinds += ["the projected embedding"] if any(name.endswith(".projected") for name in self.differences) else []
        kinds += ["the logits"] if self.logits is not None else []
        return ", ".join(kinds[:-1]) + " and " + kinds[-1]

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
    weights = {key: in_float32(as_torch(tensor)) for key, tensor in weights.items()}  # one tensor at a time
    # The side that loads slowly (transformers' from_pretrained) is built as soon as its framework is imported,
    # beside the other side's forward pass.
    beside, first = (source, target) if source.reference.loads_slowly else (target, source)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as loader:
        model = loader.submit(_once_imported, imports, beside.reference.build,
                              mapping.convert(weights, layout, beside.reference.layout), beside.config, architecture)
        first_outputs = reference_outputs(first, weights, layout, architecture, images, tokens)
        beside_outputs = beside.reference.run(model.result(), images, tokens, architecture)
    return agreement(first_outputs, beside_outputs)


def first_blocks_agreement(whole: Mapping, cut: Mapping, layout: str, sides: tuple[Side, Side],
                           whole_architecture: Architecture, cut_architecture: Architecture) -> Agreement:
    """How far apart a model cut after its first blocks (`cut`, of `cut_architecture`: Stable Diffusion 2.x's
    text encoder as diffusers keeps it) and the whole model it was cut from (`whole`) are, each run by its side
    of `sides` (one format's code, built for each), on what the cut one keeps of the whole: the input to the
    first block and each block's output (named "... of the whole model"). With `check` of the cut model against
    the target, the target's blocks are then the whole model's, whatever the cut did."""
    images, tokens = probe_images(cut_architecture), probe_tokens(cut_architecture)
    of_whole = reference_outputs(sides[0], whole, layout, whole_architecture, images, tokens)
    of_cut = reference_outputs(sides[1], cut, layout, cut_architecture, images, tokens)
    kept = [name for name in of_cut if name.rpartition(".")[0].endswith(".layers") or name.endswith(".embeddings")]
    return Agreement({f"{name} of the whole model": (of_cut[name] - of_whole[name]).abs().max().item()
                      for name in kept})


def _once_imported(imports: Future, function, *arguments):
    imports.result()
    return function(*arguments)


def require_agreement(dest, found: Agreement) -> None:
    if found.diverges_at(TOLERANCE) is not None:  # also at NaN
        raise VerificationError(dest, f"the converted model's outputs are not the source model's: "
                                      f"{found.describe(TOLERANCE)}; nothing written")
