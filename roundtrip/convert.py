"""File-level conversions: what the CLI runs, usable from Python too.

Each function reads the source, maps it with the schema, writes into a staged
path beside DEST, optionally verifies logits, and only then moves the result
into place.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from roundtrip import __version__, destination, dtypes, hf_extras, mapping, readers, verify, writers
from roundtrip.config import Architecture, ConfigError, openai_incompatibilities, resolved_hf_config
from roundtrip.errors import InputError, VerificationError, first_line
from roundtrip.facts import HF_CONFIG, HF_SAFETENSORS_INDEX
from roundtrip.mapping import MappingError, OtherLayout
from roundtrip.ops import OperationError
from roundtrip.provenance import METADATA_KEY, Provenance
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES
from roundtrip.strided import Strided

Report = Callable[[str], None]

CONVERTED_BY = {"openai": "convert it with to-hf", "hf": "convert its folder with to-openai"}  # per key layout


@dataclass
class Summary:
    dest: Path
    tensors: int
    dtypes: dict[str, int]
    files: list[str]
    architecture: Architecture
    max_logit_difference: float | None = None  # None when verification was skipped
    extra_files: list[str] = field(default_factory=list)  # tokenizer, image processor, model card
    notes: list[str] = field(default_factory=list)  # what the user should know: files left out, mismatches


def _silent(_: str) -> None:
    pass


@contextlib.contextmanager
def _as_input_error(path: Path) -> Iterator[None]:
    """Report mapping and config problems of a source as one-line errors naming it."""
    try:
        yield
    except OtherLayout as error:
        hint = f"; {CONVERTED_BY[error.found]}" if error.found else ""
        raise InputError(path, f"{error}{hint}") from None
    except (MappingError, ConfigError, OperationError) as error:
        raise InputError(path, str(error)) from None


def _logit_difference(verification: Future, source: Path) -> float:
    """The logit check's result; any failure to build or run a reference model is one line naming the source."""
    try:
        return verification.result()
    except Exception as error:  # noqa: BLE001 - a model that cannot be built is a fact about this source
        raise VerificationError(source, f"the logit check could not run the models on it "
                                        f"({type(error).__name__}: {first_line(error)})") from None


def convert_to_hf(
    source: Path | str,
    dest: Path | str,
    *,
    dtype: str = "float32",
    verify_logits: bool = True,
    overwrite: bool = False,
    max_shard_bytes: int = writers.DEFAULT_MAX_SHARD_BYTES,
    report: Report = _silent,
    progress: writers.Progress = lambda done, total: None,
) -> Summary:
    """OpenAI checkpoint file -> HF CLIPModel folder."""
    source = Path(source)
    placed = destination.check_destination(dest, [source], writers.HF_FOLDER, overwrite)
    report(f"Reading {source}")
    checkpoint = readers.read_openai_checkpoint(source)
    key_order = list(checkpoint.tensors)
    attributes = {k: checkpoint.tensors.pop(k) for k in OPENAI_ARCHIVE_ATTRIBUTES if k in checkpoint.tensors}
    source_dtype_counts = dtypes.Cast().summary(checkpoint.tensors)  # the identity cast: the source's dtypes
    with _as_input_error(source):
        architecture = Architecture.from_openai_state_dict(checkpoint.tensors)
        cast = dtypes.Cast.from_choice(dtype)
        hf_weights = mapping.to_hf(checkpoint.tensors)  # views: nothing is copied yet
        provenance = Provenance(
            tool=f"clipconv {__version__}",
            source_name=source.name,
            source_format=checkpoint.format,
            source_dtypes={key: dtypes.dtype_of(t).name for key, t in checkpoint.tensors.items()},
            archive_attributes={key: _describe_attribute(source, key, t) for key, t in attributes.items()},
            key_order=key_order,
        )
    summary = Summary(Path(dest), len(hf_weights), cast.summary(hf_weights), [], architecture)
    if verify_logits:
        openai_weights = _cast_once(checkpoint.tensors, cast, checkpoint.release)
        hf_weights = mapping.to_hf(openai_weights)  # the same views, of the cast copies
    with destination.staged(placed, is_folder=True) as staging, _background() as background:
        # Compute-bound side jobs run in background threads while this thread writes (I/O-bound);
        # the logit check first, as it takes longest.
        if verify_logits:
            report("Verifying logits against OpenAI's model code, alongside writing")
            verification_job = background.submit(
                verify.max_logit_difference, openai_weights, architecture.hf_config(), architecture)
        processing_job = background.submit(hf_extras.processing_files, architecture)
        source_hash_job = background.submit(readers.sha256_of, source)
        report(f"Writing {len(hf_weights)} tensors")
        written = writers.write_hf_folder(
            staging, architecture.hf_config(), hf_weights,
            {"format": "pt", METADATA_KEY: provenance.to_json()}, cast, max_shard_bytes, progress,
            after_each=checkpoint.release, read_back=verify_logits,
        )
        summary.files = [*written, *([HF_SAFETENSORS_INDEX] if len(written) > 1 else [])]
        writers.confirm_hf_folder(staging, written, dest)
        report("Writing tokenizer and image processor files")
        processing, summary.notes = processing_job.result()
        writers.write_text_files(staging, processing)
        source_sha256 = source_hash_job.result()
        if verify_logits:
            # Verification ran on the tensors in memory; the files' bytes were read back from disk as written.
            summary.max_logit_difference = _logit_difference(verification_job, source)
            verify.require_agreement(dest, summary.max_logit_difference)
        # Last, because the card reports the verification figure.
        card = hf_extras.model_card(hf_extras.CardFacts(
            source_name=source.name, source_sha256=source_sha256, source_format=checkpoint.format,
            source_dtypes=source_dtype_counts, written_dtypes=summary.dtypes, tool=provenance.tool,
            architecture=architecture, max_logit_difference=summary.max_logit_difference, notes=summary.notes,
        ))
        writers.write_text_files(staging, card)
        summary.extra_files = [*processing, *card]
    return summary


