"""The files besides weights and config that make a to-hf folder usable like openai/clip-vit-* from the hub.

Tokenizer files, `preprocessor_config.json` and the model card `README.md`,
each returned as {file name: text}; `writers.write_text_files` puts them on disk.
The tokenizer is OpenAI's own: the vocabulary and merges that
`clip.simple_tokenizer` builds from the BPE table shipped inside the `clip`
package. The image processor settings spell out `clip.clip._transform(n_px)`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from roundtrip.architecture import Architecture
from roundtrip.facts import (
    MERGES_FILE,
    MERGES_HEADER,
    MODEL_CARD,
    PREPROCESSOR_CONFIG,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_FILES,
    TOKENIZER_JSON,
    TOLERANCE,
    VOCAB_FILE,
    BPETable,
)
from roundtrip.preprocessing import Preprocessing

if TYPE_CHECKING:
    from roundtrip.verify import Agreement

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# As in the hub's openai/clip-vit-* folders: end-of-text also serves as unknown and padding token.
SPECIAL_TOKENS = {
    "bos_token": START_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT, "pad_token": END_OF_TEXT,
}
WORD_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                r"[^\s\p{L}\p{N}]+")
OPEN_CLIP_PAD_TOKEN = "!"  # id 0, with which open_clip.tokenize pads (as Stable Diffusion 2.x and XL's tokenizers do)
BPE_TABLE = "bpe_simple_vocab_16e6.txt.gz"  # inside the clip package
BPE_MERGES = 49152 - 256 - 2  # how many of its merges clip.simple_tokenizer uses
MIN_CONTEXT_LENGTH = 2  # room for the start and end tokens
# PIL.Image.Resampling's codes for open_clip's interpolation names; clip's Resize(n_px, BICUBIC) uses bicubic.
PIL_RESAMPLING = {"bicubic": 3, "bilinear": 2}
# open_clip's resize modes that CLIPImageProcessor reproduces: "shortest" (clip's: shortest side, centre crop) and
# "squash" (both sides to the resolution, no crop); not "longest", which pads.
SQUASH = "squash"
RESIZE_MODES = ("shortest", SQUASH)
RESCALE_FACTOR = 1 / 255  # ToTensor: uint8 -> [0, 1]


@functools.lru_cache(maxsize=1)
def openai_bpe() -> BPETable:
    """OpenAI's vocabulary (49408 tokens) and merges, built as clip.simple_tokenizer builds them from the
    table shipped in the clip package, without importing it (tests compare the two)."""
    package = importlib.util.find_spec("clip")  # finds, does not import
    if package is None or not package.submodule_search_locations:
        raise ImportError("OpenAI's CLIP code is missing: pip install clip-anytorch")
    table = Path(package.submodule_search_locations[0]) / BPE_TABLE
    lines = gzip.decompress(table.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + BPE_MERGES]]  # line 0 is a version header
    symbols = list(_byte_symbols())
    vocab = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(pair) for pair in merges),
             START_OF_TEXT, END_OF_TEXT]
    return BPETable({token: rank for rank, token in enumerate(vocab)}, merges)


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-character table, in clip.simple_tokenizer.bytes_to_unicode's order: printable
    Latin-1 bytes stand for themselves, the other bytes for characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [*map(chr, printable), *(chr(256 + n) for n in range(len(others)))]


def tokenizer_mismatch(architecture: Architecture) -> str | None:
    """Why OpenAI's tokenizer does not fit this checkpoint, or None when it does."""
    size = len(openai_bpe().vocab)
    if architecture.vocab_size != size:
        return (f"the checkpoint has {architecture.vocab_size} token embeddings, "
                f"OpenAI's BPE tokenizer has {size} tokens")
    if architecture.context_length < MIN_CONTEXT_LENGTH:
        return f"context length {architecture.context_length} leaves no room for the start and end tokens"
    return None


def tokenizer_files(context_length: int, pad_token: str = END_OF_TEXT) -> dict[str, str]:
    """vocab.json and merges.txt (the hub's format), and what CLIPTokenizer/CLIPTokenizerFast load directly;
    padding with `pad_token` (end-of-text, as OpenAI's CLIP-L in Stable Diffusion; open_clip's towers pad with
    id 0, OPEN_CLIP_PAD_TOKEN)."""
    bpe = openai_bpe()
    special = {**SPECIAL_TOKENS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    return {
        VOCAB_FILE: _json(bpe.vocab, indent=None),
        MERGES_FILE: "\n".join([MERGES_HEADER, *(" ".join(pair) for pair in bpe.merges)]) + "\n",
        TOKENIZER_JSON: json.dumps(tokenizer_json(bpe), ensure_ascii=False) + "\n",
        TOKENIZER_CONFIG: _json(config),
        SPECIAL_TOKENS_MAP: _json(special),
    }


def tokenizer_json(bpe: BPETable) -> dict:
    """The `tokenizers` pipeline that transformers' CLIPTokenizer builds for this table, which it would write
    as tokenizer.json (a test compares the two), built here without the cost of importing transformers."""
    special = [
        {"id": bpe.vocab[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token in (START_OF_TEXT, END_OF_TEXT)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}, {"type": "Lowercase"},
        ]},
        # clip.simple_tokenizer's word pattern
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": WORD_PATTERN}, "behavior": "Removed", "invert": True},
            byte_level,
        ]},
        "post_processor": {
            "type": "RobertaProcessing", "sep": [END_OF_TEXT, bpe.vocab[END_OF_TEXT]],
            "cls": [START_OF_TEXT, bpe.vocab[START_OF_TEXT]], "trim_offsets": False, "add_prefix_space": False,
        },
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": END_OF_TEXT, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": bpe.vocab, "merges": [list(pair) for pair in bpe.merges],
        },
    }


