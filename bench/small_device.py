"""The agent as a small device runs it: a ~1 MiB model, 128 MiB of memory, one CPU.

Run: ``.venv/bin/python bench/small_device.py`` (two to three minutes on 2 cores). It rewrites
only the ``small-device`` section of ``BENCHMARKS.md``.

How it is built, and why:

* **The same agent, the same path as in the field.** A random forest on 16 sensor readings
  (about 1 MiB of ONNX) is trained, bundled and signed by the real pipeline
  (``tests/support/models.py``); a real ``edgekit-agent`` process pulls it over a mosquitto
  started here, verifies it, loads it, runs its health samples, serves it on trial (rows sent
  through the local API pass the trial) and commits it; then a second version replaces it (two
  models in memory during that trial); then the agent is restarted on its state directory.
* **Limits** (``tests/support/limits.py``): *unconstrained* for reference; *128 MiB cgroup, one
  CPU* — a cgroup memory limit counts what the process really keeps in RAM (anonymous memory and
  the page cache it brings in), which is what a device runs out of, and ``taskset`` pins it to
  one CPU; and an *address-space sweep* with ``prlimit --as`` (RLIMIT_AS), the limit people
  reach for first, which counts *virtual* memory: the smallest setting at which the agent still
  installs and serves is reported, next to its resident peak.
* **Figures per run**: start (spawn → the local API answers), desired → active for each version,
  restart with a bundle on disk → first prediction, peak resident memory (VmHWM, and how much of
  it is the process's own anonymous memory rather than shared library pages), the cgroup's
  charged peak where there is one, peak virtual size (VmPeak), CPU seconds for the whole run, idle
  CPU over 10 s, and rows/s on that one CPU for single rows and for a tensor batch. Runs repeat;
  the figures are medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section

if str(REPO) not in sys.path:  # tests/support is part of the checkout, not of the installed packages
    sys.path.insert(0, str(REPO))

from device_agent.client import AgentClient
from edgekit.fleet.deploy import Target
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.deploy import active_version, deploy
from tests.support.limits import Cage, cpu_seconds, proc_status, small_device
from tests.support.models import Shipped, sensors_rf

SECTION = "small-device"
MIB = 1 << 20
MEMORY = 128 * MIB
SWEEP_MIB = (192, 256, 320, 384, 512)


@dataclass
class Run:
    label: str
    ok: bool = True
    failure: str = ""
    figures: dict[str, float] = field(default_factory=dict)


class Unlimited:
    kind = "unconstrained"
    path = None
    cpu = None

    def command(self, argv: list[str]) -> list[str]:
        return argv

    def peak_bytes(self) -> int | None:
        return None

    def oom_kills(self) -> int:
        return 0

    def close(self) -> None:
        pass


def one_run(shipped: Shipped, broker: Broker, folder: Path, cage: Cage | Unlimited, label: str, timeout: float) -> Run:
    run = Run(label)
    name = f"d{os.getpid()}{int(time.monotonic() * 1000) % 100000}"
    state = folder / name / "state"
    extra = ("--input", "none", "--trial-rows", "300", "--trial-seconds", "600", "--heartbeat", "5")
    started = time.monotonic()
    agent = AgentProcess(name, broker.url, state, shipped.trust, extra=extra, wrap=cage.command)
    pid = agent.proc.pid
    rows = shipped.rows[:400]
    matrix = np.asarray(rows, dtype=np.float32)
    try:
        sock = str(state / "agent.sock")
        wait_until(lambda: os.path.exists(sock) or agent.proc.poll() is not None, timeout=timeout, what="socket")
        with AgentClient(sock, timeout=timeout) as app:
            app.health()
            run.figures["start_s"] = time.monotonic() - started
            for version, bundle in enumerate(shipped.bundles, start=1):
                t0 = time.monotonic()
                deploy(shipped.root, broker.url, bundle, shipped.name, Target(device=name))
                wait_until(
                    lambda v=version: app.health()["bundle"] == f"{shipped.name}@{v}",
                    timeout=timeout,
                    what=f"v{version} on trial",
                )
                app.predict_array(matrix)
                wait_until(lambda v=version: active_version(broker.url, name) == v, timeout=timeout, what="active")
                run.figures[f"install_v{version}_s"] = time.monotonic() - t0
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                app.predict(rows[n % len(rows)])
                n += 1
            run.figures["single_rows_s"] = n / (time.perf_counter() - t0)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                n += len(app.predict_array(matrix)["prediction"])
            run.figures["tensor_rows_s"] = n / (time.perf_counter() - t0)
            time.sleep(1.0)
            cpu0 = cpu_seconds(pid)
            time.sleep(10.0)
            run.figures["idle_cpu_pct"] = (cpu_seconds(pid) - cpu0) / 10.0 * 100
        mem = proc_status(pid)
        run.figures["vmhwm_mib"] = mem.get("VmHWM", 0) / MIB
        run.figures["anon_mib"] = mem.get("RssAnon", 0) / MIB
        run.figures["vmpeak_mib"] = mem.get("VmPeak", 0) / MIB
        run.figures["cpu_s"] = cpu_seconds(pid)
        peak = cage.peak_bytes()
        if peak is not None:
            run.figures["cgroup_peak_mib"] = peak / MIB
    except Exception as exc:
        run.ok = False
        lines = [ln for ln in agent.stderr().splitlines() if "ERROR" in ln or "Error" in ln or "WARNING" in ln]
        last = lines[-1] if lines else f"{type(exc).__name__}: {exc}"
        run.failure = re.sub(r"^\S+ \S+ \S+ (ERROR|WARNING) ", "", last)[-200:]  # the log line's time and logger
        code = agent.proc.poll()
        if code is not None:
            run.failure = f"exited with {code}: {run.failure}"
        return run
    finally:
        agent.stop()
    # Restart on the state directory: the bundle on disk, re-verified, serves the first row.
    t0 = time.monotonic()
    again = AgentProcess(name, broker.url, state, shipped.trust, extra=extra, wrap=cage.command)
    try:
        wait_until(lambda: os.path.exists(str(state / "agent.sock")), timeout=timeout, what="socket")
        with AgentClient(str(state / "agent.sock"), timeout=timeout) as app:
            answer = app.predict(rows[0])
            if "prediction" not in answer:
                raise RuntimeError(str(answer))
        run.figures["restart_first_answer_s"] = time.monotonic() - t0
    finally:
        again.stop()
    run.figures["oom_kills"] = cage.oom_kills()
    return run


def repeat(
    shipped: Shipped, broker: Broker, folder: Path, make: object, label: str, repeats: int, timeout: float
) -> tuple[str, list[Run]]:
    runs: list[Run] = []
    kind = ""
    for _ in range(repeats):
        cage = make() if callable(make) else make
        kind = cage.kind
        try:
            runs.append(one_run(shipped, broker, folder, cage, label, timeout))
        finally:
            cage.close()
        log(f"{label}: {'ok' if runs[-1].ok else 'FAILED ' + runs[-1].failure}")
    return kind, runs


def med(runs: list[Run], key: str) -> float:
    values = [r.figures[key] for r in runs if r.ok and key in r.figures]
    return statistics.median(values) if values else float("nan")


ROWS = (
    ("start_s", "start: spawn → the local API answers", "{:.2f} s"),
    (
        "install_v1_s",
        "first bundle: desired → active (pull, verify, load, health samples, trial, commit)",
        "{:.2f} s",
    ),
    ("install_v2_s", "upgrade: desired → active (both models in memory during its trial)", "{:.2f} s"),
    ("restart_first_answer_s", "restart with the bundle on disk → first prediction", "{:.2f} s"),
    ("vmhwm_mib", "peak resident memory, VmHWM (includes shared library pages)", "{:.0f} MiB"),
    ("anon_mib", "of which the process's own (RssAnon, at the end)", "{:.0f} MiB"),
    ("cgroup_peak_mib", "peak charged to the cgroup (pages this process brought in)", "{:.0f} MiB"),
    ("vmpeak_mib", "peak virtual size, VmPeak (what RLIMIT_AS counts)", "{:.0f} MiB"),
    ("cpu_s", "CPU time for all of the above", "{:.2f} s"),
    ("idle_cpu_pct", "idle CPU (heartbeat every 5 s)", "{:.2f} %"),
    ("single_rows_s", "single rows through the socket, one client", "{:,.0f} rows/s"),
    ("tensor_rows_s", "tensor batches of 400 rows through the socket", "{:,.0f} rows/s"),
)


def render(
    shipped: Shipped,
    results: list[tuple[str, str, list[Run]]],
    sweep: list[tuple[int, Run]],
    args: argparse.Namespace,
    load: tuple[Sequence[float], Sequence[float]],
) -> str:
    lines = [
        "## The agent on a small device",
        "",
        f"A ~1 MiB model ({shipped.model_bytes / 1024:,.0f} KiB random forest, 16 features) through a real "
        "`edgekit-agent` process and a real broker: two deployments, a restart, serving through the local API. "
        "How and why: docstring of `bench/small_device.py`; what it means for a device: "
        "[docs/small-devices.md](docs/small-devices.md).",
        "",
        "- Rerun: `.venv/bin/python bench/small_device.py` (rewrites only this section).",
        f"- Machine: {machine(*load)}.",
        f"- Versions: {versions(['numpy', 'onnxruntime', 'paho-mqtt', 'cryptography'])}.",
        f"- Date: {now_utc()}.",
        f"- Protocol: {args.repeats} runs per column, medians.",
        "",
        "| figure | " + " | ".join(f"{label} ({kind})" for label, kind, _ in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for key, what, form in ROWS:
        cells = []
        for _, _, runs in results:
            value = med(runs, key)
            cells.append("—" if value != value else form.format(value))
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    oom = [sum(int(r.figures.get("oom_kills", 0)) for r in runs) for _, _, runs in results]
    failed = [sum(not r.ok for r in runs) for _, _, runs in results]
    lines.append(
        "| runs failed / OOM kills | " + " | ".join(f"{f} / {o}" for f, o in zip(failed, oom, strict=True)) + " |"
    )
    lines += [
        "",
        "### An address-space limit (`prlimit --as`, one CPU) instead of a memory limit",
        "",
        "| RLIMIT_AS | installs and serves? | peak resident (VmHWM) | peak virtual (VmPeak) |",
        "|---|---|---|---|",
    ]
    for limit, run in sweep:
        verdict = "yes" if run.ok else f"no — {run.failure}"
        hwm = f"{run.figures['vmhwm_mib']:.0f} MiB" if "vmhwm_mib" in run.figures else "—"
        peak = f"{run.figures['vmpeak_mib']:.0f} MiB" if "vmpeak_mib" in run.figures else "—"
        lines.append(f"| {limit} MiB | {verdict} | {hwm} | {peak} |")
    working = [limit for limit, run in sweep if run.ok]
    lines += [
        "",
        f"The smallest address-space limit that worked was {min(working)} MiB, for a process whose resident peak "
        f"stayed near {hwm_of(sweep)}: RLIMIT_AS counts every mapping (the shared libraries of numpy and onnxruntime, "
        "thread stacks, allocator arenas) whether or not it is ever touched, so it cannot stand for a device's RAM. "
        "Use a cgroup (`MemoryMax=` in the systemd unit) to bound memory."
        if working
        else "No address-space limit in the sweep let the agent install and serve.",
    ]
    return "\n".join(lines) + "\n"


def hwm_of(sweep: list[tuple[int, Run]]) -> str:
    values = [run.figures["vmhwm_mib"] for _, run in sweep if run.ok and "vmhwm_mib" in run.figures]
    return f"{statistics.median(values):.0f} MiB" if values else "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step before calling it failed")
    p.add_argument("--out", type=Path, default=BENCHMARKS)
    p.add_argument("--print", action="store_true", help="print the section instead of writing it")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="ek-bench-small-"))
    try:
        log("training and bundling the ~1 MiB model")
        shipped = sensors_rf(folder / "model")
        broker = Broker()
        broker.start()
        try:
            results = []
            for label, make in (
                ("unconstrained", Unlimited()),
                ("128 MiB, 1 CPU", lambda: small_device(MEMORY, 512 * MIB)),
            ):
                kind, runs = repeat(shipped, broker, folder, make, label, args.repeats, args.timeout)
                results.append((label, kind, runs))
            sweep = []
            for limit in SWEEP_MIB:
                _, runs = repeat(
                    shipped,
                    broker,
                    folder,
                    lambda limit=limit: small_device(MEMORY, limit * MIB, prefer="rlimit"),
                    f"RLIMIT_AS {limit} MiB",
                    1,
                    min(args.timeout, 30.0),
                )
                sweep.append((limit, runs[0]))
        finally:
            with contextlib.suppress(Exception):
                broker.close()
        text = render(shipped, results, sweep, args, (load_start, os.getloadavg()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.print:
        print(text)
    else:
        write_section(SECTION, text, args.out)
        log(f"wrote the {SECTION} section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
