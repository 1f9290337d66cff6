"""The local inference API against bare onnxruntime, measured in the same run.

Run: ``.venv/bin/python bench/local_api.py`` (about three minutes on 2 cores). It rewrites only
the ``local-api`` section of ``BENCHMARKS.md``.

How it is built, and why:

* **A real agent, a real model.** Each model is trained, converted, bundled and signed by the
  real pipeline (``tests/support/models.py``), deployed over a mosquitto started here to a real
  ``edgekit-agent`` process (``--input none``), and called through its Unix socket — exactly
  what an application on the device does. Two models: wine / logistic regression (onnxruntime
  needs a few µs a row, so the API's own cost shows) and a ~1 MiB random forest on 16 sensor
  readings (the model costs more than the API).
* **The baseline is bare onnxruntime in this process**: a session on the bundle's
  ``model.onnx`` with the agent session's options (one intra-op and one inter-op thread),
  asked for the probabilities only. (b) runs on a prepared float32 array; (c) builds that array
  from the Python list first — the least any caller holding a row must do.
* **Single rows**: the Python client's ``predict(row)`` round trip (encode, send, the agent's
  read, parse, validation, inference, counters, answer; the client's read and parse) is timed
  interleaved with (b) and (c), row by row in rotating order, over several rounds; p50 and p99
  of per-call ``perf_counter_ns``. The target is p50 ≤ bare (b) + 50 µs.
* **Batches of 1,024 rows**: ``predict_many`` (JSON), ``predict_array`` (raw rows, JSON
  columns back) and ``predict_tensor`` (raw bytes both ways) against one bare ``run`` on the
  same 1,024 rows, interleaved, median over repeats; rows/s = 1,024 / median time. The target
  (≥ 0.9× bare) is judged on ``predict_tensor``, the form meant for many rows.
  The client's own JSON work (encoding the request, parsing the answer) is timed apart, to
  show where the difference goes.
* **Concurrent clients**: 1, 4 and 16 client *processes* (each an application with its own
  connection) call single rows — and batches of 64 — for a fixed time after a common start;
  total rows/s. The bare figure is one process calling (c) for the same time. With 2 CPUs the
  clients and the agent share the machine, which is what a device's applications do too.

Every number in the section comes from the run that wrote it; the load average before and
after is recorded, because the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section

if str(REPO) not in sys.path:  # tests/support is part of the checkout, not of the installed packages
    sys.path.insert(0, str(REPO))

from device_agent import local_api
from device_agent.client import AgentClient
from edgekit.fleet.deploy import Target
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.deploy import active_version, deploy
from tests.support.models import Shipped, sensors_rf, wine

SECTION = "local-api"
SINGLE_TARGET_US = 50.0
BATCH_TARGET = 0.9
BATCH_ROWS = 1024


def bare_session(bundle: Path) -> tuple[ort.InferenceSession, str, str]:
    """The bundle's model with the agent's session options: (session, input name, output name)."""
    with zipfile.ZipFile(bundle) as z:
        model = z.read("model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name, "probabilities"


@dataclass
class Case:
    label: str
    shipped: Shipped
    rows: list[list[float]]
    session: ort.InferenceSession
    input: str
    output: str


@dataclass
class Result:
    label: str
    model_kib: float
    n_features: int
    single: dict[str, list[float]] = field(default_factory=dict)  # path -> per-call µs
    batch: dict[str, list[float]] = field(default_factory=dict)  # path -> per-batch µs
    client_json_us: float = 0.0  # the client's encode + parse of one batch, median
    concurrent: dict[tuple[str, int], float] = field(default_factory=dict)  # (kind, clients) -> rows/s
    bare_rows_s: float = 0.0  # one process, path (c), single rows
    bare_batch64_rows_s: float = 0.0


# ── timing helpers ─────────────────────────────────────────────────────────────────────


def timed(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - t0) / 1000.0


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_single(case: Case, app: AgentClient, rounds: int, n: int) -> dict[str, list[float]]:
    session, name, out = case.session, case.input, [case.output]
    prepared = [np.asarray([r], dtype=np.float32) for r in case.rows]
    paths: dict[str, Callable[[int], Any]] = {
        "socket": lambda i: app.predict(case.rows[i]),
        "bare": lambda i: session.run(out, {name: prepared[i]}),
        "bare_array": lambda i: session.run(out, {name: np.array([case.rows[i]], dtype=np.float32)}),
    }
    samples: dict[str, list[float]] = {p: [] for p in paths}
    order = list(paths)
    for i in range(200):  # warm up
        for p in order:
            paths[p](i % len(case.rows))
    for _ in range(rounds):
        for k in range(n):
            i = k % len(case.rows)
            order = order[1:] + order[:1]
            for p in order:
                samples[p].append(timed(lambda p=p, i=i: paths[p](i)))
    return samples


def measure_batch(case: Case, app: AgentClient, repeats: int) -> tuple[dict[str, list[float]], float]:
    rows = [case.rows[i % len(case.rows)] for i in range(BATCH_ROWS)]
    prepared = np.asarray(rows, dtype=np.float32)
    session, name, out = case.session, case.input, [case.output]
    paths: dict[str, Callable[[], Any]] = {
        "socket": lambda: app.predict_many(rows),
        "tensor": lambda: app.predict_array(prepared),
        "binary": lambda: app.predict_tensor(prepared),
        "bare": lambda: session.run(out, {name: prepared}),
        "bare_array": lambda: session.run(out, {name: np.array(rows, dtype=np.float32)}),
    }
    samples: dict[str, list[float]] = {p: [] for p in paths}
    order = list(paths)
    for p in order:
        paths[p]()
    answer = local_api.encode(local_api.batch_answer(None, app.predict_many(rows)))
    json_us: list[float] = []
    for _ in range(repeats):
        order = order[1:] + order[:1]
        for p in order:
            samples[p].append(timed(paths[p]))
        json_us.append(timed(lambda: local_api.batch_request(rows)) + timed(lambda: json.loads(answer)))
    return samples, statistics.median(json_us)


CLIENT = """
import json, sys, time
from device_agent.client import AgentClient
sock, batch, rows = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
count, i = 0, 0
with AgentClient(sock, timeout=120) as app:
    app.health()
    print("ready", flush=True)
    start_at, stop_at = map(float, sys.stdin.readline().split())
    while time.time() < start_at:
        pass
    while time.time() < stop_at:
        if batch == 1:
            app.predict(rows[i % len(rows)])
            count += 1
        else:
            count += len(app.predict_many([rows[(i + j) % len(rows)] for j in range(batch)]))
        i += 1
