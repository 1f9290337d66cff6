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

Columns that are not features as they stand
    A text column of dates or times is refused (one-hot encoding 336 timestamps gives an
    861 KB model that cannot generalise to the next day): ``datetimes={"ts": None}`` turns it
    into numeric parts (hour, weekday, month; see :mod:`device_agent.features`, whose code
    the device runs on every row), ``drop=["ts"]`` leaves it out. A text column with nearly
    one value per row (an identifier, free text) is refused the same way. ``categorical=[...]``
    overrides these refusals: the user decided. A categorical column with more than
    ``max_categories`` distinct values keeps its most frequent ones and puts the rest in an
    "other" bucket, inside the ONNX graph (:mod:`edgekit.categories`).

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

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.features import (
    DATE_ONLY_PARTS,
    DATETIME,
    DATETIME_PARTS,
    DEFAULT_PARTS,
    Feature,
    datetime_parts,
    has_time,
    model_inputs,
    parse_datetime,
)
from device_agent.missing import is_missing_text
from edgekit.errors import DataError

FINGERPRINT_VERSION = "edgekit-table-v1"
MAX_CLASSES_INFERRED = 20  # a numeric target with more distinct values is inferred as regression
MAX_CATEGORIES = 30  # a categorical column keeps this many categories; the rest are "other"
IDENTIFIER_SHARE = 0.95  # a text column with distinct values in this share of its rows is an identifier
DATE_SHARE = 0.9  # a text column whose values look like dates or times in this share is a date column
PARQUET_SUFFIXES = (".parquet", ".pq")
FIELD_LIMIT_ENV = "EDGEKIT_CSV_FIELD_LIMIT"
DEFAULT_FIELD_LIMIT = 131_072  # Python's csv default, in characters
TASKS = ("classification", "regression")
# Models take float32 input: larger magnitudes would arrive on the device as inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")  # not int(): it also takes "1_000" and non-ASCII digits
# Dates and times as people write them (ISO 8601, 01/03/2024, 2024/03/01 12:30, 12:30:05):
# enough to recognise a date column and say what to do with it, not to parse one.
_DATE_LIKE = re.compile(
    r"(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})"
    r"([T ]\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?\s*([AaPp][Mm])?)?\s*(Z|[+-]\d{2}:?\d{2}|UTC)?"
    r"|\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?\s*([AaPp][Mm])?"
)

Cell = str | float | int | None


@dataclass(frozen=True)
class FeatureInfo:
    """One column, as the bundle manifest describes it: a model input, or (``type
    "datetime"``) a row feature whose ``parts`` are the model inputs."""

    name: str
    type: str  # "numeric" | "categorical" | "datetime"
    allow_missing: bool = False
    parts: tuple[str, ...] = ()  # datetime only
    # categorical only: the categories kept (the rest become "other"); None = all
    max_categories: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "allow_missing": self.allow_missing}
        if self.type == DATETIME:
            d["parts"] = list(self.parts)
        return d

    def device(self) -> Feature:
        return Feature(self.name, self.type, self.allow_missing, self.parts)


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
    features: list[FeatureInfo] = field(default_factory=list)  # the model's inputs, in X's column order
    warnings: list[str] = field(default_factory=list)
    # What a row carries (the manifest's features): ``features`` except that a date/time column
    # is one feature whose parts are inputs. Defaults to ``features``.
    schema: list[FeatureInfo] = field(default_factory=list)
    # Rows as a device receives them (date/time values as text, None = missing); only kept
    # when they differ from X, i.e. when there is a date/time feature.
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.features:  # built by hand from a float matrix (tests, benchmarks)
            nan: np.ndarray = np.isnan(np.asarray(self.X, dtype=np.float64))
            missing = [bool(nan[:, j].any()) for j in range(nan.shape[1])]
            self.features = [
                FeatureInfo(n, "numeric", bool(m)) for n, m in zip(self.feature_names, missing, strict=True)
            ]
        if not self.schema:
            self.schema = list(self.features)

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
    *,
    drop: Sequence[str] = (),
    datetimes: Mapping[str, Sequence[str] | None] | Sequence[str] = (),
    max_categories: int | None = MAX_CATEGORIES,
) -> Table:
    """Read ``path`` (UTF-8 CSV with a header row, or Parquet) with ``target`` as the column to
    predict. Every other column is a feature. Blank CSV lines are skipped; cells are stripped.

    ``task`` ("classification" / "regression") overrides the inferred task; ``categorical``
    names feature columns to treat as categories even when their values look numeric;
    ``drop`` names columns to leave out; ``datetimes`` names date/time columns to use through
    their parts (a mapping gives the parts; None or a plain list of names: chosen from the
    data); ``max_categories`` caps each categorical column (None: no cap).
    """
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    if max_categories is not None and max_categories < 1:
        raise DataError(f"max_categories is {max_categories}", "keep at least 1 category per column")
    dates = dict(datetimes) if isinstance(datetimes, Mapping) else dict.fromkeys(datetimes)
    p = Path(path)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        header, columns, where = _read_parquet(p)
    else:
        header, columns, where = _read_csv(p)
    options = _Options(set(categorical), set(drop), {k: tuple(v) if v else None for k, v in dates.items()})
    return _build(str(path), header, columns, where, target, min_rows, task, options, max_categories)


