"""Diffusion models' CLIP text encoders where their single-file checkpoints keep them (Stable Diffusion 1.x, 2.x,
XL, XL refiner, 3: `schema.SINGLE_FILE_LAYOUTS`), and text encoders in files of their own (ComfyUI's): which
encoders a file holds, each read as a CLIP text tower alone, in its layout, with the architecture its
model's code fixes. The file's other tensors (UNet, VAE, T5) are never read.

Each encoder found is a `formats.Format` entry of its own (`encoder_format`), read through the one pipeline.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from roundtrip import formats, hf_config, mapping, open_clip_config, readers, references
from roundtrip.architecture import Architecture, ArchitectureError, Shapes
from roundtrip.errors import InputError
from roundtrip.formats import Detected, Format, Source, SourceOptions
from roundtrip.schema import (
    HF_IGNORED_KEYS,
    HF_TOWER_PREFIXES,
    SINGLE_FILE_LAYOUTS,
    STANDALONE_ENCODER_PREFIX,
    EmbeddedEncoder,
)

HEAD_WIDTH = 64  # OpenAI's ViT-L/14 and open_clip's ViT-H-14 and ViT-bigG-14 text towers: heads of 64
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class EncoderModel:
    """What a released text encoder is, beyond its shapes: what its model's code fixes."""

    title: str
    width: int  # how a standalone file's encoder is told apart, as ComfyUI tells them
    activation: str
    # Its tokenizer pads with end-of-text (OpenAI's CLIP-L, as Stable Diffusion's code runs it) or with id 0,
    # "!" (open_clip's towers, as open_clip.tokenize pads): the diffusion model reads every position.
    pads_with_end_of_text: bool
    component: str  # the diffusers folder a standalone file of it goes to, as in SDXL's and SD3's pipelines


ENCODER_MODELS = {
    "clip_l": EncoderModel("OpenAI's CLIP ViT-L/14 text encoder", 768, "quick_gelu", True, "text_encoder"),
    "clip_h": EncoderModel("open_clip's ViT-H-14 text encoder", 1024, "gelu", False, "text_encoder"),
    "clip_g": EncoderModel("open_clip's ViT-bigG-14 text encoder", 1280, "gelu", False, "text_encoder_2"),
}
STANDALONE = "a standalone text encoder file"
RECORD = "single_file"  # what provenance records name a single file's encoder as a source
LAYOUT_NAMES = {"hf": "transformers'", "openai": "open_clip's"}


@dataclass(frozen=True)
class Found:
    """The text encoders of a file: of which model family (None: a standalone encoder file), which ones."""

    family: str | None
    encoders: tuple[EmbeddedEncoder, ...]

    @property
    def described(self) -> str:
        names = ", ".join(encoder.name for encoder in self.encoders)
        return f"{STANDALONE} ({names})" if self.family is None else f"a {self.family} checkpoint (text encoders " \
                                                                      f"{names})"


def find_encoders(tensors: dict, path: Path) -> Found | None:
    """The text encoders `tensors` (a whole file's) hold, by their keys; None if they are not a diffusion
    model's single file or a standalone encoder."""
    for layout in SINGLE_FILE_LAYOUTS:
        present = [encoder for encoder in layout.encoders if _holds(tensors, encoder, layout.family, path)]
        if present:
            return Found(layout.family, tuple(present))
    if mapping.towers_of(tensors, "hf") == ("text",) and not mapping.towers_of(tensors, "openai"):
        return Found(None, (_standalone(tensors, path),))
    return None


def _holds(tensors: dict, encoder: EmbeddedEncoder, family: str, path: Path) -> bool:
    """Whether `tensors` hold some of `encoder`'s text tower under its prefix (with HF's text_model. or, in
    older files, without); keys under its prefix that are not are refused, naming one."""
    under = _encoder_tensors(tensors, encoder)
    if not under:
        return False
    if mapping.towers_of(under, encoder.layout) != ("text",):
        example = next(iter(under))
        raise InputError(path, f"holds keys under {encoder.prefix}, where {family} files keep {encoder.name} in "
                               f"{LAYOUT_NAMES[encoder.layout]} key layout, that are not its text encoder's (one is "
                               f"{encoder.prefix}{example})")
    return True


def _encoder_tensors(tensors: dict, encoder: EmbeddedEncoder) -> dict:
    """`encoder`'s tensors in `tensors`, named in its layout without the file's prefix (HF's text_model. put
    back where an older file left it out)."""
    under = mapping.without_prefix(tensors, encoder.prefix)
    prefix = HF_TOWER_PREFIXES["text"]
    if encoder.layout == "hf" and under and not any(key.startswith(prefix) for key in under):
        under = mapping.with_prefix(under, prefix)
    return under


def _standalone(tensors: dict, path: Path) -> EmbeddedEncoder:
    shapes = _shapes(path, tensors, "hf")
    name = next((name for name, model in ENCODER_MODELS.items() if model.width == shapes.text_width), None)
    if name is None:
        widths = ", ".join(f"{model.width} ({name})" for name, model in ENCODER_MODELS.items())
        raise InputError(path, f"is a text encoder {shapes.text_width} wide, which no released diffusion model's "
                               f"CLIP encoder is ({widths})")
    return EmbeddedEncoder(name, STANDALONE_ENCODER_PREFIX, "hf", ENCODER_MODELS[name].component)


