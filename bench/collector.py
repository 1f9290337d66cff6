"""Ingestion rate of ``edgekit serve`` against a bare paho subscriber on the same broker.

Run: ``.venv/bin/python bench/collector.py`` (a few minutes on 2 cores). It rewrites only the
``collector`` section of ``BENCHMARKS.md``.

What is measured, and why this way:

* One mosquitto on a free loopback port (``max_queued_messages`` high enough to keep
  everything: this measures speed, the tests measure loss). A realistic telemetry mix from
  50 devices: three failure events to one drift window (a window of 13 features × 10 bins,
  ~1.6 KB; an event ~0.4 KB), QoS 1, as agents publish them.
* Every consumer has a persistent session (clean start off) created beforehand and is
  stopped while the whole batch is published, so the broker holds it; then the consumer
  starts, and the clock runs from its CONNACK to the moment the last message is handled.
  The publisher's speed therefore does not enter; the consumer drains a backlog as fast as
  it can, which is the rate that matters when a collector comes back after a stop.
* Consumers, each a separate process started the same way:
  **bare** — a paho subscriber that only counts messages (auto-acknowledged QoS 1): the
  ceiling for any Python consumer on this broker;
  **serve (SQLite)** and **serve (PostgreSQL)** — ``edgekit serve`` decoding every document
  through the protocol classes, writing batches in one transaction each, and acknowledging
  only after the commit; "handled" means committed (read from its ``/metrics``, polled every
  20 ms);
  **2 × serve (PostgreSQL)** — two ``edgekit serve`` processes in one share group, one store.
* PostgreSQL runs with its default durability (fsync on), started by this script in a
  temporary folder; SQLite with WAL and ``synchronous=FULL``, as ``serve`` sets it.
* The machine is shared and busy: rounds interleave the consumers, each round gets a fresh
  store and its own boot ids, and every figure is the median over the rounds with the range.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section

if str(REPO) not in sys.path:  # tests/support is part of the checkout, not of the installed packages
    sys.path.insert(0, str(REPO))

from device_agent.protocol import BundleRef, DeviceEvent, DriftMessage, Topics
from edgekit.fleet.client import connect, publish_all
from tests.support.broker import Broker, free_port
from tests.support.postgres import PostgresServer

SECTION = "collector"
PREFIX = "edgekit/v1"
TARGET = 0.7  # serve's rate as a share of the bare subscriber's
REF = BundleRef("wine", 3, "ab" * 32)
EDGEKIT = str(Path(sys.executable).parent / "edgekit")


def messages(round_id: int, devices: int, per_device: int) -> list[tuple[str, bytes, bool]]:
    topics = Topics(PREFIX)
    features = {
        f"feature_{i}": {
            "counts": [17, 23, 19, 21, 18, 22, 20, 19, 21, 20],
            "missing": 0,
            "out_of_range": 1,
            "mean": 12.345678,
            "var": 1.234567,
            "psi": 0.0123,
            "js": 0.0456,
            "mean_shift": 0.0789,
        }
        for i in range(13)
    }
    out = []
    now = time.time()
    for seq in range(1, per_device + 1):
        for d in range(devices):
            device, boot = f"bench-{d}", f"r{round_id}-{d}"
            if seq % 4:
                doc: DeviceEvent | DriftMessage = DeviceEvent(
                    f"{boot}-{seq}", boot, seq, now, device, "failure", "row.not_finite",
                    "feature 'alcohol' is nan in row 1234 of the input", REF,
                )  # fmt: skip
                out.append((topics.events(device), doc.encode(), False))
            else:
                window = {"n": 200, "verdict": "ok", "drifted": [], "features": features}
                doc = DriftMessage(f"{boot}-{seq}", boot, seq, now, device, REF, window)
                out.append((topics.drift(device), doc.encode(), False))
    return out


# ── consumers ────────────────────────────────────────────────────────────────────────

BARE = r"""
import json, sys, threading, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, cid, topic, expect = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
state = {"n": 0, "t0": None, "t1": None}
done = threading.Event()
def on_connect(c, u, f, rc, p):
    state["t0"] = time.time()
    c.subscribe(topic, qos=1)
def on_message(c, u, m):
    state["n"] += 1
    if state["n"] >= expect and not done.is_set():
        state["t1"] = time.time()
        done.set()
c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
c.on_connect, c.on_message = on_connect, on_message
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
c.connect("127.0.0.1", port, clean_start=False, properties=props)
c.loop_start()
done.wait(None if expect else 1.0)
end = Properties(PacketTypes.DISCONNECT)
end.SessionExpiryInterval = 0  # measured: leave no session behind to queue the next run's messages
c.disconnect(properties=end if expect else None)
print(json.dumps(state))
"""


def bare(broker: Broker, expect: int) -> tuple[float, float]:
    topic = f"$share/bare/{PREFIX}/dev/+/+"
    proc = subprocess.run(
        [sys.executable, "-c", BARE, str(broker.port), "bench-bare", topic, str(expect)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(state["t0"] or 0), float(state["t1"] or 0)


@dataclass
class Serve:
    name: str
    store: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, broker: Broker, end_session: bool = False) -> None:
        args = [EDGEKIT, "serve", "--store", self.store, "--broker", broker.url, "--prefix", PREFIX]
        args += ["--name", self.name, "--metrics-port", str(self.port), "--json-log"]
        args += ["--end-session"] if end_session else []
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, cwd=self.log.parent)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            self.proc = None

    def stored(self) -> int:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return -1
        return int(sum(float(v) for v in re.findall(r'edgekit_ingested_messages_total\{leaf="\w+"\} (\S+)', text)))

    def connected_at(self) -> float:
        """The CONNACK time of this process's latest connection, from its JSON log."""
        stamps = [json.loads(line)["ts"] for line in self.log.read_text().splitlines() if '"connected as ' in line]
        return datetime.fromisoformat(stamps[-1]).timestamp()


