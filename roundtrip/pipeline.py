"""The one conversion pipeline: what the CLI runs, usable from Python too.

`convert` takes a source of any format (`roundtrip.formats` tells which) to a target format: it checks DEST,
reads the source, checks its keys against the schema, works out its architecture, refuses what the target
cannot represent, maps the keys, writes into a staged path beside DEST while the logit check runs, and only
then moves the result into place.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from roundtrip import (
    casting,
    destination,
    diffusers_folder,
    dtypes,
    formats,
    hf_config,
    hf_extras,
    hub,
    mapping,
    readers,
    single_file,
    verify,
    writers,
)
from roundtrip.architecture import Architecture
from roundtrip.errors import InputError, OutputError, VerificationError, one_line
from roundtrip.formats import FORMATS, Format, Job, SourceOptions
from roundtrip.mapping import MappingError
from roundtrip.provenance import METADATA_KEY, Provenance, Record
from roundtrip.schema import ASIDE_KEYS, HF_TOWER_PREFIXES, OPENAI_ARCHIVE_ATTRIBUTES, STANDALONE_ASIDE_KEYS, TOWERS
from roundtrip.strided import Strided

Report = Callable[[str], None]
Result = TypeVar("Result")
# What every conversion may find at DEST, for a refusal to name (what other commands write)
OUTPUT_KINDS = (*(entry.output for entry in FORMATS.values()), diffusers_folder.DIFFUSERS_FOLDER, writers.SINGLE_FILE)



@dataclass
class Summary:
    dest: Path
    target: str  # what was written, e.g. "Hugging Face CLIPModel folder"
    tensors: int
    dtypes: dict[str, int]
    files: list[str]
    architecture: Architecture
    agreement: verify.Agreement | None = None  # how far apart the two models' outputs are; None if not checked
    max_logit_difference: float | None = None  # of the logits alone; None when verification was skipped
    extra_files: list[str] = field(default_factory=list)  # tokenizer, image processor, model card
    notes: list[str] = field(default_factory=list)  # what the user should know: files left out, mismatches
    # Where a conversion within one format would write its source again (the same files, keys, dtypes and
    # config): that source; nothing was written.
    unchanged_source: Path | None = None


class _Unchanged(Exception):
    """Raised inside the staged output to discard it: it stores what its source stores, as the source does."""


def _silent(_: str) -> None:
    pass


def convert(
    source: Path | str,
    dest: Path | str,
    to: str,
    *,
    dtype: str = "restore",
    verify_logits: bool = True,
    overwrite: bool = False,
    max_shard_bytes: int | str = writers.DEFAULT_MAX_SHARD_BYTES,
    open_clip_model: str | None = None,
    open_clip_config: Path | str | None = None,
    openai_architecture: bool = False,
    tower: str | None = None,
    without_projection: bool = False,
    encoder: str | None = None,
    metaclip_2: bool = False,
    offline: bool = False,
    subfolder: str | None = None,
    report: Report = _silent,
    progress: writers.Progress = lambda done, total: None,
) -> Summary:
    """Convert the checkpoint at `source` (any format clipconv reads) into format `to` ("hf", "openai",
    "open_clip") at `dest`.

    `dtype`: "restore" (the dtypes an earlier conversion recorded for this format, else the format's own
    default), "keep" (the source's), or "float32", "float16", "bfloat16". `max_shard_bytes`: bytes, or a size
    with a unit ("500MB", "2GiB"). A checkpoint file that is not OpenAI's as released needs `open_clip_model`,
    `open_clip_config` or `openai_architecture=True`, unless an open_clip_config.json lies beside it. `tower`
    ("text" or "vision"): that tower alone, from a source of both towers or of that one; `without_projection`:
    without its projection (as Stable Diffusion 1's text encoder, a CLIPTextModel, has none). `metaclip_2`
    (to="hf"): transformers' MetaClip2 classes where CLIP's would do (a MetaCLIP 2 worldwide model gets them
    anyway). A `source` that is not a path but a Hugging Face repository name (`ORG/NAME`, `ORG/NAME@REVISION`,
    `hf-hub:ORG/NAME`, `ORG/NAME/SUBFOLDER`) is read from the local cache, downloaded first unless `offline`
    (or HF_HUB_OFFLINE=1); `subfolder`: a folder inside it (or inside a local `source`).

    A source already in format `to` is written in that format's own form, with its own dtypes, key order and
    config unless `dtype` says otherwise; where that would store exactly what it stores, nothing is written and
    the summary's `unchanged_source` names it.
    """
    if tower not in (None, *TOWERS):
        raise ValueError(f"tower={tower!r} is not a tower ({', '.join(map(repr, TOWERS))})")
    if without_projection and tower is None:
        raise ValueError("without_projection=True needs tower='text' or 'vision': a whole model keeps both")
    if to not in FORMATS:
        raise ValueError(f"to={to!r} is not a format clipconv writes ({', '.join(map(repr, FORMATS))})")
    if metaclip_2 and to != "hf":
        raise ValueError("metaclip_2=True names transformers' classes: it needs to='hf'")
    target = FORMATS[to]
    max_shard_bytes = writers.byte_size(max_shard_bytes)
    resolved = hub.resolve(source, offline, subfolder)
    source_path = resolved.path
    options = SourceOptions.of(open_clip_model, open_clip_config, openai_architecture, encoder)
    detected = single_file.detect(source_path, options) or formats.detect(source_path, options, target)
    source_format, options, notes = detected.format, detected.options, detected.notes
    placed = destination.check_destination(dest, [source_path, *options.files()], target.output, overwrite,
                                           OUTPUT_KINDS)
    report(f"Reading {source_path}")
    loaded = formats.load(source_format, source_path, options, target.towers)
    loaded.source.found_as = resolved.found_as
    notes = [*notes, *([resolved.note] if resolved.note else [])]
    if tower is None and (source_format.towers != TOWERS or (source_format is target and loaded.towers != TOWERS)):
        # a format of one tower (a text encoder), or a tower alone in the target's format: that tower, as if chosen
        tower = loaded.towers[0]
    if tower is not None:
        loaded, left_out = formats.tower_alone(loaded, tower, projected=not without_projection)
        notes = [*notes, *left_out]
    notes = [*notes, *_one_tower_notes(loaded.source.path, loaded.towers, target, chosen=tower is not None)]
    plan = _plan(loaded, target, dest, notes, dtype, verify_logits, max_shard_bytes,
                 hf_classes="metaclip_2" if metaclip_2 else None)
    try:
        # The staged output is moved into place or removed first, then the side jobs are waited for.
        with _background() as background, destination.staged(placed, is_folder=target.output.is_folder) as staging:
            # The source's own checksums, beside the writing: a damaged file is refused before anything is kept.
            intact = background.submit(loaded.source.check)
            summary = _carry_out(plan, staging, background, report, progress)
            intact.result()
            if source_format is target and _stores_its_source(staging, loaded.source):
                raise _Unchanged
            summary.extra_files = plan.finish(summary.agreement)
    except _Unchanged:
        summary.unchanged_source = source_path
    return summary


def _stores_its_source(staging: Path, source: formats.Source) -> bool:
    """Whether the output staged at `staging` (of the source's own format) stores what `source` stores, as it
    does: a conversion within one format that changes nothing."""
    written = source.format.read(staging, SourceOptions())
    try:
        return written.stored_alike(source)
    finally:
        written.release()


@dataclass
class _Plan:
    """One conversion worked out, before anything is written: the weights as the target writes them (`output`)
    and as the logit check takes them (`checked`, in `checked_layout`), and all its writer needs."""

    target: Format
    job: Callable[[Path, ThreadPoolExecutor, writers.Progress], Job]  # the writer's, given where to write
    checked: dict
    checked_layout: str
    sides: tuple[verify.Side, verify.Side]
    summary: Summary
    verify_logits: bool
    first_blocks: Callable[[], verify.Agreement] | None = None  # where the source was cut after its first blocks
    finish: Callable[[verify.Agreement | None], list[str]] = lambda agreement: []  # the writer's, once written


def _plan(loaded: formats.Loaded, target: Format, dest: Path | str, notes: list[str], dtype: str, verify_logits: bool,
          max_shard_bytes: int, whole: formats.Loaded | None = None, hf_classes: str | None = None) -> _Plan:
    """How `loaded` becomes `target` at `dest`: its config, weights, dtypes, provenance and the logit check's
    sides; what the target cannot represent is refused here. `whole`: the model `loaded` was cut from, after
    its first blocks, whose blocks the check compares too. `hf_classes`: the family of transformers classes
    asked for (hf_config.MODEL_CLASSES), if one was."""
    read, tensors, towers, architecture, shapes = (loaded.source, loaded.tensors, loaded.towers,
                                                   loaded.architecture, loaded.shapes)
    source_format = read.format
    problems = target.incompatibilities(architecture)
    if problems:
        raise InputError(read.path, f"{target.code} cannot represent this model: " + "; ".join(problems))
    # What to restore of the target's format: the source itself, where it is in that format already (its
    # dtypes, key order, config, attributes); else what an earlier conversion recorded of it.
    same_format = source_format is target
    restored = _own_record(read, towers, target.layout) if same_format else \
        read.provenance.records.get(target.name) if read.provenance else None
    config, config_notes = target.make_config(architecture, read, restored, shapes, hf_classes)
    openai_weights = mapping.convert(tensors, source_format.layout, "openai", towers)
    weights = mapping.convert(openai_weights, "openai", target.layout, towers)
    # Beside the weights: OpenAI's TorchScript attributes, and what an earlier conversion set aside
    beside = {**(_restored_attributes(restored, architecture) if target.keeps_attributes else {}),
              **_put_back(read.path, restored, towers, target.layout, weights)}
    cast = _cast(dtype, restored, target)
    written_dtypes = cast.summary({**weights, **beside})
    config = target.config_of_dtypes(config, written_dtypes)  # a kept config records the dtype written
    earlier = read.provenance or Provenance(formats.tool(), {})
    provenance = earlier.without(target.name, formats.tool()) if same_format else \
        earlier.adding(read.record(), formats.tool(), dropping=target.name)
    summary = Summary(Path(dest), target.title_of(architecture, config), len(weights) + len(beside),
                      written_dtypes, [], architecture, notes=[*notes, *read.notes, *config_notes])
    sides = (source_format.side(read.config, architecture), target.side(config, architecture))
    checked, checked_layout = weights, target.layout
    if verify_logits:
        checked, checked_layout = _cast_once(openai_weights, weights, target.layout, cast, read.release, sides)
        weights = mapping.convert(checked, checked_layout, target.layout, towers)
    # The logit check takes `checked` alone, the writer all it writes, under the target's key prefix.
    output = mapping.with_prefix(_as_stored(_in_order({**weights, **beside}, restored), restored),
                                 target.key_prefix)
    metadata = {"format": "pt", METADATA_KEY: provenance.to_json()}

    def job(staging: Path, background: ThreadPoolExecutor, progress: writers.Progress) -> Job:
        return Job(staging, dest, read, output, cast, architecture, config, metadata, max_shard_bytes, progress,
                   read.release, verify_logits, background)

    first_blocks = None if whole is None else functools.partial(
        verify.first_blocks_agreement, whole.tensors, tensors, source_format.layout,
        (source_format.side(read.config, whole.architecture), sides[0]), whole.architecture, architecture)
    return _Plan(target, job, checked, checked_layout, sides, summary, verify_logits, first_blocks)


def _own_record(read: formats.Source, towers: tuple[str, ...], layout: str) -> Record:
    """A source already in the target's format, as the record to restore: its dtypes, key order, attributes and
    config; not its config where a tower is taken out of it (the tower alone gets a config made for it)."""
    record = read.record()
    if mapping.towers_of(record.dtypes, layout) != towers:
        return replace(record, config=None)
    return record


def _verified(plan: _Plan) -> verify.Agreement:
    """The logit check of `plan`, and of the blocks of the model it was cut from, where it was cut."""
    found = verify.check(plan.checked, plan.checked_layout, *plan.sides, plan.summary.architecture)
    if plan.first_blocks is None:
        return found
    return verify.Agreement({**plan.first_blocks().differences, **found.differences})


def _carry_out(plan: _Plan, staging: Path, background: ThreadPoolExecutor, report: Report,
               progress: writers.Progress) -> Summary:
    """Write `plan` into `staging`, with the logit check beside the writing; refused (VerificationError) where
    the check finds the models apart."""
    summary, sides = plan.summary, plan.sides
    if plan.verify_logits:
        # Compute-bound, so in a thread of its own while this one writes (I/O-bound).
        report(f"Verifying the outputs of {sides[0].reference.name} against {sides[1].reference.name}, "
               "alongside writing")
        verification = background.submit(_verified, plan)
    job = plan.job(staging, background, progress)
    report(f"Writing {len(job.weights)} tensors")
    written = plan.target.write(job)
    summary.files, summary.notes = written.files, [*summary.notes, *written.notes]
    plan.finish = written.finish
    if plan.verify_logits:
        # Verification ran on the tensors in memory; the files' bytes were read back from disk as written.
        summary.agreement = _checked(verification, job.source.path)
        summary.max_logit_difference = summary.agreement.logits
        verify.require_agreement(job.dest, summary.agreement)
    return summary


def _one_tower_notes(source: Path, towers: tuple[str, ...], target: Format, chosen: bool) -> list[str]:
    """What to tell of an output of one tower; refused where the target holds one only when asked for
    (`--tower`), and it was not."""
    if towers == TOWERS:
        return []
    (tower,) = towers
    if target.one_tower is None:
        if chosen:
            return []
        (missing,) = (name for name in TOWERS if name != tower)
        raise InputError(source, f"holds the {tower} tower alone, and {target.code} needs both: it has no "
                                 f"{missing} tower (--tower {tower} writes the {tower} tower alone)")
    return [target.one_tower.format(tower=tower)]


def _in_order(weights: dict, restored: Record | None) -> dict:
    """`weights` in the key order a source in this format had, where one was recorded."""
    order = restored.key_order if restored else []
    ordered = {key: weights[key] for key in order if key in weights}
    return {**ordered, **weights}  # keys the record does not know keep their place after it


def _put_back(source: Path, restored: Record | None, towers: tuple[str, ...], layout: str,
              weights: dict, allowed: tuple[str, ...] | None = None) -> dict[str, Strided]:
    """The tensors the recorded source held that no conversion carries (Record.aside), for an output of the
    towers that source had, of the keys `allowed` (by default, those of schema.ASIDE_KEYS[layout]); `source`
    (whose metadata holds the record) is what a bad one is refused against."""
    if restored is None or mapping.towers_of(restored.dtypes, layout) != towers:
        return {}
    allowed = ASIDE_KEYS[layout] if allowed is None else allowed
    put_back = {key: Strided.of_buffer(bytearray.fromhex(spec["hex"]), dtypes.from_name(spec["dtype"]),
                                       spec["shape"])
                for key, spec in restored.aside.items() if key in allowed and key not in weights}
    for key, tensor in put_back.items():
        formats.check_aside(source, key, tensor)
    return put_back


def _as_stored(output: dict, restored: Record | None) -> dict:
    """A one-tower output's keys without their tower prefix, where the recorded source stored them so."""
    prefix = restored.unprefixed if restored else ""
    if prefix not in HF_TOWER_PREFIXES.values() or not all(key.startswith(prefix) for key in output):
        return output
    return mapping.without_prefix(output, prefix)


def _restored_attributes(restored: Record | None, architecture: Architecture) -> dict[str, Strided]:
    """The 0-dim TorchScript attributes the recorded source had, where they still state this architecture's
    numbers (they are not weights: each restates one)."""
    import numpy

    if restored is None:
        return {}
    numbers = {"image_resolution": architecture.image_resolution, "context_length": architecture.context_length,
               "vocab_size": architecture.vocab_size}
    return {key: Strided.of_numpy(numpy.full(spec["shape"], spec["value"], dtype=dtypes.from_name(spec["dtype"]).numpy))
            for key, spec in restored.attributes.items()
            if key in OPENAI_ARCHIVE_ATTRIBUTES and spec["value"] == numbers[OPENAI_ARCHIVE_ATTRIBUTES[key]]}


def _cast(choice: str, restored: Record | None, target: Format) -> casting.Cast:
    if choice != "restore":
        return casting.Cast.from_choice(choice)
    fallback = casting.Cast.from_choice(target.fallback_dtype)
    return casting.Cast(floats_to=fallback.floats_to, recorded=restored.dtypes if restored else {})


def _cast_once(openai_weights: dict, weights: dict, layout: str, cast: casting.Cast,
               release_input: Callable[[], None], sides) -> tuple[dict, str]:
    """The writer and the logit check both need the weights in their written dtypes: cast them once, up
    front, while the frameworks are imported, handing the input's pages back as they are cast (a view that
    needed no cast reads its pages again when used). Cast in OpenAI's layout, of which every other layout's
    tensors are views (q/k/v slices of in_proj, projections transposed), so that the model is in memory once;
    in the target's `layout` only where its recorded dtypes differ within what OpenAI's layout fuses.
    Returns the cast weights and their layout."""
    verify.start_imports(verify.frameworks(*sides))
    try:
        recorded = mapping.carried_back(cast.recorded, openai_weights, "openai", layout)
    except MappingError:
        return cast.in_memory(weights, after_each=release_input), layout
    in_openai_layout = casting.Cast(floats_to=cast.floats_to, recorded=recorded)
    return in_openai_layout.in_memory(openai_weights, after_each=release_input), "openai"


@contextlib.contextmanager
def _background() -> Iterator[ThreadPoolExecutor]:
    """Threads for the compute-bound side jobs that run while the main thread writes (I/O-bound): the
    logit check in one, the tokenizer files and the source checksum in the other."""
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        yield pool
    except BaseException as error:
        # Interrupted (Ctrl-C, SIGTERM): nothing is kept, so a forward pass need not be waited for.
        pool.shutdown(wait=isinstance(error, Exception), cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _checked(verification: Future[Result], source: Path) -> Result:
    """The check's result; any failure to build or run a reference model is one line naming the source."""
    try:
        return verification.result()
    except Exception as error:  # noqa: BLE001 - a model that cannot be built is a fact about this source
        raise VerificationError(source, f"the check could not run the models on it "
                                        f"({type(error).__name__}: {one_line(error)})") from None


def convert_to_diffusers(source: Path | str, dest: Path | str, *, dtype: str = "keep", verify_logits: bool = True,
                         overwrite: bool = False, offline: bool = False, report: Report = _silent,
                         progress: writers.Progress = lambda done, total: None) -> list[Summary]:
    """A diffusion model's single-file checkpoint (Stable Diffusion 1.x, 2.x, XL, XL refiner, 3) or a standalone
    text encoder file -> a folder with the diffusers component of each CLIP text encoder it holds (`text_encoder/`
    and `tokenizer/`, `text_encoder_2/` and `tokenizer_2/`), each what diffusers' own single-file loading builds.
    `dtype`: "keep" (the file's, as diffusers keeps them) or one dtype. One summary per component. `source` may
    name a file in a Hugging Face repository (`ORG/NAME/FILE`), read from the cache (downloaded unless
    `offline`)."""
    resolved = hub.resolve(source, offline)
    source_path, found_as = resolved.path, resolved.found_as
    if not (source_path.exists() or source_path.is_symlink()):
        raise InputError(source_path, "does not exist")
    found = single_file.found_in(source_path)
    placed = destination.check_destination(dest, [source_path], diffusers_folder.DIFFUSERS_FOLDER, overwrite,
                                           OUTPUT_KINDS)
    report(f"Reading {source_path} ({found.described})")
    components = [(encoder, *diffusers_folder.component_of(
        formats.load(single_file.encoder_format(found, encoder), source_path, SourceOptions()), encoder))
        for encoder in found.encoders]
    plans, summaries = [], []
    with _background() as background, destination.staged(placed, is_folder=True) as staging:
        intact = background.submit(components[0][1].source.check)
        for encoder, component, notes, whole in components:
            # planned one at a time: one encoder's weights in memory at once (cast for the logit check)
            plan = _plan(component, diffusers_folder.component_format(encoder), Path(dest) / encoder.component,
                         notes, dtype, verify_logits, writers.DEFAULT_MAX_SHARD_BYTES, whole)
            plans.append(plan)
            (staging / encoder.component).mkdir()
            summaries.append(_carry_out(plan, staging / encoder.component, background, report, progress))
        intact.result()
        for plan, summary in zip(plans, summaries, strict=True):
            summary.extra_files = plan.finish(summary.agreement)
        # (no SHA-256 of the whole file, as to-hf's card has: hashing a 7 GB file would cost more than the
        # conversion, which reads only the encoders' bytes)
        card = hf_extras.components_card(found_as.name if found_as else source_path.name,
                                         source_path.stat().st_size, found.described, formats.tool(),
                                         [_component_facts(summary) for summary in summaries])
        writers.write_text_files(staging, card)
        summaries[-1].extra_files.extend(card)
    summaries[0].notes += [resolved.note] if resolved.note else []
    return summaries


def _component_facts(summary: Summary) -> hf_extras.ComponentFacts:
    return hf_extras.ComponentFacts(summary.dest.name, hf_config.model_class(summary.architecture), summary.dtypes,
                                    summary.architecture, summary.agreement, summary.notes)


def convert_to_single_file(source: Path | str, dest: Path | str, base: Path | str | None = None, *,
                           verify_logits: bool = True, overwrite: bool = False, offline: bool = False,
                           report: Report = _silent,
                           progress: writers.Progress = lambda done, total: None) -> Summary:
    """The text encoders of a folder of diffusers components (or of one component's folder) put back into a
    copy of the single file `base`, written as safetensors at `dest`: every other tensor of `base` byte for
    byte, in its order, with its metadata; the encoders in its layout, names and dtypes. Without `base`, the
    one encoder of `source` as a standalone encoder file (ComfyUI's layout: transformers' keys, no prefix).
    `source` and `base` may be Hugging Face repository names, read from the cache (downloaded unless `offline`)."""
    resolved = [hub.resolve(path, offline) for path in (source, *([] if base is None else [base]))]
    source_path, base = resolved[0].path, None if base is None else resolved[1].path
    for path in (source_path, *([] if base is None else [base])):
        if not (path.exists() or path.is_symlink()):
            raise InputError(path, "does not exist")
    if not source_path.is_dir():
        raise InputError(source_path, "is a file; the source is a folder of diffusers components (or one "
                                      "component's folder)")
    if Path(dest).suffix != ".safetensors":
        raise OutputError(dest, "is written as safetensors: give it a name ending in .safetensors")
    found_notes = [each.note for each in resolved if each.note]
    if base is None:
        summary = _standalone_encoder_file(source_path, dest, overwrite, report, progress, verify_logits)
        summary.notes += found_notes
        return summary
    base_path = Path(base)
    found = single_file.found_in(base_path)
    pairs = diffusers_folder.components_in(source_path, found, base_path)
    placed = destination.check_destination(dest, [source_path, base_path], writers.SINGLE_FILE, overwrite,
                                           OUTPUT_KINDS)
    report(f"Reading {base_path} ({found.described}) and {source_path}")
    base = readers.read_tensor_file(base_path)
    base_keys = set(base.tensors)
    replaced, notes, checks = {}, list(found_notes), []
    for encoder, folder in pairs:
        component = formats.load(formats.HF, folder, SourceOptions())
        base_encoder = formats.load(single_file.encoder_format(found, encoder), base_path, SourceOptions())
        put = diffusers_folder.put_back(component, base_encoder, encoder, base_keys)
        replaced.update(put.tensors)
        notes += [*put.notes, *component.source.notes]
        checks.append((component, base_encoder.source.format, {key: tensor.dtype.name
                                                               for key, tensor in base_encoder.tensors.items()}))
    kept = [encoder.name for encoder in found.encoders if encoder not in [pair[0] for pair in pairs]]
    notes += [f"{name} kept as the base has it (no folder for it in {source_path})" for name in kept]
    if base.kind != "safetensors":
        notes.append(f"the base is a {base.kind} file: its tensors are written as safetensors, in the default order")
    output = {key: replaced.get(key, tensor) for key, tensor in base.tensors.items()}
    cast = casting.Cast(recorded={key: tensor.dtype.name for key, tensor in base.tensors.items()})
    metadata = {**(readers.safetensors_metadata(base_path) if base.kind == "safetensors" else {}),
                METADATA_KEY: Provenance(formats.tool(), {}).to_json()}
    order = readers.stored_order(base_path) if base.kind == "safetensors" else None
    architecture = checks[0][0].architecture  # (the first encoder's: the notes name the others')
    summary = Summary(Path(dest), f"{found.family or 'standalone'} single file", len(output), cast.summary(output),
                      [Path(dest).name], architecture, notes=notes)
    with _background() as background, destination.staged(placed, is_folder=False) as staging:
        intact = background.submit(base.check)
        # one encoder after the other, in one thread: the two thread pool's other thread checks the base
        verification = background.submit(lambda: [_check_put_back(component, target, stored_dtypes, encoder) for
                                                  (component, target, stored_dtypes), (encoder, _)
                                                  in zip(checks, pairs, strict=True)]) if verify_logits else None
        report(f"Writing {len(output)} tensors")
        inputs = [base, *(component.source for component, _, _ in checks)]
        expected = writers.write_single_file(staging, output, metadata, cast, progress,
                                             after_each=lambda: [read.release() for read in inputs],
                                             read_back=verify_logits, order=order)
        writers.confirm_tensors(readers.read_tensor_file(staging).tensors, expected, dest)
        for agreement in _checked(verification, source_path) if verify_logits else []:
            verify.require_agreement(dest, agreement)
            summary.agreement = agreement if summary.agreement is None or \
                agreement.largest[1] > summary.agreement.largest[1] else summary.agreement
        intact.result()
    return summary


def _standalone_encoder_file(source: Path, dest: Path | str, overwrite: bool, report: Report,
                             progress: writers.Progress, read_back: bool) -> Summary:
    """The one component of `source` as a standalone encoder file: its tensors as they are (same layout and
    model code as the folder: the bytes, read back, are the check)."""
    folder = diffusers_folder.only_component(source)
    placed = destination.check_destination(dest, [source], writers.SINGLE_FILE, overwrite, OUTPUT_KINDS)
    report(f"Reading {folder}")
    component = formats.load(formats.HF, folder, SourceOptions())
    output = dict(component.tensors)
    notes = [*component.source.notes, "written as a standalone text encoder file (no --base): transformers' keys, "
                                      "no prefix, as ComfyUI's text encoder files hold them"]
    # in the dtypes of the standalone file it came from, where clipconv recorded one
    provenance = component.source.provenance
    restored = provenance.records.get(single_file.RECORD) if provenance else None
    output = _in_order({**output, **_put_back(source, restored, component.towers, "hf", output,
                                              STANDALONE_ASIDE_KEYS)}, restored)
    cast = casting.Cast(recorded={key: name for key, name in restored.dtypes.items() if key in output}
                        if restored else {})
    metadata = {METADATA_KEY: Provenance(formats.tool(), {}).adding(component.source.record(), formats.tool(),
                                                                    dropping=single_file.RECORD).to_json()}
    summary = Summary(Path(dest), "standalone text encoder file", len(output), cast.summary(output),
                      [Path(dest).name], component.architecture, notes=notes)
    with _background() as background, destination.staged(placed, is_folder=False) as staging:
        intact = background.submit(component.source.check)
        report(f"Writing {len(output)} tensors")
        expected = writers.write_single_file(staging, output, metadata, cast, progress,
                                             after_each=component.source.release, read_back=read_back)
        writers.confirm_tensors(readers.read_tensor_file(staging).tensors, expected, dest)
        intact.result()
    return summary


def _check_put_back(component: formats.Loaded, target: Format, stored_dtypes: dict, encoder) -> verify.Agreement:
    """The component's model (transformers) and the base's encoder's model code, on the component's weights as
    the base stores them (`stored_dtypes`: the base encoder's, by its keys)."""
    architecture = component.architecture
    stored = mapping.carried_back(stored_dtypes, component.tensors, "hf", encoder.layout)
    checked = casting.Cast(recorded=stored).in_memory(component.tensors)
    sides = (formats.HF.side(component.source.config, architecture), target.side(None, architecture))
    return verify.check(checked, "hf", *sides, architecture)


def convert_to_hf(source: Path | str, dest: Path | str, **options) -> Summary:
    """Any source clipconv reads -> a Hugging Face CLIPModel folder (see `convert` for the options)."""
    return convert(source, dest, "hf", **options)


def convert_to_openai(source: Path | str, dest: Path | str, **options) -> Summary:
    """Any source clipconv reads -> an OpenAI state-dict file that clip.load accepts."""
    return convert(source, dest, "openai", **options)


def convert_to_open_clip(source: Path | str, dest: Path | str, **options) -> Summary:
    """Any source clipconv reads -> an open_clip folder that `local-dir:` loads."""
    return convert(source, dest, "open_clip", **options)