def preprocessor_files(image_resolution: int, preprocessing: Preprocessing = Preprocessing()) -> dict[str, str]:
    """CLIPImageProcessor settings for clip's transform (Resize(n, BICUBIC), CenterCrop(n), RGB, ToTensor,
    Normalize), with the model's own normalisation and, where PIL has it, its resampling filter; for open_clip's
    resize_mode "squash", both sides resized to n and no crop."""
    squash = preprocessing.resize_mode == SQUASH
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"height": image_resolution, "width": image_resolution} if squash else
                {"shortest_edge": image_resolution},
        "resample": PIL_RESAMPLING.get(preprocessing.interpolation, PIL_RESAMPLING["bicubic"]),
        "do_center_crop": not squash,
        "crop_size": {"height": image_resolution, "width": image_resolution},
        "do_convert_rgb": True,
        "do_rescale": True,
        "rescale_factor": RESCALE_FACTOR,
        "do_normalize": True,
        "image_mean": list(preprocessing.mean),
        "image_std": list(preprocessing.std),
    }
    return {PREPROCESSOR_CONFIG: _json(config)}


def preprocessing_of(config) -> Preprocessing:
    """What a folder's preprocessor_config.json asks for, as open_clip names it (for an open_clip config)."""
    if not isinstance(config, dict):
        raise ValueError("it is not a JSON object")
    default = Preprocessing()
    resample = config.get("resample", PIL_RESAMPLING["bicubic"])
    interpolation = next((name for name, code in PIL_RESAMPLING.items() if code == resample), None)
    if interpolation is None:
        raise ValueError(f"resample {resample!r} is none of open_clip's interpolations")
    mean, std = config.get("image_mean", default.mean), config.get("image_std", default.std)
    if not all(isinstance(value, list) and len(value) == 3 and all(isinstance(x, (int, float)) for x in value)
               for value in (mean, std)):
        raise ValueError("image_mean and image_std should be three numbers each")
    size = config.get("size")
    squash = isinstance(size, dict) and {"height", "width"} <= size.keys() and config.get("do_center_crop") is False
    return Preprocessing(tuple(mean), tuple(std), interpolation, SQUASH if squash else default.resize_mode)


def processing_files(architecture: Architecture, preprocessing: Preprocessing = Preprocessing(),
                     tokenizer_problem: str | None = None) -> tuple[dict[str, str], list[str]]:
    """Image processor files (with a vision tower), tokenizer files (with a text tower, when OpenAI's tokenizer
    fits), and notes on what was left out."""
    files = {} if architecture.vision is None else preprocessor_files(architecture.image_resolution, preprocessing)
    if architecture.text is None:
        return files, []
    problem = tokenizer_problem or tokenizer_mismatch(architecture)
    if problem:
        return files, [f"no tokenizer written: {problem}"]
    return {**tokenizer_files(architecture.context_length), **files}, []


# The kinds of file beside an HF model's weights that a conversion within the HF format keeps as the folder has
# them: each kind whole (a folder's own tokenizer, never half of it with half of OpenAI's).
OWN_FILE_KINDS = (TOKENIZER_FILES, frozenset({PREPROCESSOR_CONFIG}))
OWN_FILES = frozenset().union(*OWN_FILE_KINDS)