def _cast_once(weights: dict, cast: dtypes.Cast, release_input: Callable[[], None]) -> dict:
    """The writer and the logit check both need the weights in their written dtypes: cast them once, up
    front, while torch and transformers are imported, handing the input's pages back as they are cast
    (a view that needed no cast reads its pages again when used)."""
    verify.start_imports()
    return cast.in_memory(weights, after_each=release_input)


@contextlib.contextmanager
def _background() -> Iterator[ThreadPoolExecutor]:
    """Threads for the compute-bound side jobs that run while the main thread writes (I/O-bound): the
    logit check in one, the tokenizer files and the source checksum in the other."""
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _describe_attribute(source: Path, key: str, tensor: Strided) -> dict:
    if tensor.numel() != 1 or tensor.is_floating_point():
        raise InputError(source, f"{key} should be a single integer, found shape {tuple(tensor.shape)} {tensor.dtype}")
    return {"dtype": tensor.dtype.name, "shape": list(tensor.shape), "value": int(tensor.item())}


def _in_recorded_order(state_dict: dict, provenance: Provenance | None) -> dict:
    order = provenance.key_order if provenance else []
    ordered = {key: state_dict[key] for key in order if key in state_dict}
    return {**ordered, **state_dict}  # keys the record does not know keep their place after it


def _restore_attributes(provenance: Provenance | None) -> dict[str, Strided]:
    import numpy

    if provenance is None:
        return {}
    return {
        key: Strided.of_numpy(numpy.full(spec["shape"], spec["value"], dtype=dtypes.from_name(spec["dtype"]).numpy))
        for key, spec in provenance.archive_attributes.items()
    }


def convert_to_openai(
    source: Path | str,
    dest: Path | str,
    *,
    dtype: str = "restore",
    verify_logits: bool = True,
    overwrite: bool = False,
    report: Report = _silent,
    progress: writers.Progress = lambda done, total: None,
) -> Summary:
    """HF CLIPModel folder -> OpenAI state-dict file that clip.load accepts."""
    source = Path(source)
    placed = destination.check_destination(dest, [source], destination.ONE_FILE, overwrite)
    report(f"Reading {source}")
    folder = readers.read_hf_folder(source)
    notes = _tokenizer_warnings(source)
    with _as_input_error(source):
        mapping.check_keys(folder.tensors, "hf")  # names missing keys as the folder names them
        openai_weights = mapping.to_openai(folder.tensors)  # q/k/v fused as they are written
        architecture = Architecture.from_openai_state_dict(openai_weights)
    try:
        problems = openai_incompatibilities(resolved_hf_config(folder.config), architecture)
    except ConfigError as error:
        raise InputError(source / HF_CONFIG, f"is not a valid CLIP config ({error})") from None
    if problems:
        raise InputError(source, "OpenAI's CLIP code cannot represent this model: " + "; ".join(problems))
    if dtype == "restore":
        cast = dtypes.Cast(recorded=folder.provenance.source_dtypes if folder.provenance else {})
    else:
        cast = dtypes.Cast.from_choice(dtype)
    if verify_logits:
        openai_weights = _cast_once(openai_weights, cast, folder.release)
    output = _in_recorded_order({**openai_weights, **_restore_attributes(folder.provenance)}, folder.provenance)
    summary = Summary(Path(dest), len(output), cast.summary(output), [placed.name], architecture, notes=notes)
    with destination.staged(placed, is_folder=False) as staging, _background() as background:
        if verify_logits:
            report("Verifying logits against transformers, alongside writing")
            verification_job = background.submit(
                verify.max_logit_difference, openai_weights, folder.config, architecture)
        report(f"Writing {len(output)} tensors")
        expected = writers.write_openai_file(staging, output, cast, progress, after_each=folder.release,
                                             read_back=verify_logits)
        written = readers.read_openai_checkpoint(staging)
        writers.confirm_tensors(written.tensors, expected, dest)
        if verify_logits:
            # Verification ran on the tensors in memory; the file's bytes were read back from disk as written.
            summary.max_logit_difference = _logit_difference(verification_job, source)
            verify.require_agreement(dest, summary.max_logit_difference)
    return summary


def _tokenizer_warnings(folder: Path) -> list[str]:
    """to-openai writes no tokenizer; it only warns when the folder's would not match clip.tokenize."""
    try:
        table = readers.read_tokenizer_table(folder)
    except InputError as error:
        return [f"clip.tokenize may not reproduce this folder's tokenizer: {error}"]
    difference = None if table is None else hf_extras.tokenizer_difference(table)
    if difference is None:
        return []
    return [f"clip.tokenize will not reproduce this folder's tokenizer: {folder}: {difference}"]
