"""The formats clipconv converts between, each one declared entry: how it is recognised and read, which key
layout it uses, how its config maps to and from an architecture, what it cannot represent, how it is written,
and which model code is its reference for the logit check. Every conversion is `roundtrip.pipeline.convert`
with a source and a target entry; a new format is a new entry here (with its reader, writer and config module).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from roundtrip import (
    hf_config,
    hf_extras,
    mapping,
    open_clip_config,
    openai_config,
    readers,
    references,
    verify,
    writers,
)
from roundtrip.architecture import Architecture, ArchitectureError, Shapes
from roundtrip.casting import Cast
from roundtrip.destination import OutputKind
from roundtrip.errors import InputError, Remedy
from roundtrip.facts import (
    HF_CONFIG,
    HF_SAFETENSORS_INDEX,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_PICKLE,
    OPEN_CLIP_SAFETENSORS,
    PREPROCESSOR_CONFIG,
)
from roundtrip.hub import HubSource
from roundtrip.mapping import MappingError, OtherLayout
from roundtrip.ops import OperationError
from roundtrip.preprocessing import Preprocessing
from roundtrip.provenance import Provenance, Record
from roundtrip.schema import HF_IGNORED_KEYS, HF_TOWER_PREFIXES, OPENAI_ARCHIVE_ATTRIBUTES, TOWERS
from roundtrip.strided import Strided

KINDS = {"torchscript": "TorchScript archive", "state_dict": "torch.save state dict",
         "safetensors": "safetensors file", "folder": "folder"}  # how a source is stored, for people


@dataclass(frozen=True)
class SourceOptions:
    """What a user says about a source that the source does not say itself."""

    open_clip_model: str | None = None  # a name in open_clip's registry
    open_clip_config: Path | None = None  # a model config or open_clip_config.json
    openai_architecture: bool = False  # OpenAI's choices (QuickGELU, heads of 64), whatever the file looks like
    encoder: str | None = None  # which text encoder of a diffusion model's single file (clip_l, clip_g, ...)

    @classmethod
    def of(cls, open_clip_model: str | None, open_clip_config: Path | str | None,
           openai_architecture: bool, encoder: str | None = None) -> SourceOptions:
        """The options as a caller gives them (a config path as text too; an empty one is refused, not ignored)."""
        return cls(open_clip_model, None if open_clip_config is None else Path(open_clip_config), openai_architecture,
                   encoder)

    def given(self) -> bool:
        """Whether an open_clip model is named (an empty name too: it is refused, not ignored)."""
        return self.open_clip_model is not None or self.open_clip_config is not None

    def files(self) -> list[Path]:
        return [] if self.open_clip_config is None else [self.open_clip_config]


# What a checkpoint file that is not OpenAI's can be: the options that say what it is, for a refusal to name.
ARCHITECTURE_OPTIONS = Remedy(
    (("open_clip_model", "NAME"), ("open_clip_config", "FILE"), ("openai_architecture", None)), "to say which it is")


@dataclass
class Source:
    """A checkpoint as read: its tensors in its format's key layout and what its format says beside them."""

    path: Path
    format: Format
    kind: str  # how it is stored: "torchscript", "state_dict", "safetensors", "folder", ...
    tensors: dict[str, Strided]
    config: dict | None  # the format's own config file, as read (None for OpenAI's, which has none)
    config_path: Path | str  # what a config problem is reported against: the config file, or the checkpoint
    provenance: Provenance | None  # what clipconv recorded when it wrote this source
    hashed: Path  # the file whose SHA-256 a model card reports
    release: Callable[[], None]
    check: Callable[[], None]  # every checksum its files carry (InputError naming the damaged record)
    attributes: dict[str, dict] = field(default_factory=dict)  # OpenAI's 0-dim TorchScript attributes
    key_order: list[str] = field(default_factory=list)  # as stored, attributes included; else that of `tensors`
    preprocessing: Preprocessing = Preprocessing()
    notes: list[str] = field(default_factory=list)
    tokenizer_note: str | None = None  # why OpenAI's tokenizer is not this model's, when its config says so
    not_released: list[str] = field(default_factory=list)  # signs that OpenAI never shipped it (a training run's)
    aside: dict[str, Strided] = field(default_factory=dict)  # tensors it holds that no conversion carries
    unprefixed: str = ""  # the tower prefix its keys were stored without (a flat one-tower HF folder)
    # Beside `kind`, how its weights are stored: a folder's weight files, a file's packing (a training run's)
    stored_as: tuple[str, ...] = ()
    found_as: HubSource | None = None  # the repository name it was found by, in the Hugging Face cache

    def described(self, architecture: Architecture | None = None) -> str:
        """What it is (named after `architecture`, where its format's names depend on the towers) and how it is
        stored, for people: "OpenAI CLIP checkpoint, TorchScript archive"."""
        title = self.format.title if architecture is None else self.format.title_of(architecture, self.config)
        return f"{title}, {KINDS[self.kind]}"

    def stored_alike(self, other: Source) -> bool:
        """Whether `other` stores what this source stores, as it stores it: the same files (or packing), keys
        in the same order, dtypes, attributes, tensors set aside and config (whatever their names)."""
        return (self.stored_as, dataclasses.replace(self.record(), name="")) == \
            (other.stored_as, dataclasses.replace(other.record(), name=""))

    def record(self) -> Record:
        """This source as the way back to its format needs it."""
        dtypes = {key: tensor.dtype.name for key, tensor in {**self.tensors, **self.aside}.items()}
        order = self.key_order or list(self.tensors)
        aside = {key: {"dtype": tensor.dtype.name, "shape": list(tensor.shape), "hex": tensor.tobytes().hex()}
                 for key, tensor in self.aside.items()}
        return Record(self.format.name, self.path.name, self.kind, dtypes, order, self.attributes, self.config,
                      aside, self.unprefixed)



