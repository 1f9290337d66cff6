"""The local API's server: applications on the device call the agent over a Unix socket (and,
if configured, a loopback TCP port), many at once.

One thread runs one ``selectors`` loop over every listener and connection; sockets are
non-blocking. Measured here (docs/local-api.md), a round trip through it cost 33 µs against
56 µs through asyncio and 29 µs with a thread per connection, without a thread per client.
What keeps one client from hurting the others or the agent:

* every buffer is bounded: a request line longer than ``api.max_line_bytes`` is answered with
  ``client.too_large`` and the connection closed; while a client's unread answers exceed that
  size, the agent stops reading its requests (so it cannot queue more work);
* a client that leaves a line unfinished, or its answers unread, for ``api.io_timeout_s`` is
  disconnected; a dead one is noticed by the kernel (end of file, reset);
* beyond ``api.max_clients`` connections, a new one is told ``client.busy`` and closed;
* rows go through :class:`~device_agent.engine.InferenceEngine`, whose lock is held for the
  model call and its counters only — never while a socket is read or written — so the worker
  thread (heartbeats, drift, deployments) never waits for a client.

Rows served here are counted, timed, accounted for drift and held against a trial exactly like
rows from stdin: they go through the same functions (:mod:`device_agent.sources`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import local_api
from .config import ApiSettings
from .engine import InferenceEngine
from .errors import BadRequest, ClientError, InferenceFailed, ListenFailed, RequestTooLarge, TooManyClients
from .local_api import BatchRequest, Health, HealthRequest, TensorRequest
from .sources import answer_matrix, answer_matrix_binary, answer_object, answer_rows, not_json, parse_json

log = logging.getLogger("edgekit.agent.api")


class Pending(NamedTuple):
    """A tensor header was read: its answer needs the ``nbytes`` that follow it."""

    nbytes: int
    finish: Callable[[bytes], bytes]


class Handler:
    """One request → one answer line; shared by the socket server and the local MQTT bridge."""

    def __init__(self, engine: InferenceEngine, settings: ApiSettings, health: Callable[[], Health]) -> None:
        self.engine = engine
        self.settings = settings
        self.health = health
        self.requests = 0
        self.refused = 0  # requests answered with a client.* error

    def handle(self, data: bytes) -> bytes | Pending:
        """One request line → its answer line, or, for a tensor header, what its bytes need."""
        self.requests += 1
        try:
            answer = self._answer(data)
        except Exception as exc:  # the server must outlive any request
            return self._unexpected(exc)
        return answer if isinstance(answer, Pending) else local_api.encode(answer)

    def handle_message(self, payload: bytes) -> bytes:
        """One whole message (MQTT): a request, or a tensor header line and its bytes."""
        head, newline, rest = payload.partition(b"\n")
        answer = self.handle(head if newline and b'"tensor"' in head else payload)
        if not isinstance(answer, Pending):
            return answer
        if len(rest) != answer.nbytes:
            self.refused += 1
            err = BadRequest(f"the tensor header announces {answer.nbytes} bytes; the message carries {len(rest)}")
            return local_api.encode(local_api.error(err))
        return answer.finish(rest)

    def _unexpected(self, exc: Exception) -> bytes:
        log.exception("unexpected error answering a request")
        err = InferenceFailed(f"unexpected error answering the request: {type(exc).__name__}: {exc}")
        return local_api.encode(local_api.error(err))

    def _tensor(self, request: TensorRequest) -> Pending:
        dtype = "<f4" if request.dtype == "float32" else "<f8"

        def finish(data: bytes) -> bytes:
            try:
                x = np.frombuffer(data, dtype=dtype).reshape(request.rows, request.cols)
                if request.binary:
                    header, columns = answer_matrix_binary(self.engine, x)
                    if request.id is not None:
                        header["id"] = request.id
                    return local_api.binary_answer(header, columns) if columns else local_api.encode(header)
                answer = answer_matrix(self.engine, x)
            except Exception as exc:
                return self._unexpected(exc)
            if request.id is not None:
                answer["id"] = request.id
            return local_api.encode(answer)

        return Pending(request.nbytes, finish)

    def _answer(self, data: bytes) -> dict[str, Any] | Pending:
        if len(data) > self.settings.max_line_bytes:
            self.refused += 1
            limit = self.settings.max_line_bytes
            return local_api.error(RequestTooLarge(f"the request has {len(data)} bytes; the limit is {limit}"))
        try:
            obj = parse_json(data.decode())
        except ValueError:  # UnicodeDecodeError and too deep included
            return not_json(self.engine)
        if type(obj) is list:  # a row by position: the common case goes straight to it
            return answer_object(self.engine, obj)
        try:
            request = local_api.parse(obj, self.settings.max_batch_rows, self.settings.max_line_bytes)
        except ClientError as exc:
            self.refused += 1
            log.info("%s: %s", exc.code, exc.detail)
            return local_api.error(exc, local_api.request_id(obj))
        if isinstance(request, BatchRequest):
            return local_api.batch_answer(request.id, answer_rows(self.engine, request.rows))
        if isinstance(request, TensorRequest):
            return self._tensor(request)
        if isinstance(request, HealthRequest):
            answer: dict[str, Any] = {"health": self.health().to_json()}
            if request.id is not None:
                answer["id"] = request.id
            return answer
        return answer_object(self.engine, request.row)


class _Client:
    """One connection: what it sent that is not yet a whole line, and answers not yet sent."""

    __slots__ = (
        "closed",
        "closing",
        "eof",
        "events",
        "inbuf",
        "outbuf",
        "partial_since",
        "pending",
        "scanned",
        "sock",
        "stalled_since",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.scanned = 0  # bytes of inbuf already searched for a newline
        self.partial_since: float | None = None  # an unfinished line is waiting since then
        self.stalled_since: float | None = None  # answers are waiting for the client since then
        self.events = selectors.EVENT_READ  # what the selector watches for
        self.eof = False  # the client sent all it will send
        self.closing = False  # close once the answers are out
        self.closed = False
        self.pending: Pending | None = None  # a tensor header whose bytes are still coming


class LocalApi:
    """The listeners and the loop. ``bind`` (in the caller's thread, so a socket in use stops
    the agent with a clear error before it does anything else), then ``start``, then ``stop``."""

    def __init__(self, handler: Handler, settings: ApiSettings, socket_path: str, socket_mode: int) -> None:
        self.handler = handler
        self.settings = settings
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        self.tcp_address: tuple[str, int] | None = None
        self._listeners: list[socket.socket] = []
        self._clients: dict[int, _Client] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._socket_ino: int | None = None
        self._thread = threading.Thread(target=self._run, name="edgekit-agent-api", daemon=True)

    @property
    def clients(self) -> int:
        return len(self._clients)

    # ── life ────────────────────────────────────────────────────────────────────────

    def bind(self) -> None:
        if self.socket_path:
            self._listeners.append(self._bind_unix(self.socket_path))
        if self.settings.tcp_port:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", self.settings.tcp_port))
            except OSError as exc:
                tcp.close()
                raise ListenFailed(f"cannot listen on 127.0.0.1:{self.settings.tcp_port}: {exc.strerror}") from None
            tcp.listen(socket.SOMAXCONN)
            self.tcp_address = tcp.getsockname()
            self._listeners.append(tcp)
        for listener in self._listeners:
            listener.setblocking(False)
            self._sel.register(listener, selectors.EVENT_READ, None)
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def _bind_unix(self, path: str) -> socket.socket:
        """Listen at ``path``; a socket file left by a crashed agent is replaced, one a running
        agent answers on is not (two agents would split the applications between them)."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise ListenFailed(f"{path} exists and is not a socket; remove it or set api.socket elsewhere")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # nobody listens: left over from a crash
            except OSError as exc:
                raise ListenFailed(f"cannot check the socket {path}: {exc.strerror}") from None
            else:
                raise ListenFailed(f"another process already serves on {path}")
            finally:
                probe.close()
        # Made under a temporary name and renamed into place once it listens, with its mode:
        # an application that sees the path can connect, and never with looser permissions.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        temporary = local_api.staging_path(path)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            sock.bind(temporary)
            os.chmod(temporary, self.socket_mode)
            sock.listen(socket.SOMAXCONN)
            os.rename(temporary, path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            reason = exc.strerror or str(exc)
            raise ListenFailed(f"cannot listen on {path}: {reason}") from None
        self._socket_ino = os.stat(path).st_ino
        return sock

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        for client in list(self._clients.values()):
            self._close(client)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if self.socket_path and self._socket_ino is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._socket_ino:  # still ours
                    os.unlink(self.socket_path)
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    # ── the loop ────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        tick = min(1.0, self.settings.io_timeout_s / 4)
        while not self._stopping:
            try:
                events = self._sel.select(tick)
            except OSError:
                if self._stopping:
                    return
                raise
            for key, mask in events:
                client: _Client | None = key.data
                if client is not None:
                    if mask & selectors.EVENT_READ:
                        self._receive(client)
                    if not client.closed:
                        self._pump(client)
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._accept(key.fileobj)  # type: ignore[arg-type]
            self._expire(time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the listener stays
                log.warning("cannot accept a local API connection: %s", exc)
                return
            sock.setblocking(False)
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self._clients) >= self.settings.max_clients:
                self.handler.refused += 1
                limit = self.settings.max_clients
                busy = TooManyClients(f"the agent already serves {limit} connections; try again later")
                with contextlib.suppress(OSError):
                    sock.send(local_api.encode(local_api.error(busy)))
                sock.close()
                log.warning("refused a local API connection: %d connections already", limit)
                continue
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._sel.register(sock, selectors.EVENT_READ, client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if data:
            client.inbuf += data
        else:
            client.eof = True  # answer what it sent (a last line may lack its newline), then close

    def _pump(self, client: _Client) -> None:
        """Answer what can be answered, send what can be sent, and watch for what comes next."""
        self._answer_lines(client)
        out = client.outbuf
        while out:
            try:
                sent = client.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client is gone
                self._close(client)
                return
            del out[:sent]
            if len(out) <= self.settings.max_line_bytes and client.inbuf:
                self._answer_lines(client)  # requests held back while answers were waiting
        done = client.closing or (client.eof and (not client.inbuf or client.pending is not None))
        if done and not out:
            self._close(client)
            return
        now = time.monotonic()
        client.stalled_since = (client.stalled_since or now) if out else None
        waiting = (client.inbuf or client.pending is not None) and not client.eof
        client.partial_since = (client.partial_since or now) if waiting else None
        reading = not (client.eof or client.closing) and len(out) <= self.settings.max_line_bytes
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if out else 0)
        if events != client.events and events:
            self._sel.modify(client.sock, events, client)
            client.events = events

    def _answer_lines(self, client: _Client) -> None:
        """Answer complete requests, in order, while the client's unread answers fit."""
        limit = self.settings.max_line_bytes
        inbuf = client.inbuf
        while not client.closing and len(client.outbuf) <= limit:
            if client.pending is not None:  # a tensor's bytes, counted rather than split at newlines
                need = client.pending.nbytes
                if len(inbuf) < need:
                    return
                data = bytes(inbuf[:need])
                del inbuf[:need]
                finish, client.pending = client.pending.finish, None
                client.outbuf += finish(data)
                continue
            if not inbuf:
                return
            end = inbuf.find(b"\n", client.scanned)
            if end < 0:
                client.scanned = len(inbuf)
                if len(inbuf) > limit:
                    err = RequestTooLarge(f"a request line is longer than {limit} bytes (api.max_line_bytes)")
                    self.handler.refused += 1
                    client.outbuf += local_api.encode(local_api.error(err))
                    client.closing = True  # the rest of that line could not be told from a new request
                    inbuf.clear()
                    return
                if not client.eof:
                    return
                end = len(inbuf)  # the client's last line, without its newline
            line = bytes(inbuf[:end])
            del inbuf[: end + 1]
            client.scanned = 0
            if line.strip():
                answer = self.handler.handle(line)
                if isinstance(answer, Pending):
                    client.pending = answer
                else:
                    client.outbuf += answer

    def _expire(self, now: float) -> None:
        timeout = self.settings.io_timeout_s
        for client in list(self._clients.values()):
            if client.stalled_since is not None and now - client.stalled_since > timeout:
                log.warning("closed a local API client that left its answers unread for %.0f s", timeout)
                self._close(client)
            elif client.partial_since is not None and now - client.partial_since > timeout:
                log.warning("closed a local API client that left a request unfinished for %.0f s", timeout)
                self._close(client)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        for fd, known in list(self._clients.items()):
            if known is client:
                del self._clients[fd]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()
