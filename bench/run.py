"""Single-row inference latency of the device agent against the floor it is built on.

Run: ``.venv/bin/python bench/run.py`` (about a minute on 2 cores). It rewrites only
the ``inference`` section of ``BENCHMARKS.md`` (between ``<!-- inference:start -->`` and
``<!-- inference:end -->``); the other sections belong to other scripts.

What is compared, for each model family on each data set, and why it is built this way:

* Every model goes through the real pipeline: a throw-away workspace and key,
  ``edgekit.pipeline.train_run`` on a CSV, ``quantize_run`` (it decides whether a smaller form
  ships), ``edgekit.bundler.build``, then ``device_agent.bundle.verify`` → ``LoadedModel`` →
  ``InferenceEngine.activate``. The bytes timed are the bytes a device would serve.
* The engine runs as it does in the agent: rows are served on one thread with
  ``engine.serve(row)``, and a second thread stands in for the agent's worker, calling
  ``engine.tick()`` (drift accounting of the rows served since the last tick) and
  ``engine.stats()`` (the heartbeat numbers) every 0.5 s of wall time, scheduled from the start
  of each tick as ``device_agent.mqtt.Agent._run`` does. Drift accounting therefore no longer
  sits inside any ``serve`` call, but it still costs the input thread: the worker holds the GIL
  while it accounts, and a ``serve`` that overlaps a tick waits. That is what sets the agent's
  tail latency now, so it is measured on its own (below). Window reports go to a no-op
  callback here; in the agent they then go through the core and the SQLite outbox on the same
  worker thread, so the worker's share measured here is a lower bound.
* Four paths are timed on the same rows in the same process:
  (a) ``engine.serve(row)`` with the row as a Python list — the agent's whole hot path
      (lock, ``LoadedModel.predict_row``: validation, copy into the IO-bound input buffer,
      ``run_with_iobinding``, reading the probabilities; then counters and the pending-row
      append for the worker);
  (b) a bare ``InferenceSession.run(None, {name: x})`` on a prepared float32 (1, F) array —
      the onnxruntime floor, which no real caller reaches because rows do not arrive as arrays;
  (c) the same bare run plus ``np.array([row], dtype=np.float32)`` — the least any caller
      holding a Python list must do, so the fair yardstick for the agent's own overhead;
  (d) scikit-learn ``predict_proba`` on a float64 (1, F) array, with the fitted estimator the
      ONNX graph was converted from — what serving without conversion would cost. Its thread
      pools are limited to one thread (threadpoolctl), like the onnxruntime sessions.
  The bare session is built from the model bytes in the bundle with the session options read
  back from the agent's own session (thread counts, optimisation level, execution mode), so
  (a) and (b)/(c) differ only in the Python around onnxruntime.
* The machine is shared and noisy, so the paths are interleaved row by row (the order rotates
  each row, so none is always first after the cache-cold gap) over several rounds of many
  rows, and every figure is a percentile of per-call ``time.perf_counter_ns`` samples: p50
  and p99, never means; ratios are of medians measured in the same loop. scikit-learn is
  100-1000x slower, so it is timed on every Nth row of the same loop (still interleaved).
  Garbage collection stays on, as on a device. Because the worker thread runs during the
  interleaved loop, its stalls land on whichever path is running: p99 of (b)-(d) in that
  table is not a clean floor, which is another reason the agent's tail is measured apart.
* The agent's tail: a fresh engine serves rows back to back (the agent's ``--rate 0``) and then
  at a paced device-like rate, with the worker thread ticking; every ``serve`` is classified by
  whether it overlapped a tick, and each tick's duration and row count are recorded.
* ``predict_row`` is now one call, so the old per-step table is replaced by a short one that
  splits the gap between (a) and (b) with public APIs only: ``serve`` against
  ``LoadedModel.predict_row`` (the engine's share), and ``predict_row`` against a bare IO
  binding on the same model (the validation and result-building share).
* Start-to-first-prediction is timed in-process (libraries already imported): bytes →
  ``verify`` → ``LoadedModel`` → ``health_check`` → ``activate`` → first ``serve``.

Every number in the section comes from the run that wrote it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnxruntime as ort
from common import BENCHMARKS, log, machine, now_utc, versions, write_section
from sklearn.datasets import load_breast_cancer, load_wine
from threadpoolctl import threadpool_limits

from device_agent.bundle import MODEL, verify
from device_agent.engine import InferenceEngine
from device_agent.runtime import LoadedModel
from device_agent.trust import Trust
from edgekit import bundler, keys, pipeline, workspace
from edgekit.errors import ConversionError
from edgekit.quantize import LOSSLESS
from edgekit.train import TrainResult

SECTION = "inference"
REQUIRED_MODELS = ("logreg", "rf", "mlp")
OPTIONAL_MODELS = ("hgb",)  # skipped, with the reason, if it does not convert here
PATHS = ("agent", "bare", "bare_array")  # timed on every row; "sklearn" on every Nth
STEPS = ("serve", "predict_row", "iobind_row", "iobind", "run_proba", "run_all")
TARGET_RATIO = 1.5
TICK_S = 0.5  # AgentConfig.tick_interval_s: the worker's period
KEY = "bench"
Timer = Callable[[int], int]  # row index -> elapsed ns of one call


# ── data sets and models through the real pipeline ────────────────────────────────────


@dataclass(frozen=True)
class Dataset:
    name: str
    csv_path: Path
    rows: list[list[float]]  # every row of the data set, as a device receives it (JSON numbers)
    n_features: int


@dataclass
class Case:
    dataset: Dataset
    model: str
    shipped: str  # for the tables: what quantize_run chose, or "float"
    lossy: bool  # the shipped model may differ from the float one (int8, fp16)
    bundle_bytes: bytes
    trust: Trust
    loaded: LoadedModel
    engine: InferenceEngine
    bare: ort.InferenceSession
    estimator: Any  # the fitted scikit-learn pipeline the ONNX graph was converted from

    @property
    def label(self) -> str:
        return f"{self.model} / {self.dataset.name}"

    @property
    def output(self) -> str:
        spec = self.loaded.spec
        return str(spec.proba_output or spec.label_output)


def write_datasets(folder: Path) -> list[Dataset]:
    out = []
    for name, loader in (("breast_cancer", load_breast_cancer), ("wine", load_wine)):
        data = loader()
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
            for x, y in zip(data.data, data.target, strict=True):
                writer.writerow([*x.tolist(), int(y)])
        out.append(Dataset(name, path, data.data.tolist(), data.data.shape[1]))
    return out


@contextlib.contextmanager
def keep_estimator() -> Iterator[list[TrainResult]]:
    """``train_run`` keeps only the ONNX model; wrap the pipeline's ``train`` while it runs to
    keep the fitted estimator too, so (d) times the very model that was converted (retraining
    would cost as much again and only probably give the same model)."""
    original = pipeline.train
    captured: list[TrainResult] = []

    def wrapper(*args: Any, **kwargs: Any) -> TrainResult:
        result = original(*args, **kwargs)
        captured.append(result)
        return result

    pipeline.train = wrapper  # type: ignore[assignment]
    try:
        yield captured
    finally:
        pipeline.train = original  # type: ignore[assignment]


def bare_session(loaded: LoadedModel) -> ort.InferenceSession:
    """A second session on the bundle's model bytes, with the agent session's options."""
    agent = loaded.session.get_session_options()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = agent.intra_op_num_threads
    opts.inter_op_num_threads = agent.inter_op_num_threads
    opts.graph_optimization_level = agent.graph_optimization_level
    opts.execution_mode = agent.execution_mode
    opts.log_severity_level = agent.log_severity_level
    return ort.InferenceSession(loaded.bundle.files[MODEL], sess_options=opts, providers=loaded.session.get_providers())


def describe_shipped(record: dict[str, Any] | None) -> tuple[str, bool]:
    q = record or {}
    if not q.get("applied"):
        return "float (nothing gained)", False
    method = str(q.get("method"))
    ratio = q.get("size_after", 0) / max(q.get("size_before", 1), 1)
    lossy = any(part not in LOSSLESS for part in method.split("+"))
    return f"{method} ({ratio:.2f}× size)", lossy


def build_case(ws: workspace.Workspace, trust: Trust, dataset: Dataset, model: str) -> Case:
    with keep_estimator() as captured:
        run = pipeline.train_run(ws, dataset.csv_path, "label", model)
    if len(captured) != 1:
        raise RuntimeError(f"expected one training call in train_run, saw {len(captured)}")
    run, _ = pipeline.quantize_run(ws, run.id)
    shipped, lossy = describe_shipped(run.record.get("quantization"))
    built = bundler.build(ws, run.id, f"{dataset.name.replace('_', '-')}-{model}", KEY)
    data = built.path.read_bytes()
    loaded = LoadedModel(verify(data, trust, now=time.time()))
    loaded.health_check()
    engine = InferenceEngine(notify=lambda _event: None)
    engine.activate(loaded)
    return Case(
        dataset, model, shipped, lossy, data, trust, loaded, engine, bare_session(loaded), captured[0].estimator
    )


def build_cases(folder: Path, models: Sequence[str]) -> tuple[list[Case], list[str]]:
    ws = workspace.init(folder / "ws")
    keys.generate(ws, KEY)
    trust = keys.trust_file(ws, (KEY,))
    cases: list[Case] = []
    skipped: list[str] = []
    for dataset in write_datasets(folder):
        for model in models:
            started = time.perf_counter()
            try:
                cases.append(build_case(ws, trust, dataset, model))
            except ConversionError as exc:
                if model not in OPTIONAL_MODELS:
                    raise
                skipped.append(f"{model} / {dataset.name}: {exc}")
                log(f"skipped {model} / {dataset.name}: {exc}")
                continue
            log(f"built {model} / {dataset.name} in {time.perf_counter() - started:.1f} s")
    return cases, skipped


# ── the worker thread ──────────────────────────────────────────────────────────────────


class Ticker:
    """The agent's worker, as far as the engine sees it: on its own thread, every ``interval``
    seconds of wall time (the next tick is scheduled when one starts, like ``Agent._run``),
    ``engine.tick()`` then ``engine.stats()``. Records each tick's start and end
    (``perf_counter_ns``) and how many rows were served since the previous tick."""

    def __init__(self, engine: InferenceEngine, interval: float = TICK_S) -> None:
        self.engine = engine
        self.interval = interval
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.rows: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-worker", daemon=True)

    def _run(self) -> None:
        clock = time.perf_counter_ns
        next_tick = time.monotonic()
        served = self.engine.served
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            next_tick = time.monotonic() + self.interval
            t0 = clock()
            now_served = self.engine.served
            self.engine.tick()
            self.engine.stats()
            self.ends.append(clock())
            self.starts.append(t0)
            self.rows.append(now_served - served)
            served = now_served

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def overlapping(self, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Which calls [t0, t1] overlapped a tick (ticks never overlap each other)."""
        starts = np.asarray(self.starts, dtype=np.int64)
        ends = np.asarray(self.ends, dtype=np.int64)
        if not len(starts):
            return np.zeros(len(t0), dtype=bool)
        idx = np.searchsorted(starts, t1, side="right") - 1
        valid = idx >= 0
        out = np.zeros(len(t0), dtype=bool)
        out[valid] = ends[idx[valid]] >= t0[valid]
        return out


