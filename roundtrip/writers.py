"""All writing of output: HF model folders, OpenAI state-dict files, and their staging.

Output is built in a temporary path beside DEST and renamed into place only
after it is complete (and verified, when the caller verifies inside `staged`),
so a failed run leaves DEST as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from roundtrip import safetensors_file
from roundtrip.errors import OutputError
from roundtrip.safetensors_file import nbytes
from roundtrip.readers import HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX

STAGING_MARK = ".clipconv-tmp-"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # the hub's long-standing default shard size, "5GB"

Progress = Callable[[int, int], None]  # called with (bytes written so far, bytes to write)


def check_destination(dest: Path, source: Path, overwrite: bool) -> None:
    """Refuse before any work if DEST would clobber something or sit inside SOURCE."""
    dest_resolved, source_resolved = dest.resolve(), source.resolve()
    if dest_resolved == source_resolved or source_resolved in dest_resolved.parents:
        raise OutputError(dest, f"is the source or inside it ({source})")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputError(dest, "already exists (pass --overwrite to replace it)")
    if not dest.parent.is_dir():
        raise OutputError(dest, f"its parent folder {dest.parent} does not exist")


@contextlib.contextmanager
def staged(dest: Path, is_folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside DEST; on success move it into place, on failure remove it."""
    for leftover in dest.parent.glob(f".{dest.name}{STAGING_MARK}*"):
        _remove(leftover)  # from a run that was killed before it could clean up
    prefix = f".{dest.name}{STAGING_MARK}"
    if is_folder:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        _replace(temporary, dest)
    except BaseException:
        _remove(temporary)
        raise


def _replace(new: Path, dest: Path) -> None:
    _apply_umask(new)
    if not (dest.exists() or dest.is_symlink()):
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{STAGING_MARK}old-", dir=dest.parent))
    os.replace(dest, old / "previous")  # the old DEST survives until the new one is in place
    os.replace(new, dest)
    _remove(old)


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
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress = lambda done, total: None,
) -> list[Path]:
    """Write config.json and model.safetensors (or shards plus an index); return the weight files."""
    (folder / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shards = _split_into_shards(tensors, max_shard_bytes)
    advance = _byte_counter(sum(nbytes(t) for t in tensors.values()), progress)
    if len(shards) == 1:
        names = [HF_SAFETENSORS]
    else:
        names = [f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards):
        safetensors_file.write(folder / name, shard, metadata, advance)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(nbytes(t) for t in tensors.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        (folder / HF_SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [folder / name for name in names]


def _byte_counter(total: int, progress: Progress) -> Callable[[int], None]:
    done = 0

    def advance(written: int) -> None:
        nonlocal done
        done += written
        progress(done, total)

    return advance


def _split_into_shards(tensors: Mapping[str, torch.Tensor], max_shard_bytes: int) -> list[dict]:
    shards: list[dict] = [{}]
    size = 0
    for key in sorted(tensors):
        tensor_bytes = nbytes(tensors[key])
        if shards[-1] and size + tensor_bytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += tensor_bytes
    return shards


def write_openai_file(
    path: Path, state_dict: Mapping[str, torch.Tensor], progress: Progress = lambda done, total: None
) -> None:
    """A plain `torch.save` state dict: what `clip.load(path, jit=False)` reads."""
    compact = {key: _own_storage(tensor.detach()) for key, tensor in state_dict.items()}
    with open(path, "wb") as handle:
        total = sum(nbytes(t) for t in compact.values())
        progress(0, total)
        torch.save(compact, handle)
        progress(total, total)
        handle.flush()
        os.fsync(handle.fileno())


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole base storage; copy views (a transposed projection) to their own.
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == nbytes(tensor):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
