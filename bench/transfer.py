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
  staging directory can. The staging directory goes when the verified bundle is stored: the
  instant the agent holds verified bytes.
* **The four delivery-cost figures, as ratios in the same run.** CPU per agent from the start
  of ``deploy()`` to its staging directory going (sampled by the poller at that instant), to
  its ``lifecycle.trial`` event and to all active, against a raw subscriber's CPU for its
  delivery; CPU is the scheduler's nanosecond count per thread (``/proc/PID/task/*/schedstat``,
  summed), because ``/proc/PID/stat`` counts 10 ms ticks and a raw subscriber spends about
  two of them on a whole bundle. The time until the last agent holds verified bytes against
  the last raw subscriber complete. Peak RSS during each deploy: VmHWM reset just before
  (``clear_refs``), read after, against the RSS just before; the worst deploy counts (the first,
  usually: later ones reuse heap the allocator kept). ``edgekit-agent --help``: median of 10
  runs, with ``python -c pass`` for scale and what it imports (``-X importtime``).
* Three repeats; every figure quoted is the median over repeats (per-agent steps: median over
  agents and repeats, and the slowest agent). ``--skip-steps`` leaves out the in-process step
  table, which calls the agent's internals, to run the bench against older agent code.
* Where the cost goes inside one agent (profiles, instruction counts):
  ``bench/transfer_profile.py``; its findings are the notes at the end of the section.

Every process started here is stopped at the end (and is told to die with this one).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import hashlib
import json
import os
import queue
import shutil
import signal
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
from raw_subscriber import CONTROL as RAW_CONTROL

from device_agent.bundle import MODEL, verify
from device_agent.protocol import DEFAULT_PREFIX, Topics, TransferInfo
from device_agent.runtime import LoadedModel
from device_agent.slots import Slots
from device_agent.state import Persisted
from device_agent.transfer import Assembly, split
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


def cpu_exact(pid: int) -> float:
    """CPU seconds of a process to the nanosecond: the sum over its live threads of the time
    the scheduler ran them (``/proc/PID/task/TID/schedstat``). ``/proc/PID/stat`` counts in
    10 ms ticks, coarser than what a raw subscriber spends on a whole bundle; the agent's and
    the subscriber's threads live as long as the process, so none of their time is lost."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def reset_peak(pid: int) -> bool:
    """Reset a process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0), so that the peak
    read later is the peak since now; False when the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


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


# ── the raw subscribers ──────────────────────────────────────────────────────────────


class RawFleet:
    """The raw subscriber processes and what they print."""

    def __init__(self, n: int, broker_url: str) -> None:
        script = Path(__file__).resolve().with_name("raw_subscriber.py")
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(script), broker_url, f"s{i:02d}"],
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
        self.on_installed: Callable[[str], None] | None = None  # called with the device at its lifecycle.trial event
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
        hook = self.on_installed
        if hook is not None and leaf == "events" and doc.get("code") == "lifecycle.trial":
            hook(device)

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

    def __init__(self, dirs: dict[str, Path], sha: str, pids: dict[str, int]) -> None:
        self.paths = {d: s / "staging" / sha for d, s in dirs.items()}
        self.pids = pids
        self.appeared: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.cpu_gone: dict[str, float] = {}  # the agent's CPU seconds (cpu_exact) when its staging dir went
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
                    self.cpu_gone[d] = cpu_exact(self.pids[d])
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


STEP_NAMES = {
    "chunks": "every chunk hashed and copied into the one buffer (`Assembly.accept`)",
    "staged": "every chunk written to the staged file (`Slots.stage_chunk`)",
    "verify": "`verify` in place: whole-bundle SHA-256, signature, member SHA-256s",
    "store": "stored: staged file compared with the bytes, fsync, rename (`Slots.store_bundle`)",
    "load": "model copied out of the stored bundle by the kernel, onnxruntime session from that file",
    "health": "health samples run",
    "state": "state saved (temp file, fsync, rename, directory fsync)",
    "sha256": "for scale: SHA-256 of the whole bundle once",
    "bytes_session": "for scale: onnxruntime session from the model's bytes (how it loaded before)",
}


