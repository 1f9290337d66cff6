"""Many MQTT connections on one thread: paho's external-loop hooks over one epoll selector.

paho's own ``loop_start`` runs a thread per client (and, for its wake-up pipe, two more
sockets): a thousand devices would be a thousand threads fighting over the GIL on two
cores. Instead every client's socket is registered with one :mod:`selectors` loop (epoll,
no 1,024-descriptor limit), paho is told through ``on_socket_register_write`` when a client
has something to send, and the same thread runs the devices' timers (ticks, late messages,
reconnects). Everything a device does therefore happens on this thread, one thing at a
time, which is also what the shared models need.

The quirks :mod:`device_agent.mqtt` handles are handled here the same way: ``TCP_NODELAY``
(Nagle's algorithm holds every subscribe round trip ~40 ms), the announced Maximum Packet
Size, an oversized publish dropped and counted rather than sent, and a Will carrying each
connection's birth/death sequence.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.mqtt import ANNOUNCE_MARGIN, PACKET_MARGIN

log = logging.getLogger("edgekit.sim")

MISC_S = 1.0  # keep-alive bookkeeping for every client this often


class Loop:
    """One selector, one timer heap; not thread-safe except :meth:`stop`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._clients: list[paho.Client] = []
        self._writing: set[Any] = set()  # sockets registered for write: paho asks on every publish
        self._stopping = False
        self.errors = 0

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._order), fn))

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread, or a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def attach(self, client: paho.Client) -> None:
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing
        self._clients.append(client)

    # paho's hooks: the selector follows each client's socket and whether it has output
    def _opened(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _closed(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._writing.discard(sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _want_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        if sock in self._writing:  # measured: an epoll_ctl per publish was a tenth of the loop's time
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
            self._writing.add(sock)

    def _done_writing(self, client: paho.Client, _u: Any, sock: Any) -> None:
        if sock not in self._writing:
            return
        self._writing.discard(sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ, client)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve sockets and timers until :meth:`stop` is called or ``until()`` is true."""
        self._stopping = False
        next_misc = time.monotonic() + MISC_S
        while not self._stopping and not (until is not None and until()):
            now = time.monotonic()
            wait = min(0.2, next_misc - now, (self._timers[0][0] - now) if self._timers else 0.2)
            for key, mask in self.selector.select(max(0.0, wait)):
                client: paho.Client = key.data
                try:
                    if mask & selectors.EVENT_READ:
                        client.loop_read()
                    if mask & selectors.EVENT_WRITE:
                        client.loop_write()
                except Exception:
                    self.errors += 1
                    log.exception("network error on %s", client._client_id.decode())
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                try:
                    fn()
                except Exception:
                    self.errors += 1
                    log.exception("simulator timer failed")
            if now >= next_misc:
                next_misc = now + MISC_S
                for c in self._clients:
                    c.loop_misc()

    def flush(self, timeout: float) -> None:
        """Run until no client has anything left to send, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        self.run(until=lambda: time.monotonic() >= deadline or not any(c.want_write() for c in self._clients))


class Connection:
    """One device's MQTT connection on the shared loop (what :class:`SimDevice` calls its link)."""

    def __init__(
        self,
        loop: Loop,
        client_id: str,
        host: str,
        port: int,
        *,
        keepalive: int,
        announce: int,
        will: Callable[[int], tuple[str, bytes]],
        bdseq: int,
        on_connected: Callable[[int | None, int], None],
        on_disconnected: Callable[[str], None],
        on_message: Callable[[str, bytes, bool], None],
        on_acked: Callable[[int], None],
    ) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.announce = announce
        self.will = will
        self.bdseq = bdseq
        self.connected = False
        self.oversized = 0
        self.max_packet: int | None = None
        self.connects = 0
        self._closing = False
        self._delay = 1.0
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.will_set(*will(bdseq), 1, True)
        client.max_inflight_messages_set(100)
        client.on_connect = self._connect_cb
        client.on_disconnect = self._disconnect_cb
        client.on_message = lambda _c, _u, m: on_message(m.topic, bytes(m.payload), bool(m.retain))
        client.on_publish = lambda _c, _u, mid, _r, _p: on_acked(mid)
        loop.attach(client)
        self.client = client

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = self.announce + ANNOUNCE_MARGIN
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True, properties=props)
        except OSError as exc:
            log.debug("connect failed: %s", exc)
            self._retry()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        limit = self.max_packet
        if limit is not None and len(payload) + len(topic) + PACKET_MARGIN > limit:
            self.oversized += 1
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc == paho.MQTT_ERR_SUCCESS else None

    def subscribe(self, topics: Sequence[str]) -> None:
        self.client.subscribe([(t, 1) for t in topics])

    def unsubscribe(self, topics: Sequence[str]) -> None:
        self.client.unsubscribe(list(topics))

    def _connect_cb(self, client: paho.Client, _u: Any, _f: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused %s: %s", client._client_id.decode(), reason)
            return
        with contextlib.suppress(OSError, AttributeError):
            sock = client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = True
        self.connects += 1
        self._delay = 1.0
        self.max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self._on_connected(self.max_packet, self.bdseq)

    def _disconnect_cb(self, client: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        was = self.connected
        self.connected = False
        self.bdseq += 1  # the next connection's Will must carry the next birth/death sequence
        with contextlib.suppress(Exception):
            client.will_set(*self.will(self.bdseq), 1, True)
        if was:
            self._on_disconnected(str(reason))
        if not self._closing:
            self._retry()

    def _retry(self) -> None:
        """Reconnect later, jittered and backing off, as paho's own loop would."""
        delay = self._delay * (0.5 + random.random())
        self._delay = min(30.0, self._delay * 2)
        self.loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        if self._closing or self.loop.stopping:
            return
        try:
            self.client.reconnect()
        except OSError as exc:
            log.debug("reconnect failed: %s", exc)
            self._retry()
