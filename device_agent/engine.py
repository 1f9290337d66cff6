"""Serving rows in real time: validation, inference, counters, latency, drift accounting.

Called directly on the input thread — no queue, no event objects on the hot path. Drift
histograms are updated per batch of rows (amortised ``np.searchsorted``), not per row.
Model switches and time-based flushes come from the worker thread and take the same
lock, so a swap never lands between a row's validation and its accounting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bundle import REFERENCE
from .core import DriftReady, Event, RowRejected
from .drift import DriftWindow, Reference
from .errors import NoModel, ProtocolError, RowError
from .runtime import LoadedModel, Prediction

LATENCY_SAMPLES = 2048  # recent per-row latencies kept for percentiles


class InferenceEngine:
    def __init__(
        self,
        notify: Callable[[Event], None],
        *,
        batch_rows: int = 64,
        window_rows: int | None = None,
        min_rows: int = 30,
        flush_s: float = 60.0,
    ) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._batch_rows = batch_rows
        self._window_override = window_rows
        self._min_rows = min_rows
        self._flush_s = flush_s
        self.model: LoadedModel | None = None
        self._drift: DriftWindow | None = None
        self._window_rows = 0
        self._window_started = time.monotonic()
        self._buf = np.zeros((0, 0))
        self._labels = np.zeros(0, dtype=np.int64)
        self._conf = np.zeros(0)
        self._nbuf = 0
        self._latency = np.zeros(LATENCY_SAMPLES, dtype=np.float64)
        self._lat_n = 0
        self.served = 0
        self.rejected = 0
        self.low_confidence = 0
        self._low_conf_threshold = 0.0

    # ── model lifecycle (worker thread) ─────────────────────────────────────────────

    def activate(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next row on; the current drift window is reported first."""
        try:
            reference = Reference.from_json(model.bundle.json_file(REFERENCE))
        except ProtocolError as exc:
            raise ProtocolError(f"reference statistics are invalid: {exc.detail}") from None
        policy = model.bundle.manifest.get("policy") or {}
        window = self._window_override or int(policy.get("drift_window", 200))
        threshold = float(policy.get("low_confidence", 0.0))
        with self._lock:
            self._flush_locked(final=True)
            self.model = model
            self._low_conf_threshold = threshold
            self._drift = DriftWindow(reference, window=window, low_confidence=threshold)
            self._window_rows = window
            self._window_started = time.monotonic()
            f = model.n_features
            self._buf = np.zeros((self._batch_rows, f), dtype=np.float64)
            self._labels = np.zeros(self._batch_rows, dtype=np.int64)
            self._conf = np.zeros(self._batch_rows, dtype=np.float64)
            self._nbuf = 0

    def tick(self) -> None:
        """Report a partial drift window that has waited longer than ``flush_s``."""
        with self._lock:
            if self._drift is not None and time.monotonic() - self._window_started >= self._flush_s:
                self._flush_locked(final=True)

    def close(self) -> None:
        with self._lock:
            self._flush_locked(final=True)

    # ── the hot path (input thread) ─────────────────────────────────────────────────

    def reject(self, err: RowError) -> None:
        """Count and report a row that failed before it reached the model."""
        with self._lock:
            self.rejected += 1
        self._notify(RowRejected(err.code, err.detail))

    def serve(self, row: Sequence[Any]) -> Prediction:
        with self._lock:
            model = self.model
            if model is None:
                self.rejected += 1
                err: RowError = NoModel("no model is active yet; the row was not served")
                self._notify(RowRejected(err.code, err.detail))
                raise err
            t0 = time.perf_counter_ns()
            try:
                x = model.to_array(row)
                pred = model.predict_row_array(x)
            except RowError as exc:
                self.rejected += 1
                self._notify(RowRejected(exc.code, exc.detail))
                raise
            self._latency[self._lat_n % LATENCY_SAMPLES] = time.perf_counter_ns() - t0
            self._lat_n += 1
            self.served += 1
            i = self._nbuf
            self._buf[i] = x[0]
            self._labels[i] = pred.class_index
            self._conf[i] = pred.confidence
            self._nbuf = i + 1
            if pred.confidence < self._low_conf_threshold:
                self.low_confidence += 1
            if self._nbuf == self._batch_rows:
                self._flush_locked(final=False)
            return pred

    # ── drift accounting ────────────────────────────────────────────────────────────

    def _flush_locked(self, final: bool) -> None:
        drift, model = self._drift, self.model
        if drift is None or model is None:
            return
        n = self._nbuf
        if n:
            labels = self._labels[:n] if model.spec.task == "classification" else None
            conf = self._conf[:n] if model.spec.task == "classification" else None
            drift.update(self._buf[:n], labels, conf)
            self._nbuf = 0
        if drift.n >= self._window_rows or (final and drift.n > 0):
            report = drift.report(min_rows=self._min_rows)
            drift.reset()
            self._window_started = time.monotonic()
            bundle = {"name": model.bundle.name, "version": model.bundle.version}
            self._notify(DriftReady(bundle, report))
        elif final:
            self._window_started = time.monotonic()

    # ── numbers for the heartbeat (worker thread) ───────────────────────────────────

    def stats(self) -> dict[str, Any]:
        n = min(self._lat_n, LATENCY_SAMPLES)
        latency: dict[str, float] | None = None
        if n:
            p50, p90, p99 = np.percentile(self._latency[:n], [50, 90, 99]) / 1000.0
            latency = {"p50_us": round(float(p50), 1), "p90_us": round(float(p90), 1), "p99_us": round(float(p99), 1)}
        return {
            "counters": {"served": self.served, "rejected": self.rejected, "low_confidence": self.low_confidence},
            "latency": latency,
        }
