"""Load a tabular CSV or Parquet file into arrays a model can train on, or say exactly why not.

Every refusal is a :class:`DataError` that names the column and the 1-based line in the file
(or the data row, for Parquet), because the person reading it has the file open in an editor,
not a Python prompt.

Column types
    A feature column is *numeric* when every non-missing cell is a number, *categorical* when
    most are text (numbers in it are then categories like any other string). A column that is
    mostly numbers with a few text cells is refused as "mixed types", naming the first text
    cell: it is nearly always a typo, a unit or a decimal comma, and silently one-hot encoding a
    numeric column would be worse than stopping. ``categorical=[...]`` forces columns to be
    categorical (codes, zip codes, "1"/"2"/"3" levels).

Missing values
    The cells in :data:`device_agent.missing.MISSING_MARKERS` (any case) are missing: the
    agent reads a replayed CSV with the same rule. In a numeric feature they
    become NaN, in a categorical one the empty string ``""`` (the device feeds exactly these, per
    ``docs/contract-model-spec.md``). The model handles them inside its ONNX graph: numeric
    columns are imputed (mean; HistGradientBoosting learns a direction for NaN instead), and
    ``""`` is a category of its own for the one-hot encoder. A feature's ``allow_missing`` is
    true when its training data had missing values: the device then accepts them, otherwise it
    refuses a row with a missing value in that column. The target may not have missing values.

Task
    A numeric target with non-integral values, or more than :data:`MAX_CLASSES_INFERRED`
    distinct values, is a regression target; anything else (text, or a few integers) is a class
    label. ``task=`` overrides the inference.

The fingerprint hashes the *parsed* table (header, numbers, labels), not the file bytes, so
re-saving a CSV with other line endings, padding or ``1`` written as ``1.0`` does not change
it, while any change a model could notice does. It is recorded in run records and bundles to
say which data a model was trained on. Tables with only numeric features and integer or text
labels hash exactly as they did before categorical and missing values were supported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.missing import is_missing_text
from edgekit.errors import DataError

FINGERPRINT_VERSION = "edgekit-table-v1"
MAX_CLASSES_INFERRED = 20  # a numeric target with more distinct values is inferred as regression
PARQUET_SUFFIXES = (".parquet", ".pq")
TASKS = ("classification", "regression")
# Models take float32 input: larger magnitudes would arrive on the device as inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")  # not int(): it also takes "1_000" and non-ASCII digits

Cell = str | float | int | None


@dataclass(frozen=True)
class FeatureInfo:
    """One model input column, as the bundle manifest describes it."""

    name: str
    type: str  # "numeric" | "categorical"
    allow_missing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "allow_missing": self.allow_missing}


@dataclass
class Table:
    path: str
    target: str
    feature_names: list[str]
    # float64 (n, F) when every feature is numeric (NaN = missing); otherwise object (n, F)
    # holding floats for numeric features and str for categorical ones ("" = missing).
    X: np.ndarray
    # classification: int64 when every label is an integer, else str ("<U"); regression: float64
    y: np.ndarray
    fingerprint: dict[str, Any]
    task: str = "classification"
    features: list[FeatureInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.features:  # built by hand from a float matrix (tests, benchmarks)
            nan: np.ndarray = np.isnan(np.asarray(self.X, dtype=np.float64))
            missing = [bool(nan[:, j].any()) for j in range(nan.shape[1])]
            self.features = [
                FeatureInfo(n, "numeric", bool(m)) for n, m in zip(self.feature_names, missing, strict=True)
            ]

    @property
    def numeric_only(self) -> bool:
        return all(f.type == "numeric" for f in self.features)

    @property
    def categorical_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.type == "categorical"]

    @property
    def numeric_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.type == "numeric"]


def load_table(
    path: str | Path,
    target: str,
    min_rows: int = 20,
    task: str | None = None,
    categorical: Sequence[str] = (),
) -> Table:
    """Read ``path`` (UTF-8 CSV with a header row, or Parquet) with ``target`` as the column to
    predict. Every other column is a feature. Blank CSV lines are skipped; cells are stripped.

    ``task`` ("classification" / "regression") overrides the inferred task; ``categorical``
    names feature columns to treat as categories even when their values look numeric.
    """
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    p = Path(path)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        header, columns, where = _read_parquet(p)
    else:
        header, columns, where = _read_csv(p)
    return _build(str(path), header, columns, where, target, min_rows, task, set(categorical))


# --- reading --------------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[list[Cell]], Callable[[int], str]]:
    text = _read_text(path)
    rows = csv.reader(io.StringIO(text, newline=""))
    lines: list[int] = []
    try:
        header = _read_header(rows, str(path))
        _check_header_names(header, str(path))
        cells: list[list[Cell]] = [[] for _ in header]
        for row in rows:
            values = [c.strip() for c in row]
            if len(values) <= 1 and not any(values):
                continue  # a blank line
            if len(values) != len(header):
                raise DataError(
                    f"{path}: line {rows.line_num} has {len(values)} fields, expected {len(header)} like the header",
                    "fix the quoting or the number of commas on that line",
                )
            lines.append(rows.line_num)
            for j, v in enumerate(values):
                cells[j].append(v)
    except csv.Error as exc:
        raise DataError(f"{path}: line {rows.line_num}: {exc}", "fix the CSV syntax on that line") from None

    def where(i: int) -> str:
        return f"line {lines[i]}"

    return header, cells, where


def _read_parquet(path: Path) -> tuple[list[str], list[list[Cell]], Callable[[int], str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: install pyarrow to read Parquet", "pip install pyarrow, or convert to CSV") from None
    if not path.is_file():
        raise DataError(f"{path}: no such file", "check the path")
    try:
        arrow = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors are many and untyped for our purpose
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read it as Parquet ({detail})", "check that it is a Parquet file") from None
    header = [str(n) for n in arrow.column_names]
    _check_header_names(header, str(path))
    cells = [[_parquet_cell(v) for v in arrow.column(j).to_pylist()] for j in range(len(header))]

    def where(i: int) -> str:
        return f"data row {i + 1}"

    return header, cells, where


def _parquet_cell(value: Any) -> Cell:
    """Parquet values as the CSV reader would see them: numbers stay numbers, None is missing,
    booleans and everything else (dates, decimals as text) become their text form."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return value
    return str(value).strip()


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


