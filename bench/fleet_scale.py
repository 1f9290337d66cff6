"""A thousand simulated devices on this machine: fleet status, a 1 MiB bundle to all of them,
and ``edgekit serve`` ingesting their telemetry — each next to a raw-MQTT baseline measured
in the same run.

Run: ``.venv/bin/python bench/fleet_scale.py`` (about ten minutes on 2 cores; ``--devices``,
``--repeats``, ``--ingest-minutes`` to shorten). It rewrites only the ``fleet-scale`` section
of ``BENCHMARKS.md``.

How it is built, and why:

* **The devices** are ``edgekit sim`` (the agent's own ``AgentCore`` per device, one MQTT
  connection each, all on one epoll loop) in a process of their own (``bench/simproc.py``), so
  the simulator's thread never takes the GIL from what is timed here. They start already
  running v1 of a real, signed bundle (``--preinstalled``), serve 10 rows/s of the wine data
  each, beat every 5 s and report a 100-row drift window every 10 s, as ``edgekit sim`` does by
  default. One mosquitto on a free loopback port (``max_queued_messages`` 100,000).
* **The bundle** is ``bench/transfer.py``'s: wine's logistic regression padded with random
  bytes to a 1 MiB ``model.onnx`` (nothing can compress it), signed and bundled by the real
  bundler; each repeat deploys the next version.
* **fleet status**: ``edgekit.fleet.status.fleet_status`` (the library call, in this process)
  and ``edgekit fleet status --json`` (a new process, as a person runs it), against a raw paho
  client that connects, subscribes to the same three wildcard filters and stops at the
  3 × N retained messages it knows to expect: the floor for reading the fleet's state from
  the broker in Python. Interleaved, repeated, medians.
* **Delivery**: the bundle's retained chunks are published once (``publish_bundle``, as
  ``deploy`` does). Raw: N plain paho clients in one process on the same epoll loop wait on a
  control topic; the clock starts when the job is published and stops when the last of them
  holds every byte of the chunks (one wildcard subscription each). Simulated: the clock starts
  when the signed desired state is published to the group and stops when every device has
  verified and installed the bundle (on trial), and when every device is active (the trial:
  20 live rows, 2 s at 10 rows/s). The devices pull through their windowed subscriptions,
  check every chunk's hash, the signed transfer document, the whole bundle's SHA-256 and
  signature, exactly as agents do; only the onnxruntime session is shared.
* **Ingestion**: ``edgekit serve`` (SQLite store, alerts on) and a bare paho subscriber
  process (parses each document's ``ts`` only) take the same fleet's telemetry for a few
  minutes. Lag is the time from a document's ``ts`` (set by the device when it is made) to its
  arrival: for ``serve``, to its commit (its ``edgekit_ingest_lag_seconds`` histogram, events
  and drift windows), read every 30 s; for the bare subscriber, to its callback. "Without
  growing lag" means the last interval's mean lag is not above the first's by more than the
  noise, and the ``edgekit_ingest_queue_messages`` backlog stays small.
* The machine is shared: the load average is stated; every figure is a median over repeats
  (delivery, status) or per interval (ingestion).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from simproc import RAW_CONTROL, SimGroup, SimProcess
from transfer import NAME, make_bundles

from device_agent.bundle import read_unverified
from device_agent.protocol import Topics
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import LEAVES, fleet_status
from edgekit.sim import SimConfig
from tests.support.broker import Broker, free_port

SECTION = "fleet-scale"
PREFIX = "edgekit/v1"
GROUP = "bench"
MIB = 1 << 20
TRIAL_ROWS = 20
EDGEKIT = str(Path(sys.executable).parent / "edgekit")
STATUS_TARGET_S = 1.0
INTERVAL_S = 30.0
WARMUP_S = 60.0  # serve's catch-up: every device's history since boot, resent on request
LEAVES_IN = ("events", "drift", "hb")
DELIVERY_TARGET_S = 30.0


def med(values: list[float]) -> float:
    """The median of the values that are numbers (an interval with no message has NaN)."""
    values = [v for v in values if v == v]
    return float(statistics.median(values)) if values else float("nan")


def span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if values else "-"


# ── fleet status ─────────────────────────────────────────────────────────────────────


def raw_status(broker: str, expect: int) -> float:
    """Connect, subscribe to the three leaves, stop at ``expect`` retained messages."""
    topics = Topics(PREFIX)
    t0 = time.monotonic()
    with connect(broker, purpose="bench-raw") as conn:
        got = [0]
        import threading

        done = threading.Event()

        def on_message(_t: str, _p: bytes, retained: bool) -> None:
            got[0] += retained
            if got[0] >= expect:
                done.set()

        conn.on_message = on_message
        conn.client.subscribe([(topics.all_devices(leaf), 1) for leaf in LEAVES])
        if not done.wait(30):
            raise RuntimeError(f"raw status got {got[0]} of {expect} retained messages")
        elapsed = time.monotonic() - t0
    return elapsed


def lib_status(broker: str, devices: int) -> float:
    t0 = time.monotonic()
    view = fleet_status(broker, PREFIX)
    elapsed = time.monotonic() - t0
    if len(view) != devices:
        raise RuntimeError(f"fleet status saw {len(view)} devices, not {devices}")
    return elapsed


def cli_status(broker: str, ws: Path, devices: int) -> float:
    t0 = time.monotonic()
    out = subprocess.run(
        [EDGEKIT, "fleet", "status", "--json", "--broker", broker],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "EDGEKIT_WORKSPACE": str(ws)},
    ).stdout
    elapsed = time.monotonic() - t0
    seen = len(json.loads(out)["devices"])
    if seen != devices:
        raise RuntimeError(f"edgekit fleet status saw {seen} devices, not {devices}")
    return elapsed


# ── delivery ─────────────────────────────────────────────────────────────────────────


@dataclass
class Delivery:
    raw_s: float
    installed_s: float
    active_s: float
    sim_cpu_s: float
    raw_cpu_s: float
    failed: int


def deliver(
    broker: Broker,
    sim: SimProcess | SimGroup,
    raw: SimProcess,
    bundle: Path,
    version: int,
    key: Any,
    devices: int,
    raw_first: bool,
) -> Delivery:
    topics = Topics(PREFIX)
    data = bundle.read_bytes()
    label = f"{NAME}@{version}"
    with connect(broker.url, purpose="bench-deploy") as conn:
        info, _ = publish_bundle(conn, topics, data, NAME, version, key)
        chunk_filter = f"{PREFIX}/bundle/{NAME}/{version}/chunk/+"

        def run_raw() -> tuple[float, float]:
            raw.ask("reset")
            before = raw.summary()
            t0 = time.monotonic()
            publish_all(conn, [(RAW_CONTROL, json.dumps({"filter": chunk_filter, "size": len(data)}).encode(), False)])
            s = raw.wait(lambda s: s["complete"] >= devices, timeout=300, poll=0.05)
            return s["done_at"] - t0, s["process_cpu_s"] - before["process_cpu_s"]

        def run_sim() -> tuple[float, float, float, int]:
            before = sim.summary()
            t0 = time.monotonic()
            publish_desired(conn, topics, Target(group=GROUP), info, key)
            installed = 0.0
            while True:
                s = sim.summary()
                on_it = s["active"].get(label, 0)
                failed = s["phases"].get("failed", 0)
                if not installed and on_it + s["phases"].get("trial", 0) + failed >= devices:
                    installed = time.monotonic() - t0
                if on_it + failed >= devices:
                    return installed, time.monotonic() - t0, s["process_cpu_s"] - before["process_cpu_s"], failed
                if time.monotonic() - t0 > 600:
                    raise RuntimeError(f"delivery of {label} not done in 600 s: {s['phases']} {s['active']}")
                time.sleep(0.05)

        if raw_first:
            raw_s, raw_cpu = run_raw()
            installed, active, sim_cpu, failed = run_sim()
        else:
            installed, active, sim_cpu, failed = run_sim()
            raw_s, raw_cpu = run_raw()
    return Delivery(raw_s, installed, active, sim_cpu, raw_cpu, failed)


# ── ingestion ────────────────────────────────────────────────────────────────────────

BARE = r"""
import json, sys, threading, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
port, prefix = int(sys.argv[1]), sys.argv[2]
buckets = {}
t_start = time.time()
def on_connect(c, u, f, rc, p):
    c.subscribe([(f"{prefix}/dev/+/events", 1), (f"{prefix}/dev/+/drift", 1), (f"{prefix}/dev/+/hb", 0)])