@dataclass
class Job:
    """What a format's writer needs: the weights in its layout, and all a conversion knows about them."""

    staging: Path
    dest: Path | str
    source: Source
    weights: dict
    cast: Cast
    architecture: Architecture
    config: dict | None  # the target's own config file
    metadata: dict[str, str]  # for safetensors headers (the provenance record)
    max_shard_bytes: int
    progress: writers.Progress
    after_each: Callable[[], None]
    read_back: bool
    background: ThreadPoolExecutor


@dataclass
class Written:
    """What a writer wrote, and what it writes once the logit check's figure is known (a model card)."""

    files: list[str]
    finish: Callable[[verify.Agreement | None], list[str]] = lambda agreement: []
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    name: str  # as provenance records name it, and convert(..., to=name) takes it
    title: str  # what its checkpoints are called
    layout: str  # the schema's key layout of its tensors
    reference: references.Reference
    read: Callable[[Path, SourceOptions], Source]
    architecture: Callable[[Source, Shapes], Architecture]  # its config (or fixed choices) -> an architecture
    # As a target (None for a format clipconv reads only):
    output: OutputKind | None = None
    incompatibilities: Callable[[Architecture], list[str]] | None = None  # what it cannot represent
    # its config for an architecture (and the family of transformers classes asked for, for HF's), and notes
    make_config: Callable[[Architecture, Source, Record | None, Shapes, str | None],
                          tuple[dict | None, list[str]]] | None = None
    write: Callable[[Job], Written] | None = None
    fallback_dtype: str = "keep"  # what `--dtype restore` writes where nothing is recorded
    code: str = ""  # whose code cannot represent what `incompatibilities` lists
    # its config, once the dtypes it is written in are known ({"float16": 196, ...}), where the config says them
    config_of_dtypes: Callable[[dict | None, dict[str, int]], dict | None] = lambda config, dtypes: config
    # its config as its code takes it (formats without a config of their own: made from the architecture)
    reference_config: Callable[[dict | None, Architecture], object] = lambda config, architecture: config
    keeps_attributes: bool = False  # whether it holds OpenAI's 0-dim TorchScript attributes
    shards: bool = False  # whether its weights are split above a size (--max-shard-size)
    # What to tell of an output of one tower ("{tower}": which), where the format holds one whenever the source
    # is one; None: only when asked for (--tower).
    one_tower: str | None = None
    # What its output of an architecture is called, with its config, where that depends on them (HF's class).
    title_of_model: Callable[[Architecture, dict | None], str] | None = None
    # For formats that hold part of a model inside a larger checkpoint (Stable Diffusion's text encoders):
    towers: tuple[str, ...] = ("text", "vision")
    key_prefix: str = ""

    def title_of(self, architecture: Architecture, config: dict | None) -> str:
        """What a model of `architecture` with `config` (its own config, in this format) is called."""
        return self.title if self.title_of_model is None else self.title_of_model(architecture, config)

    def side(self, config: dict | None, architecture: Architecture) -> verify.Side:
        """This format's model code as one side of the logit check, built from `config` (its own config) for a
        model of `architecture`."""
        return verify.Side(self.reference, self.reference_config(config, architecture))


