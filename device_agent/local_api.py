"""The local inference API: the messages applications on the device exchange with the agent.

This is not the fleet's protocol (:mod:`device_agent.protocol`, on the fleet broker): it is
what a PLC bridge, a camera pipeline or a sensor reader on the same machine sends to the
agent's Unix socket, its loopback TCP port or a topic of a broker on the device. One request
is one JSON document (on a socket: one line, ending in ``\\n``); every request gets exactly one
answer, in order. The full description, with examples in Python, C and Node, is
``docs/local-api.md``.

Requests:

* a row, in the forms stdin takes (:mod:`device_agent.sources`): ``[5.1, 3.5, 1.4]``,
  ``{"id": 7, "features": [...]}`` or ``{"id": 7, "values": {"temp": 21.5, ...}}``
  → ``{"prediction": 1, "confidence": 0.93, "bundle": "pump@3", "id": 7}`` or
  ``{"error": "row.not_finite", "detail": "...", "id": 7}``;
* a batch, ``{"id": "b1", "rows": [row, row, ...]}`` (rows in any of those forms), served
  through one onnxruntime call → ``{"id": "b1", "results": [answer, answer, ...]}``, one
  answer per row in order, each exactly what the row alone would get;
* a tensor batch, for rows already in a numeric array: a header line
  ``{"id": "t1", "tensor": {"shape": [1024, 16], "dtype": "float32"}}`` followed straight away
  by the rows' raw bytes (row-major, little-endian, 1024 × 16 × 4 bytes here; no newline after
  them) → ``{"id": "t1", "bundle": "pump@3", "prediction": [...], "confidence": [...],
  "errors": [{"row": 7, "error": "row.not_finite", "detail": "..."}]}``: answers as columns, a
  failed row's prediction ``null``. JSON text costs more than a cheap model (parsing 16,000
  numbers takes milliseconds); this form skips it on both sides. With ``"answer": "binary"`` in
  the header the answer's columns come back as raw bytes too (:func:`binary_answer`);
* ``{"op": "health"}`` → ``{"health": {...}}`` (:class:`Health`).

A request that cannot be answered as a whole (too long, too many rows, an unknown op) gets
``{"error": "client.too_large", "detail": "...", "id": ...}``; its rows are not served.

This module is standard library only: the Python client (:mod:`device_agent.client`) imports
it, and a client never needs numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import AgentError, BadRequest, RequestTooLarge

OP_HEALTH = "health"


@dataclass(frozen=True)
class RowRequest:
    """One row, in any of its forms (the decoded JSON, as stdin would take it)."""

    row: Any


@dataclass(frozen=True)
class BatchRequest:
    id: Any
    rows: Sequence[Any]


@dataclass(frozen=True)
class TensorRequest:
    """A header announcing ``rows × cols`` values of ``dtype``; the bytes follow it."""

    id: Any
    rows: int
    cols: int
    dtype: str  # "float32" or "float64", little-endian
    binary: bool = False  # answer with a header line and the columns' raw bytes

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * TENSOR_DTYPES[self.dtype]


@dataclass(frozen=True)
class HealthRequest:
    id: Any = None


Request = RowRequest | BatchRequest | TensorRequest | HealthRequest
TENSOR_DTYPES = {"float32": 4, "float64": 8}  # bytes per value
ANSWER_FORMS = ("json", "binary")
# A binary answer's columns: name → (dtype, array typecode). A classifier answers class_index
# (-1 for a failed row) and confidence (NaN); a regressor answers prediction (NaN).
ANSWER_COLUMNS = {"class_index": ("int32", "i"), "confidence": ("float32", "f"), "prediction": ("float64", "d")}


def parse(obj: Any, max_batch_rows: int, max_bytes: int) -> Request:
    """What a decoded request asks for; raises a :class:`~device_agent.errors.ClientError` for
    a request that cannot be answered as a whole. A single row is not checked here: its
    problems are that row's errors, answered like stdin's."""
    if not isinstance(obj, dict):
        return RowRequest(obj)
    rid = obj.get("id")
    if "op" in obj:
        if obj["op"] == OP_HEALTH:
            return HealthRequest(rid)
        raise BadRequest(f"unknown op {str(obj['op'])[:40]!r}; the agent knows {OP_HEALTH!r}")
    if "tensor" in obj:
        answer = obj.get("answer", "json")
        if answer not in ANSWER_FORMS:
            raise BadRequest(f"'answer' {str(answer)[:20]!r}: use {' or '.join(ANSWER_FORMS)}")
        return _tensor(obj["tensor"], rid, max_batch_rows, max_bytes, binary=answer == "binary")
    if "rows" in obj:
        rows = obj["rows"]
        if not isinstance(rows, list):
            raise BadRequest("'rows' must be a list of rows")
        if len(rows) > max_batch_rows:
            raise RequestTooLarge(f"the batch has {len(rows)} rows; this agent takes at most {max_batch_rows}")
        return BatchRequest(rid, rows)
    return RowRequest(obj)


def _tensor(spec: Any, rid: Any, max_rows: int, max_bytes: int, binary: bool) -> TensorRequest:
    if not isinstance(spec, dict):
        raise BadRequest('\'tensor\' must be {"shape": [rows, columns], "dtype": "float32"}')
    shape, dtype = spec.get("shape"), spec.get("dtype", "float32")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(v) is int and v >= 0 for v in shape)):
        raise BadRequest("tensor 'shape' must be [rows, columns], two non-negative integers")
    if dtype not in TENSOR_DTYPES:
        raise BadRequest(f"tensor 'dtype' {str(dtype)[:20]!r}: use {' or '.join(TENSOR_DTYPES)}")
    request = TensorRequest(rid, shape[0], shape[1], dtype, binary)
    if request.rows > max_rows:
        raise RequestTooLarge(f"the batch has {request.rows} rows; this agent takes at most {max_rows}")
    if request.nbytes > max_bytes:
        raise RequestTooLarge(f"the tensor has {request.nbytes} bytes; the limit is {max_bytes}")
    return request


def staging_path(socket_path: str) -> str:
    """Where the agent makes its socket before renaming it into place (the same directory)."""
    return os.path.join(os.path.dirname(socket_path), f".{os.getpid()}.s")


def request_id(obj: Any) -> Any:
    return obj.get("id") if isinstance(obj, dict) else None


def error(err: AgentError, rid: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": err.code, "detail": err.detail}
    if rid is not None:
        out["id"] = rid
    return out


def batch_answer(rid: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"results": results}
    if rid is not None:
        out["id"] = rid
    return out


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # one, reused: building it costs microseconds


def encode(message: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """One message as one line: compact JSON and a newline."""
    return _ENCODER.encode(message).encode() + b"\n"


# ── requests, as a client writes them ─────────────────────────────────────────────────


def row_request(row: Sequence[Any] | Mapping[str, Any], rid: Any = None) -> bytes:
    """A row by position (a list) or by name (a mapping of feature name to value)."""
    if rid is None and type(row) is list:  # the common case, without the slower checks below
        return encode(row)
    if isinstance(row, Mapping):
        body: Any = {"values": dict(row)}
    elif rid is None:
        return encode(list(row))
    else:
        body = {"features": list(row)}
    if rid is not None:
        body["id"] = rid
    return encode(body)


def batch_request(rows: Sequence[Sequence[Any] | Mapping[str, Any]], rid: Any = None) -> bytes:
    items = [{"values": dict(r)} if isinstance(r, Mapping) else list(r) for r in rows]
    body: dict[str, Any] = {"rows": items}
    if rid is not None:
        body["id"] = rid
    return encode(body)


def tensor_request(
    data: bytes, rows: int, cols: int, dtype: str = "float32", rid: Any = None, binary: bool = False
) -> bytes:
    """A tensor batch: the header line, then ``data`` (``rows × cols`` little-endian values).
    ``binary`` asks for the answer's columns as raw bytes after its header line."""
    body: dict[str, Any] = {"tensor": {"shape": [rows, cols], "dtype": dtype}}
    if binary:
        body["answer"] = "binary"
    if rid is not None:
        body["id"] = rid
    return encode(body) + data


