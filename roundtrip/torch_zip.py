"""Read torch's zip container, which both `torch.save` and `torch.jit.save` write, running nothing in it.

`torch.jit.load` compiles and runs the Python-like code stored in an archive's
`code/` folder, and zero-fills storage records that are too short. This reader
instead:
1. checks the zip: one top folder, no duplicate or path-traversing names, the
   members it needs present, little-endian data;
2. unpickles `data.pkl` with an allow-list: tensors are rebuilt from `data/<n>`
   records whose sizes and views are checked, TorchScript's `__torch__.*`
   classes become inert `ScriptObject`s, and any other global is refused by name;
3. for TorchScript, takes parameter and buffer names from the class declarations
   in `code/` by parsing them with `ast` (never compiling or running them), and
   walks the module tree the way `nn.Module.state_dict()` does.

Tensors are `Strided` views of one private memory map of the file (no tensor
library is imported to read it); `release()` hands its
pages back to the kernel (they are read again if used again), so a converter
that streams tensor by tensor keeps its memory flat however large the file.

Every record carries a CRC-32 in the zip's central directory. Members read
through `zipfile` (data.pkl, code/) are checked by it; `check()` checks every
record against its CRC-32, the mapped ones included, so that a converter can
run it beside its other work and refuse a damaged file before its output is
moved into place.
"""

from __future__ import annotations

import ast
import io
import math
import mmap
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from roundtrip.casting import Cast, ScratchSink, cast_into, scratch_space
from roundtrip.dtypes import DTYPES, DType
from roundtrip.output_file import OutputFile
from roundtrip.strided import Strided, contiguous_strides

STORAGE_DTYPES = {dtype.storage: dtype for dtype in DTYPES.values()}  # torch.FloatStorage -> float32, ...
# torch.jit._pickle helpers that TorchScript's pickler emits for typed lists; all they do is return a list.
LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
MAX_CODE_BYTES = 16 * 2**20  # a declaration file larger than this is not a real model's
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ZIP_LOCAL_HEADER = struct.Struct("<4s2xH18xHH")  # signature, flags, ..., file name length, extra field length
UTF8_NAME_FLAG = 0x800  # general purpose bit 11: the name is UTF-8 (else cp437)
HEADER_PREFETCH_BYTES = 4096  # a local header with torch's names and padding; longer ones are read on use
CRC_CHUNK_BYTES = 16 * 2**20  # zlib lets go of the interpreter while it sums each chunk
BAD_CRC = re.compile(r"Bad CRC-32 for file")  # zipfile's message
# What zipfile raises opening or reading a member whose bytes or headers are damaged: a bad CRC-32, a broken
# compressed stream, a local header that is not the member's, flags or a method it cannot read.
ZIPFILE_DAMAGE = (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, struct.error)


class ArchiveError(ValueError):
    """The archive is malformed or holds something this reader does not accept."""


class DamagedArchive(ArchiveError):
    """A record's bytes do not match the CRC-32 the archive gives for them, or its headers contradict the
    archive's directory."""

    def __init__(self, name: str, error: BaseException | str | None = None):
        if error is None or BAD_CRC.search(str(error)) or isinstance(error, zlib.error):
            super().__init__(f"record {name}: CRC-32 mismatch: the file is damaged")
        else:
            super().__init__(f"record {name}: its zip headers contradict the archive's directory ({error}): "
                             "the file is damaged")


class ScriptObject:
    """An inert stand-in for an instance of a TorchScript class: its type name and pickled state."""

    qualified_name = "__torch__"

    def __init__(self, *args):
        if args:
            raise ArchiveError(f"{self.qualified_name} is constructed with arguments")
        self.state: dict = {}

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise ArchiveError(f"{self.qualified_name} carries custom state, which only its own code could restore")
        self.state = state


@cache
def _script_class(qualified_name: str) -> type:
    return type(qualified_name.rpartition(".")[2], (ScriptObject,), {"qualified_name": qualified_name})


@dataclass(frozen=True)
class _StorageType:
    dtype: DType


@dataclass(frozen=True)
class Declaration:
    """What `code/` declares about one TorchScript class."""

    is_module: bool
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]
    has_setstate: bool


def is_torchscript(archive: zipfile.ZipFile) -> bool:
    # torch.jit.save archives carry the model's code; torch.save archives do not.
    return any("/code/" in name for name in archive.namelist())