# ---- OpenAI: a TorchScript archive as released, or a torch.save state dict of clip.model.CLIP ----------------


def _read_openai(path: Path, options: SourceOptions) -> Source:
    checkpoint = readers.read_tensor_file(path)
    tensors = dict(checkpoint.tensors)
    attributes = {key: _describe_attribute(path, key, tensors.pop(key)) for key in OPENAI_ARCHIVE_ATTRIBUTES
                  if key in tensors}
    source = Source(path, OPENAI, checkpoint.kind, tensors, None, path, checkpoint.provenance, path,
                    checkpoint.release, checkpoint.check, attributes, key_order=list(checkpoint.tensors),
                    stored_as=tuple(checkpoint.packing))
    if checkpoint.kind == "torchscript" or options.openai_architecture:
        return source
    source.not_released = [*checkpoint.packing, *([f"named {path.name}, as open_clip names its weights"]
                                                  if path.name in (OPEN_CLIP_SAFETENSORS, OPEN_CLIP_PICKLE) else [])]
    if all(t.dtype.name == "float32" for t in tensors.values()):
        # OpenAI's releases mix fp16 and fp32; an all-float32 state dict may be open_clip's, whose activation
        # and heads no tensor tells.
        source.notes.append("read as OpenAI's CLIP (QuickGELU, heads of 64); for an open_clip checkpoint pass "
                            "--open-clip-model NAME or --open-clip-config FILE")
    return source


def _describe_attribute(path: Path, key: str, tensor: Strided) -> dict:
    if tensor.numel() != 1 or tensor.is_floating_point():
        raise InputError(path, f"{key} should be a single integer, found shape {tuple(tensor.shape)} {tensor.dtype}")
    return {"dtype": tensor.dtype.name, "shape": list(tensor.shape), "value": int(tensor.item())}


def _openai_architecture(source: Source, shapes: Shapes) -> Architecture:
    if source.not_released:
        # Most likely an open_clip training run's (GELU for most of them): its tensors do not say.
        raise InputError(source.path, f"is not a checkpoint as OpenAI released them ({'; '.join(source.not_released)})"
                                      ": it looks like a training run's, and its tensors do not say its activation "
                                      "or heads", ARCHITECTURE_OPTIONS)
    architecture = openai_config.architecture(shapes)
    problems = openai_config.incompatibilities(architecture)
    if problems:
        hint = "" if source.kind == "torchscript" else (
            "; an open_clip checkpoint needs --open-clip-model NAME or --open-clip-config FILE")
        raise ArchitectureError("OpenAI's CLIP code cannot build these tensors: " + "; ".join(problems) + hint)
    return architecture


def _no_config(architecture: Architecture, source: Source, restored: Record | None, shapes: Shapes,
               classes: str | None):
    return None, []


def _write_openai(job: Job) -> Written:
    # The file's content follows its name: safetensors where DEST says so, else torch.save's zip for clip.load.
    expected = writers.write_openai_file(job.staging, job.weights, job.metadata, job.cast, job.progress,
                                         after_each=job.after_each, read_back=job.read_back,
                                         as_safetensors=Path(job.dest).suffix == ".safetensors")
    writers.confirm_tensors(readers.read_tensor_file(job.staging).tensors, expected, job.dest)
    return Written([Path(job.dest).name])


