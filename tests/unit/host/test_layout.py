"""The host package's layout: no import cycles, hidden or not.

An import placed inside a function to dodge a cycle still is a cycle: the two modules cannot
be understood, tested or changed apart. Every import is counted here, at whatever depth.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgekit

ROOT = Path(edgekit.__file__).parent
# A cycle another piece of work is taking apart (the model search and training share the
# family definitions); listed so that no new cycle can join it unnoticed.
KNOWN = {frozenset({"edgekit.train", "edgekit.search"})}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                stem = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                # ``from . import x`` / ``from .pkg import mod`` name modules as well as attributes
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = _graph()
    assert "edgekit.quantize" in graph["edgekit.pipeline"]  # imported inside quantize_run
    assert "edgekit.onnx_model" in graph["edgekit.parity"]


def test_no_import_cycles_in_the_host_package() -> None:
    cycles = [sorted(c) for c in _cycles(_graph()) if c not in KNOWN]
    assert cycles == []


def test_the_shared_onnx_helpers_import_nothing_of_the_pipeline() -> None:
    assert _graph()["edgekit.onnx_model"] == set()


def test_the_license_is_an_spdx_expression() -> None:
    """PEP 639: the ``license = {text = …}`` table is deprecated by setuptools."""
    import tomllib

    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77 for r in requires)