# ── timing ─────────────────────────────────────────────────────────────────────────────


@dataclass
class Samples:
    """Per-call nanoseconds, pooled over rounds, plus each round's own samples."""

    pooled: dict[str, list[int]] = field(default_factory=dict)
    rounds: list[dict[str, list[int]]] = field(default_factory=list)

    def add_round(self, samples: dict[str, list[int]]) -> None:
        self.rounds.append(samples)
        for path, values in samples.items():
            self.pooled.setdefault(path, []).extend(values)

    def pct_us(self, path: str, q: float) -> float:
        return float(np.percentile(self.pooled[path], q)) / 1000.0

    def round_ratio_range(self, num: str, den: str) -> tuple[float, float]:
        ratios = [float(np.median(r[num]) / np.median(r[den])) for r in self.rounds]
        return min(ratios), max(ratios)


def path_timers(case: Case) -> dict[str, Timer]:
    """One closure per path; each times exactly one call, nothing around it."""
    clock = time.perf_counter_ns
    serve = case.engine.serve
    run = case.bare.run
    name = case.loaded.spec.input_name
    predict_proba = case.estimator.predict_proba
    rows = case.dataset.rows
    x32 = [np.array([r], dtype=np.float32) for r in rows]
    x64 = [np.array([r], dtype=np.float64) for r in rows]
    f32 = np.float32
    array = np.array

    def agent(k: int) -> int:
        row = rows[k]
        t0 = clock()
        serve(row)
        return clock() - t0

    def bare(k: int) -> int:
        x = x32[k]
        t0 = clock()
        run(None, {name: x})
        return clock() - t0

    def bare_array(k: int) -> int:
        row = rows[k]
        t0 = clock()
        run(None, {name: array([row], dtype=f32)})
        return clock() - t0

    def sklearn(k: int) -> int:
        x = x64[k]
        t0 = clock()
        predict_proba(x)
        return clock() - t0

    return {"agent": agent, "bare": bare, "bare_array": bare_array, "sklearn": sklearn}


