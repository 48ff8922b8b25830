"""All reading of input files: checkpoint files, Hugging Face and open_clip model folders, JSON configs.

Nothing from an input file is ever executed: pickles are read only with
`torch.load(..., weights_only=True)`, torch's zip files (`torch.save` since
PyTorch 1.6, and TorchScript archives) with the restricted reader in
`roundtrip.torch_zip`, safetensors with the checked reader in
`roundtrip.safetensors_file`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from roundtrip import safetensors_file, torch_zip
from roundtrip.dtypes import dtype_of, raw_bytes
from roundtrip.errors import InputError, one_line
from roundtrip.facts import (
    HF_CONFIG,
    HF_PICKLE,
    HF_PICKLE_INDEX,
    HF_SAFETENSORS,
    HF_SAFETENSORS_INDEX,
    MERGES_FILE,
    MERGES_HEADER,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_PICKLE,
    OPEN_CLIP_SAFETENSORS,
    TOKENIZER_JSON,
    VOCAB_FILE,
    BPETable,
)
from roundtrip.provenance import MAX_ZIP_RECORD_BYTES, METADATA_KEY, ZIP_RECORD, Provenance
from roundtrip.strided import Strided
from roundtrip.torch_zip import ArchiveError, DamagedArchive

LFS_POINTER_PREFIX = b"version https://git-lfs"
SAFETENSORS_LENGTH_BYTES = 8  # a safetensors file starts with its header's length
ZIP_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"  # how a zip archive starts (torch.save since PyTorch 1.6)
PICKLE_PROTOCOL_OPCODE = b"\x80"  # how a pickle of protocol 2 or later starts, as torch.save's legacy files do
TRAINING_WRAPPER_KEY = "state_dict"  # {"state_dict": ..., "epoch": ...} as training loops write it
DATA_PARALLEL_PREFIX = "module."  # what nn.DataParallel / DDP put before every key

HASH_CHUNK_BYTES = 16 * 2**20  # each chunk is one wait for the interpreter, which other threads hold
# What Python's zipfile raises on a damaged zip's structure: what it raises on a damaged member, and on a
# central directory with impossible fields (a version, an offset, a name).
ZIP_PROBLEMS = (*torch_zip.ZIPFILE_DAMAGE, OSError, ValueError, UnicodeDecodeError, OverflowError)


@dataclass
class TensorFile:
    """The state dict of one file (unwrapped from a training checkpoint, `module.` prefix stripped)."""

    tensors: dict[str, Strided]
    kind: str  # "torchscript", "state_dict" (torch.save, zip or legacy pickle) or "safetensors"
    release: Callable[[], None] = lambda: None  # give memory-mapped pages back; they reload on use
    provenance: Provenance | None = None  # what clipconv recorded in a file it wrote
    # Every checksum the format carries, checked (a zip's CRC-32 per record; safetensors and legacy pickles
    # carry none): InputError naming the file and the damaged record. Seconds for GBs: the caller runs it
    # beside its other work, and before it keeps any output.
    check: Callable[[], None] = lambda: None
    # How the state dict was packed, where not bare, for people ("inside a training checkpoint's {...}", "keys
    # prefixed module."): signs of a training run, which OpenAI's releases are not.
    packing: list[str] = field(default_factory=list)


@dataclass
class HFFolder:
    config: dict
    tensors: dict[str, Strided]
    provenance: Provenance | None
    files: list[TensorFile]  # one per weight file, in the order of `weight_files`
    weight_files: list[Path]

    def release(self) -> None:
        for file in self.files:
            file.release()

    def check(self) -> None:
        for file in self.files:
            file.check()


def read_tensor_file(path: Path) -> TensorFile:
    """A torch.save file (zip or legacy pickle), a TorchScript archive or a safetensors file."""
    head = _require_file(path)
    if _looks_like_safetensors(head, path):
        tensors, metadata, release = _read_safetensors(path)
        return TensorFile(tensors, "safetensors", release, _provenance(path, metadata))
    contents = _read_torch_file(path, head)
    kind = "torchscript" if contents.torchscript else "state_dict"
    tensors, packing = _unwrap_state_dict(path, contents.content)
    return TensorFile(tensors, kind, contents.release, _zip_provenance(path),
                      check=lambda: _checked(path, contents.check), packing=packing)


def _zip_provenance(path: Path) -> Provenance | None:
    """The record clipconv keeps in a torch.save zip it wrote (a legacy pickle holds none)."""
    if not _checked(path, lambda: zipfile.is_zipfile(path)):
        return None
    with zipfile.ZipFile(path) as archive:  # whose entries torch_zip.read has checked
        record = next((info for info in archive.infolist() if info.filename.split("/", 1)[-1] == ZIP_RECORD), None)
        if record is None:
            return None
        if record.file_size > MAX_ZIP_RECORD_BYTES:
            raise InputError(path, f"has a {ZIP_RECORD} record of {record.file_size:,} bytes, more than clipconv's "
                                   f"records hold ({MAX_ZIP_RECORD_BYTES:,})")
        text = _checked(path, lambda: archive.read(record))
    return _provenance(path, text)


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    """safetensors has no magic number: an 8-byte header length within the file, then a JSON object."""
    return (len(head) > SAFETENSORS_LENGTH_BYTES and head[SAFETENSORS_LENGTH_BYTES:SAFETENSORS_LENGTH_BYTES + 1] == b"{"
            and int.from_bytes(head[:SAFETENSORS_LENGTH_BYTES], "little") < path.stat().st_size)


def _read_torch_file(path: Path, head: bytes) -> torch_zip.Contents:
    """What a torch.save file or TorchScript archive holds, running nothing from it."""
    if _checked(path, lambda: zipfile.is_zipfile(path)):
        return _checked(path, lambda: torch_zip.read(path))
    if head.startswith(ZIP_LOCAL_HEADER_SIGNATURE):
        raise InputError(path, "is not a readable PyTorch checkpoint (a zip archive whose end is missing: truncated "
                               "or damaged)")
    if not head.startswith(PICKLE_PROTOCOL_OPCODE):
        raise InputError(path, "is not a readable PyTorch checkpoint: neither a zip archive (torch.save, "
                               "TorchScript), a pickle (torch.save before PyTorch 1.6) nor a safetensors file")
    return torch_zip.Contents(_load_pickle(path), False, _nothing, _nothing)  # (which has no checksums)


def _checked(path: Path, read: Callable):
    """`read()`, its archive's problems as one-line InputErrors naming `path`."""
    try:
        return read()
    except DamagedArchive as error:
        raise InputError(path, str(error)) from None
    except ArchiveError as error:
        raise InputError(path, f"refused: {error}") from None
    except ZIP_PROBLEMS as error:
        raise InputError(path, f"is not a readable PyTorch checkpoint ({one_line(error)})") from None


