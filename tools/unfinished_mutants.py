"""Print the names of the mutants of the given modules that have no result yet, neither in mutants/ nor in the
record kept in git (tools/mutation_results.py), one per line, for `make mutate-resume`: mutmut's own resume, a run
without names, would start every module of only_mutate.

With --survivors, also those no test killed, whether tests ran or none was mapped to them (to run them against
tests written, changed or moved since).

The names are those of the code as it is now: a function whose code changed since its results were recorded has
none. mutmut maps tests to a function changed since mutants/ was made only from tests new to it, so its statistics
(mutants/mutmut-stats.json) are removed then, to be collected again for every test (4 to 5 minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mutation_results import META, NOT_RUN, made, results

STATS = Path("mutants/mutmut-stats.json")


def unfinished(module: str, survivors: bool) -> list[str]:
    wanted = (NOT_RUN, "survived", "no tests") if survivors else (NOT_RUN,)
    return [name for name, result in results(module).items() if result in wanted]


def changed_since_mutants_were_made(module: str) -> list[str]:
    meta = META / f"{module}.py.meta"
    if not meta.is_file():
        return []
    recorded = json.loads(meta.read_text())["hash_by_function_name"]
    return [name for name, digest in made(module).hash_by_function_name.items() if recorded.get(name) != digest]


if __name__ == "__main__":
    survivors = "--survivors" in sys.argv
    modules = [argument for argument in sys.argv[1:] if argument != "--survivors"]
    changed = [function for module in modules for function in changed_since_mutants_were_made(module)]
    if changed and STATS.exists():
        STATS.unlink()
        print(f"{len(changed)} function(s) changed: {STATS} removed, to map every test again", file=sys.stderr)
    print("\n".join(name for module in modules for name in unfinished(module, survivors)))