def step_timers(case: Case) -> dict[str, Timer]:
    """The gap between (a) and (b), split with public APIs: ``serve`` vs ``predict_row`` (the
    engine), ``predict_row`` vs a bare IO binding of the same model fed the same way (validation
    and building the ``Prediction``), the binding with and without copying the row in, and
    ``run`` asking for the probabilities only vs for every output."""
    clock = time.perf_counter_ns
    rows = case.dataset.rows
    serve = case.engine.serve
    predict_row = case.loaded.predict_row
    session = case.bare
    name = case.loaded.spec.input_name
    out_name = case.output
    x32 = [np.array([r], dtype=np.float32) for r in rows]
    buf = np.zeros((1, case.dataset.n_features), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(buf))
    binding.bind_output(out_name)
    run_bound = session.run_with_iobinding
    copy_out = binding.copy_outputs_to_cpu
    run = session.run

    def t_serve(k: int) -> int:
        row = rows[k]
        t0 = clock()
        serve(row)
        return clock() - t0

    def t_predict_row(k: int) -> int:
        row = rows[k]
        t0 = clock()
        predict_row(row)
        return clock() - t0

    def t_iobind_row(k: int) -> int:
        row = rows[k]
        t0 = clock()
        buf[0] = row
        run_bound(binding)
        copy_out()[0]
        return clock() - t0

    def t_iobind(k: int) -> int:
        buf[0] = rows[k]
        t0 = clock()
        run_bound(binding)
        copy_out()[0]
        return clock() - t0

    def t_run_proba(k: int) -> int:
        x = x32[k]
        t0 = clock()
        run([out_name], {name: x})
        return clock() - t0

    def t_run_all(k: int) -> int:
        x = x32[k]
        t0 = clock()
        run(None, {name: x})
        return clock() - t0

    return {
        "serve": t_serve,
        "predict_row": t_predict_row,
        "iobind_row": t_iobind_row,
        "iobind": t_iobind,
        "run_proba": t_run_proba,
        "run_all": t_run_all,
    }


