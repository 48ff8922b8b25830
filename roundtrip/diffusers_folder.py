"""diffusers' text encoder components: the folders a diffusion pipeline loads its CLIP text encoders and their
tokenizers from (`text_encoder/` and `tokenizer/`, `text_encoder_2/` and `tokenizer_2/`), as `to-diffusers`
writes them from a single file's encoders. Each encoder is a transformers CLIPTextModel or
CLIPTextModelWithProjection folder holding what that pipeline's component holds (`component_of`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from roundtrip import formats, hf_config, hf_extras, mapping, writers
from roundtrip.architecture import Architecture, Shapes
from roundtrip.destination import OutputKind
from roundtrip.errors import InputError
from roundtrip.facts import DIFFUSERS_TOKENIZERS, HF_CONFIG, MODEL_CARD, TOKENIZER_FILES, hf_folder_may_hold
from roundtrip.formats import HF, Format, Job, Loaded, Written
from roundtrip.schema import HF_TOWER_PREFIXES, PROJECTIONS, SINGLE_FILE_LAYOUTS, EmbeddedEncoder
from roundtrip.single_file import ENCODER_MODELS, Found
from roundtrip.strided import Strided

COMPONENTS = tuple(dict.fromkeys(encoder.component for layout in SINGLE_FILE_LAYOUTS for encoder in layout.encoders))


def _may_hold_folder(folder: Path) -> bool:
    """A component's folder or a tokenizer's, holding only the files to-diffusers writes there."""
    holds = (hf_folder_may_hold if folder.name in COMPONENTS else
             (lambda name: name in TOKENIZER_FILES) if folder.name in DIFFUSERS_TOKENIZERS.values() else None)
    return holds is not None and all(entry.is_file() and holds(entry.name) for entry in folder.iterdir())


DIFFUSERS_FOLDER = OutputKind(
    is_folder=True, title="folder of diffusers text encoder components", may_hold=lambda name: name == MODEL_CARD,
    may_hold_folder=_may_hold_folder, written_here=lambda folder: folder.is_dir() and any(
        writers.HF_FOLDER.written_here(folder / name) for name in COMPONENTS))


def component_of(loaded: Loaded, encoder: EmbeddedEncoder) -> tuple[Loaded, list[str], Loaded | None]:
    """`loaded` (a single file's `encoder`) as diffusers' component of it holds it, notes of what differs, and
    the whole tower it was cut from, where it was: the text tower alone; without its last block, projection and
    logit_scale where the diffusion model reads the block before (Stable Diffusion 2.x); with an identity
    projection where the pipeline's class has one and the file none (Stable Diffusion 3's CLIP-L)."""
    cut, _ = formats.tower_alone(loaded, "text", projected=not encoder.drops_last_block)
    left_out = [key for key in loaded.tensors if key not in cut.tensors]  # logit_scale; SD 2.x: the projection
    notes = []
    if encoder.drops_last_block:
        last = cut.architecture.text.layers - 1
        if last < 1:
            raise InputError(loaded.source.path, f"{encoder.name} has one block, and diffusers keeps all but the "
                                                 "last: nothing would be left")
        cut = _before_block(cut, last)
        notes.append(f"{encoder.name}: diffusers' {encoder.component} holds blocks 0 to {last - 1}, which the "
                     f"diffusion model reads (it takes the penultimate block's output through the final "
                     f"LayerNorm); left out: block {last}, {', '.join(left_out)}")
    elif left_out:
        notes.append(f"{encoder.name}: {', '.join(left_out)} left out: {hf_config.model_class(cut.architecture)} "
                     "has no place for it")
    if encoder.identity_projection and not cut.architecture.text.projected:
        cut = _with_identity_projection(cut)
        notes.append(f"{encoder.name}: the file has no text projection; diffusers' {encoder.component} is a "
                     f"CLIPTextModelWithProjection, written with the identity its pipeline's code implies "
                     f"({PROJECTIONS['text'][0]} = I, float32)")
    return cut, notes, formats.tower_alone(loaded, "text")[0] if encoder.drops_last_block else None


def _before_block(loaded: Loaded, first_left_out: int) -> Loaded:
    """`loaded` (a text tower alone) without its blocks from `first_left_out` on."""
    layout = loaded.source.format.layout
    kept = mapping.before_block(loaded.tensors, layout, "text", first_left_out)
    text = dataclasses.replace(loaded.architecture.text, layers=first_left_out)
    return dataclasses.replace(loaded, tensors=kept, architecture=dataclasses.replace(loaded.architecture, text=text),
                               shapes=Shapes.of(mapping.convert(kept, layout, "openai", ("text",))))


def _with_identity_projection(loaded: Loaded) -> Loaded:
    import numpy

    width = loaded.architecture.text.width
    identity = {PROJECTIONS["text"][0]: Strided.of_numpy(numpy.eye(width, dtype=numpy.float32))}
    layout = loaded.source.format.layout
    tensors = {**loaded.tensors, **mapping.convert(identity, "openai", layout, ("text",))}
    text = dataclasses.replace(loaded.architecture.text, projected=True)
    architecture = dataclasses.replace(loaded.architecture, text=text, embed_dim=width)
    return dataclasses.replace(loaded, tensors=tensors, architecture=architecture,
                               shapes=Shapes.of(mapping.convert(tensors, layout, "openai", ("text",))))


def component_format(encoder: EmbeddedEncoder) -> Format:
    """The target entry for `encoder`'s diffusers component: HF's layout and config, written into its folder
    with its tokenizer beside it."""
    return dataclasses.replace(HF, name="diffusers", title=f"diffusers {encoder.component}",
                               write=lambda job: _write_component(encoder, job), shards=False)


def _write_component(encoder: EmbeddedEncoder, job: Job) -> Written:
    """`job` into its staging folder (the component's), its tokenizer into the tokenizer's folder beside it (made
    in a side thread while the weights are written)."""
    model = ENCODER_MODELS[encoder.name]
    problem = job.source.tokenizer_note or hf_extras.tokenizer_mismatch(job.architecture)
    pad = hf_extras.END_OF_TEXT if model.pads_with_end_of_text else hf_extras.OPEN_CLIP_PAD_TOKEN
    tokenizer_files = None if problem else job.background.submit(hf_extras.tokenizer_files,
                                                                 job.architecture.context_length, pad_token=pad)
    written = writers.write_hf_folder(job.staging, job.config, job.weights, job.metadata, job.cast,
                                      job.max_shard_bytes, job.progress, after_each=job.after_each,
                                      read_back=job.read_back)
    writers.confirm_safetensors(job.staging, written, job.dest)
    tokenizer, component = DIFFUSERS_TOKENIZERS[encoder.component], job.staging.name
    files = [f"{component}/{name}" for name in written]
    if tokenizer_files is None:
        return Written(files, lambda agreement: [f"{component}/{HF_CONFIG}"],
                       notes=[f"no {tokenizer}/ written: {problem}"])
    folder = job.staging.parent / tokenizer
    folder.mkdir()
    written_tokenizer = writers.write_text_files(folder, tokenizer_files.result())
    return Written(files, lambda agreement: [f"{component}/{HF_CONFIG}", f"{tokenizer}/ ({len(written_tokenizer)} "
                                                                            "files)"],
                   notes=[f"{tokenizer}/ pads with {pad!r}, as {model.title} is run"])


# ---- back into a single file ---------------------------------------------------------------------------------


def components_in(source: Path, found: Found, base: Path) -> list[tuple[EmbeddedEncoder, Path]]:
    """The components of `source` (a folder of diffusers components, or one component's own folder), each with
    the encoder of `base` (a file of `found`'s encoders) it replaces."""
    by_component = {encoder.component: encoder for encoder in found.encoders}
    if (source / HF_CONFIG).is_file():  # one component's folder, named as its pipeline names it
        if source.name not in by_component:
            raise InputError(source, f"is a model folder named {source.name}, and {base} ({found.described}) has no "
                                     f"encoder diffusers keeps in a folder of that name "
                                     f"({', '.join(by_component)})")
        return [(by_component[source.name], source)]
    present = _components_present(source)
    if not present:
        raise InputError(source, f"holds no diffusers text encoder component ({', '.join(COMPONENTS)} with a "
                                 f"{HF_CONFIG})")
    lacking = [name for name in present if name not in by_component]
    if lacking:
        raise InputError(source, f"holds {lacking[0]}/, and {base} ({found.described}) has no encoder that goes "
                                 "there")
    return [(by_component[name], source / name) for name in present]


def is_components_folder(folder: Path) -> bool:
    """Whether `folder` is a folder of diffusers text encoder components (as to-diffusers writes them, or a
    pipeline's folder), not a model folder itself."""
    return folder.is_dir() and not (folder / HF_CONFIG).exists() and bool(_components_present(folder))


def _components_present(folder: Path) -> list[str]:
    return [name for name in COMPONENTS if (folder / name / HF_CONFIG).is_file()]


def only_component(source: Path) -> Path:
    """The one component's folder in `source` (or `source` itself, a component's folder)."""
    if (source / HF_CONFIG).is_file():
        return source
    present = _components_present(source)
    if len(present) != 1:
        held = f"holds {' and '.join(present)}" if present else "holds no diffusers text encoder component"
        raise InputError(source, f"{held}: a file without --base holds one encoder (give --base FILE, or one "
                                 "component's folder)")
    return source / present[0]


@dataclass
class PutBack:
    """A component's weights as they go back into a single file: under the file's own key names."""

    tensors: dict  # the file's keys (prefixed, as it names them) -> tensors
    notes: list[str]


def put_back(component: Loaded, base_encoder: Loaded, encoder: EmbeddedEncoder, base_keys: set[str]) -> PutBack:
    """`component` (an HF folder of `encoder`) in `base_encoder`'s layout and names (`base_keys`: all of the
    base file's keys), with what the component has no place for (Stable Diffusion 2.x's last block, projection
    and logit_scale; XL's logit_scale) kept from the base; refused where the two are not the same encoder."""
    path = component.source.path
    expected, _, _ = component_of(base_encoder, encoder)
    differences = _differences(component.architecture, expected.architecture)
    if differences:
        raise InputError(path, f"is not {encoder.name} of the base as diffusers keeps it: " + "; ".join(differences))
    layout = encoder.layout
    weights = mapping.convert(mapping.convert(component.tensors, "hf", "openai", ("text",)), "openai", layout,
                              ("text",))
    notes = []
    if encoder.identity_projection:
        (projection,) = mapping.keys_in(layout, [PROJECTIONS["text"][0]])
        if projection not in base_encoder.tensors:
            _require_identity(path, projection, weights.pop(projection))
            notes.append(f"{encoder.name}: the identity {projection} left out, as the base has none")
    kept = [key for key in base_encoder.tensors if key not in weights]
    if kept:
        notes.append(f"{encoder.name}: kept from the base, which the folder has no place for: "
                     + _blocks_and_keys(kept, layout))
    tensors = {_stored_key(encoder, key, base_keys): weights.get(key, tensor)
               for key, tensor in base_encoder.tensors.items()}
    return PutBack(tensors, notes)


def _differences(found: Architecture, expected: Architecture) -> list[str]:
    said, wanted = found.semantics(), expected.semantics()
    return [f"{name} is {said[name]}, the base's is {wanted[name]}" for name in wanted if said[name] != wanted[name]]


def _require_identity(path: Path, key: str, tensor) -> None:
    import numpy

    values = tensor.values() if isinstance(tensor, Strided) else tensor.numpy()
    if values.ndim != 2 or values.shape[0] != values.shape[1] or not numpy.array_equal(values,
                                                                                        numpy.eye(values.shape[0])):
        raise InputError(path, f"its {key} is not the identity, and the base has no projection to hold it: "
                               "putting it back would lose it")


def _blocks_and_keys(keys: list[str], layout: str) -> str:
    """Keys for people: a whole block as "block N"."""
    return ", ".join(mapping.describe_blocks(keys, layout))


def _stored_key(encoder: EmbeddedEncoder, key: str, base_keys: set[str]) -> str:
    """The base file's name for `key` of `encoder`: with its prefix, and without HF's text_model. where the file
    stores the encoder without it (older Stable Diffusion 1.x files)."""
    stored = encoder.prefix + key
    if stored not in base_keys and encoder.layout == "hf":
        return encoder.prefix + key.removeprefix(HF_TOWER_PREFIXES["text"])
    return stored