def with_own_files(made: dict[str, str], notes: list[str], own: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The files `processing_files` made, each kind replaced by a folder's `own` files of that kind where it has
    any; its notes (all on the tokenizer) go with a tokenizer replaced."""
    files = dict(made)
    for kind in OWN_FILE_KINDS:
        theirs = {name: text for name, text in own.items() if name in kind}
        if theirs:
            files = {**{name: text for name, text in files.items() if name not in kind}, **theirs}
    return files, [] if TOKENIZER_FILES & own.keys() else notes


def tokenizer_difference(found: BPETable) -> str | None:
    """How a folder's tokenizer differs from OpenAI's BPE table, or None when it is the same."""
    expected = openai_bpe()
    if found.vocab != expected.vocab:
        changed = sorted(set(found.vocab.items()) ^ set(expected.vocab.items()))
        return f"its vocabulary differs from OpenAI's in {len(changed)} entries (first: {changed[0]!r})"
    if found.merges != expected.merges:
        return f"its merges differ from OpenAI's ({len(found.merges)} merges, OpenAI has {len(expected.merges)})"
    return None


@dataclass(frozen=True)
class CardFacts:
    """What the model card reports: where the weights came from and what the conversion measured."""

    source_name: str  # its file or folder name, or the Hugging Face repository it was found by
    source_commit: str | None  # the repository's commit, for a source found by its name
    source_file: str  # the file of the source whose checksum is given (the source itself, or its weights)
    source_sha256: str
    source_format: str  # e.g. "OpenAI CLIP checkpoint, torchscript"
    source_dtypes: dict[str, int]
    written_dtypes: dict[str, int]
    tool: str
    architecture: Architecture
    agreement: Agreement | None  # None when not verified
    notes: list[str]
    reference: str  # the source format's model code, which the check ran
    model_class: str  # the transformers class that holds the weights (CLIPModel, CLIPTextModel, ...)


def model_card(facts: CardFacts) -> dict[str, str]:
    """README.md in the hub's format: YAML front matter, provenance, verification, usage."""
    architecture = facts.architecture
    verification = (
        "skipped (`--no-verify`)"
        if facts.agreement is None
        else f"max \\|Δ\\| = {facts.agreement.largest[1]:.2e} over {facts.agreement.scope()} (largest at "
             f"{facts.agreement.largest[0]}; tolerance {TOLERANCE:g})"
    )
    whole = architecture.towers == ("text", "vision")
    lines = [
        "---",
        "library_name: transformers",
        *(["pipeline_tag: zero-shot-image-classification"] if whole else []),
        "tags:",
        "- clip",
        "- clipconv",
        "---",
        "",
        f"# {facts.source_name} in Hugging Face format",
        "",
        f"CLIP weights converted by {facts.tool} (`clipconv to-hf`).",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{facts.source_name}` ({facts.source_format}) |",
        *([f"| repository commit | `{facts.source_commit}` |"] if facts.source_commit else []),
        f"| SHA-256 of `{facts.source_file}` | `{facts.source_sha256}` |",
        f"| source dtypes | {_dtype_counts(facts.source_dtypes)} |",
        f"| written dtypes | {_dtype_counts(facts.written_dtypes)} |",
        f"| architecture | {architecture.describe()} |",
        f"| verification | {verification} |",
        "",
        f"The verification ran {facts.reference} and transformers' `{facts.model_class}` on the converted weights",
        "in float32, on `clip.tokenize` prompts and random images, and compared every layer's output, the pooled",
        "and projected embeddings" + (" and the image-text logits." if whole else "."),
        *(f"\nNote: {note}." for note in facts.notes),
        "",
        "## Usage",
        "",
        "```python",
        *(["from transformers import pipeline", "",
           'classifier = pipeline("zero-shot-image-classification", model="path/to/this/folder")',
           'classifier("photo.jpg", candidate_labels=["a cat", "a dog"])'] if whole else
          [f"from transformers import {facts.model_class}", "",
           f'model = {facts.model_class}.from_pretrained("path/to/this/folder")']),
        "```",
        "",
    ]
    return {MODEL_CARD: "\n".join(lines)}


@dataclass(frozen=True)
class ComponentFacts:
    """One diffusers component as the card of a folder of them reports it."""

    folder: str  # text_encoder, text_encoder_2
    model_class: str
    written_dtypes: dict[str, int]
    architecture: Architecture
    agreement: Agreement | None
    notes: list[str]


def components_card(source_name: str, source_bytes: int, source_format: str, tool: str,
                    components: list[ComponentFacts]) -> dict[str, str]:
    """README.md of a folder of diffusers text encoder components: where each came from, what it holds, what
    was left out or added, and what the check measured."""
    lines = ["---", "library_name: diffusers", "tags:", "- clip", "- clipconv", "---", "",
             f"# The CLIP text encoders of {source_name} as diffusers components", "",
             f"Written by {tool} (`clipconv to-diffusers`) from `{source_name}` ({source_format}, "
             f"{source_bytes:,} bytes).", ""]
    for component in components:
        verification = ("skipped (`--no-verify`)" if component.agreement is None else
                        f"max \\|Δ\\| = {component.agreement.largest[1]:.2e} over {component.agreement.scope()} "
                        f"(tolerance {TOLERANCE:g})")
        lines += [f"## `{component.folder}/`: {component.model_class}", "",
                  f"- architecture: {component.architecture.describe()}",
                  f"- written dtypes: {_dtype_counts(component.written_dtypes)}",
                  f"- verification: {verification}",
                  *(f"- note: {note}" for note in component.notes), ""]
    return {MODEL_CARD: "\n".join(lines)}


def _dtype_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count} tensors" for name, count in counts.items())


def _json(data, indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
