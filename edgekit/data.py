"""Load a tabular CSV into arrays a classifier can train on, or say exactly why not.

Every refusal is a :class:`DataError` that names the column and the 1-based line in the file,
because the person reading it has the CSV open in an editor, not a Python prompt.

The fingerprint hashes the *parsed* table (header, numbers, labels), not the file bytes, so
re-saving a CSV with other line endings, padding or ``1`` written as ``1.0`` does not change
it, while any change a model could notice does. It is recorded in run records and bundles to
say which data a model was trained on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError

# Cell values read as "missing". Missing values are not supported yet; recognising the usual
# spellings lets us say "missing" instead of "not a number".
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
FINGERPRINT_VERSION = "edgekit-table-v1"
# Models take float32 input: larger magnitudes would arrive on the device as inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")  # not int(): it also takes "1_000" and non-ASCII digits


@dataclass
class Table:
    path: str
    target: str
    feature_names: list[str]
    X: np.ndarray  # float64, shape (n, F)
    y: np.ndarray  # int64 when every label is an integer, else str ("<U")
    fingerprint: dict[str, Any]


def load_table(path: str | Path, target: str, min_rows: int = 20) -> Table:
    """Read ``path`` (UTF-8 CSV with a header row) with ``target`` as the class column.

    Every other column is a numeric feature. Blank lines are skipped; cells are stripped.
    """
    text = _read_text(Path(path))
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        return _parse(rows, str(path), target, min_rows)
    except csv.Error as exc:
        raise DataError(f"{path}: line {rows.line_num}: {exc}", "fix the CSV syntax on that line") from None


def _parse(rows: Any, path: str, target: str, min_rows: int) -> Table:
    header, header_line = _read_header(rows, path)
    feature_idx, target_idx = _check_header(header, target, path)
    names = [header[i] for i in feature_idx]

    values: list[list[float]] = []
    labels: list[str] = []
    for row in rows:
        cells = [c.strip() for c in row]
        if len(cells) <= 1 and not any(cells):
            continue  # a blank line
        line = rows.line_num
        if len(cells) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(cells)} fields, expected {len(header)} like the header",
                "fix the quoting or the number of commas on that line",
            )
        values.append([_parse_number(cells[i], header[i], line, path) for i in feature_idx])
        label = cells[target_idx]
        if label.lower() in MISSING_MARKERS:
            raise DataError(
                f"{path}: target column '{target}' has a missing label {label!r} on line {line}; "
                "missing values are not supported yet",
                "drop the unlabelled rows",
            )
        labels.append(label)

    n = len(values)
    if n < min_rows:
        raise DataError(
            f"{path}: only {n} data rows after the header (line {header_line}); need at least {min_rows}",
            "add rows, or lower the minimum if you know the model can cope",
        )
    y = _parse_labels(labels)
    classes = Counter(labels)
    if len(classes) < 2:
        raise DataError(
            f"{path}: target column '{target}' has a single class {labels[0]!r} in all {n} rows; "
            "classification needs at least two",
            "check that the right column is the target, or add rows of the other classes",
        )
    X = np.asarray(values, dtype=np.float64).reshape(n, len(names))
    return Table(
        path=path,
        target=target,
        feature_names=names,
        X=X,
        y=y,
        fingerprint=_fingerprint(names, target, X, y),
    )


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", "check the path") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})", "check the path and permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})", "save the CSV as UTF-8") from None


def _read_header(rows: Any, path: str) -> tuple[list[str], int]:
    for row in rows:
        header = [c.strip() for c in row]
        if any(header):
            return header, rows.line_num
    raise DataError(f"{path}: the file is empty (no header row)", "the first line must name the columns")


def _check_header(header: list[str], target: str, path: str) -> tuple[list[int], int]:
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: column {i + 1} of the header has no name", "name every column")
    dupes = sorted(name for name, count in Counter(header).items() if count > 1)
    if dupes:
        raise DataError(f"{path}: duplicate column names in the header: {', '.join(dupes)}", "rename them to be unique")
    if target not in header:
        raise DataError(
            f"{path}: no target column '{target}'; the columns are: {', '.join(header)}",
            "pass one of them as the target",
        )
    if len(header) < 2:
        raise DataError(f"{path}: only the target column '{target}', no features", "add feature columns")
    target_idx = header.index(target)
    return [i for i in range(len(header)) if i != target_idx], target_idx


def _parse_number(cell: str, column: str, line: int, path: str) -> float:
    if cell.lower() in MISSING_MARKERS:
        raise DataError(
            f"{path}: column '{column}' has a missing value {cell!r} on line {line}; "
            "missing values are not supported yet",
            "fill or drop those rows",
        )
    try:
        value = float(cell)
    except ValueError:
        raise DataError(
            f"{path}: column '{column}' has a non-numeric value {cell!r} on line {line}; "
            "all feature columns must be numeric for now",
            "fix the value, or drop the column",
        ) from None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise DataError(
            f"{path}: column '{column}' has the value {cell!r} on line {line}, outside the float32 range "
            "models take as input",
            "fix the value or rescale the column",
        )
    return value


def _parse_labels(labels: list[str]) -> np.ndarray:
    """Integer labels stay integers (so ``0``/``1`` round-trip as numbers); anything else is text."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        ints = [int(label) for label in labels]
        if all(_INT64_MIN <= v <= _INT64_MAX for v in ints):
            return np.asarray(ints, dtype=np.int64)
    return np.asarray(labels, dtype=str)


def _fingerprint(names: list[str], target: str, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """sha256 over one JSON line per row of parsed values: floats as their shortest repr."""
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}\n".encode())
    digest.update((json.dumps([*names, target]) + "\n").encode())
    for features, label in zip(X.tolist(), y.tolist(), strict=True):
        digest.update((json.dumps([*features, label]) + "\n").encode())
    return {
        "sha256": digest.hexdigest(),
        "rows": int(X.shape[0]),
        "columns": len(names) + 1,
        # The model's input schema, in input order; the target is named separately.
        "schema": [{"name": name, "type": "numeric"} for name in names],
        "target": target,
    }