def interleave(
    timers: dict[str, Timer], names: Sequence[str], n_rows: int, rounds: int, rows_per_round: int, every: dict[str, int]
) -> Samples:
    """Time ``names`` on the same rows, rotating their order each row; a name in ``every`` is
    timed only on every Nth row (after the others)."""
    orders = [tuple(names[i:]) + tuple(names[:i]) for i in range(len(names))]
    samples = Samples()
    for r in range(rounds):
        gc.collect()
        current: dict[str, list[int]] = {p: [] for p in (*names, *every)}
        for i in range(rows_per_round):
            k = (r * rows_per_round + i) % n_rows
            for p in orders[i % len(orders)]:
                current[p].append(timers[p](k))
            for p, n in every.items():
                if i % n == 0:
                    current[p].append(timers[p](k))
        samples.add_round(current)
    return samples


def warm_up(timers: dict[str, Timer], n_rows: int) -> None:
    for path, timer in timers.items():
        for k in range(5 if path == "sklearn" else 300):
            timer(k % n_rows)


def measure_latency(case: Case, rounds: int, rows_per_round: int, sklearn_every: int) -> Samples:
    timers = path_timers(case)
    n = len(case.dataset.rows)
    warm_up(timers, n)
    return interleave(timers, PATHS, n, rounds, rows_per_round, {"sklearn": sklearn_every})


def measure_steps(case: Case, rounds: int, rows_per_round: int) -> dict[str, float]:
    """p50 µs per step, interleaved like the main loop."""
    timers = step_timers(case)
    n = len(case.dataset.rows)
    warm_up(timers, n)
    samples = interleave(timers, STEPS, n, rounds, rows_per_round, {})
    return {step: samples.pct_us(step, 50) for step in STEPS}


def timer_floor_ns(n: int = 20000) -> float:
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(n):
        t0 = clock()
        gaps.append(clock() - t0)
    return float(np.median(gaps))


# ── the agent's tail: serve while the worker ticks ─────────────────────────────────────