def install_cost(
    data: bytes, trust: Trust, folder: Path, chunk_size: int, runs_: int = 3
) -> dict[str, tuple[float, float]]:
    """What an agent does with a bundle's bytes, step by step as the agent does it, uncontended
    in this process: step -> (CPU ms of this thread, including the kernel's work for it; wall
    ms), medians of ``runs_``."""
    sha = hashlib.sha256(data).hexdigest()
    parts = split(data, chunk_size)
    info = TransferInfo("bench", 1, len(data), sha, chunk_size, tuple(hashlib.sha256(p).hexdigest() for p in parts))
    results = [_install_once(data, trust, Slots(folder / f"install-{i}"), info, parts) for i in range(runs_)]
    for i in range(runs_):
        shutil.rmtree(folder / f"install-{i}", ignore_errors=True)
    return {
        k: (statistics.median(r[k][0] for r in results), statistics.median(r[k][1] for r in results))
        for k in results[0]
    }


def _install_once(
    data: bytes, trust: Trust, slots: Slots, info: TransferInfo, parts: list[bytes]
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}

    def step(name: str, work: Callable[[], Any]) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        value = work()
        out[name] = (1000 * (time.thread_time() - cpu), 1000 * (time.perf_counter() - wall))
        return value

    sha, size = info.sha256, info.chunk_size
    slots.stage_transfer(sha, b"{}", len(data))
    chunks = [bytes(p) for p in parts]  # fresh objects, as paho hands them over
    assembly = Assembly(info)
    step("chunks", lambda: [assembly.accept(j, c) for j, c in enumerate(chunks)])
    step("staged", lambda: [slots.stage_chunk(sha, j * size, c) for j, c in enumerate(chunks)])
    chunks = []
    buffer = assembly.assemble()
    bundle = step("verify", lambda: verify(buffer, trust, now=time.time(), expect_sha256=sha, keep_model=False))
    step("store", lambda: slots.store_bundle(sha, buffer))
    buffer = bytearray()
    assert bundle.model_span is not None
    begin, end = bundle.model_span

    def load() -> LoadedModel:
        with slots.member_file(sha, (begin, end)) as path:
            return LoadedModel(bundle, model_path=path)

    model = step("load", load)
    step("health", model.health_check)
    step("state", lambda: slots.save(Persisted(active=bundle.ref)))
    step("sha256", lambda: hashlib.sha256(data).hexdigest())
    with_model = dataclasses.replace(bundle, files={**bundle.files, MODEL: data[begin:end]})
    step("bytes_session", lambda: LoadedModel(with_model))
    return out


@dataclass(frozen=True)
class HelpCost:
    """``edgekit-agent --help``: wall time, the interpreter's own start-up, and what it imports."""

    median_s: float
    runs: list[float]
    python_s: float  # `python -c pass`, the floor under any command
    imports: list[tuple[str, float]]  # (top-level package, cumulative import ms), heaviest first
    total_import_ms: float  # everything imported before --help is answered (-X importtime)


HEAVY = ("numpy", "onnxruntime", "paho", "cryptography", "click", "sqlite3", "zipfile", "json", "logging")


