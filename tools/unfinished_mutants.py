"""Print the names of the mutants of the given modules that have no result yet in mutants/ (one per line), for
`make mutate-resume`: mutmut's own resume, a run without names, would start every module of only_mutate.

With --survivors, also those no test killed, whether tests ran or none was mapped to them (to run them against
tests written, changed or moved since).

Functions whose code changed since mutants/ was made lose their results when mutmut starts, after the names
are chosen: their mutants are printed as patterns (`...x_name__mutmut_*`), which mutmut matches after making
them again. mutmut then maps tests to a changed function only from tests new to it, so its statistics
(mutants/mutmut-stats.json) are removed too, to be collected again for every test (4 to 5 minutes)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

META = Path("mutants/roundtrip")
STATS = Path("mutants/mutmut-stats.json")
SOURCE = Path("roundtrip")

SURVIVED, NO_TESTS = 0, 33  # mutmut's results for a mutant its tests did not kill, and for one no test runs


def unfinished(module: str, survivors: bool) -> list[str]:
    meta = _meta(module)
    wanted = (None, SURVIVED, NO_TESTS) if survivors else (None,)
    return [name for name, exit_code in meta["exit_code_by_key"].items() if exit_code in wanted]


def changed(module: str) -> list[str]:
    """Patterns for the mutants of the functions of `module` whose code is not what mutants/ was made from."""
    from mutmut.__main__ import write_all_mutants_to_file  # mutmut's own hashing of each function

    source = SOURCE / f"{module}.py"
    made = write_all_mutants_to_file(out=io.StringIO(), source=source.read_text(), filename=source)
    recorded = _meta(module)["hash_by_function_name"]
    return [f"roundtrip.{module}.{name}__mutmut_*" for name, digest in made.hash_by_function_name.items()
            if recorded.get(name) != digest]


def _meta(module: str) -> dict:
    meta = META / f"{module}.py.meta"
    if not meta.is_file():
        sys.exit(f"{meta}: no such file: run `make mutate` on roundtrip.{module}.* first")
    return json.loads(meta.read_text())


if __name__ == "__main__":
    survivors = "--survivors" in sys.argv
    modules = [argument for argument in sys.argv[1:] if argument != "--survivors"]
    patterns = [pattern for module in modules for pattern in changed(module)]
    if patterns and STATS.exists():
        STATS.unlink()
        print(f"{len(patterns)} function(s) changed: {STATS} removed, to map every test again", file=sys.stderr)
    print("\n".join([*(name for module in modules for name in unfinished(module, survivors)), *patterns]))
