"""Every hypothesis strategy of the suite, in one place."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from roundtrip import hf_config
from roundtrip.architecture import Architecture
from roundtrip.openai_config import HEAD_WIDTH, from_clip_kwargs
from roundtrip.dtypes import DTYPES

PATCH_SIZES = (8, 14, 16, 32)
OPENAI_VOCAB_SIZE = 49408


@st.composite
def architectures(draw, vocab_sizes=st.sampled_from([64, 100, 1000, OPENAI_VOCAB_SIZE])) -> Architecture:
    """Small ViT CLIP architectures of OpenAI's family: widths in multiples of 64, 1-3 layers per tower."""
    patch = draw(st.sampled_from(PATCH_SIZES))
    text_width = HEAD_WIDTH * draw(st.integers(1, 3))
    return from_clip_kwargs(
        embed_dim=draw(st.sampled_from([32, 64, 96, 128])),
        image_resolution=patch * draw(st.integers(1, 4)),
        vision_layers=draw(st.integers(1, 3)),
        vision_width=HEAD_WIDTH * draw(st.integers(1, 3)),
        vision_patch_size=patch,
        context_length=draw(st.integers(8, 77)),
        vocab_size=draw(vocab_sizes),
        transformer_width=text_width,
        transformer_heads=text_width // HEAD_WIDTH,
        transformer_layers=draw(st.integers(1, 3)),
    )


# How the weights are stored: as OpenAI ships them (fp16 linear/conv/attention and
# projections, fp32 elsewhere) or all float32.
openai_dtypes = st.booleans()
seeds = st.integers(0, 2**16)

# Text for tokenizer properties: any character assigned in Python's Unicode database, and words with odd
# spacing and case. Characters unassigned there (category Cn) are left out: the `regex` module behind
# clip.tokenize carries newer Unicode tables than the tokenizers library, so the two split text with
# recently assigned characters differently (see test_tokenizer_parity.DIVERGENT_RAW_TEXT).
_words = st.lists(st.sampled_from(["a", "Photo", "OF", "the", "cat's", "2024", "naïve", "😀", "&", "...", "x" * 40]))
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=200),
    st.builds(lambda words, gap: gap.join(words), _words, st.sampled_from([" ", "  ", "\t", "\n", " \u00a0 "])),
)


@st.composite
def hf_configs(draw) -> tuple[Architecture, dict]:
    """An architecture and config.json as folders in the wild have it: this tool's full config for it, with
    any fields (or a whole tower) left out, and towers sometimes under the legacy `*_config_dict` keys."""
    architecture = draw(architectures())
    config = hf_config.config(architecture)
    if draw(st.booleans()):
        del config["projection_dim"]
    for tower in ("text_config", "vision_config"):
        fields = config.pop(tower)
        kept = {key: value for key, value in fields.items() if draw(st.booleans())}
        where = draw(st.sampled_from([tower, f"{tower}_dict", None]))
        if where:
            config[where] = kept
    return architecture, config

# What an output file is written in: chunks of any size, including empty ones and ones larger than a block.
byte_chunks = st.lists(st.one_of(
    st.binary(max_size=100),
    st.builds(lambda size, seed: random.Random(seed).randbytes(size), st.integers(0, 40_000), seeds),
), max_size=12)


@st.composite
def _cast_case(draw):
    """A tensor as the mapping hands it to a writer (any rank up to 4, sometimes a transposed view) and the
    DType to write it in."""
    import torch

    shape = draw(st.lists(st.integers(0, 9), max_size=4))
    source = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64]))
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(draw(seeds))).to(source)
    if len(shape) == 2 and draw(st.booleans()):
        tensor = tensor.t()  # OpenAI's projections, as HF stores them
    target = source if source == torch.int64 else draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return tensor, DTYPES[str(target).removeprefix("torch.")]


cast_cases = _cast_case()

# What a state dict file declares: key -> (dtype name, shape), any dtype torch.save writes, shapes of rank 0-3.
tensor_specs = st.dictionaries(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12),
    st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 5), max_size=3).map(tuple)),
    min_size=1, max_size=8,
)


@st.composite
def open_clip_model_configs(draw) -> dict:
    """Small open_clip model configs of the kinds released: gelu or QuickGELU, vision heads of widths other
    than 64, text heads chosen apart from them, MLP ratios that are not whole (bigG's 4.9231), and sometimes
    another LayerNorm eps."""
    patch = draw(st.sampled_from(PATCH_SIZES))
    vision_width = draw(st.integers(1, 3)) * draw(st.sampled_from([32, 48, 64, 80]))
    heads = draw(st.integers(1, 3))
    text_width = heads * draw(st.sampled_from([16, 32, 64]))

    def tower_extras() -> dict:
        extras = {}
        ratio = draw(st.sampled_from([4.0, 4.9231, 3.5, 2.0]))
        if ratio != 4.0:
            extras["mlp_ratio"] = ratio
        if draw(st.booleans()):
            extras["norm_kwargs"] = {"eps": draw(st.sampled_from([1e-6, 1e-5, 1e-3]))}
        return extras

    vision = {"image_size": patch * draw(st.integers(1, 4)), "layers": draw(st.integers(1, 2)),
              "width": vision_width, "head_width": vision_width // draw(st.sampled_from([1, 2])),  # widths are even
              "patch_size": patch, **tower_extras()}
    text = {"context_length": draw(st.integers(8, 77)),
            "vocab_size": draw(st.sampled_from([64, 100, OPENAI_VOCAB_SIZE])), "width": text_width, "heads": heads, "layers": draw(st.integers(1, 2)), **tower_extras()}
    quick = {"quick_gelu": True} if draw(st.booleans()) else {}
    return {"embed_dim": draw(st.sampled_from([32, 64, 96])), **quick, "vision_cfg": vision, "text_cfg": text}
