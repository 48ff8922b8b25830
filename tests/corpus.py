"""Text for tokenizer parity: real lines not written for these tests, plus the corner cases a tokenizer trips on."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

# Lines that exercise what docstrings rarely contain.
UNICODE_LINES = [
    "Ünïcödé façade naïve Straße ΑΘΗΝΑ Москва 北京 東京 서울 עברית العربية हिन्दी",
    "decomposed e\u0301 and composed \u00e9, combining a\u0308, İstanbul, soft\u00adhyphen, zero\u200bwidth",
    "½ ² ⅷ ⓐ 𝐀𝐁𝐂 ١٢٣ ㅎ ﹏ ¿¡ «guillemets» — en–dash … ellipsis",
]
EMOJI_LINES = [
    "emoji 😀 👍🏽 👨\u200d👩\u200d👧 🇫🇷 ❤️ 🐈‍⬛",
    "🙂" * 100,
]
WHITESPACE_LINES = [
    "tab\there, form\x0cfeed, non\u00a0breaking, em\u2003space, line\u2028separator",
    "\r\n  leading and trailing, CRLF  \r\n",
    "many          spaces\t\t\tand tabs",
    "",
    " \t ",
]
LONG_LINES = [
    "x" * 1000,
    "word " * 200,
    "Supercalifragilisticexpialidocious antidisestablishmentarianism " * 20,
    "a photo of " + "very " * 80 + "big cat",
]
CORNER_CASES = UNICODE_LINES + EMOJI_LINES + WHITESPACE_LINES + LONG_LINES


def stdlib_docstring_lines() -> list[str]:
    """Every distinct non-blank docstring line of the top-level modules of Python's standard library."""
    lines: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for docstring in _docstrings(path):
            lines.update(dict.fromkeys(line for line in docstring.splitlines() if line.strip()))
    return list(lines)


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):  # a few stdlib test inputs are deliberately invalid
        return []
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node, clean=False) for node in ast.walk(tree) if isinstance(node, documented))
    return [docstring for docstring in found if docstring]
