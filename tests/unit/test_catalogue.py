"""One error catalogue: every code the code base can emit is a class in device_agent/errors.py.

Scans the source of both programs for anything that looks like a code — a ``code = "..."``
class attribute, or a string literal in one of the catalogue's namespaces — and fails on any
that is defined outside ``errors.py`` or that the catalogue does not know.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from device_agent.errors import AgentError, Lifecycle, by_code, catalogue

ROOT = Path(__file__).resolve().parents[2]
NAMESPACES = sorted({c.code.split(".")[0] for c in catalogue()} | {"lifecycle"})
CODE_RE = re.compile(rf"^({'|'.join(NAMESPACES)})\.[a-z_]+$")
NOT_CODES = {
    "onnx",
    "json",
    "sig",
    "ekb",
    "sqlite",
    "part",
    "csv",
    "toml",
    "db",
    "py",
    "txt",
    "sock",
    "pem",
    "key",
}  # file names
NOT_A_CODE = {"model.family"}  # a run parameter's name, in the same shape


def literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and CODE_RE.match(node.value)
        and node.value.rsplit(".", 1)[1] not in NOT_CODES
    ]


def sources() -> list[Path]:
    return sorted(p for d in ("device_agent", "edgekit") for p in (ROOT / d).rglob("*.py"))


def test_codes_are_unique_and_namespaced() -> None:
    codes = [c.code for c in catalogue()]
    assert len(codes) == len(set(codes))
    assert all(CODE_RE.match(c) for c in codes)
    assert not {c.split(".")[0] for c in codes} & {"lifecycle"}, "lifecycle events are not failures"
    assert all(item.value.startswith("lifecycle.") for item in Lifecycle)


def test_every_failure_class_explains_itself() -> None:
    for cls in catalogue():
        assert cls.__doc__ and cls.__doc__.strip(), cls.__name__
        assert (cls.action and cls.action != AgentError.action) or cls is AgentError, cls.__name__


def test_no_code_is_defined_or_written_outside_the_catalogue() -> None:
    known = {c.code for c in catalogue()} | {item.value for item in Lifecycle}
    stray: list[str] = []
    for path in sources():
        rel = path.relative_to(ROOT)
        if rel == Path("device_agent/errors.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    targets = [t.id for t in getattr(stmt, "targets", []) if isinstance(t, ast.Name)]
                    if "code" in targets:
                        stray.append(f"{rel}:{stmt.lineno}: class {node.name} defines a code")
        for line, value in literals(path):
            if value not in known and value not in NOT_A_CODE:
                stray.append(f"{rel}:{line}: {value!r} is not in the catalogue")
    assert stray == []


def test_a_code_on_the_wire_maps_back_to_its_class() -> None:
    for cls in catalogue():
        assert by_code(cls.code) is cls
    assert by_code("no.such_code") is None
