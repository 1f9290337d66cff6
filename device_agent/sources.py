"""Where rows come from: JSON lines on stdin, or a CSV file replayed at a rate.

Each input row gets exactly one JSON line on stdout: the prediction, or an error with its
code. A row is either a JSON list of numbers in the model's feature order, or an object
``{"id": ..., "features": [...]}`` or ``{"id": ..., "values": {name: number}}``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from .engine import InferenceEngine
from .errors import BadValue, InferenceFailed, NoModel, RowError, WrongShape
from .features import Feature
from .missing import is_missing_text


def _as_row(obj: Any, engine: InferenceEngine) -> tuple[Any, list[Any]]:
    if isinstance(obj, list):
        return None, obj
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(obj.get("features"), list):
            return rid, obj["features"]
        values = obj.get("values")
        model = engine.model
        if isinstance(values, dict) and model is None:
            raise NoModel("no model is active yet; the row was not served")
        if isinstance(values, dict) and model is not None:
            missing = [f.name for f in model.spec.features if f.name not in values]
            if missing:
                raise WrongShape(f"row lacks features: {', '.join(missing[:5])}")
            return rid, [values[f.name] for f in model.spec.features]
    raise WrongShape("a row is a JSON list of numbers or an object with 'features' or 'values'")


def answer(engine: InferenceEngine, rid: Any, row: list[Any]) -> dict[str, Any]:
    try:
        pred = engine.serve(row)
    except RowError as exc:
        out: dict[str, Any] = {"error": exc.code, "detail": exc.detail}
    except Exception as exc:  # the input loop must outlive any single row
        err = InferenceFailed(f"unexpected error serving the row: {type(exc).__name__}: {exc}")
        engine.reject(err)
        out = {"error": err.code, "detail": err.detail}
    else:
        model = engine.model
        out = {"prediction": pred.label}
        if not math.isnan(pred.confidence):
            out["confidence"] = round(pred.confidence, 6)
        if model is not None:
            out["bundle"] = f"{model.bundle.name}@{model.bundle.version}"
    if rid is not None:
        out["id"] = rid
    return out


def serve_lines(engine: InferenceEngine, lines: Iterator[str], out: TextIO) -> int:
    count = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        count += 1
        rid: Any = None
        try:
            obj = json.loads(line)
            rid = obj.get("id") if isinstance(obj, dict) else None
            rid, row = _as_row(obj, engine)
        except ValueError:
            err = BadValue("input line is not valid JSON")
            engine.reject(err)
            result: dict[str, Any] = {"error": err.code, "detail": err.detail}
        except RowError as exc:
            engine.reject(exc)
            result = {"error": exc.code, "detail": exc.detail}
            if rid is not None:
                result["id"] = rid  # so the caller can match the error to its row
        else:
            result = answer(engine, rid, row)
        out.write(json.dumps(result, default=str) + "\n")
        out.flush()
    return count


def serve_stdin(engine: InferenceEngine) -> int:
    return serve_lines(engine, iter(sys.stdin.readline, ""), sys.stdout)


def csv_rows(path: str) -> Iterator[dict[str, str] | RowError]:
    """The file's records, or for a line the reader cannot take, the error to answer it with
    (one bad line must not end the replay)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                limit = csv.field_size_limit()
                why = (
                    f"a field is over the CSV reader's size limit of {limit} characters" if "limit" in str(exc) else exc
                )
                yield BadValue(f"CSV line {reader.line_num + 1}: {why}; the line was skipped")
                continue
            yield record


def _csv_row(record: dict[str, str], features: Sequence[Feature]) -> list[Any]:
    """A CSV record as the model's row: numbers for numeric features, the text itself for
    categorical and date/time ones (a category may look like a number), None for a missing value — read
    with the rule training used (:mod:`device_agent.missing`: ``NA``, ``n/a``, ``?``, …)."""
    row: list[Any] = []
    for feature in features:
        if feature.name not in record:
            raise WrongShape(f"the CSV has no column {feature.name!r}, which the model needs")
        raw = record[feature.name]
        if raw is None or is_missing_text(raw):
            row.append(None)
        elif feature.type in ("categorical", "datetime"):
            row.append(raw.strip())
        else:
            try:
                row.append(float(raw.strip()))
            except ValueError:
                row.append(raw)  # reported as a bad value, naming the feature
    return row


def serve_csv(engine: InferenceEngine, path: str, rate: float, out: TextIO, wait_model_s: float = 600.0) -> int:
    """Replay a CSV at ``rate`` rows/s (0 = as fast as possible), columns matched by name."""
    deadline = time.monotonic() + wait_model_s
    while engine.model is None and time.monotonic() < deadline:
        time.sleep(0.1)
    count = 0
    start = time.monotonic()
    for record in csv_rows(path):
        model = engine.model
        try:
            if isinstance(record, RowError):
                raise record
            if model is None:
                raise NoModel("no model is active yet; the row was not served")
            result = answer(engine, count, _csv_row(record, model.spec.features))
        except RowError as exc:
            engine.reject(exc)
            result = {"error": exc.code, "detail": exc.detail, "id": count}
        out.write(json.dumps(result, default=str) + "\n")
        count += 1
        if rate > 0:
            delay = start + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    out.flush()
    return count
