"""The exception types the CLI turns into one-line messages (and exit codes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ONE_LINE_LIMIT = 400  # characters of a library's message that a one-line error quotes


def one_line(error: BaseException) -> str:
    """An exception's message on one line (libraries' messages run over many), cut at ONE_LINE_LIMIT."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= ONE_LINE_LIMIT else text[:ONE_LINE_LIMIT] + " ..."


def python_spelling(parameter: str, value: str | None = None) -> str:
    return f"{parameter}={value or True}"


Spelling = Callable[[str, "str | None"], str]  # (parameter, a value's placeholder or None for a flag) -> text


@dataclass(frozen=True)
class Remedy:
    """Options any one of which changes the outcome (each a parameter and its value's placeholder, or None for a
    flag), and what passing one does."""

    options: tuple[tuple[str, str | None], ...]
    effect: str

    def text(self, spell: Spelling) -> str:
        spelled = [spell(parameter, value) for parameter, value in self.options]
        listed = spelled[0] if len(spelled) == 1 else ", ".join(spelled[:-1]) + " or " + spelled[-1]
        return f"pass {listed} {self.effect}"


class ClipconvError(Exception):
    """A problem with a named file, reported as `PATH: problem`.

    `remedy` names the options that would change it; each interface spells a parameter its own way (a keyword
    argument of the Python API, an option of the command line).
    """

    def __init__(self, path: Path | str, problem: str, remedy: Remedy | None = None):
        self.path = Path(path)
        self.shown_path = str(path)  # as given: "out/" says more than Path("out/")
        self.problem = problem
        self.remedy = remedy
        super().__init__(self.message(python_spelling))

    def message(self, spell: Spelling) -> str:
        text = f"{self.shown_path}: {self.problem}"
        return f"{text} ({self.remedy.text(spell)})" if self.remedy else text

    def on_side(self, side: str) -> ClipconvError:
        """This error about one of two inputs (`compare`'s A or B), whose options carry the side's name."""
        remedy = self.remedy and Remedy(tuple((f"{name}_{side}", value) for name, value in self.remedy.options),
                                        self.remedy.effect)
        return type(self)(self.shown_path, self.problem, remedy)


class InputError(ClipconvError):
    """An input file or folder that cannot be read or converted."""


class OutputError(ClipconvError):
    """A destination that cannot or must not be written."""


class VerificationError(ClipconvError):
    """The converted model does not reproduce the source's logits, or no reference model could be built."""


class Interrupted(KeyboardInterrupt):
    """A signal to stop (Ctrl-C, SIGTERM, SIGHUP) caught by the command line: raised where the program is, so that
    whatever it was writing is removed on the way out, as on any failure."""

    def __init__(self, signal_number: int, name: str):
        super().__init__(name)
        self.name = name
        self.exit_code = 128 + signal_number  # the shell's convention for a process a signal ended
