"""LoadedModel and InferenceEngine with a real onnxruntime session on a real tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import (
    CLASSES,
    HEALTH,
    MODEL,
    WINDOW,
    default_files,
    health_doc,
    make_bundle,
    predict_proba,
    sample_rows,
    verified,
    verify_built,
)

from device_agent.bundle import VerifiedBundle
from device_agent.config import EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.errors import (
    BadValue,
    HealthCheckFailed,
    InferenceFailed,
    ModelLoadFailed,
    NoModel,
    NotFinite,
    OutputNotFinite,
    RowError,
    WrongShape,
)
from device_agent.events import DriftReady, Event, RowRejected, TrialDone
from device_agent.protocol import BundleRef, dumps
from device_agent.runtime import LoadedModel


@pytest.fixture(scope="module")
def bundle() -> VerifiedBundle:
    vb: VerifiedBundle = verified()
    return vb


@pytest.fixture(scope="module")
def model(bundle: VerifiedBundle) -> LoadedModel:
    return LoadedModel(bundle)


def with_health(doc: dict[str, Any]) -> VerifiedBundle:
    """A correctly hashed and signed bundle carrying this health.json."""
    vb: VerifiedBundle = verified(files={**default_files(), HEALTH: dumps(doc)})
    return vb


# ── LoadedModel ──────────────────────────────────────────────────────────────────────


def test_predict_row_returns_label_and_confidence(model: LoadedModel) -> None:
    rows = sample_rows(10, seed=5)
    expected = predict_proba(default_files()[MODEL], rows)
    for row, proba in zip(rows.tolist(), expected, strict=True):
        pred = model.predict_row(row)
        assert pred.class_index == int(np.argmax(proba))
        assert pred.label == CLASSES[pred.class_index]
        assert pred.confidence == pytest.approx(float(proba.max()), abs=1e-6)
        assert pred.probabilities is not None
        assert np.allclose(pred.probabilities, proba, atol=1e-6)
        assert pred.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_every_class_is_reachable(model: LoadedModel) -> None:
    labels = {model.predict_row(r).label for r in sample_rows(60, seed=6).tolist()}
    assert labels == set(CLASSES)


def test_predict_accepts_tuples_and_ints(model: LoadedModel) -> None:
    assert model.predict_row((1, 0, -1)).label == model.predict_row([1.0, 0.0, -1.0]).label


@pytest.mark.parametrize("row", [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [], "0.1,0.2,0.3", {"f0": 1}, 3.0, None])
def test_wrong_shape(model: LoadedModel, row: Any) -> None:
    with pytest.raises(WrongShape) as info:
        model.predict_row(row)
    assert info.value.code == "row.wrong_shape"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_not_finite(model: LoadedModel, bad: float) -> None:
    with pytest.raises(NotFinite) as info:
        model.predict_row([0.1, bad, 0.3])
    assert info.value.code == "row.not_finite"
    assert "'f1'" in info.value.detail


@pytest.mark.parametrize("bad", ["a", "1.5", None, [1.0], {"x": 1}], ids=["str", "numeric-str", "none", "list", "dict"])
def test_bad_value(model: LoadedModel, bad: Any) -> None:
    with pytest.raises(BadValue) as info:
        model.predict_row([0.1, 0.2, bad])
    assert type(info.value) is BadValue and info.value.code == "row.bad_value"
    assert "'f2'" in info.value.detail


def test_none_is_reported_as_null(model: LoadedModel) -> None:
    with pytest.raises(BadValue, match="null"):
        model.predict_row([None, 0.0, 0.0])


def test_health_check_passes_on_the_true_samples(model: LoadedModel) -> None:
    assert model.health_check() == len(health_doc()["rows"]) == 8


def test_health_check_fails_on_an_altered_label() -> None:
    doc = health_doc()
    doc["labels"][0] = next(c for c in CLASSES if c != doc["labels"][0])
    with pytest.raises(HealthCheckFailed, match="health sample 0"):
        LoadedModel(with_health(doc)).health_check()


def test_health_check_fails_on_altered_probabilities() -> None:
    doc = health_doc()
    doc["probabilities"][2] = [p + (0.01 if i == 0 else -0.005) for i, p in enumerate(doc["probabilities"][2])]
    with pytest.raises(HealthCheckFailed, match="health sample 2: probabilities differ"):
        LoadedModel(with_health(doc)).health_check()


@pytest.mark.parametrize(
    "doc",
    [
        {"rows": [], "labels": []},
        {"labels": ["low"]},
        {"rows": [[0, 0, 0]], "labels": []},
        {"rows": [[0, 0]], "labels": ["low"]},
    ],
    ids=["empty", "no-rows", "inconsistent", "wrong-shape-row"],
)
def test_health_check_fails_on_unusable_samples(doc: dict[str, Any]) -> None:
    with pytest.raises(HealthCheckFailed):
        LoadedModel(with_health(doc)).health_check()


def test_garbage_model_bytes_signed_and_hashed_fail_to_load() -> None:
    bad = verified(files={**default_files(), MODEL: b"this is not an onnx model" * 4})
    with pytest.raises(ModelLoadFailed) as info:
        LoadedModel(bad)
    assert info.value.code == "model.load_failed"


def test_a_bundle_verified_without_its_model_loads_it_from_a_file(tmp_path: Path) -> None:
    built = make_bundle()
    lean = verify_built(built, keep_model=False)
    assert MODEL not in lean.files and lean.model_span is not None
    begin, end = lean.model_span
    path = tmp_path / "model.onnx"
    path.write_bytes(built.data[begin:end])
    from_file = LoadedModel(lean, model_path=path)
    from_bytes = LoadedModel(verify_built(built))
    row = [0.5, -1.0, 2.0]
    a, b = from_file.predict_row(row), from_bytes.predict_row(row)
    assert a.label == b.label and a.probabilities is not None and b.probabilities is not None
    assert np.allclose(a.probabilities, b.probabilities)
    assert from_file.health_check() > 0
    with pytest.raises(ModelLoadFailed, match="without its model"):
        LoadedModel(lean)


def test_manifest_naming_an_output_the_model_lacks_fails_to_load() -> None:
    bad = verified(manifest_updates={"model": {"outputs": {"probabilities": "proba_missing"}}})
    with pytest.raises(ModelLoadFailed, match="proba_missing"):
        LoadedModel(bad)


def test_manifest_naming_another_input_fails_to_load() -> None:
    bad = verified(manifest_updates={"model": {"input": {"name": "features"}}})
    with pytest.raises(ModelLoadFailed):
        LoadedModel(bad)


# ── row validation edge cases ───────────────────────────────────────────────────────────


def test_value_that_overflows_float32_is_rejected(model: LoadedModel) -> None:
    with np.errstate(over="ignore"), pytest.raises(RowError):
        model.predict_row([1e39, 0.0, 0.0])


def test_huge_integer_is_a_row_error(model: LoadedModel) -> None:
    row = json.loads("[1" + "0" * 400 + ", 0, 0]")
    with pytest.raises(BadValue):
        model.predict_row(row)
    row = json.loads("[1" + "0" * 400 + ", 0.5, 0.5]")  # int + float overflows inside the quick check
    with pytest.raises(BadValue):
        model.predict_row(row)


def test_booleans_are_served_as_zero_and_one(model: LoadedModel) -> None:
    """JSON and CSV sources produce true/false for binary features: one rule, both paths."""
    as_bool, as_float = model.predict_row([True, False, 0.0]), model.predict_row([1.0, 0.0, 0.0])
    assert (as_bool.label, as_bool.confidence) == (as_float.label, as_float.confidence)


# ── InferenceEngine ──────────────────────────────────────────────────────────────────


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def test_no_model_before_activate() -> None:
    rec = Recorder()
    engine = InferenceEngine(rec)
    with pytest.raises(NoModel):
        engine.serve([0.1, 0.2, 0.3])
    assert (engine.served, engine.rejected) == (0, 1)
    assert [type(e.error) for e in rec.of(RowRejected)] == [NoModel] and len(rec.events) == 1


def test_serve_counts_served_and_rejected(model: LoadedModel) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=1000))
    engine.activate(model)
    for row in sample_rows(5, seed=7).tolist():
        pred = engine.serve(row)
        assert pred.label in CLASSES
    with pytest.raises(NotFinite):
        engine.serve([math.nan, 0.0, 0.0])
    with pytest.raises(WrongShape):
        engine.serve([0.0])
    engine.reject(BadValue("input line is not valid JSON"))
    assert (engine.served, engine.rejected) == (5, 3)
    assert [e.error.code for e in rec.of(RowRejected)] == ["row.not_finite", "row.wrong_shape", "row.bad_value"]
    stats = engine.stats()
    assert stats.counters["served"] == 5 and stats.counters["rejected"] == 3
    assert stats.latency is not None and stats.latency.p50_us > 0
    assert rec.of(DriftReady) == []


def test_low_confidence_rows_are_counted(model: LoadedModel) -> None:
    engine = InferenceEngine(Recorder(), EngineSettings(drift_window_rows=1000))
    engine.activate(model)  # manifest policy: low_confidence 0.6
    rows = sample_rows(40, seed=8).tolist()
    confs = [engine.serve(r).confidence for r in rows]
    assert engine.low_confidence == sum(c < 0.6 for c in confs)
    assert 0 < engine.low_confidence < len(rows)


def test_drift_window_is_reported_after_window_rows(model: LoadedModel) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=20, drift_min_rows=5))
    engine.activate(model)
    rows = sample_rows(40, seed=9).tolist()
    labels = []
    for row in rows[:19]:
        labels.append(engine.serve(row).class_index)
    engine.tick()  # drift is accounted on the worker's tick, never on a row's latency
    assert rec.of(DriftReady) == []
    labels.append(engine.serve(rows[19]).class_index)
    for row in rows[20:25]:
        engine.serve(row)
    engine.tick()
    ready = rec.of(DriftReady)
    assert len(ready) == 1
    assert ready[0].bundle == BundleRef("demo", 1, model.bundle.sha256)
    report = ready[0].report
    assert report["n"] == 20
    assert report["prediction"]["counts"] == np.bincount(labels, minlength=len(CLASSES)).tolist()
    for name in ("f0", "f1", "f2"):
        assert sum(report["features"][name]["counts"]) == 20
    assert report["verdict"] in ("ok", "drift")
    json.dumps(report, allow_nan=False)  # JSON-ready, no NaN
    for row in rows[25:40]:
        engine.serve(row)
    engine.tick()
    assert [d.report["n"] for d in rec.of(DriftReady)] == [20, 20], "windows hold exactly window_rows rows"


def test_drift_window_defaults_to_the_bundle_policy(model: LoadedModel) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_min_rows=5))
    engine.activate(model)
    rows = sample_rows(WINDOW, seed=10).tolist()
    for row in rows[:-1]:
        engine.serve(row)
    engine.tick()
    assert rec.of(DriftReady) == []
    engine.serve(rows[-1])
    engine.tick()
    assert [d.report["n"] for d in rec.of(DriftReady)] == [WINDOW]


def test_partial_window_is_reported_on_switch_and_close(model: LoadedModel, bundle: VerifiedBundle) -> None:
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=100, drift_min_rows=30))
    engine.activate(model)
    for row in sample_rows(6, seed=11).tolist():
        engine.serve(row)
    v2 = LoadedModel(verify_built(make_bundle(version=2)))
    engine.activate(v2)  # the old model's partial window goes out first
    ready = rec.of(DriftReady)
    assert [(d.bundle.version, d.report["n"], d.report["verdict"]) for d in ready] == [(1, 6, "insufficient")]
    engine.serve([0.0, 0.0, 0.0])
    engine.close()
    assert [(d.bundle.version, d.report["n"]) for d in rec.of(DriftReady)] == [(1, 6), (2, 1)]
    engine.close()  # nothing new to report
    assert len(rec.of(DriftReady)) == 2
    assert engine.model is v2


# ── trial ────────────────────────────────────────────────────────────────────────────


def on_trial(
    model: LoadedModel, rows: int, max_s: float, cls: type[LoadedModel] = LoadedModel
) -> tuple[Recorder, InferenceEngine, LoadedModel]:
    """An engine serving ``model`` with version 2 (built as ``cls``) on trial."""
    rec = Recorder()
    engine = InferenceEngine(rec, EngineSettings(drift_window_rows=100, trial_rows=rows, trial_max_s=max_s))
    engine.activate(model)
    v2 = cls(verify_built(make_bundle(version=2)))
    engine.start_trial(v2)
    return rec, engine, v2


def test_trial_passes_after_its_rows(model: LoadedModel) -> None:
    rec, engine, v2 = on_trial(model, rows=3, max_s=60)
    for row in sample_rows(5, seed=3).tolist():
        engine.serve(row)
    done = rec.of(TrialDone)
    assert [(d.sha256, d.ok) for d in done] == [(v2.bundle.sha256, True)], "notified once"
    engine.commit_trial()
    engine.revert(v2.bundle.sha256)  # too late: committed
    assert engine.model is v2


class FailsOnMarkerRow(LoadedModel):
    """A real model whose inference fails for one kind of row, as a broken graph would."""

    def predict_inputs(self, row: Any) -> Any:
        if row and row[0] == -999.0:
            raise InferenceFailed("inference failed: simulated runtime error")
        return super().predict_inputs(row)


def test_trial_failure_puts_the_old_model_back_at_once(model: LoadedModel) -> None:
    rec, engine, _ = on_trial(model, rows=50, max_s=60, cls=FailsOnMarkerRow)
    engine.serve([0.1, 0.2, 0.3])
    with pytest.raises(InferenceFailed):
        engine.serve([-999.0, 0.0, 0.0])
    done = rec.of(TrialDone)
    assert len(done) == 1 and not done[0].ok and done[0].error.code == "trial.failed"
    assert engine.model is model
    assert engine.serve([0.1, 0.2, 0.3]).label in CLASSES


def test_an_out_of_range_row_is_the_rows_fault_not_the_trials(model: LoadedModel) -> None:
    rec, engine, v2 = on_trial(model, rows=50, max_s=60)
    with np.errstate(over="ignore"), pytest.raises(OutputNotFinite) as info:
        engine.serve([1e39, 0.0, 0.0])  # overflows float32: the model's output is NaN
    assert info.value.code == "row.out_of_range"
    assert rec.of(TrialDone) == [] and engine.model is v2


def test_a_quiet_trial_passes_at_its_deadline(model: LoadedModel) -> None:
    rec, engine, _ = on_trial(model, rows=50, max_s=0.0)
    engine.tick()
    assert [d.ok for d in rec.of(TrialDone)] == [True]


def test_wrong_rows_do_not_fail_a_trial(model: LoadedModel) -> None:
    rec, engine, v2 = on_trial(model, rows=50, max_s=60)
    with pytest.raises(WrongShape):
        engine.serve([1.0])  # the input's fault, not the model's
    assert rec.of(TrialDone) == [] and engine.model is v2


# ── input sources ────────────────────────────────────────────────────────────────────


def test_csv_cells_follow_the_feature_types() -> None:
    from device_agent.bundle import Feature
    from device_agent.sources import _csv_row

    features = [Feature("temp", "numeric", True), Feature("site", "categorical", True), Feature("n", "numeric")]
    assert _csv_row({"temp": "21.5", "site": "30", "n": "4"}, features) == [21.5, "30", 4.0]
    assert _csv_row({"temp": "", "site": "", "n": "4"}, features) == [None, None, 4.0]
    with pytest.raises(WrongShape, match="no column 'n'"):
        _csv_row({"temp": "1", "site": "a"}, features)


def test_row_errors_echo_the_row_id(model: LoadedModel) -> None:
    import io

    from device_agent.sources import serve_lines

    engine = InferenceEngine(Recorder(), EngineSettings(drift_window_rows=100))
    out = io.StringIO()
    serve_lines(engine, iter(['{"id": "r0", "values": {"f0": 1}}']), out)  # before any model
    engine.activate(model)
    serve_lines(engine, iter(['{"id": "r1", "values": {"f0": 1}}', '{"id": "r2", "features": [1, 2, 3]}']), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(a.get("id"), a.get("error")) for a in lines] == [
        ("r0", "row.no_model"),
        ("r1", "row.wrong_shape"),
        ("r2", None),
    ]


def test_a_csv_line_over_the_readers_field_limit_is_answered_and_the_replay_goes_on(
    model: LoadedModel, tmp_path: Path
) -> None:
    import io

    from device_agent.sources import serve_csv

    path = tmp_path / "rows.csv"
    path.write_text("f0,f1,f2\n0.1,0.2,0.3\n" + "9" * 200_000 + ",0,0\n0.3,0.2,0.1\n")
    engine = InferenceEngine(Recorder(), EngineSettings(drift_window_rows=100))
    engine.activate(model)
    out = io.StringIO()
    assert serve_csv(engine, str(path), 0.0, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    answers = [("prediction" in a, a.get("error")) for a in lines]
    assert answers == [(True, None), (False, "row.bad_value"), (True, None)]
    assert "size limit" in lines[1]["detail"] and "skipped" in lines[1]["detail"]