# ---- Hugging Face: a CLIPModel folder ------------------------------------------------------------------------


def _read_hf(path: Path, options: SourceOptions) -> Source:
    folder = readers.read_hf_folder(path, check_config=hf_config.towers)
    held = hf_config.towers(folder.config)
    tensors, unprefixed, notes = _with_tower_prefix(folder.tensors, held)
    if unprefixed:
        _check_flat_tower(path, folder.tensors, held[0])
    aside = {key: tensors.pop(key) for key in HF_IGNORED_KEYS if key in tensors}
    for key, tensor in aside.items():
        try:
            check_aside(path, key, tensor)
        except InputError:
            folder.check()  # damage first: a flipped bit is named as the record it is in
            raise
        notes.append(_position_ids_note(key, tensor))
    notes += _tokenizer_warnings(path)
    weights = folder.weight_files
    return Source(path, HF, "folder", tensors, folder.config, path / HF_CONFIG, folder.provenance,
                  weights[0] if len(weights) == 1 else path / HF_SAFETENSORS_INDEX, folder.release, folder.check,
                  preprocessing=_hf_preprocessing(path), notes=notes, aside=aside, unprefixed=unprefixed,
                  key_order=[*tensors, *aside], stored_as=tuple(file.name for file in weights))


def _with_tower_prefix(tensors: dict, held: tuple[str, ...]) -> tuple[dict, str, list[str]]:
    """A tower's weights as CLIPModel names them: the keys of a flat one-tower folder (CLIPTextModel or
    CLIPVisionModel as transformers >= 5.6 saves it) under their tower's prefix, and the prefix they lacked."""
    if held == TOWERS:
        return tensors, "", []
    prefix = HF_TOWER_PREFIXES[held[0]]
    if any(key.startswith(prefix) for key in tensors):
        return tensors, "", []
    return {prefix + key: tensor for key, tensor in tensors.items()}, prefix, [
        f"its keys have no {prefix} prefix (as transformers 5.6 and later save a {held[0]} tower alone)"]


def _check_flat_tower(folder: Path, tensors: dict, tower: str) -> None:
    """Flat keys say no tower: config.json does. Where they are the other tower's, that is what to say."""
    (other,) = (name for name in TOWERS if name != tower)
    keys = [key for key in tensors if key not in HF_IGNORED_KEYS]
    try:
        mapping.check_keys([HF_TOWER_PREFIXES[tower] + key for key in keys], "hf", (tower,))
    except MappingError:
        try:
            mapping.check_keys([HF_TOWER_PREFIXES[other] + key for key in keys], "hf", (other,))
        except MappingError:
            return  # neither tower's: loading says which keys are wrong
        raise InputError(folder / HF_CONFIG, f"describes a {tower} tower alone, and the weights (their keys without "
                                             f"a prefix) are a {other} tower's") from None


def _position_ids_note(key: str, tensor: Strided) -> str:
    return (f"{key} ({tensor.dtype.name}, 0..{tensor.shape[-1] - 1}) is set aside: transformers makes it itself, "
            "and a conversion back to an HF folder puts it back")


def check_aside(where: Path | str, key: str, tensor: Strided) -> None:
    """Refuse a tensor set aside (read, or recorded by an earlier conversion) that is not what its key holds:
    position_ids that are not the positions in order (int64, or floats that round to them, as some older
    checkpoints hold), a logit_scale that is not one float."""
    import numpy

    if key in HF_IGNORED_KEYS:
        row = tensor.shape[-1] if tensor.dim() in (1, 2) and tensor.numel() == tensor.shape[-1] else None
        if row is None or not (tensor.dtype.name == "int64" or tensor.is_floating_point()) or not bool(
                (tensor.values().reshape(-1).round() == numpy.arange(row)).all()):
            raise InputError(where, f"{key} is not the positions 0 to n-1 in order ({tensor.dtype.name}, shape "
                                    f"{list(tensor.shape)}): a model that embeds its positions otherwise")
    elif tensor.dim() != 0 or not tensor.is_floating_point():
        raise InputError(where, f"{key} is not one float ({tensor.dtype.name}, shape {list(tensor.shape)})")


