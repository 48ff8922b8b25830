"""The exception types the CLI turns into one-line messages."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries' messages run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def python_spelling(parameter: str) -> str:
    return f"{parameter}=True"


class ClipconvError(Exception):
    """A problem with a named file, reported as `PATH: problem`.

    `remedy` is (parameter, what it does), for a problem that a keyword argument of the Python API (an option
    of the command line) would change; each interface spells the parameter its own way.
    """

    def __init__(self, path: Path | str, problem: str, remedy: tuple[str, str] | None = None):
        self.path = Path(path)
        self.shown_path = str(path)  # as given: "out/" says more than Path("out/")
        self.problem = problem
        self.remedy = remedy
        super().__init__(self.message(python_spelling))

    def message(self, spell: Callable[[str], str]) -> str:
        text = f"{self.shown_path}: {self.problem}"
        if self.remedy:
            parameter, effect = self.remedy
            text += f" (pass {spell(parameter)} {effect})"
        return text


class InputError(ClipconvError):
    """An input file or folder that cannot be read or converted."""


class OutputError(ClipconvError):
    """A destination that cannot or must not be written."""


class VerificationError(ClipconvError):
    """The converted model does not reproduce the source's logits, or no reference model could be built."""