def _read_header(rows: Any, path: str) -> list[str]:
    for row in rows:
        header = [c.strip() for c in row]
        if any(header):
            return header
    raise DataError(f"{path}: the file is empty (no header row)", "the first line must name the columns")


def _check_header_names(header: list[str], path: str) -> None:
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: column {i + 1} of the header has no name", "name every column")
    dupes = sorted(name for name, count in Counter(header).items() if count > 1)
    if dupes:
        raise DataError(f"{path}: duplicate column names in the header: {', '.join(dupes)}", "rename them to be unique")


# --- typing and checking ------------------------------------------------------------------------


def _is_missing(cell: Cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, str):
        return is_missing_text(cell)
    return isinstance(cell, float) and math.isnan(cell)


def _as_number(cell: Cell) -> float | None:
    """The cell's number, or None if it is text (missing cells are handled before)."""
    if isinstance(cell, bool):
        return None
    if isinstance(cell, int | float):
        return float(cell)
    try:
        return float(str(cell))
    except (ValueError, OverflowError):
        return None


def _build(
    path: str,
    header: list[str],
    columns: list[list[Cell]],
    where: Callable[[int], str],
    target: str,
    min_rows: int,
    task: str | None,
    categorical: set[str],
) -> Table:
    if target not in header:
        raise DataError(
            f"{path}: no target column '{target}'; the columns are: {', '.join(header)}",
            "pass one of them as the target",
        )
    if len(header) < 2:
        raise DataError(f"{path}: only the target column '{target}', no features", "add feature columns")
    unknown = sorted(categorical - set(header))
    if unknown:
        raise DataError(
            f"{path}: no column {', '.join(repr(u) for u in unknown)} to treat as categorical",
            f"the columns are: {', '.join(header)}",
        )
    if target in categorical:
        raise DataError(f"{path}: '{target}' is the target, not a feature", "drop it from the categorical columns")
    t_idx = header.index(target)
    n = len(columns[0]) if columns else 0
    if n < min_rows:
        raise DataError(
            f"{path}: only {n} data rows after the header; need at least {min_rows}",
            "add rows: cross-validation and a holdout need at least this many",
        )

    y, y_canon, resolved_task = _parse_target(path, target, columns[t_idx], where, task)

    names: list[str] = []
    infos: list[FeatureInfo] = []
    parsed: list[list[Any]] = []
    canon: list[list[Any]] = []
    warnings: list[str] = []
    for j, name in enumerate(header):
        if j == t_idx:
            continue
        info, values, canonical, warning = _parse_feature(path, name, columns[j], where, name in categorical)
        names.append(name)
        infos.append(info)
        parsed.append(values)
        canon.append(canonical)
        if warning:
            warnings.append(warning)
    constant = [w for w in warnings if " is constant " in w]
    if len(constant) == len(names):
        raise DataError(
            f"{path}: every feature column is constant ({', '.join(names)}); there is nothing to learn from",
            "add columns that vary",
        )

    if all(f.type == "numeric" for f in infos):
        X = np.asarray(parsed, dtype=np.float64).T.reshape(n, len(names))
    else:
        X = np.empty((n, len(names)), dtype=object)
        for j, values in enumerate(parsed):
            X[:, j] = values
    fingerprint = _fingerprint(names, target, canon, y_canon, infos, resolved_task)
    return Table(
        path=path,
        target=target,
        feature_names=names,
        X=X,
        y=y,
        fingerprint=fingerprint,
        task=resolved_task,
        features=infos,
        warnings=warnings,
    )