def _hf_preprocessing(folder: Path) -> Preprocessing:
    """What a folder's preprocessor_config.json asks for, where open_clip can say it; clip's transform if none."""
    path = folder / PREPROCESSOR_CONFIG
    if not path.is_file():
        return Preprocessing()
    try:
        return hf_extras.preprocessing_of(readers.read_json(path))
    except ValueError as error:
        raise InputError(path, f"is not a preprocessor config clipconv reads ({error})") from None


def _tokenizer_warnings(folder: Path) -> list[str]:
    """A folder's own tokenizer is not converted; say so when clip.tokenize would not reproduce it."""
    try:
        table = readers.read_tokenizer_table(folder)
    except InputError as error:
        return [f"clip.tokenize may not reproduce this folder's tokenizer: {error}"]
    difference = None if table is None else hf_extras.tokenizer_difference(table)
    if difference is None:
        return []
    return [f"clip.tokenize will not reproduce this folder's tokenizer: {folder}: {difference}"]


def _hf_architecture(source: Source, shapes: Shapes) -> Architecture:
    return hf_config.architecture(source.config, shapes)


def _hf_config(architecture: Architecture, source: Source, restored: Record | None, shapes: Shapes,
               classes: str | None):
    """The config restored or made, of the family of classes asked for (`classes`), if one was."""
    if classes is not None and restored is not None and restored.config is not None and \
            hf_config.config_class(restored.config, architecture) != hf_config.config_class(
                {"model_type": classes}, architecture):
        restored = None  # another family's config: made anew in the family asked for
    return _restored_or_made(restored, lambda config: hf_config.architecture(config, shapes), architecture,
                             lambda: hf_config.config(architecture, classes), HF_CONFIG)


def _restored_or_made(restored: Record | None, read: Callable, architecture: Architecture, make: Callable,
                      name: str) -> tuple[dict, list[str]]:
    """The config a source in this format had (recorded by an earlier conversion), if it still builds this
    architecture; else the one made from the architecture."""
    if restored is None or restored.config is None:
        return make(), []
    try:
        if read(restored.config) == architecture:
            return restored.config, []
    except ArchitectureError:
        pass
    return make(), [f"the recorded {name} of {restored.name} no longer fits the weights; a new one was written"]


def _write_hf(job: Job) -> Written:
    processing = job.background.submit(_processing_files, job)
    source_hash = job.background.submit(readers.sha256_of, job.source.hashed)
    written = writers.write_hf_folder(job.staging, job.config, job.weights, job.metadata, job.cast,
                                      job.max_shard_bytes, job.progress, after_each=job.after_each,
                                      read_back=job.read_back)
    writers.confirm_safetensors(job.staging, written, job.dest)
    files, notes = processing.result()
    writers.write_text_files(job.staging, files)
    return Written([*written, *([HF_SAFETENSORS_INDEX] if len(written) > 1 else [])],
                   lambda agreement: [*files, *_write_card(job, source_hash, agreement, notes)], notes)


def _processing_files(job: Job) -> tuple[dict[str, str], list[str]]:
    """The tokenizer and image processor files made for the model; an HF folder's own, of each kind it has."""
    made, notes = hf_extras.processing_files(job.architecture, job.source.preprocessing, job.source.tokenizer_note)
    if job.source.format is not HF:
        return made, notes
    return hf_extras.with_own_files(made, notes, readers.read_text_files(job.source.path, hf_extras.OWN_FILES))


def _write_card(job: Job, source_hash: Future, agreement: verify.Agreement | None, notes: list[str]) -> list[str]:
    source = job.source
    card = hf_extras.model_card(hf_extras.CardFacts(
        source_name=source.found_as.repo if source.found_as else source.path.name,
        source_commit=source.found_as.commit if source.found_as else None,
        source_sha256=source_hash.result(), source_file=source.hashed.name,
        source_format=source.described(),
        source_dtypes=Cast().summary(source.tensors),
        written_dtypes=job.cast.summary(job.weights), tool=tool(), architecture=job.architecture,
        agreement=agreement, notes=[*source.notes, *notes], reference=source.format.reference.name,
        model_class=hf_config.config_class(job.config, job.architecture),
    ))
    writers.write_text_files(job.staging, card)
    return list(card)


