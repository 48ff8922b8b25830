"""All writing of output: HF model folders, OpenAI state-dict files, and their staging.

Output is built in a temporary path beside DEST and renamed into place only
after it is complete (and verified, when the caller verifies inside `staged`),
so a failed run leaves DEST as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

from roundtrip import safetensors_file, torch_zip
from roundtrip.dtypes import Cast, dtype_of
from roundtrip.errors import OutputError
from roundtrip.readers import HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX
from roundtrip.safetensors_file import Written

# Temporaries beside DEST: ".DEST.clipconv-new-PID-XXXX" while writing, ".DEST.clipconv-old-PID-XXXX" for a
# replaced DEST on its way out. The PID tells a later run whether their writer is still alive.
STAGING = re.compile(r"\.(?P<dest>.+)\.clipconv-(?P<kind>new|old)-(?P<pid>\d+)-[^/]+")
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # the hub's long-standing default shard size, "5GB"

Progress = Callable[[int, int], None]  # called with (bytes written so far, bytes to write)


def check_destination(dest: Path, source: Path, overwrite: bool) -> None:
    """Refuse before any work if DEST would clobber something or sit inside SOURCE."""
    if dest.parent.is_dir():
        clean_leftovers(dest)  # first, so that a DEST a killed run moved aside counts as existing
    dest_resolved, source_resolved = dest.resolve(), source.resolve()
    if dest_resolved == source_resolved or source_resolved in dest_resolved.parents:
        raise OutputError(dest, f"is the source or inside it ({source})")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputError(dest, "already exists (pass --overwrite to replace it)")
    if not dest.parent.is_dir():
        raise OutputError(dest, f"its parent folder {dest.parent} does not exist")


@contextlib.contextmanager
def staged(dest: Path, is_folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside DEST; on success move it into place, on failure remove it.

    OS errors (a full disk, a permission) become one-line OutputErrors naming DEST.
    """
    prefix = f".{dest.name}.clipconv-new-{os.getpid()}-"
    try:
        if is_folder:
            temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
            os.close(handle)
            temporary = Path(name)
    except OSError as error:
        raise OutputError(dest, f"cannot be written: {error.strerror or error}") from None
    try:
        yield temporary
        _apply_umask(temporary)
        _move_into_place(temporary, dest)
    except OSError as error:
        _remove(temporary)
        raise OutputError(dest, f"could not be written: {error.strerror or error}") from None
    except BaseException:
        _remove(temporary)
        raise


def clean_leftovers(dest: Path) -> None:
    """Remove what killed runs left beside DEST; give back a replaced DEST if the new one never arrived."""
    for path in dest.parent.glob(f".{glob.escape(dest.name)}.clipconv-*"):
        match = STAGING.fullmatch(path.name)
        if not match or match["dest"] != dest.name or _is_running(int(match["pid"])):
            continue
        if match["kind"] == "old" and not (dest.exists() or dest.is_symlink()):
            os.replace(path, dest)  # killed between moving the old DEST out and the new one in
        else:
            _remove(path)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process: anything of ours there is from an earlier call that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(new: Path, dest: Path) -> None:
    if not (dest.exists() or dest.is_symlink()) or (new.is_file() and not dest.is_dir()):
        os.replace(new, dest)  # atomic, also over an existing file
    elif _exchange(new, dest):
        _remove(new)  # now holds the old DEST
    else:
        old = dest.parent / f".{dest.name}.clipconv-old-{os.getpid()}-{new.name.rsplit('-', 1)[1]}"
        os.replace(dest, old)  # the old DEST survives until the new one is in place
        os.replace(new, dest)
        _remove(old)
    _fsync_folder(dest.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _apply_umask(path: Path) -> None:
    # mkdtemp/mkstemp create private (0700/0600) paths; give the result the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_hf_folder(
    folder: Path,
    config: dict,
    tensors: Mapping,
    metadata: dict[str, str],
    cast: Cast = Cast(),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress = lambda done, total: None,
    after_each: Callable[[], None] = lambda: None,
    read_back: bool = True,
) -> dict[str, dict[str, Written]]:
    """Write config.json and model.safetensors (or shards plus an index), reading each block back if asked.

    Returns, per weight file name, what each of its tensors must read back as.
    """
    _write_json(folder / HF_CONFIG, config)
    sizes = {key: tensor.numel() * cast.dtype(key, tensor).itemsize for key, tensor in tensors.items()}
    shards = _split_into_shards(sizes, max_shard_bytes)
    advance = _byte_counter(sum(sizes.values()), progress, after_each)
    if len(shards) == 1:
        names = [HF_SAFETENSORS]
    else:
        names = [f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
    written = {
        name: safetensors_file.write(
            folder / name, {key: tensors[key] for key in shard}, metadata, cast, advance, read_back)
        for name, shard in zip(names, shards)
    }
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        _write_json(folder / HF_SAFETENSORS_INDEX, index)
    return written


def _write_json(path: Path, content: dict) -> None:
    _write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def write_text_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write {file name: text} into folder as UTF-8; return the paths."""
    for name, text in files.items():
        _write_text(folder / name, text)
    return [folder / name for name in files]


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _byte_counter(total: int, progress: Progress, after_each: Callable[[], None]) -> Callable[[int], None]:
    """Called after each tensor is written: reports progress and lets the caller release memory."""
    done = 0

    def advance(written: int) -> None:
        nonlocal done
        done += written
        after_each()
        progress(done, total)

    return advance


def _split_into_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(sizes):
        if shards[-1] and size + sizes[key] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += sizes[key]
    return shards


def confirm_hf_folder(folder: Path, expected: dict[str, dict[str, Written]], dest: Path) -> None:
    """Every weight file's header, re-read from disk, lists exactly the tensors written, in their dtypes and
    shapes (with `read_back`, their bytes were also compared block by block while writing)."""
    for name, tensors in expected.items():
        if safetensors_file.layout(folder / name) != tensors:
            raise OutputError(dest, f"{name} does not read back as written")


def write_openai_file(
    path: Path, state_dict: Mapping, cast: Cast = Cast(),
    progress: Progress = lambda done, total: None, after_each: Callable[[], None] = lambda: None,
    read_back: bool = True,
) -> dict[str, Written]:
    """A state dict in torch.save's format, which `clip.load(path, jit=False)` reads, written one
    tensor at a time, reading each block back if asked; returns what each tensor must read back as."""
    total = sum(t.numel() * cast.dtype(key, t).itemsize for key, t in state_dict.items())
    advance = _byte_counter(total, progress, after_each)
    records = torch_zip.write_state_dict(path, state_dict, cast, advance, read_back)
    return {key: Written(*record) for key, record in records.items()}


def confirm_tensors(found: Mapping, expected: dict[str, Written], dest: Path) -> None:
    """The tensors a written file's index gives, re-read from disk, are the ones written, in order, with
    their dtypes and shapes (with `read_back`, their bytes were also compared block by block while writing)."""
    actual = {key: Written(dtype_of(tensor), tuple(tensor.shape)) for key, tensor in found.items()}
    if list(actual.items()) != list(expected.items()):
        different = sorted(key for key in set(actual) | set(expected) if actual.get(key) != expected.get(key))
        what = ", ".join(different[:5]) or "their order"
        raise OutputError(dest, f"tensors read back differently from what was written: {what}")
