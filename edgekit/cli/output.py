"""Output helpers shared by every command that prints data: ``--json`` documents, errors as
documents under ``--json``, and tables.

Every ``--json`` document is one JSON object with a ``schema`` naming its kind and version
(``"edgekit.run/1"``); its shape is documented in docs/json.md and checked against it by the
tests. Errors under ``--json`` are documents too (:func:`error_document`), on stdout, so a
script reads one object whatever happened and looks at ``ok``/``schema`` and the exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
SCHEMA_VERSION = 1


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (docs/json.md).")(func)


def schema_name(kind: str) -> str:
    return f"edgekit.{kind}/{SCHEMA_VERSION}"


def document(kind: str, data: Any, key: str | None = None) -> dict[str, Any]:
    """``data`` as a versioned document: a dict gains ``schema``; a list goes under ``key``."""
    if key is not None:
        return {"schema": schema_name(kind), key: data}
    if not isinstance(data, dict):
        raise TypeError(f"a {kind} document is an object; give the key a list goes under")
    return {"schema": schema_name(kind), **data}


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, default=str)


def emit(data: Any, as_json: bool, text: Callable[[Any], str], kind: str | None = None, key: str | None = None) -> None:
    """Print ``data`` for a person (``text(data)``) or, with ``--json``, as the ``kind``
    document. Commands not yet given a kind print their data as it is."""
    if as_json:
        click.echo(dumps(document(kind, data, key) if kind else data))
    else:
        click.echo(text(data))


def error_document(code: str, detail: str, hint: str | None, exit_code: int) -> dict[str, Any]:
    return {
        "schema": schema_name("error"),
        "ok": False,
        "code": code,
        "detail": detail,
        "hint": hint,
        "exit_code": int(exit_code),
    }


def fail(code: str, detail: str, hint: str | None, exit_code: int, as_json: bool) -> None:
    """Report an error and exit: one ``error:`` line on stderr, or the error document on stdout."""
    if as_json:
        click.echo(dumps(error_document(code, detail, hint, exit_code)))
    else:
        click.echo(f"error: {detail}" + (f" ({hint})" if hint else ""), err=True)
    sys.exit(int(exit_code))


def progress_printer(enabled: bool) -> Callable[[str], None]:
    """Progress lines on stderr, only for humans (not with --json, not into a pipe)."""
    if not enabled or not sys.stderr.isatty():
        return lambda _msg: None
    return lambda msg: click.echo(f"… {msg}", err=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
