"""Builders of hostile and broken inputs for tests/test_hostile_inputs.py.

Pickles here are written opcode by opcode, so that a test can say exactly what
a TorchScript archive's data.pkl contains without running TorchScript.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

ARCHIVE_TOP = "archive"
MINI_CODE = 'class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n'


class SystemCall:
    """A pickle payload: unpickling it with plain pickle would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- pickle opcodes (protocol 2) ---------------------------------------------------------------------------


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def string(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(number: int) -> bytes:
    return b"J" + struct.pack("<i", number)


def tuple_(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor(record: str, numel: int, offset: int, size, stride, storage: str = "FloatStorage") -> bytes:
    """The bytes torch.jit.save writes for one tensor: _rebuild_tensor_v2 of a persistent storage."""
    storage_id = tuple_(string("storage"), global_("torch", storage), string(record), string("cpu"), integer(numel))
    hooks = global_("collections", "OrderedDict") + b")R"
    arguments = tuple_(storage_id + b"Q", integer(offset), tuple_(*map(integer, size)),
                       tuple_(*map(integer, stride)), b"\x89", hooks)
    return global_("torch._utils", "_rebuild_tensor_v2") + arguments + b"R"


def module(items: dict[str, bytes], class_module: str = "__torch__", class_name: str = "M") -> bytes:
    """A TorchScript module object: GLOBAL, NEWOBJ, then its attribute dict through BUILD."""
    body = b"".join(string(name) + value for name, value in items.items())
    return b"\x80\x02" + global_(class_module, class_name) + b")\x81}(" + body + b"ub."


def system_call(command: str) -> bytes:
    return global_("posix", "system") + tuple_(string(command)) + b"R"


# -- archives ----------------------------------------------------------------------------------------------


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)


def mini_archive_members(data_pkl: bytes, record: bytes = struct.pack("<4f", 1, 2, 3, 4),
                         code: str = MINI_CODE) -> list[tuple[str, bytes]]:
    """A one-module TorchScript archive: class M with parameter w, a float32 tensor of 4 elements."""
    return [
        (f"{ARCHIVE_TOP}/data.pkl", data_pkl),
        (f"{ARCHIVE_TOP}/code/__torch__.py", code.encode()),
        (f"{ARCHIVE_TOP}/data/0", record),
        (f"{ARCHIVE_TOP}/version", b"3\n"),
    ]


def valid_mini_pickle() -> bytes:
    return module({"w": tensor("0", 4, 0, (2, 2), (2, 1))})


def edited_archive(source: Path, dest: Path, edit) -> None:
    """Copy a zip, passing every (name, data) through `edit`, which returns a list of members to write."""
    with zipfile.ZipFile(source) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": some cases want exactly that
        for name, data in members:
            for new_name, new_data in edit(name, data):
                archive.writestr(new_name, new_data)


# -- safetensors -------------------------------------------------------------------------------------------


def safetensors_bytes(header: dict | bytes, data: bytes, declared_length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared_length is None else declared_length
    return struct.pack("<Q", length) + raw + data


def f32_entry(begin: int, end: int, shape=(2,)) -> dict:
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, end]}