def _nothing() -> None:
    pass


def _require_file(path: Path) -> bytes:
    """The first bytes of a checkpoint file that exists, is not empty and is not a Git LFS pointer."""
    if path.is_dir():
        raise InputError(path, "is a folder, expected a checkpoint file")
    if not path.is_file():
        raise InputError(path, "does not exist")
    with open(path, "rb") as handle:
        head = handle.read(len(LFS_POINTER_PREFIX))
    if not head:
        raise InputError(path, "is empty")
    if head == LFS_POINTER_PREFIX:
        raise InputError(path, "is a Git LFS pointer, not the checkpoint itself (run `git lfs pull`)")
    return head


def _load_pickle(path: Path):
    """torch.load, only ever with weights_only=True (legacy pickles and pytorch_model.bin)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4": we report below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(path, _unpickling_problem(str(error))) from None
    except Exception as error:  # noqa: BLE001 - truncated zips, random bytes, ...
        raise InputError(path, f"is not a readable PyTorch checkpoint ({one_line(error)})") from None


def _unpickling_problem(message: str) -> str:
    # torch's own text suggests turning weights_only off; report only what the file contains.
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"refused: it references {found.group(1)}, and only tensors are loaded from checkpoints"
    operand = re.search(r"Unsupported operand (\d+)", message)
    detail = f"pickle opcode {operand.group(1)} is not allowed" if operand else "not a pickle of tensors"
    return f"is not a readable PyTorch checkpoint ({detail})"


def _unwrap_state_dict(path: Path, loaded) -> tuple[dict[str, Strided], list[str]]:
    """The state dict in what a file holds, and how it was packed (see TensorFile.packing)."""
    packing = []
    if isinstance(loaded, dict) and isinstance(loaded.get(TRAINING_WRAPPER_KEY), dict):
        beside = sorted(str(key) for key in loaded if key != TRAINING_WRAPPER_KEY)
        packing.append(f'inside {{"{TRAINING_WRAPPER_KEY}": ...}}' + (f" with {', '.join(beside[:4])}" if beside
                                                                      else ""))
        loaded = loaded[TRAINING_WRAPPER_KEY]
    if not isinstance(loaded, dict) or not loaded:
        raise InputError(path, f"holds a {type(loaded).__name__}, expected a state dict of tensors")
    if all(isinstance(key, str) and key.startswith(DATA_PARALLEL_PREFIX) for key in loaded):
        packing.append(f'keys prefixed "{DATA_PARALLEL_PREFIX}"')
        loaded = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in loaded.items()}
    views = {key: _as_view(value) for key, value in loaded.items()}
    not_tensors = [str(key) for key, view in views.items() if view is None]
    if not_tensors:
        raise InputError(path, f"entries that are not tensors: {', '.join(sorted(not_tensors)[:5])}")
    return views, packing


def _as_view(value) -> Strided | None:
    """A tensor as a view of its bytes, or None for anything else."""
    if isinstance(value, Strided):
        return value
    torch = sys.modules.get("torch")  # only legacy files, read by torch.load, give torch tensors
    if torch is not None and isinstance(value, torch.Tensor):
        return Strided.of_buffer(raw_bytes(value), dtype_of(value), tuple(value.shape))
    return None


def read_hf_folder(folder: Path, check_config: Callable[[dict], object] = lambda config: None) -> HFFolder:
    """A Hugging Face model folder: its config.json (`check_config` refuses one that is not the model sought, with
    a ValueError, before any weight is read) and its weights."""
    if folder.is_file():
        raise InputError(folder, "is a file, expected a Hugging Face model folder (OpenAI checkpoint files convert "
                                 "with to-hf)")
    if not folder.is_dir():
        raise InputError(folder, "does not exist")
    config = _read_config(folder)
    try:
        check_config(config)
    except ValueError as error:
        raise InputError(folder / HF_CONFIG, str(error)) from None
    weight_files, weight_map = _weight_files(folder)
    tensors, files = {}, []
    for file in weight_files:
        read = _read_weight_file(file)
        files.append(read)
        file_tensors = read.tensors
        twice = sorted(set(file_tensors) & set(tensors))
        if twice:
            raise InputError(file, f"tensor {twice[0]} is also in another shard")
        if weight_map is not None:
            _check_against_index(file, set(file_tensors), weight_map)
        tensors.update(file_tensors)
        if read.provenance != files[0].provenance:
            raise InputError(file, "shards disagree about their clipconv provenance")
    if weight_map is not None and set(weight_map) != set(tensors):
        missing = sorted(set(weight_map) - set(tensors))
        raise InputError(folder, f"the shard index lists tensors no shard holds: {', '.join(missing[:5])}")
    return HFFolder(config, tensors, files[0].provenance, files, weight_files)


@dataclass
class OpenClipFolder:
    config: object  # open_clip_config.json, as parsed
    weights: TensorFile
    weights_path: Path


def read_open_clip_folder(folder: Path) -> OpenClipFolder:
    """A folder as open_clip's hub folders are: open_clip_config.json beside its weights file."""
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    config = read_json(folder / OPEN_CLIP_CONFIG)
    for name in (OPEN_CLIP_SAFETENSORS, OPEN_CLIP_PICKLE):
        if (folder / name).is_file():
            return OpenClipFolder(config, read_tensor_file(folder / name), folder / name)
    raise InputError(folder, f"has no weights ({OPEN_CLIP_SAFETENSORS} or {OPEN_CLIP_PICKLE}) beside its "
                             f"{OPEN_CLIP_CONFIG}")


