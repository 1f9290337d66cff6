"""A 10 MiB bundle to 20 real agents over a real mosquitto, against raw mosquitto delivery of
the same bytes in the same run.

Run: ``.venv/bin/python bench/transfer.py`` (under a minute on 2 cores). It rewrites only the
``transfer`` section of ``BENCHMARKS.md`` (between ``<!-- transfer:start -->`` and
``<!-- transfer:end -->``).

How the comparison is built, and why:

* **The bundle is real.** A logistic regression trained on wine by ``edgekit.pipeline.train_run``
  is padded with one unused initializer of random bytes (random so nothing along the way can
  compress it) until ``model.onnx`` is about 10 MiB, then bundled with
  ``edgekit.bundler.build_from_model``, which signs it and refuses it unless the device's own
  ``verify`` passes and ``LoadedModel(...).health_check()`` reproduces the host's answers. A
  real 10 MiB model (a large tree ensemble) would take longer to load into onnxruntime than
  this one; the uncontended install cost is measured separately so that can be judged.
* **The agents are real.** 20 ``edgekit-agent`` processes (``--input none``, ``--group``,
  ``--trial-seconds 1``), each with its own state directory on disk, so the fsyncs of the
  install are real. They connect to a mosquitto started on a free loopback port by
  ``tests/support/broker.py``. Each repeat deploys a new version with
  ``edgekit.fleet.deploy.deploy`` (host-side verification on, as ``edgekit deploy`` does) to
  the group; "active" is read where an operator reads it: the retained ``reported`` topic, the
  first document naming the new bundle as active.
* **The raw baseline moves the same bytes the same way.** 20 plain paho subscriber processes
  (separate processes, like the agents; MQTT 5, clean start, TCP_NODELAY) wait on a control
  topic. The bench publishes the very bytes of that repeat's bundle as retained 256 KiB QoS 1
  chunks with the same publisher code ``deploy`` uses (``edgekit.fleet.client.publish_all``,
  every publish acknowledged), then tells the subscribers to take them with one wildcard
  subscription; a subscriber is complete when it holds every chunk (count and bytes). That is
  the agent's transfer without the agent: no desired state, no signatures, no windowed pull,
  no staging, no install, no trial. Same broker, same run, interleaved with the agent deploys
  (the order alternates per repeat), so both see the same machine.
* **Time-to-active, broken down per agent.** Every timestamp is on this host's clocks (agent
  wall-clock times are converted to ``time.monotonic``): the first ``reported`` document in
  phase ``downloading`` (the agent took the desired state; its ``ts``), the staging directory
  appearing and disappearing (polled every 5 ms: the signed transfer document arrived; every
  chunk arrived, the bundle was assembled and verified), the ``lifecycle.trial`` event (its
  ``ts``: the model loaded, health samples reproduced, bundle stored with fsync, trial
  begun), the ``lifecycle.activated`` event (its ``ts``: trial passed, committed), and the arrival
  of the ``reported`` document saying active. The agent rate-limits ``reported`` to one per
  second, so its phase changes alone cannot time steps shorter than that; the events and the
  staging directory can.
* Three repeats; every figure quoted is the median over repeats (per-agent steps: median over
  agents and repeats, and the slowest agent). CPU seconds per process come from
  ``/proc/PID/stat`` around each trial.

Every process started here is stopped at the end (and is told to die with this one).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import paho.mqtt.client as paho
from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_agent.bundle import verify
from device_agent.protocol import DEFAULT_PREFIX, Topics
from device_agent.runtime import LoadedModel
from device_agent.slots import Slots
from device_agent.state import Persisted
from device_agent.transfer import split
from device_agent.trust import Trust
from edgekit import bundler, keys, pipeline, workspace
from edgekit.fleet.client import connect, parse_broker, publish_all
from edgekit.fleet.deploy import DEFAULT_CHUNK, Target, chunk_size_for, deploy

if str(REPO) not in sys.path:  # tests/support is part of the checkout, not of the installed packages
    sys.path.insert(0, str(REPO))
from tests.support.broker import Broker

SECTION = "transfer"
GROUP = "bench-fleet"
NAME = "fleet-bench"
KEY = "release"
RAW_CONTROL = "bench/raw/control"
POLL_S = 0.005  # staging-directory poll period
STEPS = ("desired", "staged", "fetched", "trial", "activated", "reported")


# ── children that die with us ──────────────────────────────────────────────────────────


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this process dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process."""
    return sum(cpu_times(pid))


def memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    rss = hwm = float("nan")
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def stop_all(procs: Sequence[subprocess.Popen[Any]], timeout: float = 15.0) -> None:
    """SIGTERM every process at once, wait for all, SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


# ── the raw subscriber (a child process of this script) ────────────────────────────────


def raw_subscriber(broker_url: str, ident: str) -> int:
    """Wait for jobs on the control topic; for each, take every chunk with one wildcard
    subscription and print ``done TRIAL MONOTONIC`` when all are in. Exits when stdin closes."""
    host, port = parse_broker(broker_url)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{ident}", protocol=MQTTProtocolVersion.MQTTv5
    )
    job: dict[str, Any] = {}
    parts: dict[int, bytes] = {}
    ready = threading.Event()

    def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock = c.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(RAW_CONTROL, qos=1)

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        if not ready.is_set():
            ready.set()
            print("ready", flush=True)

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == RAW_CONTROL:
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
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        sys.stdin.read()  # until the bench closes our stdin (or kills us)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()
    return 0


class RawFleet:
    """The raw subscriber processes and what they print."""

    def __init__(self, n: int, broker_url: str) -> None:
        script = Path(__file__).resolve()
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(script), "--raw-subscriber", broker_url, f"s{i:02d}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                preexec_fn=_die_with_parent,  # started before any thread of ours exists
            )
            for i in range(n)
        ]
        self.lines: queue.Queue[tuple[int, str]] = queue.Queue()

    def start_readers(self) -> None:
        for i, p in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put((i, line.strip()))

    def wait_ready(self, timeout: float) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ready) < len(self.procs):
            i, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line == "ready":
                ready.add(i)

    def wait_done(self, trial: str, timeout: float) -> dict[int, float]:
        done: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(self.procs):
            try:
                i, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"raw subscribers done: {len(done)}/{len(self.procs)} after {timeout} s") from None
            parts = line.split()
            if len(parts) == 3 and parts[0] == "done" and parts[1] == trial:
                done[i] = float(parts[2])
        return done

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                if p.stdin is not None:
                    p.stdin.close()
        stop_all(self.procs, timeout=5.0)


# ── the agents ─────────────────────────────────────────────────────────────────────────


class AgentFleet:
    def __init__(self, n: int, folder: Path, broker_url: str, trust: Path, trial_s: float) -> None:
        exe = Path(sys.executable).with_name("edgekit-agent")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "device_agent.cli"]
        self.devices = [f"bench-{i:02d}" for i in range(n)]
        self.state_dirs = {d: folder / d / "state" for d in self.devices}
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for d in self.devices:
            self.state_dirs[d].parent.mkdir(parents=True)
            self.logs[d] = folder / d / "stderr.log"
            with open(self.logs[d], "wb") as err:
                self.procs[d] = subprocess.Popen(
                    [
                        *cmd,
                        "--device-id",
                        d,
                        "--broker",
                        broker_url,
                        "--state-dir",
                        str(self.state_dirs[d]),
                        "--trust",
                        str(trust),
                        "--group",
                        GROUP,
                        "--input",
                        "none",
                        "--trial-seconds",
                        f"{trial_s:g}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    preexec_fn=_die_with_parent,  # started before any thread of ours exists
                )

    def check_alive(self) -> None:
        for d, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"agent {d} exited ({p.returncode}): {self.logs[d].read_text()[-2000:]}")

    def cpu(self) -> dict[str, tuple[float, float]]:
        return {d: cpu_times(p.pid) for d, p in self.procs.items()}

    def close(self) -> None:
        stop_all(list(self.procs.values()))


def settle(pids: Sequence[int], quiet_cpu: float = 0.05, window: float = 0.5, cap: float = 15.0) -> float:
    """Wait until these processes together use less than ``quiet_cpu`` CPU-seconds per
    ``window``; returns how long that took (capped)."""
    started = time.monotonic()
    before = sum(cpu_seconds(p) for p in pids)
    while time.monotonic() - started < cap:
        time.sleep(window)
        now = sum(cpu_seconds(p) for p in pids)
        if now - before < quiet_cpu:
            break
        before = now
    return time.monotonic() - started


# ── watching the fleet ─────────────────────────────────────────────────────────────────


class Monitor:
    """One MQTT client recording every ``state``, ``reported`` and ``events`` message with its
    arrival time (``time.monotonic``)."""

    def __init__(self, broker_url: str, topics: Topics) -> None:
        self.topics = topics
        self.cond = threading.Condition()
        self.reported: list[tuple[float, str, dict[str, Any]]] = []
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.online: dict[str, bool] = {}
        host, port = parse_broker(broker_url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        subscribed = threading.Event()
        leaves = ("state", "reported", "events")
        self.client.on_connect = lambda c, *_: c.subscribe([(topics.all_devices(leaf), 1) for leaf in leaves])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the monitor could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        arrived = time.monotonic()
        parsed = self.topics.parse_device_topic(msg.topic)
        if parsed is None or not msg.payload:
            return
        device, leaf = parsed
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self.cond:
            if leaf == "state":
                self.online[device] = bool(doc.get("online"))
            elif leaf == "reported":
                self.reported.append((arrived, device, doc))
            elif leaf == "events":
                self.events.append((arrived, device, doc))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def active(self, sha: str, since: float) -> set[str]:
        """Devices whose reported document, arrived after ``since``, names ``sha`` active (call locked)."""
        return {d for t, d, doc in self.reported if t >= since and (doc.get("active") or {}).get("sha256") == sha}

    def failed(self, sha: str, since: float) -> dict[str, str]:
        out = {}
        for t, d, doc in self.reported:
            err = doc.get("last_error") or {}
            if t >= since and doc.get("phase") == "failed" and err.get("sha256") == sha:
                out[d] = f"{err.get('code')}: {err.get('detail')}"
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


class StagingPoller:
    """Polls each agent's ``staging/<sha256>`` directory: when it appears (the signed transfer
    document was accepted) and when it goes (every chunk in, bundle assembled and verified)."""

    def __init__(self, dirs: dict[str, Path], sha: str) -> None:
        self.paths = {d: s / "staging" / sha for d, s in dirs.items()}
        self.appeared: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        waiting = dict(self.paths)
        while waiting and not self._stop.is_set():
            now = time.monotonic()
            for d, path in list(waiting.items()):
                exists = os.path.isdir(path)
                if exists and d not in self.appeared:
                    self.appeared[d] = now
                elif not exists and d in self.appeared:
                    self.gone[d] = now
                    del waiting[d]
            time.sleep(POLL_S)

    def __enter__(self) -> StagingPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ── the bundles ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Bundles:
    paths: list[Path]
    model_bytes: list[int]
    trust: Trust
    trust_path: Path
    key: Any  # Ed25519PrivateKey: signs the bundles and the desired state (both roles)


def padded(model: onnx.ModelProto, extra: int, seed: int) -> bytes:
    """``model`` plus one unused initializer of ``extra`` random bytes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pad = onnx.TensorProto(name="bench_padding", data_type=onnx.TensorProto.UINT8, dims=[extra])
    pad.raw_data = np.random.default_rng(seed).bytes(extra)
    out.graph.initializer.append(pad)
    return bytes(out.SerializeToString())