def tool() -> str:
    from roundtrip import __version__

    return f"clipconv {__version__}"


# ---- open_clip: a folder as on the hub, or a checkpoint file with its model named -----------------------------


def _read_open_clip(path: Path, options: SourceOptions) -> Source:
    if path.is_dir():
        folder = readers.read_open_clip_folder(path)
        config, checkpoint, hashed, config_path = folder.config, folder.weights, folder.weights_path, \
            path / OPEN_CLIP_CONFIG
        kind, stored_as = "folder", (folder.weights_path.name, *checkpoint.packing)
    else:
        checkpoint, hashed = readers.read_tensor_file(path), path
        if checkpoint.kind == "torchscript":
            raise InputError(path, "is an OpenAI TorchScript archive, whose architecture OpenAI's code fixes: "
                                   "convert it without --open-clip-model or --open-clip-config")
        config, config_path = _named_config(options)
        kind, stored_as = checkpoint.kind, tuple(checkpoint.packing)
    try:
        model_cfg, preprocess_cfg = open_clip_config.split_config(config)
        preprocessing = open_clip_config.preprocessing(preprocess_cfg)
        problems = open_clip_config.unsupported(model_cfg)  # before the keys, which would only say what is odd
    except ArchitectureError as error:
        raise InputError(config_path, str(error)) from None
    if problems:
        raise InputError(config_path, "clipconv does not convert this open_clip model (transformers' CLIPModel "
                                      "cannot hold it): " + "; ".join(problems))
    whole = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    source = Source(path, OPEN_CLIP, kind, checkpoint.tensors, whole, config_path, checkpoint.provenance, hashed,
                    checkpoint.release, checkpoint.check, preprocessing=preprocessing, stored_as=stored_as)
    source.tokenizer_note = _open_clip_tokenizer(model_cfg)
    if preprocessing.resize_mode not in hf_extras.RESIZE_MODES or \
            preprocessing.interpolation not in hf_extras.PIL_RESAMPLING:
        source.notes.append(f"open_clip resizes images with {preprocessing.interpolation}, resize_mode "
                            f"{preprocessing.resize_mode}, which CLIPImageProcessor cannot reproduce; "
                            "preprocessor_config.json holds the nearest it can (bicubic; the shortest side unless "
                            "squashed)")
    return source


def _named_config(options: SourceOptions) -> tuple[object, Path | str]:
    """The config a checkpoint file's architecture is named by: a registry name or a config file."""
    if options.open_clip_model is not None and options.open_clip_config is not None:
        raise InputError(options.open_clip_config, "give --open-clip-model or --open-clip-config, not both")
    if options.open_clip_config is not None:
        return readers.read_json(options.open_clip_config), options.open_clip_config
    try:
        return open_clip_config.registry_config(options.open_clip_model), options.open_clip_model
    except ArchitectureError as error:
        raise InputError(options.open_clip_model, str(error)) from None


def _open_clip_tokenizer(model_cfg: dict) -> str | None:
    text = model_cfg.get("text_cfg") or {}
    name = text.get("hf_tokenizer_name") if isinstance(text, dict) else None
    return f"the open_clip config names the tokenizer {name}" if name else None


def _open_clip_architecture(source: Source, shapes: Shapes) -> Architecture:
    return open_clip_config.architecture(source.config["model_cfg"], shapes)


def _open_clip_config(architecture: Architecture, source: Source, restored: Record | None, shapes: Shapes,
                      classes: str | None):
    return _restored_or_made(
        restored, lambda config: open_clip_config.architecture(open_clip_config.split_config(config)[0], shapes),
        architecture, lambda: open_clip_config.config_file(architecture, source.preprocessing), OPEN_CLIP_CONFIG)