def help_cost(runs: int = 10) -> HelpCost:
    """Time ``edgekit-agent --help`` (median of ``runs``) and list the packages it imports on the
    way, from one ``python -X importtime`` run (which inflates times a little)."""
    exe = Path(sys.executable).with_name("edgekit-agent")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "device_agent.cli", "--help"]

    def wall(argv: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t

    wall(cmd)  # warm the page cache and the bytecode cache
    times = [wall(cmd) for _ in range(runs)]
    python_s = med(wall([sys.executable, "-c", "pass"]) for _ in range(runs))
    probe = "import sys; sys.argv = ['edgekit-agent', '--help']; from device_agent.cli import main; main()"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True, check=False
    ).stderr
    cumulative: dict[str, float] = {}
    total = 0.0
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            cum_us = float(parts[1])
        except ValueError:
            continue  # the header line
        name = parts[2].strip()
        if parts[2].startswith(" ") and not parts[2].startswith("  "):  # a top-level import
            total += cum_us / 1000
        top = name.split(".")[0]
        if top in HEAVY and name == top:
            cumulative[top] = max(cumulative.get(top, 0.0), cum_us / 1000)
    ranked = sorted(cumulative.items(), key=lambda kv: -kv[1])
    return HelpCost(med(times), times, python_s, ranked, total)


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
    # CPU seconds (cpu_exact) from the start of deploy() until: the staging dir went (the bundle
    # is verified and stored), the lifecycle.trial event arrived (installed), all were active.
    cpu_fetched: dict[str, float] = field(default_factory=dict)
    cpu_installed: dict[str, float] = field(default_factory=dict)
    cpu_active: dict[str, float] = field(default_factory=dict)
    rss_before: dict[str, float] = field(default_factory=dict)  # MiB, just before deploy()
    peak: dict[str, float] = field(default_factory=dict)  # MiB, VmHWM reset just before deploy()
    rss_after: dict[str, float] = field(default_factory=dict)  # MiB, once all were active
    broker_cpu: float = float("nan")  # mosquitto's CPU seconds from deploy() until all were active

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
    cpu_exact_s: list[float] = field(default_factory=list)  # per subscriber (cpu_exact)
    peak_over_rss: list[float] = field(default_factory=list)  # MiB: VmHWM during the delivery - RSS before
    broker_cpu: float = float("nan")  # mosquitto's CPU seconds from the first publish until all were complete

    @property
    def all_done_s(self) -> float:
        return max(self.done_s.values())


def agent_trial(
    repeat: int, path: Path, bundles: Bundles, broker: Broker, fleet: AgentFleet, monitor: Monitor, timeout: float
) -> AgentTrial:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    offset = time.time() - time.monotonic()  # agent wall-clock ts -> this host's monotonic clock
    pids = {d: p.pid for d, p in fleet.procs.items()}
    rss_before = {d: memory_mib(pid)[0] for d, pid in pids.items()}
    for pid in pids.values():
        reset_peak(pid)
    cpu0 = fleet.cpu()
    exact0 = {d: cpu_exact(pid) for d, pid in pids.items()}
    broker0 = cpu_exact(broker.proc.pid) if broker.proc else float("nan")
    installed: dict[str, float] = {}
    monitor.on_installed = lambda d: installed.setdefault(d, cpu_exact(pids[d]))
    with StagingPoller(fleet.state_dirs, sha, pids) as poller:
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
    exact1 = {d: cpu_exact(pid) for d, pid in pids.items()}
    broker1 = cpu_exact(broker.proc.pid) if broker.proc else float("nan")
    memory = {d: memory_mib(pid) for d, pid in pids.items()}
    monitor.on_installed = None
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
        cpu_fetched={d: c - exact0[d] for d, c in poller.cpu_gone.items()},
        cpu_installed={d: c - exact0[d] for d, c in installed.items()},
        cpu_active={d: exact1[d] - exact0[d] for d in fleet.devices},
        rss_before=rss_before,
        peak={d: m[1] for d, m in memory.items()},
        rss_after={d: m[0] for d, m in memory.items()},
        broker_cpu=broker1 - broker0,
    )


