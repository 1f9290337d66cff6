"""Serving rows in real time: validation, inference, counters, latency — and drift, later.

``serve`` runs on the input thread and does only what a row needs: validate, infer,
count, and append the row's model inputs to a pending list (a few nanoseconds). Drift accounting —
histograms, Welford sums, window reports — runs on the worker thread in ``tick``, which
takes the pending rows in one swap under the lock. So drift never sits on a row's
latency, and windows hold exactly the configured number of rows, which is what the
thresholds shipped in the bundle were calibrated for.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bundle import REFERENCE
from .capture import LOW, UNIFORM, CapturePolicy, record
from .config import CaptureSettings, EngineSettings
from .drift import DriftWindow, Reference
from .errors import InferenceFailed, NoModel, ProtocolError, RowError, TrialFailed
from .events import DriftReady, Event, RowRejected, TrialDone
from .protocol import Latency, Progress, SampleRow, Stats
from .runtime import Columns, LoadedModel, Prediction
from .trial import TrialReport


class _Window:
    """Drift state of one active model: its reference, the open window, categorical codes."""

    def __init__(self, model: LoadedModel, reference: Reference, rows: int, low_confidence: float) -> None:
        self.model = model
        self.rows = rows
        self.drift = DriftWindow(reference, window=rows, low_confidence=low_confidence)
        self.codes = reference.category_codes()
        self.started = time.monotonic()
        self.bundle = model.bundle.ref
        self.low_confidence = low_confidence

    def matrix(self, rows: list[Sequence[Any]]) -> np.ndarray:
        """Raw rows as one float matrix; categorical values become their reference codes."""
        if not any(self.codes):
            return np.array(rows, dtype=np.float64)  # None becomes NaN
        out = np.empty((len(rows), len(self.codes)), dtype=np.float64)
        for j, codes in enumerate(self.codes):
            if codes is None:
                out[:, j] = np.array([r[j] for r in rows], dtype=np.float64)
            else:
                other = float(len(codes))
                out[:, j] = [math.nan if r[j] is None else codes.get(r[j], other) for r in rows]
        return out


class _Trial:
    """A new model serving its first live rows, with the old one kept to fall back to."""

    def __init__(self, sha256: str, rows: int, max_s: float, fallback: tuple[LoadedModel | None, _Window | None]):
        self.sha256 = sha256
        self.rows = rows
        self.deadline = time.monotonic() + max_s
        self.fallback = fallback
        self.ok = 0
        self.rejected = 0  # rows the new model could not answer (any row error but "no model")
        self.decided = False
        self.latency_from = 0  # where its rows start in the engine's latency ring
        self.base_rows = 0  # the replaced model's rows since it started serving
        self.base_rejected = 0
        self.base_latency_s: float | None = None


class _DriftBudget:
    """How many served rows the drift windows take. A window is a statistical sample: past a
    few thousand rows a second, accounting every row costs the device more CPU than serving
    them (drift statistics are ~7 µs a row against ~0.1 µs of inference in a tensor batch) and
    floods the broker with windows. A token bucket admits up to ``rate`` rows a second; a batch
    beyond it contributes rows spread evenly through it, so the sample does not depend on a
    row's place or content."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: int) -> int:
        """Rows of ``n`` admitted now (all of them when there is no budget)."""
        if self.rate <= 0:
            return n
        self._refill()
        k = min(n, int(self._tokens))
        self._tokens -= k
        return k

    def spread(self, n: int) -> np.ndarray | None:
        """Which of a batch's rows go to drift (a mask), evenly spread; None when all do."""
        k = self.take(n)
        if k >= n:
            return None
        mask = np.zeros(n, dtype=bool)
        if k:
            mask[np.linspace(0, n - 1, k).round().astype(np.int64)] = True
        return mask


