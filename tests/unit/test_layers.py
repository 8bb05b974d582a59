"""Dependencies in operator/llmconn run one way: no import cycle, and the layers of the
package's docstring hold. Every import statement counts, inside functions and under
TYPE_CHECKING too: read from the source with `ast`, not from what happened to be imported.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Mapping, Set
from pathlib import Path

import pytest

import llmconn

PACKAGE = Path(llmconn.__file__).parent
PROBES = "llmconn.probes"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = modules()[module].name == "__init__.py"
    base = package[: len(package) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: Set[str]) -> set[str]:
    """The llmconn modules `module` imports anywhere in its source. `from p import name` is
    an import of p.name when that is a module, else of p."""
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    edges.add(f"{source}.{alias.name}")
                elif source in known:
                    edges.add(source)
    edges.discard(module)
    return edges


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, found.keys()) for name, path in found.items()}


def find_cycle(edges: Mapping[str, Set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layers() -> dict[str, int]:
    """Module -> layer number, from the numbered lines of llmconn's docstring."""
    found: dict[str, int] = {}
    for number, names in re.findall(r"^(\d+)\. ([^(\n]+)", llmconn.__doc__ or "", re.M):
        for name in names.split(","):
            found[f"llmconn.{name.strip()}"] = int(number)
    return found


def layer_of(module: str, table: Mapping[str, int]) -> int | None:
    """A module's own line, else its folder's (`pkg.*`); a folder's __init__ is its folder's."""
    if module in table:
        return table[module]
    if f"{module}.*" in table and modules()[module].name == "__init__.py":
        return table[f"{module}.*"]
    return table.get(module.rsplit(".", 1)[0] + ".*")


# --- the checker itself ------------------------------------------------------------------


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    # The shape this package had: spec imports the registry inside a function, and the
    # registry's module imports spec back.
    spec = tmp_path / "spec.py"
    spec.write_text("def known():\n    from llmconn.probes import registry\n")
    base = tmp_path / "base.py"
    base.write_text("from llmconn.model.spec import LLMConnectionSpec\n")
    known = {"llmconn.model.spec", "llmconn.probes", "llmconn.probes.base"}
    edges = {
        "llmconn.model.spec": imports_of("llmconn.model.spec", spec, known),
        "llmconn.probes": {"llmconn.probes.base"},
        "llmconn.probes.base": imports_of("llmconn.probes.base", base, known),
    }
    assert find_cycle(edges) == [
        "llmconn.model.spec",
        "llmconn.probes",
        "llmconn.probes.base",
        "llmconn.model.spec",
    ]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_docstring_names_layers() -> None:
    table = layers()
    spec, base = layer_of("llmconn.model.spec", table), layer_of("llmconn.probes.base", table)
    assert spec is not None and base is not None and spec < base < table[PROBES]


def test_the_folders_are_the_layers() -> None:
    # Every module sits in a folder that is a line of the docstring, or is a line itself.
    table = layers()
    loose = [m for m in modules() if m.count(".") == 1 and m not in table and f"{m}.*" not in table]
    assert not loose, loose


# --- the package -------------------------------------------------------------------------


def test_no_import_cycle_in_the_package() -> None:
    assert find_cycle(graph()) is None


def test_every_module_imports_only_its_own_layer_and_those_below() -> None:
    table = layers()
    unplaced = [m for m in graph() if m != "llmconn" and layer_of(m, table) is None]
    assert not unplaced, f"name these in a layer of llmconn/__init__.py's docstring: {unplaced}"
    upward = [
        f"{module} ({layer_of(module, table)}) imports {target} ({layer_of(target, table)})"
        for module, targets in graph().items()
        if module != "llmconn"
        for target in sorted(targets)
        if (layer_of(target, table) or 0) > (layer_of(module, table) or 0)
    ]
    assert not upward


def test_the_spec_knows_no_provider() -> None:
    assert not {m for m in graph()["llmconn.model.spec"] if m.startswith(PROBES)}


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith(PROBES + ".")))
def test_probe_modules_never_import_the_probes_package(module: str) -> None:
    assert PROBES not in graph()[module]


def registers_a_provider(path: Path) -> bool:
    """A function decorated with `@registry.provider(...)`."""
    return any(
        isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr == "provider"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
        for decorator in node.decorator_list
    )


def test_the_probes_package_imports_every_provider_module() -> None:
    providers = {
        name
        for name, path in modules().items()
        if name.startswith(PROBES + ".") and registers_a_provider(path)
    }
    imported = {m for m in graph()[PROBES] if m.startswith(PROBES + ".")} - {f"{PROBES}.base"}
    assert providers == imported, "list every provider module in llmconn/probes/__init__.py"


# The test extra's SDKs (and what they bring) are for tests: the operator never loads them.
TEST_ONLY = ("openai", "anthropic", "google", "ollama", "httpx", "requests", "hypothesis", "pytest")


def test_the_operator_loads_no_test_only_package() -> None:
    # A fresh interpreter, so what this test session imported does not count.
    script = (
        "import importlib, json, sys\n"
        f"for name in {sorted(m for m in modules() if m != 'llmconn.__main__')!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(json.loads(run.stdout))
    assert "llmconn" in loaded
    assert loaded.isdisjoint(TEST_ONLY), sorted(loaded & set(TEST_ONLY))