@dataclass(frozen=True)
class _Options:
    categorical: set[str]
    drop: set[str]
    datetime: dict[str, tuple[str, ...] | None]


# --- reading --------------------------------------------------------------------------------------


def _field_limit() -> int:
    """The longest CSV field read, in characters: Python's csv default (131,072), or
    ``$EDGEKIT_CSV_FIELD_LIMIT``."""
    raw = os.environ.get(FIELD_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_FIELD_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(
            f"${FIELD_LIMIT_ENV} is {raw!r}", "give the longest field to accept, in characters, e.g. 1000000"
        )
    return limit


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)  # process-wide in the csv module: put it back after
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path) -> tuple[list[str], list[list[Cell]], Callable[[int], str]]:
    text = _read_text(path)
    with _csv_field_limit(_field_limit()):
        return _parse_csv(path, text)


def _parse_csv(path: Path, text: str) -> tuple[list[str], list[list[Cell]], Callable[[int], str]]:
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
        if "field larger than field limit" in str(exc):
            limit = csv.field_size_limit()
            raise DataError(
                f"{path}: line {rows.line_num} has a field longer than {limit:,} characters, "
                "the CSV reader's size limit",
                "if a quote is left open on or before that line, close it; if the field really is that long, raise "
                f"the limit: {FIELD_LIMIT_ENV}={max(limit * 8, 1_000_000)} edgekit …",
            ) from None
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


def _check_names(path: str, header: list[str], target: str, options: _Options) -> None:
    named = [
        ("to treat as categorical", options.categorical),
        ("to drop", options.drop),
        ("to read as date/time", set(options.datetime)),
    ]
    for what, names in named:
        unknown = sorted(names - set(header))
        if unknown:
            raise DataError(
                f"{path}: no column {', '.join(repr(u) for u in unknown)} {what}",
                f"the columns are: {', '.join(header)}",
            )
        if target in names:
            raise DataError(f"{path}: '{target}' is the target, not a feature", f"remove it from the columns {what}")
    for a, b in (("drop", "categorical"), ("drop", "datetime"), ("categorical", "datetime")):
        both = sorted(set(getattr(options, a)) & set(getattr(options, b)))
        if both:
            raise DataError(f"{path}: column {', '.join(map(repr, both))} is given both as {a} and as {b}", "pick one")
    for name, parts in options.datetime.items():
        unknown = sorted(set(parts or ()) - set(DATETIME_PARTS))
        if unknown:
            raise DataError(
                f"unknown date/time part {', '.join(map(repr, unknown))} for column '{name}'",
                f"choose from: {', '.join(DATETIME_PARTS)}",
            )


