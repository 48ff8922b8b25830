"""Where output goes: the rules DEST must meet, staging beside it, and the final swap.

The rules are checked before any work, whatever the options: a conversion writes only DEST (and its own
temporaries beside it), never the source, never a folder the source is in, and `overwrite` replaces only
what a conversion of the same kind would have written. Output is built in a temporary beside DEST and
moved into place only once it is complete (and verified, when the caller verifies inside `staged`), so a
failed run leaves DEST as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from roundtrip.errors import OutputError

# Temporaries beside DEST: ".DEST.clipconv-new-PID-XXXX" while writing, ".DEST.clipconv-old-PID-XXXX" for a
# replaced DEST on its way out. The PID tells a later run whether their writer is still alive.
STAGING = re.compile(r"\.(?P<dest>.+)\.clipconv-(?P<kind>new|old)-(?P<pid>\d+)-[^/]+")
SEPARATORS = tuple(filter(None, (os.sep, os.altsep)))


@dataclass(frozen=True)
class OutputKind:
    """What a conversion writes: one file, or a folder whose entries `may_hold` names."""

    is_folder: bool
    may_hold: Callable[[str], bool] = lambda name: False  # what `overwrite` may replace inside a folder


ONE_FILE = OutputKind(is_folder=False)


def check_destination(dest: Path | str, inputs: Sequence[Path], kind: OutputKind, overwrite: bool) -> Path:
    """Refuse, before any work, a DEST that would touch an input or anything but a conversion's own output.

    Returns DEST as the path to write (absolute, its parent folder resolved).
    """
    if not kind.is_folder and str(dest).endswith(SEPARATORS):
        raise OutputError(dest, "ends with a path separator, which names a folder; this conversion writes one "
                                "file: give its name (for example ViT-B-32.pt)")
    placed = _placed(Path(dest))
    _check_apart_from_inputs(placed, dest, inputs)
    cwd = Path.cwd().resolve()
    if cwd == placed or placed in cwd.parents:
        raise OutputError(dest, "is the working folder or holds it; name a new file or folder inside it instead")
    if not placed.parent.is_dir():
        raise OutputError(dest, f"its parent folder {placed.parent} does not exist")
    clean_leftovers(placed)  # first, so that a DEST a killed run moved aside counts as existing
    if placed.exists() or placed.is_symlink():
        _check_replaceable(placed, dest, kind, overwrite)
    return placed


def _placed(dest: Path) -> Path:
    """DEST made absolute, with "." and ".." taken as written and the parent's symlinks resolved."""
    absolute = Path(os.path.abspath(dest))
    return absolute.parent.resolve() / absolute.name if absolute.name else absolute


def _check_apart_from_inputs(placed: Path, dest: Path | str, inputs: Sequence[Path]) -> None:
    target = placed.resolve()
    for source in inputs:
        source_resolved = Path(source).resolve()
        if target == source_resolved or source_resolved in target.parents:
            raise OutputError(dest, f"is the source or inside it ({source})")
        if target in source_resolved.parents:
            raise OutputError(dest, f"holds the source {source}; a conversion never writes over its own input")


def _check_replaceable(placed: Path, dest: Path | str, kind: OutputKind, overwrite: bool) -> None:
    if not overwrite:
        raise OutputError(dest, "already exists", remedy=("overwrite", "to replace it"))
    if placed.is_symlink():
        raise OutputError(dest, "is a symbolic link; clipconv replaces only real files and folders")
    if kind.is_folder and not placed.is_dir():
        raise OutputError(dest, "is a file, and a folder is written here: a folder never replaces a file")
    if not kind.is_folder and placed.is_dir():
        raise OutputError(dest, "is a folder, and one file is written here: a file never replaces a folder")
    if kind.is_folder:
        foreign = sorted(entry.name for entry in placed.iterdir() if entry.is_dir() or not kind.may_hold(entry.name))
        if foreign:
            raise OutputError(dest, f"holds {foreign[0]}, which is not part of a clipconv model folder "
                                    f"({len(foreign)} such entries in all): overwriting replaces only clipconv's "
                                    "own output; choose another destination")


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
        try:
            os.replace(new, dest)
        except OSError:
            os.replace(old, dest)  # and comes back if it cannot be
            raise
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