def on_message(c, u, m):
    now = time.time()
    if m.retain:
        return
    try:
        ts = json.loads(m.payload)["ts"]
    except Exception:
        return
    b = buckets.setdefault(int((now - t_start) // 30), {"n": 0, "events_drift": 0, "lag_ed": 0.0})
    b["n"] += 1
    if not m.topic.endswith("/hb"):
        b["events_drift"] += 1
        b["lag_ed"] += now - ts
c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-ingest", protocol=MQTTProtocolVersion.MQTTv5)
c.on_connect, c.on_message = on_connect, on_message
c.connect("127.0.0.1", port)
c.loop_start()
sys.stdin.read()
c.disconnect()
print(json.dumps({"buckets": buckets}))
"""

METRIC = re.compile(r"^(edgekit_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$", re.M)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for name, labels, value in METRIC.findall(text):
        out[f"{name}{{{labels}}}" if labels else name] = float(value)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Interval:
    serve_msgs: float
    serve_lag_s: float  # mean, events and drift windows, to commit
    serve_queue: float  # received, not yet stored, at the end of the interval
    bare_msgs: float
    bare_lag_s: float  # mean, events and drift windows, to the callback
    serve_cpu: float  # share of one core


@dataclass
class Ingestion:
    minutes: float
    intervals: list[Interval] = field(default_factory=list)
    offered_per_s: float = 0.0
    sim_cpu: float = 0.0


def ingest(broker: Broker, ws: Path, folder: Path, sim: SimProcess | SimGroup, minutes: float) -> Ingestion:
    """``serve`` and a bare subscriber on the running fleet; the first WARMUP_S are catch-up (the
    collector asks every device to resend its history since boot, as it must) and reported apart."""
    port = free_port()
    store = f"sqlite:///{folder / 'telemetry.db'}"
    serve = subprocess.Popen(
        [EDGEKIT, "serve", "--broker", broker.url, "--store", store, "--metrics-port", str(port), "--name", "bench"],
        env={**os.environ, "EDGEKIT_WORKSPACE": str(ws)},
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "serve.log", "wb"),  # noqa: SIM115 - the process owns it
    )
    bare: subprocess.Popen[str] | None = None
    result = Ingestion(minutes)
    serve_rows: list[tuple[float, float, float, float]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                last = scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # Started once serve answers, so that both count their 30 s intervals from the same moment.
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE, str(broker.port), PREFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        cpu0, t_prev = cpu_seconds(serve.pid), time.monotonic()
        t_start = t_prev
        sim0 = None
        while time.monotonic() - t_start < minutes * 60 + WARMUP_S:
            time.sleep(INTERVAL_S - ((time.monotonic() - t_start) % INTERVAL_S))
            metrics, now, cpu = scrape(port), time.monotonic(), cpu_seconds(serve.pid)
            stored = sum(_delta(metrics, last, "edgekit_ingested_messages_total", leaf) for leaf in LEAVES_IN)
            lag_sum = sum(_delta(metrics, last, "edgekit_ingest_lag_seconds_sum", leaf) for leaf in ("events", "drift"))
            lag_n = sum(_delta(metrics, last, "edgekit_ingest_lag_seconds_count", leaf) for leaf in ("events", "drift"))
            dt = now - t_prev
            lag = lag_sum / lag_n if lag_n else float("nan")
            queue = metrics.get("edgekit_ingest_queue_messages", 0.0)
            serve_rows.append((stored / dt, lag, queue, (cpu - cpu0) / dt))
            log(f"  serve: {stored / dt:.0f} msg/s stored, mean lag {lag:.3f} s, backlog {queue:.0f}")
            last, t_prev, cpu0 = metrics, now, cpu
            if sim0 is None and now - t_start >= WARMUP_S:
                sim0 = sim.summary()
        sim1 = sim.summary()
        if sim0 is not None:
            result.sim_cpu = (sim1["process_cpu_s"] - sim0["process_cpu_s"]) / (sim1["now"] - sim0["now"])
            result.offered_per_s = (sim1["telemetry_sent"] - sim0["telemetry_sent"]) / (sim1["now"] - sim0["now"])
    finally:
        bare_out: dict[str, Any] = {"buckets": {}}
        if bare is not None and bare.stdin is not None:
            bare.stdin.close()
            if bare.wait(30) == 0 and bare.stdout is not None:
                bare_out = json.loads(bare.stdout.read())
        serve.terminate()
        serve.wait(30)
    buckets = bare_out["buckets"]
    for i, (rate, lag, queue, cpu) in enumerate(serve_rows):
        b = buckets.get(str(i), {"n": 0, "lag_ed": 0.0, "events_drift": 0})
        bare_lag = b["lag_ed"] / b["events_drift"] if b["events_drift"] else float("nan")
        result.intervals.append(Interval(rate, lag, queue, b["n"] / INTERVAL_S, bare_lag, cpu))
    return result


def _delta(now: dict[str, float], before: dict[str, float], name: str, leaf: str) -> float:
    key = f'{name}{{leaf="{leaf}"}}'
    return now.get(key, 0.0) - before.get(key, 0.0)


# ── report ───────────────────────────────────────────────────────────────────────────


@dataclass
class Report:
    devices: int
    bundle_bytes: int
    status_raw: list[float]
    status_lib: list[float]
    status_cli: list[float]
    deliveries: list[Delivery]
    ingestion: Ingestion | None
    idle_sim_cpu: float
    load: tuple[tuple[float, ...], tuple[float, ...]]
    started: str
    processes: int = 1


def render(r: Report) -> str:
    n = r.devices
    where = "a process of their own" if r.processes == 1 else f"{r.processes} processes"
    lines = [
        f"## Fleet scale: {n:,} simulated devices on this machine",
        "",
        f"Measured {r.started} by `.venv/bin/python bench/fleet_scale.py`; "
        f"{machine(*r.load)}; {versions(['paho-mqtt', 'onnxruntime', 'psycopg'])}; {mosquitto()}. "
        f"The devices are `edgekit sim` in {where} (the agent's core per device, one MQTT connection each on "
        "one epoll loop per process); idle — heartbeats every 5 s, a drift window every 10 s, 10 rows/s each — "
        f"the simulator used {r.idle_sim_cpu:.2f} of a core.",
        "",
        "| figure | edgekit | raw MQTT baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lib, cli, raw = med(r.status_lib), med(r.status_cli), med(r.status_raw)
    lines.append(
        f"| `fleet status` over {n:,} devices (library call) | {lib:.2f} s | {raw:.2f} s | {lib / raw:.1f}× | "
        f"≤ {STATUS_TARGET_S:.0f} s: {'met' if lib <= STATUS_TARGET_S else 'missed'} |"
    )
    lines.append(
        f"| `edgekit fleet status --json` (new process) | {cli:.2f} s | {raw:.2f} s | {cli / raw:.1f}× | "
        f"≤ {STATUS_TARGET_S:.0f} s: {'met' if cli <= STATUS_TARGET_S else 'missed'} |"
    )
    if r.deliveries:
        d_raw = med([d.raw_s for d in r.deliveries])
        d_inst = med([d.installed_s for d in r.deliveries])
        d_act = med([d.active_s for d in r.deliveries])
        mib = r.bundle_bytes / MIB
        lines.append(
            f"| a {mib:.1f} MiB bundle to all {n:,}: every device verified and installed | {d_inst:.1f} s | "
            f"{d_raw:.1f} s (the same chunks to {n:,} raw subscribers) | {d_inst / d_raw:.1f}× | "
            f"≤ {DELIVERY_TARGET_S:.0f} s: {'met' if d_inst <= DELIVERY_TARGET_S else 'missed'} |"
        )
        lines.append(
            f"| … every device active (after a {TRIAL_ROWS}-row trial at 10 rows/s) | {d_act:.1f} s | {d_raw:.1f} s | "
            f"{d_act / d_raw:.1f}× | ≤ {DELIVERY_TARGET_S:.0f} s: {'met' if d_act <= DELIVERY_TARGET_S else 'missed'} |"
        )
    ing = r.ingestion
    warm = int(WARMUP_S / INTERVAL_S)
    if ing is not None and len(ing.intervals) > warm:
        measured = ing.intervals[warm:]
        third = max(1, len(measured) // 3)
        early = med([i.serve_lag_s for i in measured[:third]])
        late = med([i.serve_lag_s for i in measured[-third:]])
        bare_lag = med([i.bare_lag_s for i in measured])
        grows = late > early + max(0.5, early) or measured[-1].serve_queue > 1000
        lines.append(
            f"| `edgekit serve` ingesting {n:,} devices for {ing.minutes:.0f} min: mean lag (device `ts` to commit) of "
            f"events and drift windows, first → last third | {early:.2f} → {late:.2f} s | {bare_lag:.3f} s "
            f"(bare subscriber, to its callback) | {med([i.serve_lag_s for i in measured]) / max(1e-3, bare_lag):.0f}×"
            " | "
            f"no growing lag: {'met' if not grows else 'missed'} |"
        )
    lines += ["", f"### fleet status (seconds, {len(r.status_lib)} repeats: median, range)", ""]
    lines += [
        "| path | median | range |",
        "|---|---|---|",
        f"| raw paho: connect, subscribe to `state`, `reported`, `hb`, {3 * n:,} retained messages | {raw:.2f} | "
        f"{span(r.status_raw)} |",
        f"| `fleet_status()`: the same, plus the end-of-retained marker, parsing every document, the view | "
        f"{lib:.2f} | {span(r.status_lib)} |",
        f"| `edgekit fleet status --json`: the same in a new process (Python start, imports, output) | "
        f"{cli:.2f} | {span(r.status_cli)} |",
    ]
    if r.deliveries:
        lines += ["", f"### Delivery of a {r.bundle_bytes / MIB:.2f} MiB bundle to {n:,} (seconds, per repeat)", ""]
        lines += [
            "| repeat | raw: last subscriber complete | sim: all verified and installed | sim: all active | "
            "simulator CPU s | raw CPU s | failed |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, d in enumerate(r.deliveries, 1):
            lines.append(
                f"| {i} | {d.raw_s:.1f} | {d.installed_s:.1f} | {d.active_s:.1f} | {d.sim_cpu_s:.1f} | "
                f"{d.raw_cpu_s:.1f} | {d.failed} |"
            )
    if ing is not None and ing.intervals:
        lines += [
            "",
            f"### Ingestion, per {INTERVAL_S:.0f} s ({n:,} devices offering {ing.offered_per_s:.0f} events and drift "
            f"windows/s plus {n / 5:.0f} heartbeats/s; the simulator at {ing.sim_cpu:.2f} of a core)",
            "",
            f"The first {WARMUP_S:.0f} s are catch-up: `serve` starts with the fleet already running, finds every "
            "device's history since boot missing and asks for it (resend commands), as it must; those resent "
            "messages carry their original `ts`, hence the large lag there.",
            "",
            "| interval | serve: stored msg/s | serve: mean lag to commit, s | serve: backlog, messages | "
            "serve: CPU (cores) | bare: msg/s | bare: mean lag, s |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, iv in enumerate(ing.intervals, 1):
            tag = " (catch-up)" if i <= warm else ""
            lines.append(
                f"| {i}{tag} | {iv.serve_msgs:.0f} | {iv.serve_lag_s:.2f} | {iv.serve_queue:.0f} | "
                f"{iv.serve_cpu:.2f} | "
                f"{iv.bare_msgs:.0f} | {iv.bare_lag_s:.3f} |"
            )
    lines += ["", *NOTES.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


NOTES = """
### What stands in the way of the targets (found while measuring; profiles with pyinstrument)

* **The machine.** Other test suites kept the load average at 8-13 on 2 cores throughout; every
  process here got a fraction of a core (the simulator 0.2-0.5, `serve` 0.13-0.5). The raw
  baselines suffered too: raw paho alone took 0.6-2 s to read the fleet's 3,000 retained
  documents, against a 1 s target. Figures from a quiet machine will be far better; the ratios
  to raw are the fairer reading.
* **`fleet status`.** The library call stays within 1.1-1.5× of raw paho (the end-of-retained
  marker, parsing 3,000 documents through the protocol classes, the view). The command costs
  several seconds more: Python's start, imports, the telemetry signature verdicts and the JSON
  of 1,000 devices. Fixed on the way: every command imported scikit-learn and skl2onnx (6-12 s
  of imports under this load; `edgekit.cli` now imports in ~2 s here, 0.6 s when the machine is
  quieter), and the 2-5 s cap on reading retained documents silently cut the fleet to 213 of
  1,000 devices (`collect` now ends on the marker or on silence, capped at 60 s).
* **Delivery.** The raw subscribers take 18-24 s to receive 1 GiB from mosquitto in one Python
  process; the simulator spends 35-38 s of CPU per delivery against the raw process's 4 s, doing
  what an agent does per device: a windowed pull with a subscribe/unsubscribe per few chunks, each
  chunk hashed, the whole bundle and its model hashed again (2 MiB of SHA-256 per device), two
  Ed25519 signatures, a 1 MiB assembly buffer, the engine's model switch (the reference
  statistics parsed per device, the old model's partial drift window reported), lifecycle events
  and reported documents. One process is one core (the GIL): 1,000 such devices need at least
  two simulator processes (`--id-prefix`) to have a chance at 30 s, and a quieter machine.
  Fixed on the way: the simulator served rows and recomputed latency percentiles every second for
  every device (most of an idle fleet's time): now rows come in 5 s batches and the engine's
  numbers are reused between them; an idle 1,000-device fleet costs 0.2-0.3 of a core.
* **Ingestion.** Not met here: `serve` stored 40-315 messages/s on its 0.13-0.5 of a core while
  the fleet offered up to 1,300/s (its steady offer is 100 drift windows/s and 200 heartbeats/s,
  but `serve` starts with the fleet already running and asks every device for its history since
  boot, and the simulator, starved during the deliveries, was flushing its own backlog). Its
  backlog reached 62,000 messages and its lag grew to minutes, while the bare subscriber drained
  the same stream (back to 8.5 s at the end). In this run the bare subscriber's intervals began
  when it started, before `serve` answered, so its rows sit about one interval earlier than
  `serve`'s (since fixed: it now starts once `serve` answers); read so, both saw a 30 s with
  nothing: the simulator itself stalled, starved. To do: run `serve` from before the fleet
  starts, profile it under this offer, and measure on a quiet machine.
"""


def mosquitto() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "mosquitto (version unknown)"
    first = out.splitlines()[0] if out else ""
    return first.replace(" running on ", " ").strip() or "mosquitto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="delivery repeats (fleet status: 2 more)")
    parser.add_argument("--ingest-minutes", type=float, default=3.0)
    parser.add_argument("--skip", choices=("status", "delivery", "ingest"), action="append", default=[])
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--processes", type=int, default=1, help="simulator processes the fleet is spread over")
    args = parser.parse_args(argv)
    load0 = os.getloadavg()
    started = now_utc()
    n = args.devices
    with tempfile.TemporaryDirectory(prefix="ek-fleet-scale-") as tmp:
        folder = Path(tmp)
        log(f"building {args.repeats + 1} signed 1 MiB bundles")
        bundles = make_bundles(folder, args.repeats + 1, MIB)
        bundle_bytes = bundles.paths[-1].stat().st_size
        version = [int(read_unverified(p.read_bytes())[0]["version"]) for p in bundles.paths]
        ws = folder / "ws"
        broker = Broker(max_queued_messages=100_000)
        broker.start()
        raw: SimProcess | None = None
        try:
            config = SimConfig(
                broker=broker.url,
                trust=bundles.trust_path,
                devices=n,
                groups=(GROUP,),
                rows_csv=folder / "wine.csv",
                preinstalled=bundles.paths[0],
                trial_rows=TRIAL_ROWS,
            )
            with SimGroup(config, args.processes) as sim:
                log(f"starting {n} simulated devices")
                sim.wait(
                    lambda s: s["connected"] == n and s["active"].get(f"{NAME}@{version[0]}") == n,
                    timeout=300,
                    poll=0.5,
                )
                time.sleep(6)  # every device has sent a heartbeat
                s0 = sim.summary()
                time.sleep(10)
                s1 = sim.summary()
                idle_cpu = (s1["process_cpu_s"] - s0["process_cpu_s"]) / (s1["now"] - s0["now"])
                log(f"fleet up; idle simulator {idle_cpu:.2f} of a core")
                status_raw: list[float] = []
                status_lib: list[float] = []
                status_cli: list[float] = []
                if "status" not in args.skip:
                    for i in range(args.repeats + 2):
                        status_raw.append(raw_status(broker.url, 3 * n))
                        status_lib.append(lib_status(broker.url, n))
                        status_cli.append(cli_status(broker.url, ws, n))
                        log(
                            f"status {i + 1}: raw {status_raw[-1]:.2f} lib {status_lib[-1]:.2f} "
                            f"cli {status_cli[-1]:.2f}"
                        )
                deliveries: list[Delivery] = []
                if "delivery" not in args.skip:
                    raw = SimProcess(raw=(broker.url, n))
                    raw.wait(lambda s: s["connected"] >= n, timeout=120, poll=0.2)
                    for k in range(1, args.repeats + 1):
                        d = deliver(
                            broker, sim, raw, bundles.paths[k], version[k], bundles.key, n, raw_first=k % 2 == 1
                        )
                        deliveries.append(d)
                        log(
                            f"delivery {k}: raw {d.raw_s:.1f} s; installed {d.installed_s:.1f} s, "
                            f"active {d.active_s:.1f} s"
                        )
                    raw.stop()
                    raw = None
                ingestion = None
                if "ingest" not in args.skip:
                    log(f"ingestion for {args.ingest_minutes} min")
                    ingestion = ingest(broker, ws, folder, sim, args.ingest_minutes)
        finally:
            if raw is not None:
                raw.stop()
            broker.close()
    report = Report(
        n,
        bundle_bytes,
        status_raw,
        status_lib,
        status_cli,
        deliveries,
        ingestion,
        idle_cpu,
        (load0, os.getloadavg()),
        started,
        args.processes,
    )
    text = render(report)
    if args.no_write:
        print(text)
    else:
        write_section(SECTION, text, BENCHMARKS)
        log(f"wrote the {SECTION} section of {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
