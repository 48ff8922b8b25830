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
import errno
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from roundtrip.errors import OutputError, Remedy

# Temporaries beside DEST: ".DEST.clipconv-new-PID-XXXX" while writing, ".DEST.clipconv-old-PID-XXXX" for a
# replaced DEST on its way out. The PID tells a later run whether their writer is still alive.
STAGING = re.compile(r"\.(?P<dest>.+)\.clipconv-(?P<kind>new|old)-(?P<pid>\d+)-[^/]+")
SEPARATORS = tuple(filter(None, (os.sep, os.altsep)))


@dataclass(frozen=True)
class OutputKind:
    """What a conversion writes: one file, or a folder whose entries `may_hold` names; `written_here` tells
    whether an existing path is such an output, by what clipconv records in what it writes."""

    is_folder: bool
    title: str  # what it is called, e.g. "Hugging Face CLIPModel folder"
    written_here: Callable[[Path], bool]
    may_hold: Callable[[str], bool] = lambda name: False  # what `overwrite` may replace inside a folder
    may_hold_folder: Callable[[Path], bool] = lambda folder: False  # ... and which folders inside it


@dataclass(frozen=True)
class Placed:
    """DEST as approved before any work: where to write, and what is there that may be replaced."""

    path: Path  # absolute, its parent folder resolved
    approved: tuple[int, int, int] | None = None  # (device, inode, mtime) of the DEST to replace; None: absent


def check_destination(dest: Path | str, inputs: Sequence[Path], kind: OutputKind, overwrite: bool,
                      other_kinds: Sequence[OutputKind] = ()) -> Placed:
    """Refuse, before any work, a DEST that would touch an input or anything but a conversion's own output
    (`other_kinds`: what other conversions write, to name one found at DEST)."""
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
    if not (placed.exists() or placed.is_symlink()):
        return Placed(placed)
    _check_replaceable(placed, dest, kind, overwrite, other_kinds)
    return Placed(placed, _identity(placed))


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells this very file or folder from any other, and from itself once changed (None: nothing there)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns


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


def _check_replaceable(placed: Path, dest: Path | str, kind: OutputKind, overwrite: bool,
                       other_kinds: Sequence[OutputKind]) -> None:
    if not overwrite:
        raise OutputError(dest, "already exists", Remedy((("overwrite", None),), "to replace it"))
    if placed.is_symlink():
        raise OutputError(dest, "is a symbolic link; clipconv replaces only real files and folders")
    if kind.is_folder and not placed.is_dir():
        raise OutputError(dest, "is a file, and a folder is written here: a folder never replaces a file")
    if not kind.is_folder and placed.is_dir():
        raise OutputError(dest, "is a folder, and one file is written here: a file never replaces a folder")
    other = next((other for other in other_kinds if other is not kind and other.is_folder == kind.is_folder
                  and other.written_here(placed)), None)
    if other is not None and not kind.written_here(placed):
        raise OutputError(dest, f"is another clipconv command's output ({other.title}), and overwriting replaces "
                                f"only this command's ({kind.title}): choose another destination")
    if kind.is_folder:
        foreign = sorted(entry.name for entry in placed.iterdir()
                         if not (kind.may_hold_folder(entry) if entry.is_dir() else kind.may_hold(entry.name)))
        if foreign:
            others = f" ({len(foreign)} such entries in all)" if len(foreign) > 1 else ""
            raise OutputError(dest, f"holds {foreign[0]}, which is not part of a clipconv model folder{others}: "
                                    "overwriting replaces only clipconv's own output; choose another destination")
    if not kind.written_here(placed):
        what = "folder" if kind.is_folder else "file"
        raise OutputError(dest, f"was not written by clipconv (the {what} carries no clipconv record): "
                                "overwriting replaces only clipconv's own output; choose another destination")


