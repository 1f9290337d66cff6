"""A Python client for the agent's local API: standard library only, so any application on the
device can use it without numpy or onnxruntime.

    from device_agent.client import AgentClient

    with AgentClient("/run/edgekit-agent/agent.sock") as agent:
        agent.predict([13.2, 1.78, 2.14, ...])           # {"prediction": 0, "confidence": 0.97, "bundle": "wine@3"}
        agent.predict({"alcohol": 13.2, ...}, id="r1")   # by feature name, with an id echoed back
        agent.predict_many(rows)                         # one answer per row, one onnxruntime call
        agent.predict_array(matrix)                      # a numpy array as raw bytes, answers as JSON columns
        agent.predict_tensor(matrix)                     # raw bytes both ways: the fastest
        agent.health()                                   # {"serving": True, "bundle": "wine@3", ...}

Answers are the protocol's dictionaries (docs/local-api.md): a row the agent could not serve
comes back as ``{"error": "row.not_finite", "detail": "..."}`` in its place, exactly as a
prediction would — one bad row never costs the others. A request refused as a whole (a batch
above the agent's limit) raises :class:`RequestRefused`; no agent to talk to raises
:class:`AgentUnavailable`.

The connection is opened on first use and kept. A client sends one request at a time (a
lock makes sharing one between threads safe); for calls in parallel, give each thread its own.
"""

from __future__ import annotations

import array
import contextlib
import json
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from . import local_api
from .errors import TooManyClients

Row = Sequence[Any] | Mapping[str, Any]


class AgentUnavailable(ConnectionError):
    """The agent does not answer: no socket, connection refused, closed, or too slow."""


class RequestRefused(Exception):
    """The agent refused a whole request (``client.too_large``, ``client.busy``, ...)."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        super().__init__(f"{answer.get('error')}: {answer.get('detail')}")
        self.answer = dict(answer)
        self.error = str(answer.get("error"))
        self.detail = str(answer.get("detail"))


def _raw(rows: Any) -> tuple[bytes, int, int, str]:
    """(little-endian bytes, rows, columns, dtype) of a 2-D numeric buffer or a list of rows."""
    try:
        view = memoryview(rows)
    except TypeError:
        view = None
    if view is not None:
        kind = view.format.lstrip("<=@")
        if view.ndim != 2 or kind not in ("f", "d") or not view.c_contiguous:
            raise ValueError("give a 2-D, C-contiguous float32 or float64 array (or a list of rows)")
        n_rows, n_cols = view.shape or (0, 0)
        typecode = kind
        flat = array.array(typecode)
        flat.frombytes(view.tobytes())
    else:
        rows = [list(r) for r in rows]
        n_rows, n_cols = len(rows), len(rows[0]) if rows else 0
        if any(len(r) != n_cols for r in rows):
            raise ValueError("every row must have the same number of values")
        typecode = "d"
        flat = array.array("d", [v for r in rows for v in r])
    if sys.byteorder != "little":
        flat.byteswap()
    return flat.tobytes(), n_rows, n_cols, "float32" if typecode == "f" else "float64"


class TensorAnswer:
    """A binary tensor answer: the columns as arrays, with the header's bundle and errors."""

    def __init__(self, header: Mapping[str, Any], columns: Mapping[str, array.array[Any]]) -> None:
        self.header = dict(header)
        self.columns = dict(columns)
        self.bundle: str | None = header.get("bundle")
        self.classes: list[Any] | None = header.get("classes")
        self.errors: list[dict[str, Any]] = list(header.get("errors", []))

    @property
    def predictions(self) -> list[Any]:
        """Each row's prediction (its class label, or the predicted value); None for a failed row."""
        if self.classes is not None:
            classes = self.classes
            return [classes[j] if j >= 0 else None for j in self.columns["class_index"]]
        failed = {e["row"] for e in self.errors}
        return [None if i in failed else v for i, v in enumerate(self.columns["prediction"])]

    @property
    def confidence(self) -> array.array[Any] | None:
        return self.columns.get("confidence")


