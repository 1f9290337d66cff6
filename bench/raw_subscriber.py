"""The raw baseline of ``bench/transfer.py``: a plain paho subscriber process that takes a
bundle's chunks with one wildcard subscription and does nothing else with them.

It imports paho and the standard library only, so its memory and start-up are those of a
subscriber, not of the bench (which loads numpy, onnx and onnxruntime to build bundles).

Run by the bench as ``python bench/raw_subscriber.py BROKER_URL ID``: it prints ``ready``
once subscribed to the control topic; for each job published there (JSON: ``trial``,
``filter``, ``chunks``, ``size``) it subscribes to ``filter``, holds every chunk, prints
``done TRIAL MONOTONIC`` when all are in (count and bytes), and unsubscribes. It exits when
its standard input closes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

CONTROL = "bench/raw/control"


def run(broker_url: str, ident: str) -> int:
    parsed = urlparse(broker_url)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{ident}", protocol=MQTTProtocolVersion.MQTTv5
    )
    job: dict[str, Any] = {}
    parts: dict[int, bytes] = {}
    ready = threading.Event()

    def on_connect(c: paho.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock = c.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(CONTROL, qos=1)

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        if not ready.is_set():
            ready.set()
            print("ready", flush=True)

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == CONTROL:
            job.clear()
            job.update(json.loads(msg.payload))
            parts.clear()
            c.subscribe(job["filter"], qos=1)
            return
        if not job:
            return
        parts[int(msg.topic.rsplit("/", 1)[1])] = bytes(msg.payload)
        if len(parts) == job["chunks"] and sum(len(p) for p in parts.values()) == job["size"]:
            print(f"done {job['trial']} {time.monotonic():.6f}", flush=True)
            c.unsubscribe(job["filter"])
            job.clear()
            parts.clear()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(parsed.hostname or "127.0.0.1", parsed.port or 1883, keepalive=30)
    client.loop_start()
    try:
        sys.stdin.read()  # until the bench closes our stdin (or kills us)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2]))