@contextlib.contextmanager
def staged(placed: Placed, is_folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside DEST; on success move it into place, on failure remove it.

    The move replaces only what `placed` approved: a DEST that appeared or changed meanwhile (another
    conversion to the same DEST, say) is left as it is, and this output is removed with an OutputError.
    OS errors (a full disk, a permission) become one-line OutputErrors naming DEST.
    """
    dest = placed.path
    temporary = None
    try:  # from before the temporary exists: an interruption (a signal) may come at any point
        temporary = _create_beside(dest, is_folder)
        _IN_USE.add(temporary)
        yield temporary
        _apply_umask(temporary)
        _move_into_place(temporary, placed)
    except OSError as error:
        _discard(temporary, dest)
        raise OutputError(dest, f"could not be written: {error.strerror or error}") from None
    except BaseException:
        _discard(temporary, dest)
        raise
    finally:
        _IN_USE.discard(temporary)


_IN_USE: set[Path] = set()  # this process's staged paths being written (by other threads, say)


def _create_beside(dest: Path, is_folder: bool) -> Path:
    prefix = f".{dest.name}.clipconv-new-{os.getpid()}-"
    if is_folder:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    handle, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
    os.close(handle)
    return Path(name)


def _discard(temporary: Path | None, dest: Path) -> None:
    if temporary is not None:
        _remove(temporary)
    else:  # stopped while it was made, before its name was known
        clean_leftovers(dest)


def clean_leftovers(dest: Path) -> None:
    """Remove what killed runs left beside DEST; give back a replaced DEST if the new one never arrived."""
    for path in dest.parent.glob(f".{glob.escape(dest.name)}.clipconv-*"):
        match = STAGING.fullmatch(path.name)
        if not match or match["dest"] != dest.name or _is_running(int(match["pid"])) or path in _IN_USE:
            continue
        if match["kind"] == "old" and not (dest.exists() or dest.is_symlink()):
            os.replace(path, dest)  # killed between moving the old DEST out and the new one in
        else:
            _remove(path)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process: what is not in _IN_USE is from an earlier call that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(new: Path, placed: Placed) -> None:
    dest = placed.path
    if placed.approved is None or _identity(dest) is None:
        _rename_without_replacing(new, dest)
    else:
        _replace_approved(new, placed)
    _fsync_folder(dest.parent)


def _changed(dest: Path) -> OutputError:
    return OutputError(dest, "appeared or changed while this conversion ran (another conversion to the same "
                             "DEST?); it was left as it is and this conversion's output removed")


def _rename_without_replacing(new: Path, dest: Path) -> None:
    """Move `new` to `dest`, which must not exist: atomically where the system can (renameat2
    RENAME_NOREPLACE; link for a file elsewhere)."""
    failure = _renameat2(new, dest, RENAME_NOREPLACE)
    if failure == 0:
        return
    if failure == errno.EEXIST:
        raise _changed(dest)
    if failure not in UNSUPPORTED:
        raise OSError(failure, os.strerror(failure), str(dest))
    if new.is_dir():
        if dest.exists() or dest.is_symlink():  # not atomic: a last look, then the move
            raise _changed(dest)
        os.rename(new, dest)
        return
    try:
        os.link(new, dest)  # fails if dest exists, atomically
    except FileExistsError:
        raise _changed(dest) from None
    os.unlink(new)


def _replace_approved(new: Path, placed: Placed) -> None:
    """Swap `new` in for DEST if DEST is still what `placed` approved; else leave DEST as it is."""
    dest = placed.path
    failure = _renameat2(new, dest, RENAME_EXCHANGE)
    if failure == 0:
        if _identity(new) != placed.approved:  # `new` now holds what was at DEST: not what was approved
            _renameat2(new, dest, RENAME_EXCHANGE)  # put it back
            raise _changed(dest)
        _remove(new)
        return
    if failure not in UNSUPPORTED:
        raise OSError(failure, os.strerror(failure), str(dest))
    if _identity(dest) != placed.approved:  # not atomic: a last look, then the move
        raise _changed(dest)
    if new.is_file() and not dest.is_dir():
        os.replace(new, dest)  # atomic over an existing file
        return
    old = dest.parent / f".{dest.name}.clipconv-old-{os.getpid()}-{new.name.rsplit('-', 1)[1]}"
    os.replace(dest, old)  # the old DEST survives until the new one is in place
    try:
        os.replace(new, dest)
    except OSError:
        os.replace(old, dest)  # and comes back if it cannot be
        raise
    _remove(old)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # Linux <linux/fs.h>
UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP)  # what renameat2 answers where it cannot


def _renameat2(first: Path, second: Path, flags: int) -> int:
    """Linux renameat2(first, second, flags): 0, or the errno it failed with (ENOSYS where there is none)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return errno.ENOSYS
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), flags) == 0:
        return 0
    return ctypes.get_errno()


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


