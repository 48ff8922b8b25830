"""Facts several modules share: the file names of the formats, OpenAI's image normalisation, the logit
tolerance. The bottom of the package: it imports nothing from it, so readers, writers and the content
modules can all import it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A Hugging Face model folder, as transformers' save_pretrained and the hub lay it out.
HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_SHARD = "model-{index:05d}-of-{count:05d}.safetensors"
HF_SHARD_PATTERN = re.compile(r"model-\d{5,}-of-\d{5,}\.safetensors")
HF_PICKLE = "pytorch_model.bin"
HF_PICKLE_INDEX = "pytorch_model.bin.index.json"

# An open_clip model folder, as open_clip's push_to_hf_hub writes it and `local-dir:` loads it.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_SAFETENSORS = "open_clip_model.safetensors"
OPEN_CLIP_PICKLE = "open_clip_pytorch_model.bin"

# Beside the weights: what CLIPTokenizer, CLIPImageProcessor and the hub read.
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# A diffusers pipeline's folder of a text encoder -> its tokenizer's folder
DIFFUSERS_TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
MODEL_CARD = "README.md"
MERGES_HEADER = "#version: 0.2"  # first line of the hub's merges.txt; readers of the format skip it

TOKENIZER_FILES = frozenset({VOCAB_FILE, MERGES_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP})

# Every name a folder written by `clipconv to-hf` can hold: what --overwrite may replace.
HF_FOLDER_NAMES = frozenset({
    HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX, VOCAB_FILE, MERGES_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG,
    SPECIAL_TOKENS_MAP, PREPROCESSOR_CONFIG, MODEL_CARD,
})


def hf_folder_may_hold(name: str) -> bool:
    return name in HF_FOLDER_NAMES or HF_SHARD_PATTERN.fullmatch(name) is not None


# Every name a folder written by `clipconv to-open-clip` can hold.
OPEN_CLIP_FOLDER_NAMES = frozenset({OPEN_CLIP_CONFIG, OPEN_CLIP_SAFETENSORS})


def open_clip_folder_may_hold(name: str) -> bool:
    return name in OPEN_CLIP_FOLDER_NAMES


@dataclass(frozen=True)
class BPETable:
    """A byte-level BPE tokenizer's vocabulary and merges (in rank order): what a tokenizer file holds, and what
    OpenAI's clip package builds its tokenizer from."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]


# clip's transform normalises images with these, so probe images look like what the model sees.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Largest |difference| of logits the two frameworks may show on the same weights.
TOLERANCE = 1e-3
