"""diffusers' text encoder components: the folders a diffusion pipeline loads its CLIP text encoders and their
tokenizers from (`text_encoder/` and `tokenizer/`, `text_encoder_2/` and `tokenizer_2/`), as `to-diffusers`
writes them from a single file's encoders. Each encoder is a transformers CLIPTextModel or
CLIPTextModelWithProjection folder holding what that pipeline's component holds (`component_of`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from roundtrip import formats, hf_config, hf_extras, mapping, writers
from roundtrip.architecture import Shapes
from roundtrip.destination import OutputKind
from roundtrip.facts import DIFFUSERS_TOKENIZERS, HF_CONFIG, MODEL_CARD, TOKENIZER_FILES, hf_folder_may_hold
from roundtrip.formats import HF, Format, Job, Loaded, Written
from roundtrip.schema import PROJECTIONS, SINGLE_FILE_LAYOUTS, EmbeddedEncoder
from roundtrip.single_file import ENCODER_MODELS
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


def component_of(loaded: Loaded, encoder: EmbeddedEncoder) -> tuple[Loaded, list[str]]:
    """`loaded` (a single file's `encoder`) as diffusers' component of it holds it, and notes of what differs:
    the text tower alone; without its last block, projection and logit_scale where the diffusion model reads
    the block before (Stable Diffusion 2.x); with an identity projection where the pipeline's class has one and
    the file none (Stable Diffusion 3's CLIP-L)."""
    cut, _ = formats.tower_alone(loaded, "text", projected=not encoder.drops_last_block)
    left_out = [key for key in loaded.tensors if key not in cut.tensors]  # logit_scale; SD 2.x: the projection
    notes = []
    if encoder.drops_last_block:
        last = cut.architecture.text.layers - 1
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
    return cut, notes


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
    """`job` into its staging folder (the component's), its tokenizer into the tokenizer's folder beside it."""
    written = writers.write_hf_folder(job.staging, job.config, job.weights, job.metadata, job.cast,
                                      job.max_shard_bytes, job.progress, after_each=job.after_each,
                                      read_back=job.read_back)
    writers.confirm_safetensors(job.staging, written, job.dest)
    model = ENCODER_MODELS[encoder.name]
    problem = job.source.tokenizer_note or hf_extras.tokenizer_mismatch(job.architecture)
    tokenizer = DIFFUSERS_TOKENIZERS[encoder.component]
    component = job.staging.name
    files = [f"{component}/{name}" for name in written]
    if problem:
        return Written(files, lambda agreement: [f"{component}/{HF_CONFIG}"],
                       notes=[f"no {tokenizer}/ written: {problem}"])
    pad = hf_extras.END_OF_TEXT if model.pads_with_end_of_text else hf_extras.OPEN_CLIP_PAD_TOKEN
    folder = job.staging.parent / tokenizer
    folder.mkdir()
    tokenizer_files = hf_extras.tokenizer_files(job.architecture.context_length, pad_token=pad)
    writers.write_text_files(folder, tokenizer_files)
    return Written(files, lambda agreement: [f"{component}/{HF_CONFIG}", f"{tokenizer}/ ({len(tokenizer_files)} "
                                                                            "files)"],
                   notes=[f"{tokenizer}/ pads with {pad!r}, as {model.title} is run"])