def make_bundles(folder: Path, count: int, target_bytes: int) -> Bundles:
    ws = workspace.init(folder / "ws")
    keys.generate(ws, KEY)
    trust = keys.trust_file(ws)
    trust_path = folder / "trust.json"
    trust_path.write_bytes(trust.to_json())
    from sklearn.datasets import load_wine

    data = load_wine()
    csv_path = folder / "wine.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            writer.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, csv_path, "label", "logreg")
    base_bytes = run.shipped_model.read_bytes()
    base = onnx.load_model_from_string(base_bytes)
    # Everything in the bundle but the model (reference statistics, health samples, manifest,
    # signature, ZIP structure), from a bundle of the unpadded model.
    plain = folder / "plain.onnx"
    plain.write_bytes(base_bytes)
    first = bundler.build_from_model(ws, plain, csv_path, "label", NAME, KEY, out_dir=folder)
    overhead = first.size - len(base_bytes)
    paths, sizes = [], []
    for i in range(count):
        model = padded(base, target_bytes - overhead - len(base_bytes) - 64, seed=i)
        path = folder / f"model-{i}.onnx"
        path.write_bytes(model)
        built = bundler.build_from_model(ws, path, csv_path, "label", NAME, KEY, out_dir=folder)
        paths.append(built.path)
        sizes.append(len(model))
        log(f"built {built.path.name}: {built.size:,} bytes (model.onnx {len(model):,} bytes)")
    return Bundles(paths, sizes, trust, trust_path, keys.load_private(ws, KEY))