def read_json(path: Path) -> object:
    """A JSON file, parsed (what it should hold is for its reader to check)."""
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"is not valid JSON ({error})") from None


def _check_against_index(file: Path, found: set[str], weight_map: dict[str, str]) -> None:
    unlisted = sorted(key for key in found if weight_map.get(key) != file.name)
    if unlisted:
        listed = weight_map.get(unlisted[0])
        where = f"the index puts it in {listed}" if listed else "the index does not list it"
        raise InputError(file, f"holds tensor {unlisted[0]} but {where}")


def _read_weight_file(file: Path) -> TensorFile:
    if file.suffix == ".bin":
        return read_tensor_file(file)
    tensors, metadata, release = _read_safetensors(file)
    return TensorFile(tensors, "safetensors", release, _provenance(file, metadata))


def _read_config(folder: Path) -> dict:
    path = folder / HF_CONFIG
    if not path.is_file():
        raise InputError(folder, f"has no {HF_CONFIG}, not a Hugging Face model folder")
    return read_json(path)  # what it describes is hf_config's to say


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files to read and, for a sharded checkpoint, its index's weight map."""
    # safetensors wins over pickles, as in transformers; hub folders often hold both.
    for single, index in ((HF_SAFETENSORS, HF_SAFETENSORS_INDEX), (HF_PICKLE, HF_PICKLE_INDEX)):
        has_single, has_index = (folder / single).is_file(), (folder / index).is_file()
        if has_single and has_index:
            raise InputError(folder, f"holds both {single} and {index}; which one is meant is ambiguous")
        if has_single:
            return [folder / single], None
        if has_index:
            weight_map = _read_weight_map(folder / index)
            return _shards_of(folder / index, weight_map), weight_map
    raise InputError(folder, f"has no weights ({HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_PICKLE})")