def binary_answer(header: dict[str, Any], columns: Sequence[tuple[str, bytes]]) -> bytes:
    """A binary tensor answer: one JSON line saying which columns follow and how many bytes
    they take, then the columns' raw little-endian bytes, one column after the other."""
    header["columns"] = [[name, ANSWER_COLUMNS[name][0]] for name, _ in columns]
    header["nbytes"] = sum(len(data) for _, data in columns)
    return encode(header) + b"".join(data for _, data in columns)


def health_request(rid: Any = None) -> bytes:
    body: dict[str, Any] = {"op": OP_HEALTH}
    if rid is not None:
        body["id"] = rid
    return encode(body)


# ── health ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Health:
    """What a watchdog, a container runtime or an operator asks of a running agent.

    ``serving`` is the verdict: a model is active and answers rows. Being offline from the
    fleet's broker (``connected`` false) does not stop the agent serving locally, so it is
    reported but is not part of the verdict."""

    serving: bool
    device: str
    agent: str  # the agent's version
    bundle: str | None  # "name@version" of the model answering rows
    on_trial: bool  # that model is still on trial
    phase: str  # the deployment phase (docs/architecture.md)
    connected: bool  # to the fleet's broker
    last_error: Mapping[str, Any] | None  # the last failed deployment: code, detail, ts
    last_row_error: Mapping[str, Any] | None  # the latest row, message or trust failure
    outbox: int  # messages waiting for the fleet's broker
    served: int
    rejected: int
    clients: int  # connections to the local API now
    uptime_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Health:
        """Read a health document; fields this version does not know are ignored."""
        names = cls.__dataclass_fields__
        missing = [n for n in names if n not in obj]
        if missing:
            raise BadRequest(f"health document lacks {', '.join(missing)}")
        return cls(**{n: obj[n] for n in names})