@dataclass
class Tail:
    """``serve`` on a fresh engine with the worker ticking, each call classified by whether
    it overlapped a tick."""

    rate: float  # rows per second offered; 0 = back to back
    seconds: float
    lat: np.ndarray  # ns per call
    during: np.ndarray  # bool per call: overlapped a tick
    tick_ms: np.ndarray  # duration of each tick that accounted rows
    tick_rows: np.ndarray  # rows accounted by each of those ticks
    busy: float  # share of wall time the worker spent in ticks

    @property
    def rows_per_s(self) -> float:
        return len(self.lat) / self.seconds

    def p_us(self, q: float, which: str = "all") -> float:
        values = {"all": self.lat, "during": self.lat[self.during], "outside": self.lat[~self.during]}[which]
        return float(np.percentile(values, q)) / 1000.0 if len(values) else float("nan")


def measure_tail(case: Case, seconds: float, rate: float) -> Tail:
    """A freshly activated engine serving data-set rows for ``seconds`` — back to back when
    ``rate`` is 0, else paced to ``rate`` rows/s with ``time.sleep`` (which releases the GIL,
    as an input thread waiting for its next row does)."""
    engine = InferenceEngine(notify=lambda _event: None)
    engine.activate(case.loaded)
    rows = case.dataset.rows
    n = len(rows)
    clock = time.perf_counter_ns
    serve = engine.serve
    starts: list[int] = []
    ends: list[int] = []
    for k in range(200):  # warm caches; these rows are accounted by the first tick
        serve(rows[k % n])
    gc.collect()
    with Ticker(engine) as ticker:
        begin = time.perf_counter()
        deadline = begin + seconds
        i = 0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            if rate > 0:
                wait = begin + i / rate - now
                if wait > 0:
                    time.sleep(wait)
            row = rows[i % n]
            t0 = clock()
            serve(row)
            t1 = clock()
            starts.append(t0)
            ends.append(t1)
            i += 1
        elapsed = time.perf_counter() - begin
    t0a = np.asarray(starts, dtype=np.int64)
    t1a = np.asarray(ends, dtype=np.int64)
    durations = (np.asarray(ticker.ends) - np.asarray(ticker.starts)) / 1e6
    rows_acc = np.asarray(ticker.rows)
    working = rows_acc > 0
    return Tail(
        rate,
        elapsed,
        t1a - t0a,
        ticker.overlapping(t0a, t1a),
        durations[working],
        rows_acc[working],
        float(durations.sum() / 1000.0 / elapsed),
    )


# ── start-to-first-prediction ──────────────────────────────────────────────────────────


STARTUP_STEPS = ("verify", "load", "health", "first")


def startup_once(case: Case) -> dict[str, float]:
    clock = time.perf_counter
    t0 = clock()
    bundle = verify(case.bundle_bytes, case.trust, now=time.time())
    t1 = clock()
    loaded = LoadedModel(bundle)
    t2 = clock()
    loaded.health_check()
    t3 = clock()
    engine = InferenceEngine(notify=lambda _event: None)
    engine.activate(loaded)
    engine.serve(case.dataset.rows[0])
    t4 = clock()
    return {"verify": t1 - t0, "load": t2 - t1, "health": t3 - t2, "first": t4 - t3, "total": t4 - t0}


def measure_startup(case: Case, runs_: int) -> dict[str, float]:
    results = [startup_once(case) for _ in range(runs_)]
    return {k: float(np.median([r[k] for r in results])) * 1000.0 for k in (*STARTUP_STEPS, "total")}


# ── the report ─────────────────────────────────────────────────────────────────────────


@dataclass
class Result:
    case: Case
    latency: Samples
    steps: dict[str, float]
    tails: list[Tail]
    startup: dict[str, float]
    parity_dp: float
    parity_labels: float


def parity(case: Case) -> tuple[float, float]:
    """Agent vs scikit-learn on every row of the data set: max |Δp| and label agreement."""
    rows = case.dataset.rows
    agent = np.array([case.loaded.predict_row(r).probabilities for r in rows], dtype=np.float64)
    ref = case.estimator.predict_proba(np.asarray(rows, dtype=np.float64))
    agree = float(np.mean(agent.argmax(axis=1) == ref.argmax(axis=1)))
    return float(np.max(np.abs(agent - ref))), agree