def _shapes(path: Path, tensors: dict, layout: str) -> Shapes:
    try:
        mapping.check_keys(tensors, layout, ("text",))
        return Shapes.of(mapping.convert(tensors, layout, "openai", ("text",)))
    except (mapping.MappingError, ArchitectureError) as error:
        raise InputError(path, str(error)) from None


def detect(path: Path, options: SourceOptions) -> Detected | None:
    """The format of the text encoder to read from a diffusion model's single file or a standalone encoder
    file (`options.encoder`, or the only one it holds); None for a source of any other kind."""
    if options.encoder is None and (options.given() or options.openai_architecture or not path.is_file()):
        return None
    if path.is_dir():
        raise InputError(path, f"is a folder; --encoder {options.encoder} takes a text encoder out of a "
                               "single-file checkpoint")
    found = find_encoders(readers.read_tensor_file(path).tensors, path)
    if found is None:
        if options.encoder is not None:
            raise InputError(path, f"holds no diffusion model's text encoder (--encoder {options.encoder})")
        return None
    encoder = chosen_encoder(found, options.encoder, path)
    return Detected(encoder_format(found, encoder), options)


def found_in(path: Path) -> Found:
    """The text encoders of the file at `path`, which must hold some."""
    found = find_encoders(readers.read_tensor_file(path).tensors, path)
    if found is None:
        families = ", ".join(layout.family for layout in SINGLE_FILE_LAYOUTS)
        raise InputError(path, f"holds no diffusion model's CLIP text encoder where {families} or a standalone "
                               "encoder file keep one")
    return found


def chosen_encoder(found: Found, name: str | None, path: Path) -> EmbeddedEncoder:
    """The encoder `name` of those found (the only one, where `name` is None)."""
    if name is None:
        if len(found.encoders) == 1:
            return found.encoders[0]
        raise InputError(path, f"is {found.described}: name one with --encoder, or convert them all with "
                               "to-diffusers")
    for encoder in found.encoders:
        if encoder.name == name:
            return encoder
    raise InputError(path, f"has no text encoder {name}: it is {found.described}")


def encoder_format(found: Found, encoder: EmbeddedEncoder) -> Format:
    """A Format entry that reads `encoder` out of a file of `found`'s kind."""
    model = ENCODER_MODELS[encoder.name]
    where = STANDALONE if found.family is None else f"{found.family} checkpoint"
    return Format(
        name=RECORD, title=f"{model.title} ({encoder.name}) of a {where}", layout=encoder.layout,
        reference=references.OPEN_CLIP if encoder.layout == "openai" else references.HF,
        read=functools.partial(_read, encoder, found), architecture=functools.partial(_architecture, model),
        towers=("text",), key_prefix=encoder.prefix, reference_config=_reference_config(encoder.layout),
    )


def _reference_config(layout: str):
    """The config its model's code is built from: open_clip's (open_clip-layout encoders, which Stable
    Diffusion 2.x and XL run with open_clip) or transformers' (the rest), made from the architecture."""
    if layout == "openai":
        return lambda config, architecture: open_clip_config.model_config(architecture)
    return lambda config, architecture: hf_config.config(architecture)


def _read(encoder: EmbeddedEncoder, found: Found, path: Path, options: SourceOptions) -> Source:
    checkpoint = readers.read_tensor_file(path)
    under = _encoder_tensors(checkpoint.tensors, encoder)
    ignored = [key for key in HF_IGNORED_KEYS if key in under] if encoder.layout == "hf" else []
    tensors = mapping.with_prefix({key: tensor for key, tensor in under.items() if key not in ignored},
                                  encoder.prefix)
    others = len(checkpoint.tensors) - len(under)
    notes = [f"read {encoder.name} of {found.described}" + (f"; {others} other tensor(s) of the file not read"
                                                             if others else "")]
    if found.family is None:  # what a standalone file's keys cannot say, its width is taken to say
        model = ENCODER_MODELS[encoder.name]
        notes.append(f"told to be {model.title} by its width, {model.width}, as ComfyUI tells standalone encoders "
                     f"apart: {model.activation}, heads of {HEAD_WIDTH}")
    for key in ignored:
        formats.check_aside(path, key, under[key])
        notes.append(f"{encoder.prefix}{key} set aside: transformers makes the positions itself (the file keeps "
                     "them)")
    aside = {encoder.prefix + key: under[key] for key in ignored}
    return Source(path, encoder_format(found, encoder), checkpoint.kind, tensors, None, path,
                  checkpoint.provenance, path, checkpoint.release, checkpoint.check, notes=notes, aside=aside)


def _architecture(model: EncoderModel, source: Source, shapes: Shapes) -> Architecture:
    tower = shapes.tower("text", shapes.text_width // HEAD_WIDTH, model.activation, LAYER_NORM_EPS)
    if shapes.text_width % HEAD_WIDTH:
        raise ArchitectureError(f"its text tower is {shapes.text_width} wide, which heads of {HEAD_WIDTH} do not "
                                f"split ({model.title} has heads of {HEAD_WIDTH})")
    return shapes.architecture(vision=None, text=tower)