def install_cost(data: bytes, trust: Trust, folder: Path, runs_: int = 3) -> dict[str, float]:
    """What an agent does with the bytes once they are in, uncontended, in this process
    (median ms): verify; onnxruntime session; health samples; bundle stored (temp file, fsync,
    rename, directory fsync); state saved the same way."""
    clock = time.perf_counter
    results: list[dict[str, float]] = []
    for i in range(runs_):
        slots = Slots(folder / f"install-{i}")
        t0 = clock()
        bundle = verify(data, trust, now=time.time())
        t1 = clock()
        model = LoadedModel(bundle)
        t2 = clock()
        model.health_check()
        t3 = clock()
        slots.store_bundle(bundle.sha256, data)
        t4 = clock()
        slots.save(Persisted(active=bundle.ref))
        t5 = clock()
        results.append(
            {
                "verify": t1 - t0,
                "session": t2 - t1,
                "health": t3 - t2,
                "store": t4 - t3,
                "state": t5 - t4,
                "all": t5 - t0,
            }
        )
        shutil.rmtree(folder / f"install-{i}", ignore_errors=True)
    return {k: 1000 * statistics.median(r[k] for r in results) for k in results[0]}


# ── one agent deploy, one raw delivery ─────────────────────────────────────────────────


@dataclass
class AgentTrial:
    repeat: int
    version: int
    publish_s: float  # deploy() call
    chunks: int
    chunk_size: int
    steps: dict[str, dict[str, float]]  # step -> device -> seconds since deploy() started
    cpu_s: dict[str, tuple[float, float]]  # device -> (user, system) CPU seconds during the trial
    phases_seen: dict[str, int]  # phase -> agents whose reported documents showed it

    @property
    def all_active_s(self) -> float:
        return max(self.steps["reported"].values())

    @property
    def all_installed_s(self) -> float:
        return max(self.steps["trial"].values())


@dataclass
class RawTrial:
    repeat: int
    publish_s: float
    done_s: dict[int, float]  # subscriber -> seconds since the publish started
    cpu_s: list[tuple[float, float]]  # (user, system) per subscriber

    @property
    def all_done_s(self) -> float:
        return max(self.done_s.values())