def _build(
    path: str,
    header: list[str],
    columns: list[list[Cell]],
    where: Callable[[int], str],
    target: str,
    min_rows: int,
    task: str | None,
    options: _Options,
    max_categories: int | None = MAX_CATEGORIES,
) -> Table:
    if target not in header:
        raise DataError(
            f"{path}: no target column '{target}'; the columns are: {', '.join(header)}",
            "pass one of them as the target",
        )
    _check_names(path, header, target, options)
    if len(header) - len(options.drop) < 2:
        raise DataError(f"{path}: only the target column '{target}', no features", "add feature columns")
    t_idx = header.index(target)
    n = len(columns[0]) if columns else 0
    if n < min_rows:
        raise DataError(
            f"{path}: only {n} data rows after the header; need at least {min_rows}",
            "add rows: cross-validation and a holdout need at least this many",
        )

    y, y_canon, resolved_task = _parse_target(path, target, columns[t_idx], where, task)

    schema: list[FeatureInfo] = []  # what a row carries
    canon: list[list[Any]] = []  # per row feature, for the fingerprint
    raw: list[list[Any]] = []  # per row feature, as a device receives it
    infos: list[FeatureInfo] = []  # the model's inputs
    parsed: list[list[Any]] = []  # per model input
    warnings: list[str] = []
    for j, name in enumerate(header):
        if j == t_idx or name in options.drop:
            continue
        if name in options.datetime:
            parts = options.datetime[name]
            info, part_infos, part_values, texts = _parse_datetime(path, name, columns[j], where, parts)
            schema.append(info)
            canon.append(texts)
            raw.append(texts)
            infos += part_infos
            parsed += part_values
            continue
        info, values, canonical, warning = _parse_feature(
            path, name, columns[j], where, name in options.categorical, max_categories
        )
        schema.append(info)
        infos.append(info)
        parsed.append(values)
        canon.append(canonical)
        raw.append(canonical)
        if warning:
            warnings.append(warning)
    constant = [w for w in warnings if " is constant " in w]
    if len(constant) == len(schema):
        raise DataError(
            f"{path}: every feature column is constant ({', '.join(f.name for f in schema)}); "
            "there is nothing to learn from",
            "add columns that vary",
        )

    names = [f.name for f in infos]
    if all(f.type == "numeric" for f in infos):
        X = np.asarray(parsed, dtype=np.float64).T.reshape(n, len(names))
    else:
        X = np.empty((n, len(names)), dtype=object)
        for j, values in enumerate(parsed):
            X[:, j] = values
    rows = None
    if any(f.type == DATETIME for f in schema):
        rows = np.empty((n, len(schema)), dtype=object)
        for j, values in enumerate(raw):
            rows[:, j] = values
    fingerprint = _fingerprint([f.name for f in schema], target, canon, y_canon, schema, resolved_task)
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
        schema=schema,
        rows=rows,
    )


