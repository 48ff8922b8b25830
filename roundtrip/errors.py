"""The one exception type the CLI turns into a one-line message."""

from __future__ import annotations

from pathlib import Path


class ClipconvError(Exception):
    """A problem with a named file, reported as `PATH: problem`."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class InputError(ClipconvError):
    """An input file or folder that cannot be read or converted."""


class OutputError(ClipconvError):
    """A destination that cannot or must not be written."""


class VerificationError(ClipconvError):
    """The converted model does not reproduce the source's logits."""