def _read_weight_map(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise InputError(index_path, f"is not a valid shard index ({type(error).__name__}: {error})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) and isinstance(name, str) for key, name in weight_map.items()
    ):
        raise InputError(index_path, "weight_map is not a map from tensor names to file names")
    return weight_map


def _shards_of(index_path: Path, weight_map: dict[str, str]) -> list[Path]:
    folder = index_path.parent.resolve()
    shards = []
    for name in dict.fromkeys(weight_map.values()):
        shard = (folder / name).resolve()  # resolves "..", absolute paths and symlinks alike
        if shard.parent != folder or shard.name != name:
            raise InputError(index_path, f"points outside its folder: {name}")
        if not shard.is_file():
            raise InputError(index_path, f"names a missing shard: {name}")
        shards.append(shard)
    return shards


def _read_safetensors(file: Path) -> tuple[dict[str, Strided], str | None, Callable[[], None]]:
    try:
        tensors, metadata, release = safetensors_file.read(file)
    except safetensors_file.SafetensorsError as error:
        raise InputError(file, f"is not a valid safetensors file: {error}") from None
    return tensors, metadata.get(METADATA_KEY), release


def _provenance(file: Path, text: str | bytes | None) -> Provenance | None:
    if text is None:
        return None
    try:
        return Provenance.from_json(text)
    except (ValueError, TypeError) as error:
        raise InputError(file, f"has malformed clipconv metadata ({error})") from None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's __metadata__."""
    return safetensors_file.metadata(path)


def stored_order(path: Path) -> list[str]:
    """The names of a safetensors file's tensors in the order of their bytes."""
    return safetensors_file.stored_order(path)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are GBs) into one reused buffer."""
    digest = hashlib.sha256()
    chunk = memoryview(bytearray(HASH_CHUNK_BYTES))
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(chunk):
            digest.update(chunk[:count])
    return digest.hexdigest()


def read_text_files(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """Those of the files `names` that `folder` holds, as UTF-8 text exactly as stored (line ends too)."""
    found = {}
    for name in sorted(names):
        path = folder / name
        if path.is_file():
            try:
                with open(path, encoding="utf-8", newline="") as handle:
                    found[name] = handle.read()
            except UnicodeDecodeError as error:
                raise InputError(path, f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return found


def read_tokenizer_table(folder: Path) -> BPETable | None:
    """A folder's BPE vocabulary and merges: vocab.json + merges.txt, else tokenizer.json; None if it has neither."""
    vocab_path, merges_path, tokenizer_path = folder / VOCAB_FILE, folder / MERGES_FILE, folder / TOKENIZER_JSON
    try:
        if vocab_path.is_file() and merges_path.is_file():
            lines = merges_path.read_text(encoding="utf-8").splitlines()
            merges = [line.split(" ") for line in lines if line and not line.startswith(MERGES_HEADER)]
            return _bpe_table(json.loads(vocab_path.read_text(encoding="utf-8")), merges)
        if tokenizer_path.is_file():
            model = json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]
            # tokenizers writes merges as [a, b] pairs; older versions wrote "a b" strings.
            merges = [pair.split(" ") if isinstance(pair, str) else pair for pair in model["merges"]]
            return _bpe_table(model["vocab"], merges)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise InputError(folder, f"its tokenizer files are unreadable ({error})") from None
    return None


def _bpe_table(vocab, merges: list) -> BPETable:
    # The files may come from anyone: check the shapes before anything compares or sorts them.
    if not isinstance(vocab, dict) or not all(isinstance(token, str) and type(n) is int for token, n in vocab.items()):
        raise TypeError("the vocabulary is not a table of tokens to ids")
    if not all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
               for pair in merges):
        raise TypeError("a merge is not a pair of tokens")
    return BPETable(vocab, [tuple(pair) for pair in merges])
