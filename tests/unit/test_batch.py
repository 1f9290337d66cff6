"""Batches: many rows through one onnxruntime call, each answered and counted exactly as alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from bundle_factory import CLASSES, MODEL, default_files, make_bundle, model_bytes, sample_rows, verified, verify_built

from device_agent.config import EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.errors import InferenceFailed, RowError
from device_agent.events import DriftReady, Event, RowRejected, TrialDone
from device_agent.runtime import LoadedModel, Prediction
from device_agent.sources import answer_object, answer_rows


class Recorder(list[Event]):
    def __call__(self, event: Event) -> None:
        self.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self if isinstance(e, kind)]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel(verified())


BAD_ROWS: list[Any] = [
    [1.0, 2.0],  # wrong shape
    [1.0, math.nan, 0.0],  # not finite
    [1.0, "x", 0.0],  # text for a number
    [None, 0.0, 0.0],  # null, no missing values allowed
    "not a row",
    [1.0, [2.0], 3.0],  # nested
    [1e39, 0.0, 0.0],  # overflows float32: the model answers NaN
    [10**400, 0.0, 0.0],  # beyond any float
]


def alone(model: LoadedModel, row: Any) -> Prediction | RowError:
    try:
        return model.predict_row(row)
    except RowError as exc:
        return exc


def same(a: Prediction | RowError, b: Prediction | RowError) -> bool:
    if isinstance(a, RowError) or isinstance(b, RowError):
        return type(a) is type(b) and a.detail == b.detail  # type: ignore[union-attr]
    return a.label == b.label and a.class_index == b.class_index and abs(a.confidence - b.confidence) < 1e-6


def test_a_batch_answers_each_row_as_it_would_be_answered_alone(model: LoadedModel) -> None:
    good = sample_rows(40, seed=5).tolist()
    rows = good[:10] + BAD_ROWS + good[10:]
    with np.errstate(over="ignore"):
        _, batch = model.predict_rows(rows)
        expected = [alone(model, r) for r in rows]
    assert len(batch) == len(rows)
    assert all(same(b, e) for b, e in zip(batch, expected, strict=True)), [
        (b, e) for b, e in zip(batch, expected, strict=True) if not same(b, e)
    ]
    codes = [b.code for b in batch if isinstance(b, RowError)]
    assert codes == [
        "row.wrong_shape",
        "row.not_finite",
        "row.bad_value",
        "row.bad_value",
        "row.wrong_shape",
        "row.bad_value",
        "row.out_of_range",
        "row.bad_value",
    ]
    assert {b.label for b in batch if isinstance(b, Prediction)} == set(CLASSES)


def test_a_failing_batch_call_is_retried_row_by_row() -> None:
    """If the one call fails, each row is run alone: only the row that breaks the model fails."""

    class BatchBreaks(LoadedModel):
        def _run_batch(self, ready: list[Any]) -> np.ndarray:
            raise InferenceFailed("inference failed: simulated batch failure")

    m = BatchBreaks(verified())
    rows = sample_rows(5).tolist()
    _, results = m.predict_rows(rows)
    assert all(isinstance(r, Prediction) for r in results)
    assert [r.label for r in results] == [m.predict_row(r).label for r in rows]  # type: ignore[union-attr]


def test_a_model_with_a_fixed_batch_size_serves_batches_row_by_row() -> None:
    graph = onnx.load_from_string(model_bytes())
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = graph.SerializeToString()
    m = LoadedModel(verify_built(make_bundle(files={**default_files(), MODEL: fixed})))
    rows = sample_rows(6).tolist()
    _, results = m.predict_rows(rows)
    assert [r.label for r in results] == [m.predict_row(r).label for r in rows]  # type: ignore[union-attr]


# ── the engine counts a batch's rows like single rows ─────────────────────────────────


def test_serve_many_counts_times_and_accounts_every_row(model: LoadedModel) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=20))
    engine.activate(model)
    rows = [*sample_rows(25, seed=3).tolist(), [1.0]]
    served_by, _ = engine.serve_many(rows)
    assert served_by is model
    assert engine.served == 25 and engine.rejected == 1
    assert [e.error.code for e in rec.of(RowRejected)] == ["row.wrong_shape"]
    stats = engine.stats()
    assert stats.latency is not None and stats.latency.p50_us > 0
    assert engine._lat_n == 25
    engine.tick()
    windows = rec.of(DriftReady)
    assert len(windows) == 1 and windows[0].report["n"] == 20  # a full window of batch rows
    assert answer_rows(engine, [[0.1, 0.2, 0.3], {"id": "a", "features": [1, 2]}])[1] == {
        "error": "row.wrong_shape",
        "detail": "row has 2 values, the model expects 3",
        "id": "a",
    }


def test_a_batch_before_any_model_is_rejected_row_by_row() -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=20))
    model, results = engine.serve_many([[0.1, 0.2, 0.3]] * 3)
    assert model is None and [r.code for r in results] == ["row.no_model"] * 3  # type: ignore[union-attr]
    assert engine.rejected == 3 and len(rec.of(RowRejected)) == 3


def on_trial(base: LoadedModel, rows: int, cls: type[LoadedModel] = LoadedModel) -> tuple[Recorder, InferenceEngine]:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=100, trial_rows=rows, trial_max_s=60))
    engine.activate(base)
    engine.start_trial(cls(verify_built(make_bundle(version=2))))
    return rec, engine


def test_a_batch_can_pass_a_trial(model: LoadedModel) -> None:
    rec, engine = on_trial(model, rows=10)
    engine.serve_many(sample_rows(4).tolist())
    assert rec.of(TrialDone) == []
    engine.serve_many(sample_rows(30).tolist())
    assert [d.ok for d in rec.of(TrialDone)] == [True]


class BreaksOnMarker(LoadedModel):
    """A real model whose inference fails on one kind of row, in a batch or alone."""

    def _run_batch(self, ready: list[Any]) -> np.ndarray:
        if any(r[0] == -999.0 for r in ready):
            raise InferenceFailed("inference failed: simulated runtime error")
        return super()._run_batch(ready)

    def predict_inputs(self, row: Any) -> Prediction:
        if row and row[0] == -999.0:
            raise InferenceFailed("inference failed: simulated runtime error")
        return super().predict_inputs(row)


def test_a_model_failure_in_a_batch_fails_the_trial_and_restores_the_old_model(model: LoadedModel) -> None:
    rec, engine = on_trial(model, rows=50, cls=BreaksOnMarker)
    rows = sample_rows(6).tolist()
    rows[2] = [-999.0, 0.0, 0.0]
    served_by, results = engine.serve_many(rows)
    assert isinstance(served_by, BreaksOnMarker)
    assert [isinstance(r, InferenceFailed) for r in results] == [False, False, True, False, False, False]
    done = rec.of(TrialDone)
    assert len(done) == 1 and not done[0].ok and done[0].error.code == "trial.failed"
    assert "on live row 3" in done[0].error.detail
    assert engine.model is model  # back at once
    assert engine.served == 5
    assert engine._rows == []  # rows the failed model answered are no drift data for the old one
    assert engine.serve([0.1, 0.2, 0.3]).label in CLASSES


def test_rows_answer_the_same_through_every_entry(model: LoadedModel) -> None:
    """stdin's single-row path and a batch give the same answer for the same row."""
    engine = InferenceEngine(Recorder(), EngineSettings(drift_window_rows=100))
    engine.activate(model)
    rows = sample_rows(5, seed=9).tolist()
    singles = [answer_object(engine, {"id": i, "features": r}) for i, r in enumerate(rows)]
    batch = answer_rows(engine, [{"id": i, "features": r} for i, r in enumerate(rows)])
    assert [s["prediction"] for s in singles] == [b["prediction"] for b in batch]
    assert [s["id"] for s in singles] == [b["id"] for b in batch]
    assert all(abs(s["confidence"] - b["confidence"]) <= 2e-6 for s, b in zip(singles, batch, strict=True))
    assert all(b["bundle"] == "demo@1" for b in batch)