def fmt(us: float) -> str:
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def intro(args: argparse.Namespace, floor_ns: float, load: tuple[Sequence[float], Sequence[float]]) -> list[str]:
    return [
        "## Single-row inference on the device agent",
        "",
        "Latency of one row through the device agent's inference path (`InferenceEngine.serve`, with the "
        "agent's worker thread calling `engine.tick()` every 0.5 s) against bare onnxruntime and scikit-learn, "
        "for models trained, converted, quantized where it pays, bundled, signed and verified by the real "
        "edgekit pipeline. How and why the comparison is built: docstring of `bench/run.py`.",
        "",
        "- Rerun: `make bench` or `.venv/bin/python bench/run.py` (rewrites only this section).",
        f"- Machine: {machine(*load)}.",
        f"- Versions: {versions(('numpy', 'onnxruntime', 'scikit-learn', 'skl2onnx', 'onnx'))}.",
        f"- Date: {now_utc()}.",
        f"- Protocol: {args.rounds} rounds × {args.rows:,} rows, paths (a)–(c) interleaved on every row in "
        f"rotating order, (d) on every {args.sklearn_every}th row of the same loop; p50 / p99 of per-call "
        "`time.perf_counter_ns` samples pooled over the rounds; ratios are of p50s from the same loop. "
        "onnxruntime sessions: 1 intra-op thread, 1 inter-op thread (read back from the agent's session). "
        "scikit-learn's OpenMP/BLAS pools: 1 thread (threadpoolctl). A second thread calls `engine.tick()` + "
        f"`engine.stats()` every {TICK_S} s throughout, as the agent's worker does. Timer floor (two "
        f"back-to-back `perf_counter_ns` calls): {floor_ns:.0f} ns, not subtracted.",
        "",
        "Paths: **(a)** `engine.serve(row)` with `row` a Python list (lock, validation, copy into the "
        "IO-bound input buffer, `run_with_iobinding`, the prediction, counters, the pending-row append for the "
        "worker); **(b)** `session.run(None, {name: x})` on a prepared float32 (1, F) array; **(c)** the same "
        "with `x = np.array([row], dtype=np.float32)` built in the timed call — the least any caller with a list "
        "must do; **(d)** scikit-learn `predict_proba` on a float64 (1, F) array, same fitted estimator. "
        "Times in µs. The worker thread's stalls hit whichever path is running, so p99 here is not a clean "
        "floor for any path: the agent's own tail is in *The agent's tail* below.",
        "",
    ]