class AgentClient:
    def __init__(
        self,
        socket_path: str | None = None,
        *,
        tcp: tuple[str, int] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Talk to the agent at ``socket_path`` (its ``api.socket``), or at ``tcp`` =
        ("127.0.0.1", port) when it listens on a loopback port. ``timeout`` bounds each call."""
        if (socket_path is None) == (tcp is None):
            raise ValueError("give the agent's socket path or its tcp address, not both")
        self.socket_path = socket_path
        self.tcp = tcp
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    # ── calls ───────────────────────────────────────────────────────────────────────

    def predict(self, row: Row, id: Any = None) -> dict[str, Any]:
        """One row: a list of values in the model's feature order, or a mapping by name."""
        return self.call(local_api.row_request(row, id))

    def predict_many(self, rows: Sequence[Row], id: Any = None) -> list[dict[str, Any]]:
        """Many rows in one request, answered in one response through one onnxruntime call."""
        answer = self.call(local_api.batch_request(rows, id))
        results = answer.get("results")
        if not isinstance(results, list):
            raise RequestRefused(answer)
        return results

    def predict_array(self, rows: Any, id: Any = None) -> dict[str, Any]:
        """Many rows already in a numeric array — a 2-D float32 or float64 C-contiguous buffer
        such as a numpy array, or a list of equal-length rows — sent as raw bytes (a tensor
        batch), answered as columns: ``{"prediction": [...], "confidence": [...], "errors": [...]}``.
        The fastest way to send many rows: neither side writes or parses their numbers as text."""
        data, n_rows, n_cols, dtype = _raw(rows)
        answer = self.call(local_api.tensor_request(data, n_rows, n_cols, dtype, id))
        if "prediction" not in answer:
            raise RequestRefused(answer)
        return answer

    def predict_tensor(self, rows: Any, id: Any = None) -> TensorAnswer:
        """Like :meth:`predict_array`, with the answer's columns as raw bytes too: nothing is
        written or parsed as text on either side. The columns are ``array.array`` objects
        (``numpy.asarray`` takes them without a copy)."""
        data, n_rows, n_cols, dtype = _raw(rows)
        with self._lock:
            try:
                return self._tensor_exchange(local_api.tensor_request(data, n_rows, n_cols, dtype, id, binary=True))
            except AgentUnavailable:
                self._disconnect()
                raise

    def _tensor_exchange(self, request: bytes) -> TensorAnswer:
        header = self._exchange(request)
        if "columns" not in header:
            raise RequestRefused(header)
        try:
            raw = self._file.read(int(header["nbytes"]))
        except OSError as exc:
            raise AgentUnavailable(f"the connection to the agent broke: {exc}") from None
        if len(raw) != header["nbytes"]:
            raise AgentUnavailable("the agent closed the connection in the middle of an answer")
        columns: dict[str, array.array[Any]] = {}
        at = 0
        for name, _dtype in header["columns"]:
            column = array.array(local_api.ANSWER_COLUMNS[name][1])
            size = column.itemsize * int(header["rows"])
            column.frombytes(raw[at : at + size])
            if sys.byteorder != "little":
                column.byteswap()
            columns[name] = column
            at += size
        return TensorAnswer(header, columns)

    def health(self) -> dict[str, Any]:
        """Is the agent serving, and with which bundle; is it connected; its last error."""
        answer = self.call(local_api.health_request())
        health = answer.get("health")
        if not isinstance(health, dict):
            raise RequestRefused(answer)
        return health

    def call(self, request: bytes) -> dict[str, Any]:
        """Send one request line (``local_api``'s encoders make them) and read its answer.
        A kept-open connection the agent has closed (it restarted) is reopened once."""
        with self._lock:
            reused = self._sock is not None
            try:
                return self._exchange(request)
            except AgentUnavailable:
                if not reused:
                    raise
            self._disconnect()
            return self._exchange(request)

    # ── the connection ──────────────────────────────────────────────────────────────

    def _exchange(self, request: bytes) -> dict[str, Any]:
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        try:
            # Should the agent have closed first, it may have said why (client.busy): read that.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._sock.sendall(request)
            line = self._file.readline()
        except TimeoutError:
            self._disconnect()
            raise AgentUnavailable(f"the agent did not answer within {self.timeout} s") from None
        except OSError as exc:
            self._disconnect()
            raise AgentUnavailable(f"the connection to the agent broke: {exc}") from None
        if not line.endswith(b"\n"):
            self._disconnect()
            raise AgentUnavailable("the agent closed the connection")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("error") == TooManyClients.code:
            self._disconnect()
            raise RequestRefused(answer)
        return answer

    def _connect(self) -> None:
        where = self.socket_path if self.socket_path is not None else f"{self.tcp}"
        try:
            if self.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
            else:
                assert self.tcp is not None
                sock = socket.create_connection(self.tcp, timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except FileNotFoundError:
            raise AgentUnavailable(f"no agent socket at {where}: is the agent running, with this api.socket?") from None
        except OSError as exc:
            raise AgentUnavailable(f"cannot connect to the agent at {where}: {exc.strerror or exc}") from None
        self._sock = sock
        self._file = sock.makefile("rb")

    def _disconnect(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