# ── tensor batches: rows already in a numeric matrix ──────────────────────────────────


def test_a_matrix_is_answered_like_its_rows(model: LoadedModel) -> None:
    x = sample_rows(50, seed=6)
    x[3, 1] = math.nan
    x[7, 2] = math.inf
    x[9, 0] = 1e39  # fine as float64, beyond float32: the model answers NaN
    with np.errstate(over="ignore", invalid="ignore"):
        cols = model.predict_matrix(x)
        expected = [alone(model, r) for r in x.tolist()]
    assert sorted(cols.errors) == [3, 7, 9]
    for i, e in enumerate(expected):
        if isinstance(e, RowError):
            assert same(cols.errors[i], e)
        else:
            got = cols.prediction(i, CLASSES)
            assert (got.label, got.class_index) == (e.label, e.class_index)
            assert abs(got.confidence - e.confidence) < 1e-6
    with pytest.raises(RowError, match="rows have 2 values, the model expects 3"):
        model.predict_matrix(np.zeros((4, 2)))


def test_serve_matrix_counts_accounts_and_passes_a_trial(model: LoadedModel) -> None:
    rec, engine = on_trial(model, rows=40)
    _, cols = engine.serve_matrix(sample_rows(30, seed=1))
    assert not cols.errors and rec.of(TrialDone) == []
    engine.serve_matrix(sample_rows(30, seed=2))
    assert [d.ok for d in rec.of(TrialDone)] == [True]
    assert engine.served == 60 and engine._lat_n == 60 and len(engine._rows) == 60
    low = sum(
        1
        for r in sample_rows(30, seed=1).tolist() + sample_rows(30, seed=2).tolist()
        if engine.model.predict_row(r).confidence < 0.6
    )  # type: ignore[union-attr]
    assert engine.low_confidence == low  # the bundle's policy: low_confidence 0.6