def latency_table(results: list[Result]) -> list[str]:
    lines = [
        "| model | shipped model | (a) agent p50 / p99 | (b) bare run p50 / p99 | (c) bare + array p50 / p99 "
        "| (d) sklearn p50 / p99 | a/b p50 (per-round range) | a/c p50 (per-round range) | d/a p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.latency

        def cell(path: str, s: Samples = s) -> str:
            return f"{fmt(s.pct_us(path, 50))} / {fmt(s.pct_us(path, 99))}"

        a, b, c, d = (s.pct_us(p, 50) for p in ("agent", "bare", "bare_array", "sklearn"))
        lo_b, hi_b = s.round_ratio_range("agent", "bare")
        lo_c, hi_c = s.round_ratio_range("agent", "bare_array")
        lines.append(
            f"| {r.case.model} | {r.case.shipped} | {cell('agent')} | {cell('bare')} | {cell('bare_array')} "
            f"| {cell('sklearn')} | {a / b:.2f}× ({lo_b:.2f}–{hi_b:.2f}) | {a / c:.2f}× ({lo_c:.2f}–{hi_c:.2f}) "
            f"| {d / a:,.0f}× |"
        )
    return lines


def meets(ratio: float, spread: tuple[float, float]) -> str:
    """The ratio, with a third decimal when two would hide which side of the target it is on,
    and whether it meets the target; "borderline" when the rounds disagree."""
    shown = f"{ratio:.3f}×" if abs(ratio - TARGET_RATIO) < 0.005 else f"{ratio:.2f}×"
    result = "holds" if ratio <= TARGET_RATIO else "**does not hold**"
    if spread[0] <= TARGET_RATIO < spread[1]:
        result += f" (borderline: per-round {spread[0]:.2f}–{spread[1]:.2f}×)"
    return f"{shown} — {result}"


def verdict_lines(results: list[Result]) -> list[str]:
    def ratio(r: Result, den: str) -> float:
        return r.latency.pct_us("agent", 50) / r.latency.pct_us(den, 50)

    held_b = sum(ratio(r, "bare") <= TARGET_RATIO for r in results)
    held_c = sum(ratio(r, "bare_array") <= TARGET_RATIO for r in results)
    worst_b = max(ratio(r, "bare") for r in results)
    worst_c = max(ratio(r, "bare_array") for r in results)
    n = len(results)
    lines = [
        f'### Target: "agent path within {TARGET_RATIO}× of bare onnxruntime at p50"',
        "",
        f"- Against **(b)**, bare `run` on a prepared array: holds for {held_b} of {n} models "
        f"(worst {worst_b:.2f}×). " + ("It holds for every model." if held_b == n else "It does not hold for all."),
        f"- Against **(c)**, bare `run` + building the array from the list: holds for {held_c} of {n} models "
        f"(worst {worst_c:.2f}×). " + ("It holds for every model." if held_c == n else "It does not hold for all."),
        "",
    ]
    for r in results:
        lines.append(
            f"- {r.case.label}: vs (b) {meets(ratio(r, 'bare'), r.latency.round_ratio_range('agent', 'bare'))}; "
            f"vs (c) {meets(ratio(r, 'bare_array'), r.latency.round_ratio_range('agent', 'bare_array'))}."
        )
    return lines


def breakdown_table(results: list[Result]) -> list[str]:
    lines = [
        "### Where (a)'s time goes beyond `run` (p50, µs)",
        "",
        "Each call timed on its own, interleaved like above. *predict_row* = `LoadedModel.predict_row(row)` "
        "alone; *bound run + copy in* = a bare IO binding on the same model bytes: `buf[0] = row`, "
        "`run_with_iobinding`, `copy_outputs_to_cpu()[0]` — what `predict_row` does minus validation and the "
        "`Prediction`; *bound run* = the same with the row already in the buffer; *run (proba)* / *run (all)* "
        "= `session.run` on a prepared array fetching the probabilities / every output ((b)). *engine* = serve − "
        "predict_row (lock, clock reads, latency ring, counters, pending-row append); *checks + result* = "
        "predict_row − bound run + copy in. Differences of medians, so approximate.",
        "",
        "| model / data set | serve | predict_row | bound run + copy in | bound run | run (proba) | run (all) "
        "| engine | checks + result | copy in |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.steps
        lines.append(
            f"| {r.case.label} | {s['serve']:.2f} | {s['predict_row']:.2f} | {s['iobind_row']:.2f} "
            f"| {s['iobind']:.2f} | {s['run_proba']:.2f} | {s['run_all']:.2f} "
            f"| {s['serve'] - s['predict_row']:.2f} | {s['predict_row'] - s['iobind_row']:.2f} "
            f"| {s['iobind_row'] - s['iobind']:.2f} |"
        )
    return lines


def tail_table(results: list[Result], args: argparse.Namespace) -> list[str]:
    lines = [
        "### The agent's tail: `serve` while the worker ticks (µs)",
        "",
        f"A freshly activated engine serving the data set's rows for {args.tail_seconds:g} s, back to back "
        f"(*max*, like `--rate 0`) and paced at {args.paced_rate:,.0f} rows/s, while a second thread calls "
        f"`engine.tick()` + `engine.stats()` every {TICK_S} s. *during ticks* = calls that overlapped a tick "
        "(the worker held the GIL for part of the call); *tick* = duration of the ticks that accounted rows "
        "(drift histograms, sums and window reports for the rows served since the previous tick); *worker "
        "busy* = share of wall time spent in ticks. Window reports go to a no-op callback here (in the agent "
        "they also pass through the core and the SQLite outbox on the worker), so the worker's share is a "
        "lower bound.",
        "",
        "| model / data set | rate | rows/s | p50 | p99 | p99.9 | max | share of calls during ticks "
        "| p99 outside / during ticks | rows per tick | tick p50 / max ms | worker busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for t in r.tails:
            rate = "max" if t.rate == 0 else f"{t.rate:,.0f}/s"
            ticks = f"{np.median(t.tick_ms):.1f} / {np.max(t.tick_ms):.1f}" if len(t.tick_ms) else "—"
            lines.append(
                f"| {r.case.label} | {rate} | {t.rows_per_s:,.0f} | {fmt(t.p_us(50))} | {fmt(t.p_us(99))} "
                f"| {fmt(t.p_us(99.9))} | {fmt(float(t.lat.max()) / 1000)} | {t.during.mean():.2%} "
                f"| {fmt(t.p_us(99, 'outside'))} / {fmt(t.p_us(99, 'during'))} "
                f"| {np.median(t.tick_rows):,.0f} | {ticks} | {t.busy:.1%} |"
            )
    return lines


def startup_table(results: list[Result], runs_: int) -> list[str]:
    lines = [
        f"### Start to first prediction (median of {runs_}, ms)",
        "",
        "In-process, libraries already imported: bundle bytes → `verify` (signature, hashes) → `LoadedModel` "
        "(onnxruntime session, IO binding) → `health_check` (the bundle's health rows) → `activate` + first "
        "`serve`. Interpreter start and imports are not included.",
        "",
        "| model / data set | bundle KiB | verify | session | health check | activate + first row | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.startup
        lines.append(
            f"| {r.case.label} | {len(r.case.bundle_bytes) / 1024:,.1f} | {t['verify']:.2f} | {t['load']:.2f} "
            f"| {t['health']:.2f} | {t['first']:.2f} | {t['total']:.2f} |"
        )
    return lines


def sanity_table(results: list[Result]) -> list[str]:
    lines = [
        "### Sanity: the agent serves the model scikit-learn trained",
        "",
        "Every row of each data set through `LoadedModel.predict_row` vs the estimator's `predict_proba` "
        "(a lossy shipped model — int8, fp16 — is expected to move a little; a lossless one should not).",
        "",
        "| model / data set | shipped model | max abs dp | label agreement |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.case.label} | {r.case.shipped} | {r.parity_dp:.2e} | {r.parity_labels:.2%} |")
    return lines


def render(
    args: argparse.Namespace,
    results: list[Result],
    skipped: list[str],
    floor_ns: float,
    load: tuple[Sequence[float], Sequence[float]],
    seconds: float,
) -> str:
    lines = intro(args, floor_ns, load)
    for name in dict.fromkeys(r.case.dataset.name for r in results):
        group = [r for r in results if r.case.dataset.name == name]
        f = group[0].case.dataset.n_features
        lines += [f"### {name} ({f} features, {len(group[0].case.dataset.rows)} rows cycled)", ""]
        lines += [*latency_table(group), ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped), ""]
    lines += [*verdict_lines(results), ""]
    lines += [*breakdown_table(results), ""]
    lines += [*tail_table(results, args), ""]
    lines += [*startup_table(results, args.startup_runs), ""]
    lines += [*sanity_table(results), ""]
    lines += [f"This section took {seconds:.0f} s to produce."]
    return "\n".join(lines)


# ── main ───────────────────────────────────────────────────────────────────────────────


def evaluate(case: Case, args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    with Ticker(case.engine):
        latency = measure_latency(case, args.rounds, args.rows, args.sklearn_every)
        steps = measure_steps(case, args.step_rounds, args.rows)
    tails = [measure_tail(case, args.tail_seconds, rate) for rate in (0.0, args.paced_rate)]
    startup = measure_startup(case, args.startup_runs)
    dp, agree = parity(case)
    log(f"measured {case.label} in {time.perf_counter() - started:.1f} s")
    return Result(case, latency, steps, tails, startup, dp, agree)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of interleaved timing")
    parser.add_argument("--rows", type=int, default=2000, help="rows per round")
    parser.add_argument("--sklearn-every", type=int, default=10, help="time scikit-learn on every Nth row")
    parser.add_argument("--step-rounds", type=int, default=3, help="rounds for the breakdown of (a)")
    parser.add_argument("--tail-seconds", type=float, default=2.0, help="seconds per tail measurement")
    parser.add_argument("--paced-rate", type=float, default=1000.0, help="rows/s of the paced tail measurement")
    parser.add_argument("--startup-runs", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=[*REQUIRED_MODELS, *OPTIONAL_MODELS])
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()
    # One thread for scikit-learn's OpenMP / BLAS pools, as for the onnxruntime sessions: like for
    # like, and with its default (one thread per core) HistGradientBoosting's single-row predict
    # stalls for whole scheduler slices whenever another process holds a core of this machine.
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        cases, skipped = build_cases(Path(tmp), args.models)
        results = [evaluate(case, args) for case in cases]
        floor_ns = timer_floor_ns()
    text = render(args, results, skipped, floor_ns, (load_start, os.getloadavg()), time.perf_counter() - started)
    write_section(SECTION, text, args.out)
    log(f"wrote the {SECTION} section of {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