def _parse_target(
    path: str, target: str, cells: list[Cell], where: Callable[[int], str], task: str | None
) -> tuple[np.ndarray, list[Any], str]:
    labels: list[str] = []
    numbers: list[float | None] = []
    for i, cell in enumerate(cells):
        if _is_missing(cell):
            raise DataError(
                f"{path}: target column '{target}' has a missing value {cell if cell is not None else ''!r} "
                f"on {where(i)}; every row needs a target value",
                "drop the unlabelled rows, or fill them in",
            )
        number = _as_number(cell)
        numbers.append(number if number is not None and math.isfinite(number) else None)
        labels.append(_label_text(cell))
    n = len(labels)
    all_numeric = all(v is not None for v in numbers)
    nums = np.asarray([v if v is not None else np.nan for v in numbers], dtype=np.float64)
    integral = all_numeric and bool(np.all(nums == np.round(nums)))
    if task is None:
        distinct = len(set(nums.tolist())) if all_numeric else 0
        task = "regression" if all_numeric and (not integral or distinct > MAX_CLASSES_INFERRED) else "classification"

    canon = _canonical_labels(labels, nums if all_numeric else None)
    if task == "regression":
        if not all_numeric:
            i = next(k for k, v in enumerate(numbers) if v is None)
            raise DataError(
                f"{path}: target column '{target}' has the non-numeric value {labels[i]!r} on {where(i)}; "
                "a regression target must be numbers",
                "fix the value, or train a classifier (task classification)",
            )
        if np.all(nums == nums[0]):
            raise DataError(
                f"{path}: target column '{target}' is constant ({labels[0]}) in all {n} rows; nothing to learn",
                "check that the right column is the target",
            )
        return nums, canon, task

    classes = Counter(labels)
    if len(classes) < 2:
        raise DataError(
            f"{path}: target column '{target}' has a single class {labels[0]!r} in all {n} rows; "
            "classification needs at least two",
            "check that the right column is the target, or add rows of the other classes",
        )
    if all(_INTEGER.fullmatch(label) for label in labels):
        ints = [int(label) for label in labels]
        if all(_INT64_MIN <= v <= _INT64_MAX for v in ints):
            return np.asarray(ints, dtype=np.int64), canon, task
    if integral and np.all(np.abs(nums) < 2**53):
        return nums.astype(np.int64), canon, task  # "1.0" / "2.0" labels are the classes 1 and 2
    return np.asarray(labels, dtype=str), canon, task