@dataclass
class Contents:
    content: object  # what torch.save pickled; for a TorchScript archive, the module's state dict
    torchscript: bool
    release: Callable[[], None]  # hand the file's mapped pages back to the kernel
    check: Callable[[], None]  # every record against its CRC-32; raises DamagedArchive


def read_torchscript_state_dict(path: Path) -> dict[str, Strided]:
    """The state dict `torch.jit.load(path).state_dict()` would give, without running the archive."""
    return read(path).content


def read(path: Path) -> Contents:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        members = _check_members(archive)
        _prefetch_local_headers(handle.fileno(), members.values())
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        torchscript = is_torchscript(archive)
        reader = _ArchiveReader(archive, members, mapped, torchscript)
        root = reader.unpickle_data()
        content = reader.state_dict(root) if torchscript else root
    return Contents(content, torchscript, lambda: mapped.madvise(mmap.MADV_DONTNEED),
                    lambda: reader.check_records(path))


def _prefetch_local_headers(fd: int, infos) -> None:
    """Ask for every record's local header at once: read one by one from a cold file (one just written
    past the page cache), each costs a disk round trip."""
    if hasattr(os, "posix_fadvise"):
        for info in infos:
            os.posix_fadvise(fd, info.header_offset, HEADER_PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)


def _check_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ArchiveError(f"zip entry {duplicate} appears more than once")
    for name in names:
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise ArchiveError(f"zip entry {name!r} points outside the archive")
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or not all("/" in name for name in names):
        raise ArchiveError("entries are not under one top-level folder, as torch.jit.save writes them")
    (top,) = tops
    members = {name[len(top) + 1:]: info for name, info in zip(names, infos, strict=True)}
    for required in ("data.pkl",):
        if required not in members:
            raise ArchiveError(f"archive member {top}/{required} is missing")
    if "byteorder" in members and read_member(archive, members["byteorder"]).strip() != b"little":
        raise ArchiveError("tensor data is not little-endian")
    return members


