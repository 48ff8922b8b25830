"""The results of `make mutate`, kept in git: mutants/ lasts only as long as a checkout, and a run of the modules
docs/mutation.md reports can take longer than one session.

    python tools/mutation_results.py save MODULE...    # add the results mutants/ holds to the record
    python tools/mutation_results.py table MODULE...   # the record's counts, as docs/mutation.md's table

The record (docs/mutation-results.json) holds, per module and function, the hash mutmut gave the function's code
and the numbers of its mutants by result. A function whose code changed since loses its recorded results: they
were results of other code. tools/unfinished_mutants.py runs only what neither mutants/ nor the record holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECORD = Path("docs/mutation-results.json")
META = Path("mutants/roundtrip")
SOURCE = Path("roundtrip")

NOT_RUN = "not run yet"
RESULTS = ("killed", "survived", "timed out", "no tests", NOT_RUN)  # the table's columns, in its order


def result_name(exit_code: int | None) -> str:
    from mutmut.stats import status_by_exit_code  # mutmut's own reading of a worker's exit code

    status = status_by_exit_code[exit_code]
    return {"timeout": "timed out", "not checked": NOT_RUN}.get(status, status)


def made(module: str):
    """mutmut's mutants of roundtrip/<module>.py as the code is now: their names (`.mutant_names`) and its hash of
    each function's code (`.hash_by_function_name`)."""
    import io

    from mutmut.__main__ import write_all_mutants_to_file

    source = SOURCE / f"{module}.py"
    return write_all_mutants_to_file(out=io.StringIO(), source=source.read_text(), filename=source)


def load_record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.is_file() else {}


def results(module: str) -> dict[str, str]:
    """The result of every mutant of `module` as its code is now, by mutant name: the one mutants/ holds, else the
    record's, else NOT_RUN. Results of a function whose code has changed since are not counted."""
    mutants = made(module)
    hashes = mutants.hash_by_function_name
    found = {}
    for function, entry in load_record().get(module, {}).items():
        if entry["hash"] == hashes.get(function):
            found.update({_name(module, function, number): result
                          for result, numbers in entry.items() if result != "hash" for number in numbers})
    meta_file = META / f"{module}.py.meta"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        found.update({name: result_name(exit_code) for name, exit_code in meta["exit_code_by_key"].items()
                      if exit_code is not None
                      and meta["hash_by_function_name"].get(function_of(name)) == hashes.get(function_of(name))})
    return {f"roundtrip.{module}.{name}": found.get(f"roundtrip.{module}.{name}", NOT_RUN)
            for name in mutants.mutant_names}


def _name(module: str, function: str, number) -> str:
    return f"roundtrip.{module}.{function}__mutmut_{number}"


def function_of(name: str) -> str:
    """`x_check` of `roundtrip.verify.x_check__mutmut_3`."""
    return name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]


def save(modules: list[str]) -> None:
    record = load_record()
    for module in modules:
        by_function: dict[str, dict] = {}
        hashes = made(module).hash_by_function_name
        for name, result in results(module).items():
            if result == NOT_RUN:
                continue
            function, number = function_of(name), int(name.rsplit("__mutmut_", 1)[1])
            entry = by_function.setdefault(function, {"hash": hashes[function]})
            entry.setdefault(result, []).append(number)
        record[module] = {function: {key: sorted(value) if isinstance(value, list) else value
                                     for key, value in sorted(entry.items())}
                          for function, entry in sorted(by_function.items())}
    write_record(record)


def write_record(record: dict) -> None:
    """One line per function, so that a diff shows which functions' results changed."""
    modules = [json.dumps(module) + ": {\n" + ",\n".join(
        f"  {json.dumps(function, ensure_ascii=False)}: {json.dumps(entry, sort_keys=True, ensure_ascii=False)}"
        for function, entry in sorted(functions.items())) + "\n }" for module, functions in sorted(record.items())]
    RECORD.write_text("{\n " + ",\n ".join(modules) + "\n}\n")


def table(modules: list[str]) -> str:
    rows = ["| module | mutants | " + " | ".join(RESULTS) + " |", "|---" * (len(RESULTS) + 2) + "|"]
    totals = dict.fromkeys(RESULTS, 0)
    for module in modules:
        counts = dict.fromkeys(RESULTS, 0)
        for result in results(module).values():
            counts[result] = counts.get(result, 0) + 1
        totals = {result: totals[result] + counts[result] for result in RESULTS}
        rows.append(_row(f"`{module}`", counts))
    return "\n".join([*rows, _row("**all**", totals)])


def _row(label: str, counts: dict[str, int]) -> str:
    return f"| {label} | {sum(counts.values()):,} | " + " | ".join(f"{counts[result]:,}" for result in RESULTS) + " |"


if __name__ == "__main__":
    command, modules = sys.argv[1], sys.argv[2:]
    if command == "save":
        save(modules)
    else:
        print(table(modules))
