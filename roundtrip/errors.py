"""The exception types the CLI turns into one-line messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

ONE_LINE_LIMIT = 400  # characters of a library's message that a one-line error quotes


def one_line(error: BaseException) -> str:
    """An exception's message on one line (libraries' messages run over many), cut at ONE_LINE_LIMIT."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= ONE_LINE_LIMIT else text[:ONE_LINE_LIMIT] + " ..."


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