class _ArchiveReader:
    def __init__(self, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], mapped: mmap.mmap,
                 torchscript: bool):
        self.archive, self.members, self.mapped, self.torchscript = archive, members, mapped, torchscript
        self.storages: dict[str, Strided] = {}
        self.declarations: dict[str, Declaration] = {}

    # -- data.pkl ----------------------------------------------------------------------------------------

    def unpickle_data(self) -> ScriptObject:
        unpickler = _AllowListUnpickler(io.BytesIO(read_member(self.archive, self.members["data.pkl"])), self)
        try:
            root = unpickler.load()
        except ArchiveError:
            raise
        except Exception as error:  # noqa: BLE001 - truncated or corrupt pickles raise many types
            raise ArchiveError(f"data.pkl cannot be read ({type(error).__name__}: {error})") from None
        if self.torchscript and not isinstance(root, ScriptObject):
            raise ArchiveError(f"data.pkl holds a {type(root).__name__}, not a TorchScript module")
        return root

    def storage(self, persistent_id) -> Strided:
        if not (isinstance(persistent_id, tuple) and len(persistent_id) == 5 and persistent_id[0] == "storage"):
            raise ArchiveError(f"unexpected persistent id {persistent_id!r:.80}")
        _, storage_type, key, _location, numel = persistent_id
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise ArchiveError(f"malformed storage reference for record {key!r:.40}")
        if not (isinstance(key, str) and key.isdigit()):
            raise ArchiveError(f"storage record name {key!r:.40} is not a number")
        if key not in self.storages:
            self.storages[key] = self._read_record(key, storage_type.dtype, numel)
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype or storage.numel() != numel:
            raise ArchiveError(f"storage record data/{key} is referenced with two different types or sizes")
        return storage

    def _read_record(self, key: str, dtype: DType, numel: int) -> Strided:
        info = self.members.get(f"data/{key}")
        if info is None:
            raise ArchiveError(f"storage record data/{key} is missing")
        expected = numel * dtype.itemsize
        if info.file_size != expected:
            raise ArchiveError(
                f"storage record data/{key} holds {info.file_size} bytes, its tensors need {expected}"
            )
        if numel == 0:
            return Strided.of_buffer(bytearray(), dtype, (0,))
        if info.compress_type != zipfile.ZIP_STORED:
            return Strided.of_buffer(bytearray(read_member(self.archive, info)), dtype, (numel,))
        return Strided.of_buffer(self.mapped, dtype, (numel,), start=self._data_offset(info))

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        header = self.mapped[info.header_offset: info.header_offset + ZIP_LOCAL_HEADER.size]
        if len(header) != ZIP_LOCAL_HEADER.size:
            raise ArchiveError(f"zip entry {info.filename} lies beyond the end of the file")
        signature, flags, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise ArchiveError(f"zip entry {info.filename} has no local header")
        name_start = info.header_offset + ZIP_LOCAL_HEADER.size
        name = self.mapped[name_start: name_start + name_length].decode(
            "utf-8" if flags & UTF8_NAME_FLAG else "cp437", errors="replace")
        if name != info.orig_filename:  # as zipfile checks: a local header that is not its record's
            raise DamagedArchive(info.filename, f"the local header names {name!r}")
        if info.compress_size != info.file_size:  # a stored record's two sizes are one
            raise DamagedArchive(info.filename, f"stored {info.compress_size} bytes of {info.file_size}")
        start = name_start + name_length + extra_length
        if start + info.file_size > len(self.mapped):
            raise ArchiveError(f"zip entry {info.filename} runs past the end of the file")
        return start

    def check_records(self, path: Path) -> None:
        """Every record as zipfile would open it (local header, flags, method) and its bytes against the
        CRC-32 the central directory gives: compressed ones inflated by zipfile, stored ones summed from the
        map in chunks (zlib lets go of the interpreter while it sums them)."""
        with zipfile.ZipFile(path) as archive:
            for info in self.members.values():
                if info.compress_type != zipfile.ZIP_STORED:
                    read_member(archive, info)
                    continue
                _open_member(archive, info)
                if self._crc_of(self._data_offset(info), info.file_size) != info.CRC:
                    raise DamagedArchive(info.filename)

    def _crc_of(self, start: int, size: int) -> int:
        """The CRC-32 of mapped bytes, handing each chunk's pages back once summed (a private map: they are
        read again if the writer still needs them), so that checking adds no memory."""
        crc = 0
        with memoryview(self.mapped) as view:
            for offset in range(start, start + size, CRC_CHUNK_BYTES):
                end = min(offset + CRC_CHUNK_BYTES, start + size)
                crc = zlib.crc32(view[offset:end], crc)
                first_page = offset - offset % mmap.PAGESIZE
                self.mapped.madvise(mmap.MADV_DONTNEED, first_page, end - first_page)
        return crc

    # -- code/ -------------------------------------------------------------------------------------------

    def declaration(self, qualified_name: str) -> Declaration:
        if qualified_name not in self.declarations:
            self.declarations[qualified_name] = self._parse_declaration(qualified_name)
        return self.declarations[qualified_name]

    def _parse_declaration(self, qualified_name: str) -> Declaration:
        module_path, _, class_name = qualified_name.rpartition(".")
        member = "code/" + module_path.replace(".", "/") + ".py"
        info = self.members.get(member)
        if info is None:
            raise ArchiveError(f"archive member {member} (declaring {qualified_name}) is missing")
        if info.file_size > MAX_CODE_BYTES:
            raise ArchiveError(f"archive member {member} is implausibly large ({info.file_size} bytes)")
        for node in _parse_code(member, read_member(self.archive, info)).body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                return _declaration_of(node)
        raise ArchiveError(f"{member} does not declare class {class_name}")

    # -- module tree -------------------------------------------------------------------------------------

    def state_dict(self, root: ScriptObject) -> dict[str, Strided]:
        tensors: dict[str, Strided] = {}
        self._collect(root, "", tensors, depth=0)
        return tensors

    def _collect(self, module: ScriptObject, prefix: str, tensors: dict, depth: int) -> None:
        if depth > 64:
            raise ArchiveError("modules are nested implausibly deep")
        declaration = self.declaration(module.qualified_name)
        if declaration.has_setstate:
            raise ArchiveError(f"{module.qualified_name} defines __setstate__, which only TorchScript could run")
        for name in declaration.parameters + declaration.buffers:
            value = module.state.get(name)
            if value is None:
                continue  # declared but unset, e.g. a Linear without bias
            if not isinstance(value, Strided):
                raise ArchiveError(f"{prefix}{name} is declared a parameter or buffer but holds {type(value).__name__}")
            tensors[prefix + name] = value
        for name, value in module.state.items():
            if isinstance(value, ScriptObject) and self.declaration(value.qualified_name).is_module:
                self._collect(value, f"{prefix}{name}.", tensors, depth + 1)


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes through zipfile, which checks its CRC-32: damage as DamagedArchive naming it."""
    try:
        return archive.read(info)
    except ZIPFILE_DAMAGE as error:
        raise DamagedArchive(info.filename, error) from None


def _open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """zipfile's checks of a member's local header, flags and method, without reading its data."""
    try:
        with archive.open(info):
            pass
    except ZIPFILE_DAMAGE as error:
        raise DamagedArchive(info.filename, error) from None


def _parse_code(member: str, source: bytes) -> ast.Module:
    try:
        return ast.parse(source.decode("utf-8"), filename=member)  # parsed only: never compiled or run
    except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as error:
        raise ArchiveError(f"archive member {member} cannot be parsed ({type(error).__name__})") from None


def _declaration_of(node: ast.ClassDef) -> Declaration:
    names = {"__parameters__": (), "__buffers__": ()}
    has_setstate = False
    for statement in node.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                names[target.id] = _string_list(statement.value, target.id)
        elif isinstance(statement, ast.FunctionDef) and statement.name == "__setstate__":
            has_setstate = True
    is_module = any(isinstance(base, ast.Name) and base.id == "Module" for base in node.bases)
    return Declaration(is_module, names["__parameters__"], names["__buffers__"], has_setstate)


def _string_list(value: ast.expr, what: str) -> tuple[str, ...]:
    if not isinstance(value, ast.List) or not all(
        isinstance(item, ast.Constant) and isinstance(item.value, str) and IDENTIFIER.fullmatch(item.value)
        for item in value.elts
    ):
        raise ArchiveError(f"{what} is not a list of names")
    return tuple(item.value for item in value.elts)


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, reader: _ArchiveReader):
        super().__init__(file)
        self.reader = reader

    def find_class(self, module: str, name: str):
        if self.reader.torchscript and (module.startswith("__torch__.") or module == "__torch__"):
            if not all(IDENTIFIER.fullmatch(part) for part in f"{module}.{name}".split(".")):
                raise ArchiveError(f"malformed TorchScript class name {module}.{name}")
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if self.reader.torchscript and module == "torch.jit._pickle" and name in LIST_BUILDERS:
            return list
        if self.reader.torchscript and (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return _restore_type_tag
        raise ArchiveError(f"data.pkl uses the global {module}.{name}, which is not allowed")

    def persistent_load(self, persistent_id):
        return self.reader.storage(persistent_id)


def _ordered_dict(*args) -> OrderedDict:
    # Pickle builds an OrderedDict empty, then fills it (state dicts, and tensors' backward hooks).
    if args:
        raise ArchiveError("an OrderedDict is built with arguments, which pickle never writes")
    return OrderedDict()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, Strided) or backward_hooks:
        raise ArchiveError("a parameter without tensor data, or with backward hooks")
    return data


def _restore_type_tag(value, _type_name):
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    """Like torch._utils._rebuild_tensor_v2, after checking the view stays inside its storage."""
    if not isinstance(storage, Strided):
        raise ArchiveError("a tensor refers to something that is not a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise ArchiveError("a tensor has malformed size or stride")
    numbers = (storage_offset, *size, *stride)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise ArchiveError(f"a tensor has a negative or non-integer offset, size or stride: {numbers!r:.80}")
    if backward_hooks:
        raise ArchiveError("tensor backward hooks are not supported")
    if 0 not in size:
        last = storage_offset + sum((extent - 1) * step for extent, step in zip(size, stride, strict=True))
        if last >= storage.numel():
            raise ArchiveError(
                f"a tensor view (offset {storage_offset}, size {list(size)}, stride {list(stride)}) "
                f"reaches element {last} of a storage of {storage.numel()}"
            )
    elif storage_offset > storage.numel():
        raise ArchiveError(f"an empty tensor starts at {storage_offset}, past its storage of {storage.numel()}")
    return storage.as_strided(size, stride, storage_offset)


# -- writing: the torch.save layout, streamed -------------------------------------------------------------------

RECORD_ALIGNMENT = 64  # torch.save aligns each record's data, so that torch.load(mmap=True) can map it
PADDING_FIELD = b"FB"  # the zip extra-field id torch uses for that padding
RECORD_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, as torch.save writes a zero date: the same weights, the same bytes


def write_state_dict(
    path: Path,
    tensors: Mapping,
    cast: Cast,
    advance: Callable[[int], None] = lambda _: None,
    read_back: bool = True,
    records: Mapping[str, bytes] = {},  # noqa: B006 - never changed
) -> dict[str, tuple[DType, tuple[int, ...]]]:
    """Write `tensors` to `path` as torch.save would: a zip with data.pkl and one data/<n> record per
    tensor, cast while writing, one tensor at a time, plus `records` (name -> bytes: torch.load passes
    over records it does not know). Returns each tensor's (dtype, shape).
    With `read_back`, every block of the file is read back from disk and compared as it is written."""
    top = "archive"
    specs = {key: (cast.dtype(key, tensor), tuple(tensor.shape)) for key, tensor in tensors.items()}
    scratch = scratch_space()
    # OutputFile cannot seek, so zipfile puts each record's CRC in a data descriptor after it.
    with OutputFile(path, read_back) as output, zipfile.ZipFile(output, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(_record(f"{top}/data.pkl"), _pickle_state_dict(specs))
        archive.writestr(_record(f"{top}/byteorder"), b"little")
        for number, (key, (dtype, shape)) in enumerate(specs.items()):
            size = math.prod(shape) * dtype.itemsize
            with _open_aligned(archive, f"{top}/data/{number}", size) as record:
                cast_into(ScratchSink(record.write, scratch), tensors[key], dtype)
            advance(size)
        archive.writestr(_record(f"{top}/version"), b"3\n")
        for name, content in records.items():
            archive.writestr(_record(f"{top}/{name}"), content)
    return specs


def record_names(path: Path) -> set[str]:
    """The names of the records of a torch zip file, without its top folder (empty if it is no zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.split("/", 1)[-1] for name in archive.namelist()}
    except (*ZIPFILE_DAMAGE, OSError, ValueError):
        return set()