def raw_trial(repeat: int, data: bytes, broker: Broker, raw: RawFleet, timeout: float) -> RawTrial:
    pids = [p.pid for p in raw.procs]
    rss0 = [memory_mib(p)[0] for p in pids]
    for pid in pids:
        reset_peak(pid)
    cpu0 = [cpu_times(p) for p in pids]
    exact0 = [cpu_exact(p) for p in pids]
    broker0 = cpu_exact(broker.proc.pid) if broker.proc else float("nan")
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
    exact1 = [cpu_exact(p) for p in pids]
    broker1 = cpu_exact(broker.proc.pid) if broker.proc else float("nan")
    peaks = [memory_mib(p)[1] - r for p, r in zip(pids, rss0, strict=True)]
    cpu = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cpu0, cpu1, strict=True)]
    exact = [b - a for a, b in zip(exact0, exact1, strict=True)]
    return RawTrial(repeat, publish_s, {i: t - t0 for i, t in done.items()}, cpu, exact, peaks, broker1 - broker0)


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
    install: dict[str, tuple[float, float]]
    orders: list[str]
    startup_s: float
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (median, max) MiB
    load: tuple[Sequence[float], Sequence[float]] = ((), ())
    seconds: float = 0.0
    help: HelpCost | None = None


def per_repeat(values: Iterable[dict[str, float]]) -> float:
    """Median over repeats of the median over agents."""
    return med(med(v.values()) for v in values if v)


def targets(r: Report) -> list[str]:
    """The four figures of the delivery-cost targets, each as a ratio measured in this run."""
    a, w = r.agents, r.raws
    n = r.args.agents
    bundle_mib = r.bundle_size / 2**20
    raw_cpu = med(med(t.cpu_exact_s) for t in w)
    cpu_fetched = per_repeat(t.cpu_fetched for t in a)
    cpu_installed = per_repeat(t.cpu_installed for t in a)
    cpu_active = per_repeat(t.cpu_active for t in a)
    raw_all = med(t.all_done_s for t in w)
    fetched_all = med(max(t.steps["fetched"].values()) for t in a)
    # Per deploy, the median agent's peak above its RSS just before; the worst deploy counts (the
    # first one, usually: later ones reuse heap the allocator kept from the earlier ones).
    growth = [med(t.peak[d] - t.rss_before[d] for d in t.peak) for t in a]
    worst = max(range(len(a)), key=lambda i: growth[i])
    idle = med(a[worst].rss_before.values())
    lifetime = med(max(t.peak[d] for t in a) - a[0].rss_before[d] for d in a[0].rss_before)
    raw_growth = med(v for t in w for v in t.peak_over_rss)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "### Targets (issue: delivery cost on the device), as ratios in this run",
        "",
        "| figure | measured | ratio | target | |",
        "|---|---|---|---|---|",
        f"| CPU per agent, `deploy()` → verified bundle stored (staging dir removed), against a raw subscriber's "
        f"CPU for the same bytes | {cpu_fetched:.3f} s vs {raw_cpu:.4f} s | **{cpu_fetched / raw_cpu:.1f}×** | ≤ 3× "
        f"| {verdict(cpu_fetched <= 3 * raw_cpu)} |",
        f"| all {n} agents hold verified bytes (the last staging dir removed) against all {n} raw subscribers "
        f"complete | {fetched_all:.2f} s vs {raw_all:.3f} s | **{fetched_all / raw_all:.1f}×** | ≤ 3× "
        f"| {verdict(fetched_all <= 3 * raw_all)} |",
        f"| peak RSS during a deploy (VmHWM, reset just before) above the RSS just before (median agent, worst "
        f"deploy: v{a[worst].version}) | +{growth[worst]:.1f} MiB over {idle:.0f} MiB | "
        f"**{growth[worst] / bundle_mib:.1f}×** the bundle | ≤ 2× ({2 * bundle_mib:.0f} MiB) "
        f"| {verdict(growth[worst] <= 2 * bundle_mib)} |",
    ]
    if r.help is not None:
        h = r.help
        heavy = ", ".join(f"{name} {ms:.0f} ms" for name, ms in h.imports[:5])
        lines.append(
            f"| `edgekit-agent --help`, median of {len(h.runs)} (Python itself starts in {h.python_s:.3f} s) | "
            f"{h.median_s:.3f} s | — | ≤ 0.3 s | {verdict(h.median_s <= 0.3)} |"
        )
    lines += [
        "",
        f"Other CPU windows per agent (median over agents, then over repeats): to installed (`lifecycle.trial` "
        f"event: model loaded, health samples run, trial begun) {cpu_installed:.3f} s = "
        f"{cpu_installed / raw_cpu:.1f}× raw; to all {n} reported active (adds the trial wait and its idle ticks) "
        f"{cpu_active:.3f} s = {cpu_active / raw_cpu:.1f}× raw. Highest RSS of the run above the RSS before the "
        f"first deploy (median agent): +{lifetime:.0f} MiB = {lifetime / bundle_mib:.1f}× the bundle. A raw "
        f"subscriber's peak RSS rose {raw_growth:.1f} MiB over its RSS before a delivery. CPU is the scheduler's "
        "count per thread (`/proc/PID/task/*/schedstat`, nanoseconds), summed over the process.",
    ]
    if r.help is not None:
        lines += [
            "",
            f"`--help` imports before it answers (cumulative ms from one `python -X importtime` run, which inflates "
            f"a little; {r.help.total_import_ms:.0f} ms in all): {heavy}.",
        ]
    return lines


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
        *targets(r),
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
        f"| bytes only: all {n} hold the verified bundle, stored (staging dir removed) | "
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
    lines += ["", *breakdown(r), "", *cost_lines(r), "", notes()]
    return "\n".join(lines)