def agent_trial(
    repeat: int, path: Path, bundles: Bundles, broker: Broker, fleet: AgentFleet, monitor: Monitor, timeout: float
) -> AgentTrial:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    offset = time.time() - time.monotonic()  # agent wall-clock ts -> this host's monotonic clock
    cpu0 = fleet.cpu()
    with StagingPoller(fleet.state_dirs, sha) as poller:
        t0 = time.monotonic()
        result = deploy(broker.url, DEFAULT_PREFIX, path, Target(group=GROUP), bundles.key, bundles.key, bundles.trust)
        publish_s = time.monotonic() - t0
        n = len(fleet.devices)
        ok = monitor.wait(
            lambda: len(monitor.active(sha, t0)) == n or bool(monitor.failed(sha, t0)),
            timeout,
        )
        with monitor.cond:
            failed = monitor.failed(sha, t0)
            active = monitor.active(sha, t0)
        if failed or not ok:
            fleet.check_alive()
            raise RuntimeError(f"repeat {repeat}: {len(active)}/{n} active after {timeout} s; failed: {failed}")
    cpu1 = fleet.cpu()
    steps: dict[str, dict[str, float]] = {s: {} for s in STEPS}
    phases: dict[str, set[str]] = {}
    with monitor.cond:
        reported = [r for r in monitor.reported if r[0] >= t0]
        events = [e for e in monitor.events if e[0] >= t0]
    for arrived, device, doc in reported:
        desired = (doc.get("desired") or {}).get("sha256")
        if desired != sha:
            continue
        phases.setdefault(str(doc.get("phase")), set()).add(device)
        if doc.get("phase") == "downloading":
            steps["desired"].setdefault(device, float(doc["ts"]) - offset - t0)
        if (doc.get("active") or {}).get("sha256") == sha:
            steps["reported"].setdefault(device, arrived - t0)
    for _arrived, device, doc in events:
        if (doc.get("bundle") or {}).get("sha256") != sha:
            continue
        code = {"lifecycle.trial": "trial", "lifecycle.activated": "activated"}.get(str(doc.get("code")))
        if code:
            steps[code].setdefault(device, float(doc["ts"]) - offset - t0)
    steps["staged"] = {d: t - t0 for d, t in poller.appeared.items()}
    steps["fetched"] = {d: t - t0 for d, t in poller.gone.items()}
    return AgentTrial(
        repeat,
        result.version,
        publish_s,
        result.chunks,
        result.chunk_size,
        steps,
        {d: (cpu1[d][0] - cpu0[d][0], cpu1[d][1] - cpu0[d][1]) for d in fleet.devices},
        {p: len(ds) for p, ds in phases.items()},
    )


def raw_trial(repeat: int, data: bytes, broker: Broker, raw: RawFleet, timeout: float) -> RawTrial:
    pids = [p.pid for p in raw.procs]
    cpu0 = [cpu_times(p) for p in pids]
    tree = f"bench/raw/{repeat}"
    t0 = time.monotonic()
    with connect(broker.url, purpose="bench-raw") as conn:
        size = chunk_size_for(conn.max_packet_size, DEFAULT_CHUNK)
        parts = split(data, size)
        publish_all(conn, [(f"{tree}/chunk/{i}", p, True) for i, p in enumerate(parts)])
        publish_s = time.monotonic() - t0
        job = {"trial": str(repeat), "filter": f"{tree}/chunk/#", "chunks": len(parts), "size": len(data)}
        publish_all(conn, [(RAW_CONTROL, json.dumps(job).encode(), False)])
    done = raw.wait_done(str(repeat), timeout)
    cpu1 = [cpu_times(p) for p in pids]
    cpu = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cpu0, cpu1, strict=True)]
    return RawTrial(repeat, publish_s, {i: t - t0 for i, t in done.items()}, cpu)


# ── the report ─────────────────────────────────────────────────────────────────────────


