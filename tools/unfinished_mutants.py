"""Print the names of the mutants of the given modules that have no result yet in mutants/ (one per line), for
`make mutate-resume`: mutmut's own resume, a run without names, would start every module of only_mutate.
With --survivors, also those no test killed, whether tests ran or none was mapped to them (to run them against
tests written, changed or moved since)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

META = Path("mutants/roundtrip")


SURVIVED, NO_TESTS = 0, 33  # mutmut's results for a mutant its tests did not kill, and for one no test runs


def unfinished(module: str, survivors: bool) -> list[str]:
    meta = META / f"{module}.py.meta"
    if not meta.is_file():
        sys.exit(f"{meta}: no such file: run `make mutate` on roundtrip.{module}.* first")
    wanted = (None, SURVIVED, NO_TESTS) if survivors else (None,)
    return [name for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items()
            if exit_code in wanted]


if __name__ == "__main__":
    survivors = "--survivors" in sys.argv
    modules = [argument for argument in sys.argv[1:] if argument != "--survivors"]
    print("\n".join(name for module in modules for name in unfinished(module, survivors)))