def _write_open_clip(job: Job) -> Written:
    written = writers.write_open_clip_folder(job.staging, job.config, job.weights, job.metadata, job.cast,
                                             job.progress, after_each=job.after_each, read_back=job.read_back)
    writers.confirm_safetensors(job.staging, written, job.dest)
    return Written([OPEN_CLIP_CONFIG, *written])


OPENAI = Format(
    name="openai", title="OpenAI CLIP checkpoint", layout="openai", output=writers.OPENAI_FILE,
    reference=references.OPENAI, read=_read_openai, architecture=_openai_architecture,
    incompatibilities=openai_config.incompatibilities, make_config=_no_config, write=_write_openai,
    fallback_dtype="keep", code="OpenAI's CLIP code", keeps_attributes=True,
    one_tower="it holds the {tower} tower alone, in OpenAI's key layout (as Stable Diffusion's checkpoints keep "
              "one): clip.load and build_model need both towers",
)
HF = Format(
    name="hf", title="Hugging Face CLIPModel folder", layout="hf", output=writers.HF_FOLDER,
    reference=references.HF, read=_read_hf, architecture=_hf_architecture,
    incompatibilities=hf_config.incompatibilities, make_config=_hf_config, write=_write_hf,
    fallback_dtype="float32", code="transformers' CLIPModel", shards=True,
    title_of_model=lambda architecture, config: f"Hugging Face {hf_config.config_class(config, architecture)} folder",
    config_of_dtypes=hf_config.with_written_dtype,
)
OPEN_CLIP = Format(
    name="open_clip", title="open_clip model", layout="openai",
    output=writers.OPEN_CLIP_FOLDER, reference=references.OPEN_CLIP, read=_read_open_clip,
    architecture=_open_clip_architecture, incompatibilities=open_clip_config.incompatibilities,
    make_config=_open_clip_config, write=_write_open_clip, fallback_dtype="float32", code="open_clip's CLIP",
    one_tower="it holds the {tower} tower alone, in open_clip's key layout: open_clip's local-dir: needs both "
              "towers",
    reference_config=lambda config, architecture: open_clip_config.split_config(config)[0],
)
FORMATS = {entry.name: entry for entry in (HF, OPENAI, OPEN_CLIP)}


@dataclass
class Loaded:
    """A source read and understood: its tensors (of `towers`, without its key prefix), shapes, architecture."""

    source: Source
    tensors: dict[str, Strided]
    towers: tuple[str, ...]
    shapes: Shapes
    architecture: Architecture


CONVERTED_BY = {"openai": "convert it with to-hf", "hf": "convert its folder with to-openai"}  # per key layout


def load(entry: Format, path: Path, options: SourceOptions, towers: tuple[str, ...] = TOWERS) -> Loaded:
    """Read the source at `path` as a checkpoint of `entry`, check its keys (of the towers it shares with
    `towers`) and work out its architecture: each problem one InputError naming the file it is in."""
    source = entry.read(path, options)
    tensors = mapping.without_prefix(source.tensors, entry.key_prefix)
    # The towers it holds weights of (none: check_keys says what the keys are instead).
    held = mapping.towers_of(tensors, entry.layout) or entry.towers
    towers = tuple(tower for tower in held if tower in entry.towers and tower in towers)
    with _as_input_error(source.path):
        mapping.check_keys(tensors, entry.layout, towers)  # names missing keys as the source names them
        shapes = Shapes.of(mapping.convert(tensors, entry.layout, "openai", towers))
    with _as_input_error(source.config_path):
        architecture = entry.architecture(source, shapes)
    return Loaded(source, tensors, towers, shapes, architecture)