def med(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


@dataclass
class Report:
    args: argparse.Namespace
    bundles: Bundles
    bundle_size: int
    agents: list[AgentTrial]
    raws: list[RawTrial]
    install: dict[str, float]
    orders: list[str]
    startup_s: float
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (median, max) MiB
    load: tuple[Sequence[float], Sequence[float]] = ((), ())
    seconds: float = 0.0


def render(r: Report) -> str:
    a, w = r.agents, r.raws
    n = r.args.agents
    chunks, chunk_size = a[0].chunks, a[0].chunk_size
    active = med(t.all_active_s for t in a)
    installed = med(t.all_installed_s for t in a)
    raw_all = med(t.all_done_s for t in w)
    fetched_all = med(max(t.steps["fetched"].values()) for t in a)
    lines = [
        f"## Transfer: a 10 MiB bundle to {n} agents, against raw mosquitto",
        "",
        f"A signed {r.bundle_size / 2**20:.2f} MiB bundle deployed with `edgekit.fleet.deploy.deploy` to a group of "
        f"{n} real `edgekit-agent` processes over a real mosquitto on loopback, against {n} plain paho subscriber "
        "processes receiving the same bytes as retained QoS 1 chunks through one wildcard subscription, in the same "
        "run on the same broker. How and why the comparison is built: docstring of `bench/transfer.py`.",
        "",
        f"- Rerun: `.venv/bin/python bench/transfer.py` (took {r.seconds:.0f} s; rewrites only this section).",
        f"- Machine: {machine(*r.load)}.",
        f"- Versions: {versions(('paho-mqtt', 'onnxruntime', 'numpy', 'cryptography'))}; {mosquitto_version()}.",
        f"- Date: {now_utc()}.",
        f"- Bundle: {r.bundle_size:,} bytes = {chunks} chunks of {chunk_size // 1024} KiB; `model.onnx` "
        f"{r.bundles.model_bytes[0]:,} bytes (a wine logistic regression plus one unused initializer of random "
        "bytes); it passes the agent's `verify` and health check (`build_from_model` refuses it otherwise).",
        f"- Agents: `edgekit-agent --group {GROUP} --input none --trial-seconds {r.args.trial_seconds:g}`, "
        "defaults otherwise (heartbeat 5 s, chunk window 8, tick 0.5 s, `reported` at most once a second); "
        f"state directories on disk. {n} agents started and settled in {r.startup_s:.1f} s before the first "
        "repeat.",
        f"- Raw: {n} separate paho subscriber processes (MQTT 5, clean start, TCP_NODELAY), chunks published with "
        "`edgekit.fleet.client.publish_all` (the code `deploy` uses) as retained QoS 1 messages, then one "
        "`…/chunk/#` subscription each on a signal; complete = every chunk held (count and bytes).",
        f"- Protocol: {len(a)} repeats, each one agent deploy (a new version) and one raw delivery, order "
        f"alternating ({', '.join(r.orders)}), processes left to settle between; quoted figures are medians over "
        "repeats. Times are seconds from the start of `deploy()` (agents) or of the first publish (raw).",
        "",
        "### Headline (medians of the repeats)",
        "",
        "| | agents (`deploy()` → all reported active) | raw mosquitto (publish → all complete) | ratio agent / raw |",
        "|---|---|---|---|",
        f"| time to all {n} | **{active:.2f} s** | **{raw_all:.3f} s** | **{active / raw_all:.0f}×** |",
        f"| publish alone | {med(t.publish_s for t in a):.3f} s (`deploy()` returns) | "
        f"{med(t.publish_s for t in w):.3f} s (all chunks acknowledged) | "
        f"{med(t.publish_s for t in a) / med(t.publish_s for t in w):.1f}× |",
        f"| without the trial: all {n} installed (`lifecycle.trial` event) | {installed:.2f} s | {raw_all:.3f} s | "
        f"{installed / raw_all:.0f}× |",
        f"| bytes only: all {n} have every chunk, assembled and verified (staging dir removed) | "
        f"{fetched_all:.2f} s | {raw_all:.3f} s | {fetched_all / raw_all:.0f}× |",
        "",
        f"The agent figure includes the configured trial (`--trial-seconds {r.args.trial_seconds:g}`: with no live "
        "rows the trial passes when that time has gone by, checked on the worker's 0.5 s tick) — a deliberate wait, "
        "not transfer cost. The rows below it take it out step by step.",
        "",
        "### Per repeat",
        "",
        "| repeat | order | agents: publish | desired seen (median) | all fetched | all installed | all active "
        "(reported) | raw: publish | raw: all complete | agent / raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, raw, order in zip(a, w, r.orders, strict=True):
        lines.append(
            f"| {t.repeat} (v{t.version}) | {order} | {t.publish_s:.3f} | {med(t.steps['desired'].values()):.3f} "
            f"| {max(t.steps['fetched'].values()):.2f} | {t.all_installed_s:.2f} | {t.all_active_s:.2f} "
            f"| {raw.publish_s:.3f} | {raw.all_done_s:.3f} | {t.all_active_s / raw.all_done_s:.0f}× |"
        )
    lines += ["", *breakdown(r), "", *cost_lines(r)]
    return "\n".join(lines)


STEP_LABELS = {
    "desired": ("`deploy()` start → agent took the desired state", "first `reported` in phase downloading (`ts`)"),
    "staged": ("→ signed transfer document accepted", "staging directory appears"),
    "fetched": ("→ every chunk in, bundle assembled and verified", "staging directory removed"),
    "trial": ("→ installed: session, health samples, bundle stored (fsync)", "`lifecycle.trial` event (`ts`)"),
    "activated": ("→ trial passed and committed", "`lifecycle.activated` event (`ts`)"),
    "reported": ("→ `reported` says active, received", "arrival at the bench's subscriber"),
}


def breakdown(r: Report) -> list[str]:
    lines = [
        "### Where an agent's time goes (seconds)",
        "",
        f"Per agent, each step's duration (from the previous row's instant); median over {len(r.agents)} × "
        f"{r.args.agents} agent deploys, and the slowest agent (median over repeats). Instants from the staging "
        f"directory are polled every {POLL_S * 1000:.0f} ms.",
        "",
        "| step | measured by | median | slowest agent |",
        "|---|---|---|---|",
    ]
    previous: str | None = None
    for step in STEPS:
        per_trial_max = []
        values = []
        for t in r.agents:
            durations = []
            for d, at in t.steps[step].items():
                before = 0.0 if previous is None else t.steps[previous].get(d)
                if before is not None:
                    durations.append(at - before)
            values += durations
            if durations:
                per_trial_max.append(max(durations))
        label, how = STEP_LABELS[step]
        if values:
            lines.append(f"| {label} | {how} | {med(values):.3f} | {med(per_trial_max):.3f} |")
        else:
            lines.append(f"| {label} | {how} | — | — |")
        previous = step
    raw_done = [v for t in r.raws for v in t.done_s.values()]
    lines.append(
        f"| raw subscriber: publish start → complete | its own clock | {med(raw_done):.3f} | "
        f"{med(t.all_done_s for t in r.raws):.3f} |"
    )
    seen = {p: med(t.phases_seen.get(p, 0) for t in r.agents) for p in ("downloading", "installing", "trial", "active")}
    lines += [
        "",
        "Phases seen in `reported` (agents per deploy, median): "
        + ", ".join(f"{p} {v:.0f}/{r.args.agents}" for p, v in seen.items())
        + ". The agent publishes `reported` at most once a second, so phases shorter than that are mostly not seen "
        "there; the events and the staging directory time them instead.",
    ]
    return lines


def cost_lines(r: Report) -> list[str]:
    def rows(per_delivery: list[list[tuple[float, float]]]) -> tuple[str, str, str]:
        each = [u + s for delivery in per_delivery for u, s in delivery]
        user = med(u for delivery in per_delivery for u, _ in delivery)
        system = med(s for delivery in per_delivery for _, s in delivery)
        total = med(sum(u + s for u, s in delivery) for delivery in per_delivery)
        return f"{med(each):.3f} / {max(each):.3f}", f"{user:.3f} / {system:.3f}", f"{total:.2f}"

    agent = rows([list(t.cpu_s.values()) for t in r.agents])
    raw = rows([t.cpu_s for t in r.raws])
    inst = r.install
    return [
        "### Cost per process",
        "",
        f"CPU seconds from `/proc/PID/stat` (counted in {1 / os.sysconf('SC_CLK_TCK'):.2f} s ticks), from the "
        "start of a delivery until it is complete (agents: until all report active, so a few idle worker ticks are "
        "included).",
        "",
        "| | per process, median / max | per process, user / system (medians) | all processes together "
        "(median per delivery) |",
        "|---|---|---|---|",
        f"| agent | {agent[0]} | {agent[1]} | {agent[2]} |",
        f"| raw subscriber | {raw[0]} | {raw[1]} | {raw[2]} |",
        "",
        "Memory (MiB, from /proc): "
        + "; ".join(f"{label} {m:.0f} (max {x:.0f})" for label, (m, x) in r.memory.items())
        + ".",
        "",
        f"What an agent does with the bytes once they are in, measured uncontended in the bench process on the same "
        f"bundle (median of 3, ms): `verify` {inst['verify']:.1f}, onnxruntime session {inst['session']:.1f}, health "
        f"samples {inst['health']:.1f}, bundle stored with fsync {inst['store']:.1f}, state saved with fsync "
        f"{inst['state']:.1f}; total {inst['all']:.1f}.",
    ]


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "mosquitto (version unknown)"
    first = out.splitlines()[0] if out else ""
    return first.replace(" is an MQTT v5.0/v3.1.1/v3.1 broker.", "").strip() or "mosquitto"


# ── main ───────────────────────────────────────────────────────────────────────────────


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=float, default=10.0, help="bundle size, MiB")
    parser.add_argument("--trial-seconds", type=float, default=1.0, help="the agents' --trial-seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per delivery")
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    parser.add_argument("--raw-subscriber", nargs=2, metavar=("BROKER", "ID"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_subscriber:
        return raw_subscriber(*args.raw_subscriber)
    started = time.monotonic()
    load_start = os.getloadavg()
    ort.set_default_logger_severity(3)  # the padding initializer is unused: onnxruntime warns about it
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-transfer-"))
    broker: Broker | None = None
    fleet: AgentFleet | None = None
    raw: RawFleet | None = None
    monitor: Monitor | None = None
    try:
        bundles = make_bundles(tmp, args.repeats, int(args.mib * 2**20))
        install = install_cost(bundles.paths[0].read_bytes(), bundles.trust, tmp)
        log(f"install cost (uncontended, ms): {install}")
        broker = Broker()
        broker.start()
        t_fleet = time.monotonic()
        # Every child is started before any thread of ours exists (preexec_fn and threads do not mix).
        fleet = AgentFleet(args.agents, tmp / "agents", broker.url, bundles.trust_path, args.trial_seconds)
        raw = RawFleet(args.agents, broker.url)
        raw.start_readers()
        monitor = Monitor(broker.url, Topics(DEFAULT_PREFIX))
        raw.wait_ready(60)
        mon = monitor
        if not mon.wait(lambda: sum(mon.online.get(d, False) for d in fleet.devices) == args.agents, 90):
            fleet.check_alive()
            raise RuntimeError("not every agent came online")
        settle([p.pid for p in fleet.procs.values()] + [p.pid for p in raw.procs])
        startup_s = time.monotonic() - t_fleet
        log(f"{args.agents} agents and {args.agents} raw subscribers up in {startup_s:.1f} s")
        rss0 = [memory_mib(p.pid)[0] for p in fleet.procs.values()]
        agents: list[AgentTrial] = []
        raws: list[RawTrial] = []
        orders: list[str] = []
        pids = [p.pid for p in fleet.procs.values()] + [p.pid for p in raw.procs]
        for i, path in enumerate(bundles.paths):
            repeat = i + 1
            data = path.read_bytes()
            agent_first = i % 2 == 0
            orders.append("agents first" if agent_first else "raw first")
            for which in ("agent", "raw") if agent_first else ("raw", "agent"):
                if which == "agent":
                    t = agent_trial(repeat, path, bundles, broker, fleet, monitor, args.timeout)
                    agents.append(t)
                    log(
                        f"repeat {repeat}: agents publish {t.publish_s:.3f} s, all installed "
                        f"{t.all_installed_s:.2f} s, all active {t.all_active_s:.2f} s"
                    )
                else:
                    w = raw_trial(repeat, data, broker, raw, args.timeout)
                    raws.append(w)
                    log(f"repeat {repeat}: raw publish {w.publish_s:.3f} s, all complete {w.all_done_s:.3f} s")
                settle(pids)
        mem_agents = [memory_mib(p.pid) for p in fleet.procs.values()]
        mem_raw = [memory_mib(p.pid) for p in raw.procs]
        memory = {
            "agent RSS before the first deploy": (med(rss0), max(rss0)),
            "agent RSS at the end": (med(m[0] for m in mem_agents), max(m[0] for m in mem_agents)),
            "agent peak RSS": (med(m[1] for m in mem_agents), max(m[1] for m in mem_agents)),
            "raw subscriber peak RSS": (med(m[1] for m in mem_raw), max(m[1] for m in mem_raw)),
        }
        report = Report(
            args,
            bundles,
            len(bundles.paths[0].read_bytes()),
            agents,
            raws,
            install,
            orders,
            startup_s,
            memory,
        )
    finally:
        if monitor is not None:
            monitor.close()
        if raw is not None:
            raw.close()
        if fleet is not None:
            fleet.close()
        if broker is not None:
            broker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report.load = (load_start, os.getloadavg())
    report.seconds = time.monotonic() - started
    write_section(SECTION, render(report), args.out)
    log(f"wrote the {SECTION} section of {args.out} in {report.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
