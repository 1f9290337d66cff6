"""A loopback TCP relay in front of a real broker that closes every MQTT 5 connection before
answering, as RabbitMQ's MQTT plugin before 3.13 does (measured with 3.10.8), and relays
MQTT 3.1.1 unchanged: the clients' fallback is tested without booting RabbitMQ in `make test`."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.broker import free_port


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _protocol_level(sock: socket.socket) -> tuple[int, bytes]:
    """The CONNECT packet's protocol level, and every byte read to find it."""
    head = _read_exact(sock, 1)
    length = b""
    while True:  # the remaining length: 1 to 4 bytes, 7 bits each
        b = _read_exact(sock, 1)
        length += b
        if not b[0] & 0x80:
            break
    name_len = _read_exact(sock, 2)
    name = _read_exact(sock, int.from_bytes(name_len, "big"))
    level = _read_exact(sock, 1)
    return level[0], head + length + name_len + name + level


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class V311Gate:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.refused = 0  # MQTT 5 connections closed
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            level, seen = _protocol_level(conn)
        except (ConnectionError, OSError):
            conn.close()
            return
        if level == 5:
            self.refused += 1
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        up.sendall(seen)
        threading.Thread(target=_pipe, args=(up, conn), daemon=True).start()
        _pipe(conn, up)

    def close(self) -> None:
        self._stop = True
        self._server.close()