def _parse_datetime(
    path: str, name: str, cells: list[Cell], where: Callable[[int], str], parts: tuple[str, ...] | None
) -> tuple[FeatureInfo, list[FeatureInfo], list[list[float]], list[str | None]]:
    """A date/time column: (its feature, the inputs its parts become, their values, its texts).

    Parts are computed with the device's own code (:mod:`device_agent.features`). Without
    ``parts``, the default set for values with (or without) a time of day, leaving out parts
    that are the same in every row (they carry nothing)."""
    n = len(cells)
    texts: list[str | None] = []
    stamps: list[dt.datetime | None] = []
    for i, cell in enumerate(cells):
        if _is_missing(cell):
            texts.append(None)
            stamps.append(None)
            continue
        text = _text(cell)
        try:
            stamps.append(parse_datetime(text))
        except ValueError:
            raise DataError(
                f"{path}: column '{name}' has the value {_shown(text)} on {where(i)}, "
                "which is not an ISO 8601 date/time",
                "write dates as YYYY-MM-DD or YYYY-MM-DD hh:mm:ss, mark the value missing, or --drop the column",
            ) from None
        texts.append(text)
    present = [t for t in texts if t is not None]
    if not present:
        raise DataError(f"{path}: column '{name}' has no values: all {n} rows are missing", "drop the column")
    allow_missing = len(present) < n
    chosen: tuple[str, ...]
    if parts:
        chosen = parts
    else:
        candidates = DEFAULT_PARTS if any(has_time(t) for t in present) else DATE_ONLY_PARTS
        values = [datetime_parts(d, candidates) for d in stamps if d is not None]
        chosen = tuple(p for k, p in enumerate(candidates) if len({v[k] for v in values}) > 1)
        if not chosen:
            raise DataError(
                f"{path}: column '{name}' has the same {', '.join(candidates)} in every row; as a date/time "
                "it carries nothing",
                f"--drop {name}, or choose parts that vary: --datetime {name}:year,dayofyear",
            )
    info = FeatureInfo(name, DATETIME, allow_missing, chosen)
    columns = [[math.nan] * n for _ in chosen]
    for i, stamp in enumerate(stamps):
        if stamp is not None:
            for k, v in enumerate(datetime_parts(stamp, chosen)):
                columns[k][i] = v
    inputs = [FeatureInfo(f.name, f.type, f.allow_missing) for f in model_inputs([info.device()])]
    return info, inputs, columns, texts


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
                f"{path}: target column '{target}' has the non-numeric value {_shown(labels[i])} on {where(i)}; "
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
            f"{path}: target column '{target}' has a single class {_shown(labels[0])} in all {n} rows; "
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
    path: str,
    name: str,
    cells: list[Cell],
    where: Callable[[int], str],
    force_categorical: bool,
    max_categories: int | None = MAX_CATEGORIES,
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
            f"{where(i)} has the text {_shown(cells[i])}" + (f" ({n_text - 1} more text values)" if n_text > 1 else ""),
            "clean the column (a decimal comma, a unit, a typo?), mark the value missing, "
            "or declare the column categorical",
        )

    if force_categorical or n_text:
        values = ["" if m else _text(c) for c, m in zip(cells, missing, strict=True)]
        distinct = Counter(v for v in values if v)
        if not force_categorical:
            _refuse_dates_and_identifiers(path, name, values, distinct, n - n_missing)
        warning = None
        if len(distinct) == 1 and not allow_missing:
            warning = f"column '{name}' is constant ({next(iter(distinct))!r}) in all {n} rows: drop it"
        cap = max_categories if max_categories is not None and len(distinct) > max_categories else None
        return FeatureInfo(name, "categorical", allow_missing, max_categories=cap), values, values, warning

    values_f: list[float] = []
    for i, (v, m) in enumerate(zip(numbers, missing, strict=True)):
        if m:
            values_f.append(math.nan)
            continue
        assert v is not None
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            raise DataError(
                f"{path}: column '{name}' has the value {_shown(cells[i])} on {where(i)}, outside the float32 range "
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


def _refuse_dates_and_identifiers(
    path: str, name: str, values: list[str], distinct: Counter[str], present: int
) -> None:
    """A text column of dates, or of identifiers, is not a category a model can learn from:
    one-hot encoding it makes a column per row and nothing generalises to the next one."""
    shown = ", ".join(repr(v) for v in list(distinct)[:2])
    dates = sum(count for v, count in distinct.items() if _DATE_LIKE.fullmatch(v))
    if present and dates >= DATE_SHARE * present:
        iso = all(_iso(v) for v in list(distinct)[:50])
        how = (
            f"use its parts with --datetime {name} (hour, weekday, month), or leave it out with --drop {name}"
            if iso
            else f"write it as ISO 8601 (YYYY-MM-DD hh:mm:ss) and use --datetime {name}, or leave it out "
            f"with --drop {name}"
        )
        raise DataError(
            f"{path}: column '{name}' holds dates or times ({shown}, … {len(distinct)} distinct values): "
            "one-hot encoding them cannot generalise to dates the model has not seen",
            how,
        )
    if present >= 20 and len(distinct) >= IDENTIFIER_SHARE * present:
        raise DataError(
            f"{path}: column '{name}' has {len(distinct)} distinct values in {present} rows ({shown}, …): it looks "
            "like an identifier or free text, which a model cannot learn from",
            f"leave it out with --drop {name}, or keep it anyway with --categorical {name} "
            "(its most frequent values, the rest as 'other')",
        )


def _iso(text: str) -> bool:
    try:
        parse_datetime(text)
    except ValueError:
        return False
    return True


def _shown(cell: Cell, width: int = 40) -> str:
    """A cell for a one-line message: quoted, and cut when long."""
    text = _text(cell)
    return repr(text) if len(text) <= width else repr(text[: width - 1] + "…") + f" ({len(text):,} characters)"


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