class InferenceEngine:
    def __init__(
        self,
        notify: Callable[[Event], None],
        settings: EngineSettings | None = None,
        capture: CaptureSettings | None = None,
    ) -> None:
        self._notify = notify
        self.settings = settings = settings or EngineSettings()
        self.capture_settings = capture or CaptureSettings()
        self.capture: CapturePolicy | None = None  # the serving model's; None: nothing is captured
        self._capture_label = ""
        self._captured: list[tuple[float, str, str, Any, float, Sequence[Any]]] = []
        self._rng = random.Random()
        self.captured = 0
        self.capture_dropped = 0  # rows to capture while the worker's write fell behind
        self._lock = threading.Lock()  # the serving state; held briefly on every row
        self._account_lock = threading.Lock()  # drift windows: the worker's tick and a shutdown's close
        self._window_override = settings.drift_window_rows
        self._min_rows = settings.drift_min_rows
        self._flush_s = settings.drift_flush_s
        self.model: LoadedModel | None = None
        self._window: _Window | None = None
        self._rows: list[Sequence[Any]] = []
        self._labels: list[int] = []
        self._scores: list[float] = []  # confidence for a classifier, the predicted value for a regressor
        self._latency = np.zeros(settings.latency_samples, dtype=np.float64)
        self._lat_n = 0
        self.served = 0
        self.rejected = 0
        self.model_rejected = 0  # rows the model was given and could not answer
        self._mark = (0, 0)  # (served, model_rejected) when the serving model started
        self.low_confidence = 0
        self.unaccounted = 0  # rows served but left out of drift because the worker fell behind
        self.sampled_out = 0  # rows served beyond the drift budget: the windows hold an even sample
        self._budget = _DriftBudget(settings.drift_max_rows_per_s)
        self._low_conf_threshold = 0.0
        self._trial: _Trial | None = None

    # ── model lifecycle (worker thread) ─────────────────────────────────────────────

    def activate(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next row on; rows served so far are accounted first."""
        self._switch(model, trial=None)

    def start_trial(self, model: LoadedModel) -> None:
        """Serve ``model`` on trial: after ``trial_rows`` good rows (or ``trial_max_s`` seconds
        without a failure) a TrialDone(ok) is notified; the first failure the model causes
        notifies TrialDone(not ok) and puts the previous model straight back."""
        with self._lock:
            fallback = (self.model, self._window)
            trial = _Trial(model.bundle.sha256, self.settings.trial_rows, self.settings.trial_max_s, fallback)
            if self.model is not None:  # the baseline the trial's verdict compares with
                served, rejected = self._mark
                trial.base_rejected = self.model_rejected - rejected
                trial.base_rows = self.served - served + trial.base_rejected
                trial.base_latency_s = self._median_latency_locked(0, self._lat_n)
            trial.latency_from = self._lat_n
        self._switch(model, trial=trial)

    def trial_sha(self) -> str | None:
        """The bundle on trial, if any."""
        trial = self._trial
        return trial.sha256 if trial is not None else None

    def commit_trial(self) -> None:
        """The trial's result is on disk: forget the fallback."""
        with self._lock:
            self._trial = None

    def revert(self, sha256: str) -> None:
        """Serve the model that was active before the trial of ``sha256`` again."""
        with self._lock:
            trial = self._trial
            if trial is None or trial.sha256 != sha256:
                return
            self._revert_locked(trial)

    def _revert_locked(self, trial: _Trial) -> None:
        self.model, self._window = trial.fallback
        self._low_conf_threshold = self._window.low_confidence if self._window else 0.0
        if self.model is not None:
            policy = self.model.bundle.manifest.get("policy") or {}
            self.capture = CapturePolicy.resolve(policy, self.capture_settings, self.model.spec.task)
            self._capture_label = f"{self.model.bundle.name}@{self.model.bundle.version}"
        else:
            self.capture = None
        self._rows, self._labels, self._scores = [], [], []  # rows served by the failed model are not drift data
        self._trial = None
        self._mark = (self.served, self.model_rejected)

    def _switch(self, model: LoadedModel, trial: _Trial | None) -> None:
        try:
            reference = Reference.from_json(model.bundle.json_file(REFERENCE))
        except ProtocolError as exc:
            raise ProtocolError(f"reference statistics are invalid: {exc.detail}") from None
        policy = model.bundle.manifest.get("policy") or {}
        rows = self._window_override or int(policy.get("drift_window", 200))
        threshold = float(policy.get("low_confidence", 0.0))
        window = _Window(model, reference, rows, threshold)
        capture = CapturePolicy.resolve(policy, self.capture_settings, model.spec.task)
        with self._lock:
            self.capture = capture
            self._capture_label = f"{model.bundle.name}@{model.bundle.version}"
            pending = self._take_locked()
            old = self._window
            self.model = model
            self._window = window
            self._low_conf_threshold = threshold
            self._trial = trial
            self._mark = (self.served, self.model_rejected)
        if old is not None:
            self._account(old, *pending, final=True)

    def tick(self) -> None:
        """Account pending rows; report full windows, and a partial one older than ``flush_s``.
        A trial that saw no failure before its deadline passes (on its health samples and
        whatever live rows it served)."""
        with self._lock:
            trial = self._trial
            if trial is not None and not trial.decided and time.monotonic() >= trial.deadline:
                self._decide_locked(trial)
            pending = self._take_locked()
            window = self._window
        if window is not None:
            due = time.monotonic() - window.started >= self._flush_s
            self._account(window, *pending, final=due)

    def close(self) -> None:
        with self._lock:
            pending = self._take_locked()
            window = self._window
        if window is not None:
            self._account(window, *pending, final=True)

    # ── the hot path (input thread) ─────────────────────────────────────────────────

    def reject(self, err: RowError) -> None:
        """Count and report a row that failed before it reached the model."""
        with self._lock:
            self.rejected += 1
        self._notify(RowRejected(err))

    def serve(self, row: Sequence[Any]) -> Prediction:
        with self._lock:
            model = self.model
            if model is None:
                raise self._no_model_locked()
            t0 = time.perf_counter_ns()
            try:
                inputs = model.model_row(row)  # date/time values become their parts, as in training
                pred = model.predict_inputs(inputs)
            except RowError as exc:
                self._failed_locked(exc)
                raise
            self._latency[self._lat_n % len(self._latency)] = time.perf_counter_ns() - t0
            self._lat_n += 1
            self._served_locked(inputs, pred, raw=row)
            return pred

    def serve_many(self, rows: Sequence[Sequence[Any]]) -> tuple[LoadedModel | None, list[Prediction | RowError]]:
        """Serve a batch through one onnxruntime call; return the model that answered and one
        answer per row. Every row is counted, timed, accounted for drift and for a trial exactly
        as :meth:`serve` counts one; its latency is the batch's time shared out (time / rows).
        Should a row fail a model on trial, the rows after it were still answered by that model:
        they are counted, but kept out of the restored model's drift window."""
        with self._lock:
            model = self.model
            if model is None:
                return None, [self._no_model_locked() for _ in rows]
            t0 = time.perf_counter_ns()
            inputs, results = model.predict_rows(rows)
            per_row = (time.perf_counter_ns() - t0) / max(1, len(rows))
            sampled = self._budget.spread(len(rows))
            for i, (raw, row, result) in enumerate(zip(rows, inputs, results, strict=True)):
                if isinstance(result, RowError):
                    self._failed_locked(result)
                    continue
                self._latency[self._lat_n % len(self._latency)] = per_row
                self._lat_n += 1
                if self.model is model and row is not None:
                    self._served_locked(row, result, sampled is None or bool(sampled[i]), raw)
                else:
                    self.served += 1
            return model, results

    def serve_matrix(self, x: np.ndarray) -> tuple[LoadedModel | None, Columns]:
        """A tensor batch: rows already in one numeric matrix, answered as columns. Counted,
        timed, accounted for drift and held against a trial exactly like :meth:`serve_many`'s
        rows; when no row failed, the accounting is done column-wise too (it is the same sums)."""
        n = len(x)
        with self._lock:
            model = self.model
            if model is None or n == 0:
                errors = {i: self._no_model_locked() for i in range(n)}
                return None, Columns(np.full(n, -1), np.full(n, math.nan), errors)
            t0 = time.perf_counter_ns()
            cols = model.predict_matrix(x)
            per_row = (time.perf_counter_ns() - t0) / max(1, n)
            sampled = self._budget.spread(n)
            if cols.errors:
                for i in range(n):
                    err = cols.errors.get(i)
                    if err is not None:
                        self._failed_locked(err)
                        continue
                    self._latency[self._lat_n % len(self._latency)] = per_row
                    self._lat_n += 1
                    if self.model is model:
                        pred = cols.prediction(i, model.spec.classes)
                        self._served_locked(x[i], pred, sampled is None or bool(sampled[i]))
                    else:
                        self.served += 1
                return model, cols
            ring = len(self._latency)
            at = (self._lat_n + np.arange(min(n, ring))) % ring
            self._latency[at] = per_row
            self._lat_n += n
            self.served += n
            rows, labels, scores = x, cols.class_index, cols.score
            if sampled is not None:
                rows, labels, scores = x[sampled], labels[sampled], scores[sampled]
                self.sampled_out += n - len(rows)
            room = max(0, self.settings.max_pending_rows - len(self._rows))
            kept = min(len(rows), room)
            self._rows.extend(rows[:kept])
            self._labels.extend(labels[:kept].tolist())
            self._scores.extend(scores[:kept].tolist())
            self.unaccounted += len(rows) - kept
            if model.spec.task == "classification":  # its score is the confidence
                self.low_confidence += int(np.count_nonzero(cols.score < self._low_conf_threshold))
            if self.capture is not None:
                self._capture_matrix_locked(x, cols, model)
            trial = self._trial
            if trial is not None and not trial.decided:
                trial.ok += n
                if trial.ok + trial.rejected >= trial.rows:
                    self._decide_locked(trial)
            return model, cols

    def _no_model_locked(self) -> RowError:
        self.rejected += 1
        err: RowError = NoModel("no model is active yet; the row was not served")
        self._notify(RowRejected(err))
        return err

    def _failed_locked(self, exc: RowError) -> None:
        """A row the model did not answer: counted, reported, and held against a model on trial
        when the model itself failed."""
        self.rejected += 1
        self.model_rejected += 1
        self._notify(RowRejected(exc))
        trial = self._trial
        if trial is None or trial.decided:
            return
        if isinstance(exc, InferenceFailed):
            trial.decided = True
            self._notify(TrialDone(trial.sha256, TrialFailed(f"on live row {trial.ok + 1}: {exc.detail}")))
            self._revert_locked(trial)
            return
        trial.rejected += 1  # the row's fault or the model's: the verdict compares the rates
        if trial.ok + trial.rejected >= trial.rows:
            self._decide_locked(trial)

    def _capture_matrix_locked(self, x: np.ndarray, cols: Columns, model: LoadedModel) -> None:
        """A tensor batch's rows to capture, chosen column-wise."""
        cap = self.capture
        assert cap is not None
        n = len(x)
        score = cols.score
        low = score < cap.below if model.spec.task == "classification" else np.zeros(n, dtype=bool)
        keep = low | (np.array([self._rng.random() for _ in range(n)]) < cap.uniform) if cap.uniform else low
        classes = model.spec.classes
        for i in np.nonzero(keep)[0].tolist():
            label = classes[int(cols.class_index[i])] if classes else float(score[i])
            conf = float(score[i]) if classes else math.nan
            self._capture_locked(x[i], label, conf, LOW if low[i] else UNIFORM)

    def _capture_locked(self, row: Sequence[Any], label: Any, confidence: float, kind: str) -> None:
        if len(self._captured) >= self.capture_settings.max_pending_rows:
            self.capture_dropped += 1
            return
        self._captured.append((time.time(), self._capture_label, kind, label, confidence, row))
        self.captured += 1

    def take_captured(self) -> list[SampleRow]:
        """The rows captured since the last call, for the worker to write."""
        with self._lock:
            taken, self._captured = self._captured, []
        return [record(ts, bundle, kind, label, conf, row) for ts, bundle, kind, label, conf, row in taken]

    def _served_locked(
        self, inputs: Sequence[Any], pred: Prediction, sampled: bool | None = None, raw: Sequence[Any] | None = None
    ) -> None:
        self.served += 1
        cap = self.capture
        if cap is not None:
            if pred.confidence < cap.below:
                self._capture_locked(inputs if raw is None else raw, pred.label, pred.confidence, LOW)
            elif cap.uniform and self._rng.random() < cap.uniform:
                self._capture_locked(inputs if raw is None else raw, pred.label, pred.confidence, UNIFORM)
        if not (self._budget.take(1) == 1 if sampled is None else sampled):
            self.sampled_out += 1
        elif len(self._rows) < self.settings.max_pending_rows:
            self._rows.append(inputs)  # drift is accounted on the model's inputs, like the reference
            self._labels.append(pred.class_index)
            self._scores.append(pred.confidence if pred.class_index >= 0 else pred.label)
        else:
            self.unaccounted += 1
        if pred.confidence < self._low_conf_threshold:
            self.low_confidence += 1
        trial = self._trial
        if trial is not None and not trial.decided:
            trial.ok += 1
            if trial.ok + trial.rejected >= trial.rows:
                self._decide_locked(trial)

    def _decide_locked(self, trial: _Trial) -> None:
        """The trial has seen enough (or its time is up): what it counted goes to the core,
        which compares it with the model it replaces."""
        trial.decided = True
        report = TrialReport(
            rows=trial.ok + trial.rejected,
            rejected=trial.rejected,
            latency_s=self._median_latency_locked(trial.latency_from, self._lat_n),
            base_rows=trial.base_rows,
            base_rejected=trial.base_rejected,
            base_latency_s=trial.base_latency_s,
        )
        self._notify(TrialDone(trial.sha256, report=report))

    def _median_latency_locked(self, start: int, end: int) -> float | None:
        """The median of the latencies recorded between ring positions ``start`` and ``end``
        (what is still in the ring of them), in seconds."""
        ring = len(self._latency)
        start = max(start, end - ring)
        if end <= start:
            return None
        at = np.arange(start, end) % ring
        return float(np.median(self._latency[at])) / 1e9

    # ── drift accounting (worker thread) ────────────────────────────────────────────

    def _take_locked(self) -> tuple[list[Sequence[Any]], list[int], list[float]]:
        rows, labels, scores = self._rows, self._labels, self._scores
        self._rows, self._labels, self._scores = [], [], []
        n = min(len(rows), len(labels), len(scores))
        if n < max(len(rows), len(labels), len(scores)):  # a MemoryError between appends: keep what pairs up
            self.unaccounted += max(len(rows), len(labels), len(scores)) - n
            del rows[n:], labels[n:], scores[n:]
        return rows, labels, scores

    def _account(
        self, window: _Window, rows: list[Sequence[Any]], labels: list[int], conf: list[float], final: bool
    ) -> None:
        with self._account_lock:
            self._account_locked(window, rows, labels, conf, final)

    def _account_locked(
        self, window: _Window, rows: list[Sequence[Any]], labels: list[int], conf: list[float], final: bool
    ) -> None:
        classifier = window.model.spec.task == "classification"
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, window.rows - window.drift.n)
            end = start + take
            scores = np.array(conf[start:end], dtype=np.float64)
            window.drift.update(
                window.matrix(rows[start:end]),
                np.array(labels[start:end], dtype=np.int64) if classifier else None,
                confidence=scores if classifier else None,
                predicted=None if classifier else scores,
            )
            start = end
            if window.drift.n >= window.rows:
                self._report(window)
        if final and window.drift.n > 0:
            self._report(window)
        elif final:
            window.started = time.monotonic()

    def _report(self, window: _Window) -> None:
        report = window.drift.report(min_rows=self._min_rows)
        window.drift.reset()
        window.started = time.monotonic()
        self._notify(DriftReady(window.bundle, report))

    # ── numbers for the heartbeat (worker thread) ───────────────────────────────────

    def stats(self) -> Stats:
        n = min(self._lat_n, len(self._latency))
        latency: Latency | None = None
        if n:
            p50, p90, p99 = np.percentile(self._latency[:n], [50, 90, 99]) / 1000.0
            latency = Latency(round(float(p50), 1), round(float(p90), 1), round(float(p99), 1))
        counters = {
            "served": self.served,
            "rejected": self.rejected,
            "low_confidence": self.low_confidence,
            "drift_unaccounted": self.unaccounted,
            "drift_sampled_out": self.sampled_out,
        }
        if self.capture is not None or self.captured:
            counters["captured"] = self.captured
            counters["capture_dropped"] = self.capture_dropped
        trial = self._trial
        progress = Progress(min(trial.ok, trial.rows), trial.rows) if trial is not None and not trial.decided else None
        return Stats(counters=counters, latency=latency, trial=progress)