STEP_LABELS = {
    "desired": ("`deploy()` start → agent took the desired state", "first `reported` in phase downloading (`ts`)"),
    "staged": ("→ signed transfer document accepted", "staging directory appears"),
    "fetched": ("→ every chunk in, bundle verified and stored", "staging directory removed"),
    "trial": ("→ installed: model loaded, health samples run", "`lifecycle.trial` event (`ts`)"),
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
    lines = [
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
        f"mosquitto's own CPU per delivery (median over repeats): {med(t.broker_cpu for t in r.agents):.3f} s for the "
        f"agents' deploy (`deploy()` → all active), {med(t.broker_cpu for t in r.raws):.3f} s for the raw delivery.",
        "",
        "Memory (MiB, from /proc): "
        + "; ".join(f"{label} {m:.0f} (max {x:.0f})" for label, (m, x) in r.memory.items())
        + ". Per deploy (median over agents), RSS just before → peak during (VmHWM, reset just before) → RSS once "
        "all were active: "
        + "; ".join(
            f"v{t.version} {med(t.rss_before.values()):.0f} → {med(t.peak.values()):.0f} → "
            f"{med(t.rss_after.values()):.0f}"
            for t in r.agents
        )
        + ".",
    ]
    return lines + (steps_lines(inst) if inst else [])


def steps_lines(inst: dict[str, tuple[float, float]]) -> list[str]:
    return [
        "",
        "### What an agent does with a bundle, step by step",
        "",
        "The agent's own code run on this run's bundle, uncontended in the bench process (`install_cost`), median of "
        "3: CPU of the thread doing it (the kernel's work for it included) and wall time, in ms. The agent also "
        "spends, per bundle, what a raw subscriber spends on receiving it (paho, the same library and packets).",
        "",
        "| step | CPU ms | wall ms |",
        "|---|---|---|",
        *(f"| {STEP_NAMES[k]} | {cpu:.1f} | {wall:.1f} |" for k, (cpu, wall) in inst.items()),
        f"| all agent steps above (not the two for scale) | "
        f"{sum(c for k, (c, _) in inst.items() if k not in ('sha256', 'bytes_session')):.1f} | "
        f"{sum(w for k, (_, w) in inst.items() if k not in ('sha256', 'bytes_session')):.1f} |",
    ]


NOTES = """### Notes: where an agent's CPU, time and memory went, and what changed

Profiled with `bench/transfer_profile.py` (one agent and one raw subscriber on one broker; py-spy, perf and
callgrind) and the step table above, on 2026-12-02, on the agent as it was before the changes below and after
each of them. Static text: this script does not rerun the profiles. The machine was shared and busy (load
average 5-20 on 2 CPUs during these runs), so CPU seconds moved by ±30 % between identical runs; instruction
counts and memory did not.

- **CPU, before.** Per deploy an agent spent 0.10-0.15 s (quiet machine) against 0.016 s for a raw subscriber.
  A third of it was SHA-256: the bundle was hashed five times (each chunk against the transfer document, the
  assembled bytes against the desired state, the same bytes again inside `verify`, the model member inside
  `verify`, and the staged file once more before it was kept), about 10 ms each here (perf: libcrypto 32 % of
  the agent's samples). About 15 % was the kernel faulting in fresh pages for bundle-sized copies (the joined
  chunks, the model member sliced out of the bundle, onnxruntime's own copies of a model handed over as
  bytes). onnxruntime built its session from bytes in 14-22 ms. paho's receive path costs the agent what it
  costs the raw subscriber (its packet reader copies each payload several times; the subscriber is mostly
  that). The windowed pull sent one SUBSCRIBE and one UNSUBSCRIBE per chunk: about 150 extra MQTT packets per
  bundle, 14 M of the agent's 83 M instructions outside hashing and copying (callgrind). Not costs: the
  worker's 0.5 s tick (an idle agent uses 1 ms of CPU per second; a 1 s trial was committed 1.01 s after it
  began) and fsync's CPU (ten fsyncs per deploy, five atomic writes; they wait on the disk, on the worker
  thread, rather than burn CPU).
- **Time.** With 20 agents on 2 CPUs the fleet was CPU-bound: the time until all hold the bundle follows the
  sum of their CPU, so every CPU cut shows there too. The trial (`--trial-seconds`) is a wait, reported apart.
- **Memory, before.** The first deploy took an agent from 69 to 121 MiB (+52 MiB, 5.2× the bundle): the chunks
  (10 MiB) and their joined copy (10), the model member copied out by `verify` (10), and onnxruntime loading
  from bytes (+20 transient: its Python binding copies the bytes into a string, then into the parsed graph).
  After the install the session and the bundle object kept the model's bytes (10) for the model's life
  (`InferenceSession` holds the bytes it was given). RSS then climbed to 150 MiB over three deploys and stayed:
  glibc keeps freed bundle-sized blocks (with `MALLOC_MMAP_THRESHOLD_=4194304` in the agent's environment it
  stays near 80 MiB, for about 0.02-0.03 s more system CPU per deploy; not applied).
- **`--help`** took 0.29 s on a quiet machine (0.5-1.2 s under load) before the command line was rewritten:
  `device_agent/cli.py` imported `device_agent.mqtt` at module level, which imported numpy and onnxruntime
  (through the engine, drift and runtime modules), paho and the core, none needed to print help; with `Agent`
  and the input sources imported inside `main()` it took 0.145 s against 0.496 s in the same minute. The
  rewritten command line imports only click and the configuration before it answers: 0.20-0.23 s with the
  machine at load 15-19 (Python itself 0.08-0.10 s at that load), under 0.3 s whenever this script measured it.

Changes, each a commit, with its effect (instructions: callgrind, one deploy to active, agent; the raw
subscriber's delivery is 87 M, 74 M of them in `mem*`. Under callgrind OpenSSL cannot use the CPU's SHA
instructions, so one hashing pass of 10 MiB counts 293 M instructions but costs about 10 ms natively):

{changes}

In CPU seconds (20-agent runs of this script, medians; the agent's code swapped under the same script):
before the changes 0.20-0.22 s per agent to installed, after them 0.15-0.18 s (load 15-20); on the refactored
agent, without the changes 0.15-0.20 s (8.6-10.4× a raw subscriber to verified bytes), with them 0.10-0.12 s
(4.8-4.9×), and all 20 holding verified bytes at 2.7-3.9× the raw delivery instead of 4.4-6.8× (load 6-19,
two runs each, interleaved). The agent's system CPU fell from 0.13 to 0.045 s.

What is left, per 10 MiB bundle, uncontended (step table): three SHA-256 passes (≈ 30 ms: the chunks against
the signed transfer document, the bundle against the signed desired state, the model inside `verify`), paho's
receive path (as the raw subscriber), writing the staged file (≈ 5 ms), the staged-file comparison (≈ 5 ms),
the model copied to a file and loaded (≈ 20 ms with the copy; from bytes ≈ 15 ms but 20 MiB more at peak). So
≤ 3× a raw subscriber's CPU is out of reach while the bundle is hashed three times; two more steps would get
close: (1) verify from the staged file itself (an mmap) instead of a second copy in memory, which drops the
buffer (its copy, 10 MiB of RSS) and the comparison — the core then asks the adapter to verify the staged file
and hears back, and a failed chunk write must fail the transfer as `storage.failed`; (2) let the signed desired
state name the transfer document's hash, so the chunk hashes bind the bytes to what the deploy key approved and
the whole-bundle pass (10 ms) can go — a protocol change. Large initializers stored as ONNX external data at
known offsets of the bundle would let onnxruntime read them straight from the stored bundle (no model copy at
all) — a bundle-format change."""


CHANGES = (  # (change, agent instructions: total (OpenSSL / mem* / rest), peak RSS first deploy, RSS after 3)
    ("before", "1648 M (1465 / 99 / 83)", "+52 MiB (5.2×)", "150 MiB"),
    (
        "`verify` checks the desired SHA-256 itself; the core stops hashing the bytes separately",
        "1352 M (1172 / 99 / 80)",
        "+52",
        "150",
    ),
    (
        "storing compares the staged file with the verified bytes instead of hashing it again",
        "1072 M (879 / 110 / 83)",
        "+52",
        "151",
    ),
    (
        "chunks copied into one buffer as they arrive; `verify` reads any buffer in place",
        "1092 M (879 / 131 / 82)",
        "+43 (4.3×)",
        "143",
    ),
    (
        "the model is not copied out by `verify`; the bundle is stored first and the buffer freed; onnxruntime "
        "reads the model from a file the kernel copies out of the stored bundle",
        "1082 M (879 / 120 / 83)",
        "+18 (1.8×)",
        "108",
    ),
    (
        "the chunk pull refills half a window at a time (one SUBSCRIBE and one UNSUBSCRIBE for several chunks)",
        "1067 M (879 / 119 / 69)",
        "+19 (1.9×)",
        "108",
    ),
)


def notes() -> str:
    table = [
        "| change | agent instructions (OpenSSL / mem* / rest) | peak RSS, first deploy | RSS after 3 deploys |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in CHANGES),
    ]
    return NOTES.replace("{changes}", "\n".join(table))


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
    parser.add_argument(
        "--skip-steps",
        action="store_true",
        help="leave out the in-process step table (it calls the agent's internals: for runs against older agent code)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()
    ort.set_default_logger_severity(3)  # the padding initializer is unused: onnxruntime warns about it
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-transfer-"))
    broker: Broker | None = None
    fleet: AgentFleet | None = None
    raw: RawFleet | None = None
    monitor: Monitor | None = None
    try:
        help_ = help_cost()
        log(f"edgekit-agent --help: {help_.median_s:.3f} s (python itself {help_.python_s:.3f} s)")
        bundles = make_bundles(tmp, args.repeats, int(args.mib * 2**20))
        install = (
            {} if args.skip_steps else install_cost(bundles.paths[0].read_bytes(), bundles.trust, tmp, DEFAULT_CHUNK)
        )
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
            help=help_,
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
