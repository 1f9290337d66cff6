"""Where rows come from — JSON lines on stdin, a CSV file replayed at a rate, the local API —
and the one shape of a row and of its answer that all of them share.

Each input row gets exactly one answer: the prediction, or an error with its code. A row is
either a JSON list of values in the model's feature order, or an object
``{"id": ..., "features": [...]}`` or ``{"id": ..., "values": {name: value}}``. The local API
(:mod:`device_agent.local_api`) adds batches, whose rows take the same forms and whose answers
are these answers, one per row.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, TextIO

import numpy as np

from .engine import InferenceEngine
from .errors import BadValue, InferenceFailed, NoModel, RowError, WrongShape
from .features import Feature
from .local_api import error as error_answer  # an error's id is echoed, so the caller can match it to its row
from .missing import is_missing_text
from .runtime import LoadedModel, Prediction


def parse_row(obj: Any, engine: InferenceEngine) -> tuple[Any, list[Any]]:
    """A decoded row in any of its forms → (its id or None, its values in feature order)."""
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


def _answer(pred: Prediction, bundle: str | None, rid: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"prediction": pred.label}
    if not math.isnan(pred.confidence):
        out["confidence"] = round(pred.confidence, 6)
    if bundle is not None:
        out["bundle"] = bundle
    if rid is not None:
        out["id"] = rid
    return out


def _label(model: LoadedModel | None) -> str | None:
    return f"{model.bundle.name}@{model.bundle.version}" if model is not None else None


def _unexpected(engine: InferenceEngine, exc: Exception) -> RowError:
    """The serving loop must outlive any single row: an unforeseen error becomes that row's."""
    err = InferenceFailed(f"unexpected error serving the row: {type(exc).__name__}: {exc}")
    engine.reject(err)
    return err


def answer(engine: InferenceEngine, rid: Any, row: list[Any]) -> dict[str, Any]:
    """Serve one row and shape its answer."""
    try:
        pred = engine.serve(row)
    except RowError as exc:
        return error_answer(exc, rid)
    except Exception as exc:
        return error_answer(_unexpected(engine, exc), rid)
    return _answer(pred, _label(engine.model), rid)


def answer_object(engine: InferenceEngine, obj: Any) -> dict[str, Any]:
    """A decoded row in any of its forms → its answer (a malformed one is rejected and counted)."""
    rid = obj.get("id") if isinstance(obj, dict) else None
    try:
        rid, row = parse_row(obj, engine)
    except RowError as exc:
        engine.reject(exc)
        return error_answer(exc, rid)
    return answer(engine, rid, row)


def answer_rows(engine: InferenceEngine, items: Sequence[Any]) -> list[dict[str, Any]]:
    """A batch: rows in any of their forms → one answer each, in order. The rows that parse are
    served together through one onnxruntime call (:meth:`InferenceEngine.serve_many`)."""
    answers: list[dict[str, Any] | None] = []
    ids: list[Any] = []
    rows: list[list[Any]] = []
    for obj in items:
        rid = obj.get("id") if isinstance(obj, dict) else None
        try:
            rid, row = parse_row(obj, engine)
        except RowError as exc:
            engine.reject(exc)
            answers.append(error_answer(exc, rid))
            continue
        answers.append(None)
        ids.append(rid)
        rows.append(row)
    if rows:
        try:
            model, results = engine.serve_many(rows)
        except Exception as exc:
            err = _unexpected(engine, exc)
            results, model = [err] * len(rows), None
        bundle = _label(model)
        served = iter(zip(ids, results, strict=True))
        for k, slot in enumerate(answers):
            if slot is None:
                rid, result = next(served)
                if isinstance(result, RowError):
                    answers[k] = error_answer(result, rid)
                else:
                    answers[k] = _answer(result, bundle, rid)
    return [a for a in answers if a is not None]


