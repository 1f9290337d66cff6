"""Runs side by side: every recorded field lined up, differences marked, numbers as deltas.

The diff filter lives here too, so ``runs compare --diff-only --json`` gives a script the
same rows a person sees.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import UsageError
from .explain import top_features
from .runs import Run

# What `compare` lines up, in this order; everything under these keys is flattened to dotted names.
COMPARED = (
    "task",
    "model.family",
    "data",
    "seed",
    "params",
    "metric",
    "metrics",
    "parity",
    "quantization",
    "explain.metric",
    "code_version",
    "environment",
    "duration_s",
)
_NOT_COMPARED = ("data.schema", "explain.permutation_importance")


def _leaves(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict) and obj:
        for k in sorted(obj):
            _leaves(f"{prefix}.{k}", obj[k], out)
    elif not any(prefix == skip or prefix.startswith(skip + ".") for skip in _NOT_COMPARED):
        out[prefix] = obj


def _pick(record: dict[str, Any], dotted: str) -> Any:
    obj: Any = record
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A run record as ``{dotted field: value}`` over the fields :data:`COMPARED` names."""
    out: dict[str, Any] = {}
    for key in COMPARED:
        _leaves(key, _pick(record, key), out)
    top = top_features(record.get("explain"), 3)
    if top:
        out["explain.top_features"] = [name for name, _, _ in top]
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compare(runs: list[Run], diff_only: bool = False) -> dict[str, Any]:
    """Runs side by side: one row per field, its value in each run, whether they differ, and
    for numbers the difference from the first run. ``total`` counts every field compared,
    ``differing`` those that differ; with ``diff_only`` only those are listed."""
    if len(runs) < 2:
        raise UsageError("compare needs at least two runs", "e.g. edgekit runs compare RUN_A RUN_B")
    flat = [comparable(r.record) for r in runs]

    def order(field: str) -> tuple[int, str]:
        section = next((i for i, key in enumerate(COMPARED) if field == key or field.startswith(key + ".")), 99)
        return section, field

    fields = sorted({k for f in flat for k in f}, key=order)
    rows = []
    for field in fields:
        values = [f.get(field) for f in flat]
        differs = any(
            json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
            for v in values[1:]
        )
        row: dict[str, Any] = {"field": field, "values": values, "differs": differs}
        if differs and all(_is_number(v) for v in values):
            first = float(values[0])  # type: ignore[arg-type]  # numbers, checked above
            row["delta"] = [float(v) - first for v in values]  # type: ignore[arg-type]
        rows.append(row)
    return {
        "runs": [r.id for r in runs],
        "fields": [r for r in rows if r["differs"]] if diff_only else rows,
        "differing": sum(r["differs"] for r in rows),
        "total": len(rows),
        "diff_only": diff_only,
    }