def _record(name: str) -> zipfile.ZipInfo:
    """A stored record with a fixed date: the same weights give the same bytes, whenever written."""
    info = zipfile.ZipInfo(name, date_time=RECORD_DATE)
    info.compress_type = zipfile.ZIP_STORED
    return info


def _open_aligned(archive: zipfile.ZipFile, name: str, size: int):
    """A new record whose data starts on a RECORD_ALIGNMENT boundary, as torch requires."""
    info = _record(name)
    info.file_size = size
    header_end = archive.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, padding field header
    padding = -header_end % RECORD_ALIGNMENT
    info.extra = PADDING_FIELD + struct.pack("<H", padding) + b"Z" * padding
    return archive.open(info, "w")


def _pickle_state_dict(specs: Mapping[str, tuple[DType, tuple[int, ...]]]) -> bytes:
    """data.pkl as torch.save writes it for a dict of tensors, each in its own storage data/<n>."""
    state = OrderedDict(
        (key, _TensorReduce(_StorageRef(_STORAGE_CLASSES[dtype.name], str(number), math.prod(shape)), shape))
        for number, (key, (dtype, shape)) in enumerate(specs.items())
    )
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


@dataclass(frozen=True)
class _TorchGlobal:
    """A name in torch that data.pkl refers to (a storage class, the tensor rebuilder), pickled as that name
    without importing torch."""

    module: str
    name: str

    def __call__(self, *args):  # pickle's reduce protocol requires a callable; this one only stands for a name
        raise TypeError(f"{self.module}.{self.name} is a stand-in for pickling")


# One object per name: pickle writes a name once and refers back to it by object identity.
_REBUILD_TENSOR = _TorchGlobal("torch._utils", "_rebuild_tensor_v2")
_STORAGE_CLASSES = {name: _TorchGlobal("torch", dtype.storage) for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class _StorageRef:
    storage_type: _TorchGlobal
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorReduce:
    storage: _StorageRef
    shape: tuple[int, ...]

    def __reduce__(self):
        stride = contiguous_strides(self.shape)
        return _REBUILD_TENSOR, (self.storage, 0, self.shape, stride, False, OrderedDict())


class _StatePickler(pickle._Pickler):
    """Python's own pickler (the C one cannot be taught this), writing `_TorchGlobal`s as the GLOBAL opcode
    that pickling torch's real objects writes: pickle would otherwise import torch to check the names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_torch_global(self, obj: _TorchGlobal) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_TorchGlobal] = save_torch_global

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None