def answer_matrix(engine: InferenceEngine, x: np.ndarray) -> dict[str, Any]:
    """A tensor batch → its answers as columns: ``prediction`` and (for a classifier)
    ``confidence`` per row, ``null`` where a row failed, and that row's error in ``errors``."""
    try:
        model, cols = engine.serve_matrix(x)
    except RowError as exc:  # the matrix as a whole does not fit the model: every row is rejected
        for _ in range(len(x)):
            engine.reject(exc)
        return error_answer(exc)
    out: dict[str, Any] = {}
    label = _label(model)
    if label is not None:
        out["bundle"] = label
    failed = cols.errors
    if model is not None and model.spec.task == "classification":
        classes = model.spec.classes
        out["prediction"] = [classes[j] if j >= 0 else None for j in cols.class_index.tolist()]
        out["confidence"] = [None if math.isnan(c) else c for c in np.round(cols.score, 6).tolist()]
    else:
        out["prediction"] = [None if i in failed or math.isnan(v) else v for i, v in enumerate(cols.score.tolist())]
    out["errors"] = [{"row": i, "error": e.code, "detail": e.detail} for i, e in sorted(failed.items())]
    return out


def answer_matrix_binary(engine: InferenceEngine, x: np.ndarray) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """A tensor batch → its answer header and raw columns: no number is written as text, so the
    answer costs the agent (and the caller) next to nothing beside the model."""
    try:
        model, cols = engine.serve_matrix(x)
    except RowError as exc:
        for _ in range(len(x)):
            engine.reject(exc)
        return error_answer(exc), []
    header: dict[str, Any] = {"rows": len(x)}
    label = _label(model)
    if label is not None:
        header["bundle"] = label
    header["errors"] = [{"row": i, "error": e.code, "detail": e.detail} for i, e in sorted(cols.errors.items())]
    if model is not None and model.spec.task == "classification":
        header["classes"] = list(model.spec.classes)
        columns = [
            ("class_index", cols.class_index.astype("<i4", copy=False).tobytes()),
            ("confidence", cols.score.astype("<f4").tobytes()),
        ]
    else:
        prediction = cols.score.astype("<f8", copy=True)
        prediction[list(cols.errors)] = math.nan
        columns = [("prediction", prediction.tobytes())]
    return header, columns


def not_json(engine: InferenceEngine, why: str = "input line is not valid JSON") -> dict[str, Any]:
    err = BadValue(why)
    engine.reject(err)
    return error_answer(err)


def parse_json(line: str | bytes) -> Any:
    """A line of JSON, or ValueError for anything else: bytes that are not UTF-8, and documents
    nested too deeply for the parser (Python's parser recurses: ``[[[[...`` raises RecursionError)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("input line is nested too deeply") from None


def answer_line(engine: InferenceEngine, line: str | bytes) -> dict[str, Any]:
    """One line of text holding one row → its answer. Never raises: one line cannot stop a feed."""
    try:
        obj = parse_json(line.decode() if isinstance(line, bytes) else line)
    except ValueError:  # UnicodeDecodeError included
        return not_json(engine)
    try:
        return answer_object(engine, obj)
    except Exception as exc:  # e.g. an id that cannot be echoed; the feed goes on
        return error_answer(_unexpected(engine, exc))


def bounded_lines(stream: BinaryIO, max_bytes: int) -> Iterator[bytes | RowError]:
    """The stream's lines, each at most ``max_bytes``; a longer one is read to its end in
    pieces (never held whole) and becomes the error to answer it with."""
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = stream.readline(max_bytes + 1)
            size += len(line)
        yield BadValue(f"input line of {size} bytes is above input.max_line_bytes ({max_bytes}); it was skipped")


def serve_lines(engine: InferenceEngine, lines: Iterable[str | bytes | RowError], out: TextIO) -> int:
    count = 0
    for line in lines:
        if isinstance(line, RowError):
            engine.reject(line)
            result = error_answer(line)
        else:
            line = line.strip()
            if not line:
                continue
            result = answer_line(engine, line)
        count += 1
        out.write(json.dumps(result, default=str) + "\n")
        out.flush()
    return count


def serve_stdin(engine: InferenceEngine, max_line_bytes: int = 1 << 20) -> int:
    """Rows on stdin, read as bytes: a line that is not text is answered, not fatal.

    Read through a reader of its own on a duplicate of the descriptor, not ``sys.stdin.buffer``:
    this thread waits inside ``readline`` holding the reader's lock, and at shutdown Python
    flushes ``sys.stdin``'s reader and aborts if a daemon thread holds its lock."""
    with open(os.dup(sys.stdin.fileno()), "rb") as stream:
        return serve_lines(engine, bounded_lines(stream, max_line_bytes), sys.stdout)


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
            result = error_answer(exc, count)
        out.write(json.dumps(result, default=str) + "\n")
        count += 1
        if rate > 0:
            delay = start + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    out.flush()
    return count