print(count, flush=True)
"""


def measure_concurrent(case: Case, sock: str, clients: int, batch: int, seconds: float, folder: Path) -> float:
    """``clients`` separate processes, each connected and ready before a common start time."""
    rows_file = folder / "rows.json"
    rows_file.write_text(json.dumps(case.rows))
    args = [sys.executable, "-c", CLIENT, sock, str(batch), str(rows_file)]
    procs = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(clients)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        start_at = time.time() + 0.3
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start_at} {start_at + seconds}\n")
            p.stdin.flush()
        total = 0
        for p in procs:
            assert p.stdout is not None
            total += int(p.stdout.readline())
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(60)
    return total / seconds


def measure_bare_rate(case: Case, seconds: float, batch: int) -> float:
    session, name, out = case.session, case.input, [case.output]
    count, i = 0, 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        if batch == 1:
            session.run(out, {name: np.array([case.rows[i % len(case.rows)]], dtype=np.float32)})
            count += 1
        else:
            chunk = [case.rows[(i + j) % len(case.rows)] for j in range(batch)]
            session.run(out, {name: np.array(chunk, dtype=np.float32)})
            count += batch
        i += 1
    return count / seconds


# ── one model ──────────────────────────────────────────────────────────────────────────


def evaluate(case: Case, broker: Broker, folder: Path, args: argparse.Namespace) -> Result:
    state = folder / case.shipped.name / "state"
    agent = AgentProcess(case.shipped.name, broker.url, state, case.shipped.trust, extra=("--input", "none"))
    sock = str(state / "agent.sock")
    result = Result(case.label, case.shipped.model_bytes / 1024, case.shipped.n_features)
    try:
        deploy(
            case.shipped.root, broker.url, case.shipped.bundles[0], case.shipped.name, Target(device=case.shipped.name)
        )
        wait_until(lambda: active_version(broker.url, case.shipped.name) == 1, timeout=120, what="active")
        with AgentClient(sock) as app:
            log(f"{case.label}: single rows")
            result.single = measure_single(case, app, args.rounds, args.rows)
            log(f"{case.label}: batches of {BATCH_ROWS}")
            result.batch, result.client_json_us = measure_batch(case, app, args.repeats)
        result.bare_rows_s = measure_bare_rate(case, args.seconds, 1)
        result.bare_batch64_rows_s = measure_bare_rate(case, args.seconds, 64)
        for batch in (1, 64):
            for clients in (1, 4, 16):
                log(f"{case.label}: {clients} client(s), batch {batch}")
                result.concurrent[("batch" if batch > 1 else "single", clients)] = measure_concurrent(
                    case, sock, clients, batch, args.seconds, folder
                )
    finally:
        agent.stop()
    return result


# ── the report ─────────────────────────────────────────────────────────────────────────


def ms_rate(us: float) -> str:
    return f"{us / 1000:.2f} ({fmt(BATCH_ROWS / us * 1e6)})"


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def render(results: list[Result], args: argparse.Namespace, load: tuple[Sequence[float], Sequence[float]]) -> str:
    lines = [
        "## The local inference API against bare onnxruntime",
        "",
        "An application on the device calls a real `edgekit-agent` process through its Unix socket with the "
        "standard-library client (`device_agent.client.AgentClient`); the baseline is bare onnxruntime in the "
        "calling process, on the same model bytes with the agent's session options, measured in the same run. "
        "How and why: docstring of `bench/local_api.py`.",
        "",
        "- Rerun: `.venv/bin/python bench/local_api.py` (rewrites only this section).",
        f"- Machine: {machine(*load)}.",
        f"- Versions: {versions(['numpy', 'onnxruntime', 'paho-mqtt'])}.",
        f"- Date: {now_utc()}.",
        f"- Protocol: single rows {args.rounds} rounds × {args.rows:,} rows, the three paths interleaved row by row "
        f"in rotating order; batches of {BATCH_ROWS:,} rows {args.repeats} repeats interleaved; concurrent clients "
        f"{args.seconds:.0f} s per level, each client a separate process with its own connection. "
        "(b) bare `run` on a prepared float32 array; (c) the same with the array built from the row's list. "
        "Times in µs.",
        "",
        "### One row per request",
        "",
        "| model | socket p50 / p99 | (b) bare p50 / p99 | (c) bare + array p50 / p99 | socket − (b) p50 | "
        f"target ≤ +{SINGLE_TARGET_US:.0f} µs |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s, b, c = (r.single[p] for p in ("socket", "bare", "bare_array"))
        gap = pct(s, 50) - pct(b, 50)
        lines.append(
            f"| {r.label} | {fmt(pct(s, 50))} / {fmt(pct(s, 99))} | {fmt(pct(b, 50))} / {fmt(pct(b, 99))} | "
            f"{fmt(pct(c, 50))} / {fmt(pct(c, 99))} | +{gap:.1f} | {'met' if gap <= SINGLE_TARGET_US else 'missed'} |"
        )
    lines += [
        "",
        f"### A batch of {BATCH_ROWS:,} rows in one request",
        "",
        "JSON: `predict_many(rows)`, rows and answers as JSON text. Tensor: `predict_array(matrix)`, the rows as "
        "raw float32 bytes after a JSON header line, answers as JSON columns. Binary: `predict_tensor(matrix)`, "
        "raw bytes both ways.",
        "",
        "| model | JSON ms (rows/s) | tensor ms (rows/s) | binary ms (rows/s) | (b) bare ms (rows/s) | "
        f"(c) bare + array ms (rows/s) | JSON ÷ (b) | tensor ÷ (b) | binary ÷ (b) | target ≥ {BATCH_TARGET}× | "
        "client's JSON ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, t, y, b, c = (statistics.median(r.batch[p]) for p in ("socket", "tensor", "binary", "bare", "bare_array"))
        lines.append(
            f"| {r.label} | {ms_rate(s)} | {ms_rate(t)} | {ms_rate(y)} | {ms_rate(b)} | {ms_rate(c)} | {b / s:.2f}× | "
            f"{b / t:.2f}× | {b / y:.2f}× | {'met' if b / y >= BATCH_TARGET else 'missed'} (binary) | "
            f"{r.client_json_us / 1000:.2f} |"
        )
    lines += [
        "",
        "### Concurrent clients (rows/s, all clients together)",
        "",
        "| model | bare (c), 1 process | 1 client | 4 clients | 16 clients | bare, batches of 64 | "
        "1 client × 64 | 4 clients × 64 | 16 clients × 64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        single = " | ".join(fmt(r.concurrent[("single", n)]) for n in (1, 4, 16))
        batch = " | ".join(fmt(r.concurrent[("batch", n)]) for n in (1, 4, 16))
        lines.append(f"| {r.label} | {fmt(r.bare_rows_s)} | {single} | {fmt(r.bare_batch64_rows_s)} | {batch} |")
    lines += ["", *verdict(results)]
    return "\n".join(lines) + "\n"


def verdict(results: list[Result]) -> list[str]:
    out = ["### What the figures say", ""]
    for r in results:
        gap = pct(r.single["socket"], 50) - pct(r.single["bare"], 50)
        bare = statistics.median(r.batch["bare"])
        json_ratio = bare / statistics.median(r.batch["socket"])
        tensor_ratio = bare / statistics.median(r.batch["tensor"])
        binary_ratio = bare / statistics.median(r.batch["binary"])
        json_share = r.client_json_us / statistics.median(r.batch["socket"])
        out.append(
            f"- **{r.label}** ({r.model_kib:,.0f} KiB model, {r.n_features} features): a row over the socket costs "
            f"{gap:.0f} µs more than bare onnxruntime ({'within' if gap <= SINGLE_TARGET_US else 'beyond'} the "
            f"{SINGLE_TARGET_US:.0f} µs target). A batch of {BATCH_ROWS:,} as raw bytes both ways reaches "
            f"{binary_ratio:.2f}× bare rows/s ({'meets' if binary_ratio >= BATCH_TARGET else 'misses'} "
            f"{BATCH_TARGET}×), {tensor_ratio:.2f}× with the answers as JSON columns; as JSON "
            f"{json_ratio:.2f}×, of which the client's own JSON (writing {BATCH_ROWS:,} rows, reading "
            f"{BATCH_ROWS:,} answers) is {json_share:.0%} of the round trip."
        )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=BENCHMARKS)
    p.add_argument("--print", action="store_true", help="print the section instead of writing it")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ek-bench-api-") as tmp:
        folder = Path(tmp)
        log("training and bundling the models")
        cases = []
        for label, shipped in (
            ("wine / logreg", wine(folder / "wine")),
            ("sensors / rf (~1 MiB)", sensors_rf(folder / "sensors")),
        ):
            session, name, output = bare_session(shipped.bundles[0])
            cases.append(Case(label, shipped, shipped.rows[:400], session, name, output))
        broker = Broker()
        broker.start()
        try:
            results = [evaluate(case, broker, folder, args) for case in cases]
        finally:
            with contextlib.suppress(Exception):
                broker.close()
    text = render(results, args, (load_start, os.getloadavg()))
    if args.print:
        print(text)
    else:
        write_section(SECTION, text, args.out)
        log(f"wrote the {SECTION} section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