def tower_alone(loaded: Loaded, tower: str, projected: bool = True) -> tuple[Loaded, list[str]]:
    """`loaded` cut down to its `tower` (with its projection, where it has one, unless `projected` is False),
    and notes of what is left out."""
    path = loaded.source.path
    if tower not in loaded.towers:
        raise InputError(path, f"has no {tower} tower (it holds the {loaded.towers[0]} tower alone)")
    if not projected and not getattr(loaded.architecture, tower).projected:
        raise InputError(path, f"its {tower} tower has no projection to leave out (--without-projection)")
    with _as_input_error(path):
        architecture = loaded.architecture.alone(tower, projected)
    layout = loaded.source.format.layout
    kept = mapping.of_towers(loaded.tensors, layout, (tower,), (tower,) if projected else ())
    dropped = [key for key in mapping.of_towers(loaded.tensors, layout, (tower,), (tower,)) if key not in kept]
    shapes = Shapes.of(mapping.convert(kept, layout, "openai", (tower,)))
    left_out = {key: tensor for key, tensor in loaded.tensors.items() if key not in kept and key not in dropped}
    source, notes = loaded.source, []
    if loaded.towers == (tower,) and left_out:
        # what a tower alone holds beside its own weights (logit_scale): recorded, for the way back
        source = dataclasses.replace(source, aside={**source.aside, **left_out})
        notes = [f"the {tower} tower alone (--tower {tower}): {', '.join(left_out)} left out"]
    elif left_out:
        notes = [f"the {tower} tower alone (--tower {tower}): {len(left_out)} tensor(s) of the rest left out"]
    if dropped:
        notes.append(f"{', '.join(dropped)} left out (--without-projection): the {tower} tower ends at its pooled "
                     "output")
    cut = dataclasses.replace(loaded, source=source, tensors=kept, towers=(tower,), shapes=shapes,
                              architecture=architecture)
    return cut, notes


@contextlib.contextmanager
def _as_input_error(path: Path | str) -> Iterator[None]:
    """Report mapping and config problems of a source as one-line errors naming it."""
    try:
        yield
    except OtherLayout as error:
        hint = f"; {CONVERTED_BY[error.found]}" if error.found else ""
        raise InputError(path, f"{error}{hint}") from None
    except (MappingError, ArchitectureError, OperationError) as error:
        raise InputError(path, str(error)) from None


@dataclass(frozen=True)
class Detected:
    """What a source is, as told by what is there and the options: its format, the options to read it with, and
    notes on how it was told."""

    format: Format
    options: SourceOptions
    notes: list[str] = field(default_factory=list)


def detect(path: Path, options: SourceOptions, target: Format | None = None) -> Detected:
    """The format of the source at `path`, from what is there and the options."""
    if not (path.exists() or path.is_symlink()):
        raise InputError(path, "does not exist")
    if path.is_dir():
        return _detect_folder(path, options, target)
    if options.given() and options.openai_architecture:
        raise InputError(path, "is named both an open_clip model and OpenAI's architecture: give one of them")
    if options.given():
        return Detected(OPEN_CLIP, options)
    sibling = path.parent / OPEN_CLIP_CONFIG
    if not options.openai_architecture and sibling.is_file():
        # open_clip's folders keep the config beside the weights: it says what the tensors do not.
        return Detected(OPEN_CLIP, dataclasses.replace(options, open_clip_config=sibling),
                        [f"read as an open_clip model by the {OPEN_CLIP_CONFIG} beside it ({sibling})"])
    return Detected(OPENAI, options)


def _detect_folder(path: Path, options: SourceOptions, target: Format | None) -> Detected:
    markers = ((OPEN_CLIP, OPEN_CLIP_CONFIG), (HF, HF_CONFIG))
    found = [entry for entry, marker in markers if (path / marker).is_file()]
    if not found:
        raise InputError(path, f"is a folder with neither {HF_CONFIG} nor {OPEN_CLIP_CONFIG}: not a model folder")
    if options.given() or options.openai_architecture:
        raise InputError(path, f"is a model folder with its own {HF_CONFIG if HF in found else OPEN_CLIP_CONFIG}; "
                               "--open-clip-model, --open-clip-config and --openai-architecture are for checkpoint "
                               "files")
    if len(found) == 1:
        return Detected(found[0], options)
    # A hub repository of open_clip's (LAION's, for one) often holds an HF copy too: read the one that is
    # not the target, open_clip's own where both would do (found lists open_clip first).
    chosen = next(entry for entry in found if entry is not target)
    return Detected(chosen, options, [f"{path} holds both an open_clip and a Hugging Face model; read as the "
                                      f"{chosen.title}"])
