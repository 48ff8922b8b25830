"""Dependencies point one way: no import cycles (function-level imports included), and the layers keep to
their own (the mapping core knows nothing of files; readers and writers know nothing of what the files mean)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "roundtrip"

# The layers, bottom up. Each module may import its own layer's and those of the layers listed under it.
CORE = {"ops", "schema", "mapping"}  # key names and their operations: no files, no tensor classes
BOTTOM = {"facts", "errors", "dtypes", "provenance", "output_file", "preprocessing"}
IO = {"strided", "casting", "torch_zip", "safetensors_file", "readers", "writers", "destination"}
MAY_IMPORT = {
    **{name: CORE for name in CORE},
    **{name: BOTTOM for name in BOTTOM},
    **{name: BOTTOM | IO for name in IO},
}
APART = [("readers", "writers")]  # neither imports the other
HEAVY = {"torch", "transformers", "clip", "open_clip", "torchvision", "timm"}  # imported where used, in functions
HEAVY_AT_MODULE_LEVEL = {"examples"}  # builds models by definition


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """Every module `module` imports, anywhere in its code (or only at its top level)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "roundtrip":
                found |= {f"roundtrip.{alias.name}" for alias in node.names if alias.name != "__version__"}
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {module: {name.split(".")[1] for name in imports(module) if name.startswith("roundtrip.")} - {module}
            for module in modules}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_module_imports_itself_back_through_others():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    # A control for the test above: it must not pass by finding nothing.
    assert find_cycle({"dtypes": {"strided"}, "strided": {"dtypes"}, "casting": {"dtypes"}}) == ["dtypes", "strided",
                                                                                                 "dtypes"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(MAY_IMPORT))
def test_each_layer_imports_only_its_own_and_those_below(module):
    forbidden = graph()[module] - MAY_IMPORT[module]
    assert not forbidden, f"roundtrip.{module} imports {', '.join(sorted(forbidden))}"


@pytest.mark.parametrize("first, second", APART)
def test_readers_and_writers_do_not_import_each_other(first, second):
    edges = graph()
    assert second not in edges[first] and first not in edges[second]


def test_frameworks_are_imported_only_where_used():
    loaded_eagerly = {module: {name.split(".")[0] for name in imports(module, top_level_only=True)} & HEAVY
                      for module in graph() if module not in HEAVY_AT_MODULE_LEVEL}
    assert not {module: names for module, names in loaded_eagerly.items() if names}