def _label_text(cell: Cell) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell)


def _canonical_labels(labels: list[str], nums: np.ndarray | None) -> list[Any]:
    """Labels as hashed: integers as integers, other numbers as floats, text as text."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        ints = [int(label) for label in labels]
        if all(_INT64_MIN <= v <= _INT64_MAX for v in ints):
            return ints
    if nums is not None:
        return [float(v) for v in nums]
    return labels


def _parse_feature(
    path: str, name: str, cells: list[Cell], where: Callable[[int], str], force_categorical: bool
) -> tuple[FeatureInfo, list[Any], list[Any], str | None]:
    """(info, values for X, values for the fingerprint, a warning or None)."""
    n = len(cells)
    missing = [_is_missing(c) for c in cells]
    numbers = [None if m else _as_number(c) for c, m in zip(cells, missing, strict=True)]
    n_missing = sum(missing)
    if n_missing == n:
        raise DataError(
            f"{path}: column '{name}' has no values: all {n} rows are missing",
            "drop the column",
        )
    n_text = sum(1 for v, m in zip(numbers, missing, strict=True) if not m and v is None)
    n_num = n - n_missing - n_text
    allow_missing = n_missing > 0

    if not force_categorical and n_text and n_num >= n_text:
        i = next(k for k, (v, m) in enumerate(zip(numbers, missing, strict=True)) if not m and v is None)
        raise DataError(
            f"{path}: column '{name}' has mixed types: {n_num} of {n - n_missing} values are numbers, but "
            f"{where(i)} has the text {_text(cells[i])!r}"
            + (f" ({n_text - 1} more text values)" if n_text > 1 else ""),
            "clean the column (a decimal comma, a unit, a typo?), mark the value missing, "
            "or declare the column categorical",
        )

    if force_categorical or n_text:
        values = ["" if m else _text(c) for c, m in zip(cells, missing, strict=True)]
        distinct = Counter(v for v in values if v)
        warning = None
        if len(distinct) == 1 and not allow_missing:
            warning = f"column '{name}' is constant ({next(iter(distinct))!r}) in all {n} rows: drop it"
        elif n >= 20 and len(distinct) > 0.5 * (n - n_missing):
            warning = (
                f"column '{name}' has {len(distinct)} distinct text values in {n} rows: it looks like an "
                "identifier or free text, which one-hot encoding cannot generalise from; consider dropping it"
            )
        return FeatureInfo(name, "categorical", allow_missing), values, values, warning

    values_f: list[float] = []
    for i, (v, m) in enumerate(zip(numbers, missing, strict=True)):
        if m:
            values_f.append(math.nan)
            continue
        assert v is not None
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            raise DataError(
                f"{path}: column '{name}' has the value {_text(cells[i])!r} on {where(i)}, outside the float32 range "
                "models take as input",
                "fix the value or rescale the column",
            )
        values_f.append(v)
    present = [v for v in values_f if not math.isnan(v)]
    warning = None
    if not allow_missing and min(present) == max(present):
        warning = f"column '{name}' is constant ({present[0]:g}) in all {n} rows: it carries no information; drop it"
    canonical = [None if math.isnan(v) else v for v in values_f]
    return FeatureInfo(name, "numeric", allow_missing), values_f, canonical, warning


def _text(cell: Cell) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell)


def _fingerprint(
    names: list[str],
    target: str,
    columns: list[list[Any]],
    labels: list[Any],
    infos: list[FeatureInfo],
    task: str,
) -> dict[str, Any]:
    """sha256 over one JSON line per row of parsed values: floats as their shortest repr,
    missing values as null, categories as text."""
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}\n".encode())
    digest.update((json.dumps([*names, target]) + "\n").encode())
    n = len(labels)
    for i in range(n):
        digest.update((json.dumps([*(c[i] for c in columns), labels[i]]) + "\n").encode())
    return {
        "sha256": digest.hexdigest(),
        "rows": n,
        "columns": len(names) + 1,
        # The model's input schema, in input order; the target is named separately.
        "schema": [f.to_dict() for f in infos],
        "target": target,
        "task": task,
    }