def test_a_model_failure_in_a_matrix_fails_the_trial(model: LoadedModel) -> None:
    rec, engine = on_trial(model, rows=50, cls=BreaksOnMarker)
    x = sample_rows(6)
    x[4] = [-999.0, 0.0, 0.0]
    _, cols = engine.serve_matrix(x)
    assert list(cols.errors) == [4] and isinstance(cols.errors[4], InferenceFailed)
    done = rec.of(TrialDone)
    assert len(done) == 1 and not done[0].ok and "on live row 5" in done[0].error.detail
    assert engine.model is model and engine.served == 5


def test_pending_rows_that_lost_their_labels_are_left_out_of_drift(model: LoadedModel) -> None:
    """Under memory pressure an append can fail between the row and its label: the next tick
    accounts the rows that pair up and counts the rest, instead of failing every window."""
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=20))
    engine.activate(model)
    engine.serve_many(sample_rows(30).tolist())
    del engine._labels[25:]  # what a MemoryError after the rows' append leaves
    engine.tick()
    assert engine.unaccounted == 5
    assert [w.report["n"] for w in rec.of(DriftReady)] == [20]


def test_rows_beyond_the_drift_budget_are_sampled_evenly_and_counted(model: LoadedModel) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=50, drift_max_rows_per_s=100))
    engine.activate(model)
    x = sample_rows(1000, seed=4)
    engine.serve_matrix(x)
    assert engine.served == 1000
    kept = len(engine._rows)
    assert 99 <= kept <= 100  # one second's budget, whatever the clock did meanwhile
    assert engine.sampled_out == 1000 - kept
    assert engine.stats().counters["drift_sampled_out"] == 1000 - kept
    first, last = np.asarray(engine._rows[0]), np.asarray(engine._rows[-1])
    assert np.array_equal(first, x[0]) and np.array_equal(last, x[-1])  # spread over the whole batch
    engine.serve_many(sample_rows(200, seed=5).tolist())  # the bucket is nearly empty
    assert engine.served == 1200 and len(engine._rows) + engine.sampled_out == 1200
    total = len(engine._rows)
    engine.tick()
    assert sum(w.report["n"] for w in rec.of(DriftReady)) == total // 50 * 50  # only the sample is accounted


def test_no_drift_budget_accounts_every_row(model: LoadedModel) -> None:
    engine = InferenceEngine(Recorder(), EngineSettings(drift_max_rows_per_s=0))
    engine.activate(model)
    engine.serve_matrix(sample_rows(5000, seed=4))
    for row in sample_rows(100, seed=6).tolist():
        engine.serve(row)
    assert len(engine._rows) == 5100 and engine.sampled_out == 0