def run_serve(broker: Broker, serves: list[Serve], expect: int) -> tuple[float, float]:
    for s in serves:
        s.start(broker, end_session=True)  # leave no session behind to queue the next run's messages
    deadline = time.monotonic() + 600
    try:
        while sum(max(0, s.stored()) for s in serves) < expect:
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve stored {sum(s.stored() for s in serves)} of {expect}")
            time.sleep(0.02)
        t1 = time.time()
        return min(s.connected_at() for s in serves), t1
    finally:
        for s in serves:
            s.stop()


def prime(broker: Broker, serves: list[Serve]) -> None:
    """Create the persistent session(s) of the consumer under test, then stop it: the broker
    now queues for it, and for nobody else."""
    if not serves:
        bare(broker, 0)
    for s in serves:
        s.start(broker)
    for s in serves:
        while s.stored() < 0:
            time.sleep(0.05)
    time.sleep(0.5)
    for s in serves:
        s.stop()


# ── the run ──────────────────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ek-bench-collector-"))
    broker = Broker(max_queued_messages=10_000_000)
    broker.start()
    pg = PostgresServer(durable=True)
    pg.start()
    results: dict[str, list[float]] = {k: [] for k in ("bare", "sqlite", "postgresql", "shared")}
    try:
        n = args.devices * args.per_device
        for r in range(args.rounds):
            order = ["bare", "sqlite", "postgresql", "shared"]
            order = order[r % 4 :] + order[: r % 4]
            for kind in order:
                if kind == "bare":
                    serves: list[Serve] = []
                elif kind == "sqlite":
                    serves = [Serve(f"s{r}", f"sqlite:///{tmp / f'r{r}.db'}", free_port(), tmp / f"s{r}.log")]
                elif kind == "postgresql":
                    serves = [Serve(f"p{r}", pg.create_database(), free_port(), tmp / f"p{r}.log")]
                else:
                    url = pg.create_database()
                    serves = [Serve(f"h{r}{i}", url, free_port(), tmp / f"h{r}{i}.log") for i in range(2)]
                prime(broker, serves)
                items = messages(r * 10 + len(kind), args.devices, args.per_device)
                with connect(broker.url) as conn:
                    publish_all(conn, items, timeout=600)
                t0, t1 = bare(broker, n) if kind == "bare" else run_serve(broker, serves, n)
                rate = n / (t1 - t0)
                results[kind].append(rate)
                log(f"round {r + 1} {kind}: {n} messages in {t1 - t0:.2f} s = {rate:,.0f} msg/s")
    finally:
        broker.close()
        pg.stop()
    load_end = os.getloadavg()
    write_section(SECTION, report(results, args, load_start, load_end), args.out)
    log(f"wrote the {SECTION} section of {args.out}")


def report(
    results: dict[str, list[float]], args: argparse.Namespace, start: Sequence[float], end: Sequence[float]
) -> str:
    def row(label: str, key: str, processes: int = 1) -> str:
        rates = results[key]
        # Each round's rate against the bare subscriber's in the same round (same load), per process.
        ratios = [r / processes / b for r, b in zip(rates, results["bare"], strict=True)]
        ratio = statistics.median(ratios)
        verdict = "—" if key == "bare" or processes > 1 else ("yes" if ratio >= TARGET else "no")
        return (
            f"| {label} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | {processes} | "
            f"{ratio:.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {verdict} |"
        )

    n = args.devices * args.per_device
    return "\n".join(
        [
            "## Collector: `edgekit serve` ingestion against a bare paho subscriber",
            "",
            f"{n:,} QoS 1 messages from {args.devices} devices (3 failure events to 1 drift window of 13 features, "
            "~0.4 KB and ~1.6 KB), queued by mosquitto for a stopped consumer with a persistent session, then "
            "drained: from the consumer's CONNACK to the last message handled (counted by the bare subscriber, "
            "committed to the store by `serve`). How and why: docstring of `bench/collector.py`.",
            "",
            "- Rerun: `.venv/bin/python bench/collector.py` (rewrites only this section).",
            f"- Machine: {machine(start, end)}.",
            f"- Versions: {versions(('paho-mqtt', 'psycopg', 'prometheus-client'))}; mosquitto 2.0.11; "
            "PostgreSQL 15 (fsync on), SQLite WAL + synchronous=FULL.",
            f"- Date: {now_utc()}. {args.rounds} rounds, consumers interleaved; median (range) in messages/s.",
            "",
            "| consumer | msgs/s, all processes | processes | per process / bare, same round | "
            "one process ≥ 0.7× bare |",
            "|---|---|---|---|---|",
            row("bare paho subscriber (counts only)", "bare"),
            row("`edgekit serve`, SQLite", "sqlite"),
            row("`edgekit serve`, PostgreSQL", "postgresql"),
            row("2 × `edgekit serve` sharing one PostgreSQL (`$share`)", "shared", 2),
            "",
            "Two collectors in one share group split the broker's deliveries between two processes; on this "
            "2-core machine they share the two cores with mosquitto, PostgreSQL and each other (and with whatever "
            "else runs here), so their total shows that sharing works, not how it scales where each collector has "
            "cores of its own. Per message, `serve` parses the document strictly through `device_agent.protocol` "
            "(about 26 µs of its ~46 µs of extra work, measured single-threaded on this mix: mostly the JSON of "
            "the drift windows), writes it, and acknowledges it after the commit; the bare subscriber does none "
            "of that, and serve's writer thread shares one interpreter lock with paho's network thread.",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--per-device", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
