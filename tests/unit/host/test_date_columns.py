"""Columns that should not be one-hot encoded, decided by the user and served by the device
exactly as trained: date/time parts expanded by the same code on both sides, drift on the
same columns as the reference, and a cap on categories applied inside the graph."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.bundle import REFERENCE, VerifiedBundle, verify
from device_agent.config import EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.errors import BadValue
from device_agent.events import DriftReady, Event
from device_agent.runtime import LoadedModel
from device_agent.sources import serve_csv
from edgekit import bundler, keys, pipeline, reproduce, workspace
from edgekit.categories import OTHER
from edgekit.errors import DataError
from edgekit.explain import OnnxPredictor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _sensor_csv(path: Path, n: int = 600) -> None:
    """Hourly readings: a timestamp (one value per row), a site with many codes, 5 % missing."""
    rng = np.random.default_rng(7)
    start = datetime(2024, 3, 1)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "site", "temp", "state"])
        for i in range(n):
            t = start + timedelta(hours=i)
            temp = 18 + 6 * (8 <= t.hour < 18) + rng.normal(0, 1.5)
            state = "busy" if 8 <= t.hour < 18 and t.weekday() < 5 else "idle"
            site = f"S{int(rng.zipf(1.4)) % 80:02d}"
            w.writerow(
                [
                    "NA" if rng.random() < 0.05 else t.strftime("%Y-%m-%d %H:%M:%S"),
                    site,
                    "?" if rng.random() < 0.05 else f"{temp:.2f}",
                    state,
                ]
            )


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[workspace.Workspace, Path, Any, VerifiedBundle]:
    root = tmp_path_factory.mktemp("dates")
    path = root / "sensors.csv"
    _sensor_csv(path)
    ws = workspace.init(root / "ws")
    keys.generate(ws, "release")
    run = pipeline.train_run(ws, path, "state", "rf", datetimes={"ts": None}, max_categories=8)
    built = bundler.build(ws, run.id, "sensors", "release")
    vb = verify(built.path.read_bytes(), keys.trust_file(ws), now=datetime.now(UTC).timestamp())
    return ws, path, run, vb


def test_the_date_column_is_refused_until_the_user_decides(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    _sensor_csv(path, 200)
    ws = workspace.init(tmp_path / "ws")
    with pytest.raises(DataError, match="'ts' holds dates or times") as info:
        pipeline.train_run(ws, path, "state", "logreg")
    assert "--datetime ts" in str(info.value) and "--drop ts" in str(info.value)
    dropped = pipeline.train_run(ws, path, "state", "logreg", drop=["ts"])
    assert [f["name"] for f in dropped.record["model"]["features"]] == ["site", "temp"]


def test_the_run_records_the_row_features_and_the_cap(shipped: Any) -> None:
    _, _, run, vb = shipped
    features = run.record["model"]["features"]
    assert features[0] == {
        "name": "ts",
        "type": "datetime",
        "allow_missing": True,
        "parts": ["hour", "weekday"],  # March only: the month carries nothing
    }
    assert run.record["inputs"]["datetimes"] == {"ts": None} and run.record["inputs"]["max_categories"] == 8
    cap = run.record["categories"]["site"]
    assert cap["kept"] == 8 and cap["distinct"] > 8 and 0 < cap["other_share"] < 1
    unseen = [w for w in run.record["warnings"] if "never seen in training" in w]
    assert all("'other' category" in w for w in unseen)
    assert vb.spec.features[0].parts == ("hour", "weekday")
    assert [f.name for f in vb.spec.inputs][:3] == ["ts.hour", "ts.weekday", "site"]
    # The drift reference describes the model's inputs, the columns the device accounts.
    reference = vb.json_file(REFERENCE)
    assert [f["name"] for f in reference["features"]][:3] == ["ts.hour", "ts.weekday", "site"]


def test_health_samples_carry_the_text_a_device_receives(shipped: Any) -> None:
    _, _, _, vb = shipped
    rows = vb.json_file("health.json")["rows"]
    assert any(isinstance(r[0], str) and r[0].startswith("2024-") for r in rows)
    assert LoadedModel(vb).health_check() == len(rows)


def test_the_device_expands_dates_as_training_did(shipped: Any) -> None:
    _, path, run, vb = shipped
    model = LoadedModel(vb)
    busy = model.predict_row(["2024-03-05 11:00:00", "S01", 24.0])  # a Tuesday morning
    idle = model.predict_row(["2024-03-09T11:00:00Z", "S01", 24.0])  # a Saturday
    assert (busy.label, idle.label) == ("busy", "idle")
    assert model.predict_row([None, "S01", None]).label in ("busy", "idle")  # missing, imputed in the graph
    for bad in ("yesterday", 1709636400):
        with pytest.raises(BadValue, match="'ts'"):
            model.predict_row([bad, "S01", 24.0])

    engine = InferenceEngine(lambda _e: None, EngineSettings(drift_window_rows=10_000))
    engine.activate(model)
    out = io.StringIO()
    serve_csv(engine, str(path), rate=0, out=out, wait_model_s=0)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a for a in answers if "error" in a] == []
    X, _ = run.holdout()
    table_rows = run.holdout_rows()
    assert table_rows is not None and len(table_rows) == len(X)
    # The device, fed the raw holdout rows, answers as the host's ONNX model on the expanded ones.
    host = OnnxPredictor(vb.files["model.onnx"], run.record["model"]).labels(X)
    device = [model.predict_row(r).label for r in table_rows]
    assert device == list(host)


def test_drift_is_accounted_on_the_model_inputs(shipped: Any) -> None:
    _, _, _, vb = shipped
    events: list[Event] = []
    engine = InferenceEngine(events.append, EngineSettings(drift_window_rows=50, drift_min_rows=10))
    engine.activate(LoadedModel(vb))
    start = datetime(2024, 3, 4, 8)
    for i in range(50):
        engine.serve([(start + timedelta(hours=i % 10)).strftime("%Y-%m-%d %H:%M:%S"), "S02", 25.0])
    engine.tick()
    reports = [e.report for e in events if isinstance(e, DriftReady)]
    assert reports, "a full window is reported"
    assert {"ts.hour", "ts.weekday", "site", "temp"} == set(reports[0]["features"])


def test_an_unseen_category_is_other_inside_the_graph(shipped: Any) -> None:
    _, _, run, vb = shipped
    model = LoadedModel(vb)
    kept = set(_kept_sites(run))
    rare = next(f"S{i:02d}" for i in range(80) if f"S{i:02d}" not in kept)
    row = ["2024-03-05 11:00:00", None, 24.0]
    for site in (rare, "never-seen", OTHER):
        row[1] = site
        assert (
            model.predict_row(row).probabilities.tolist()
            == model.predict_row([row[0], rare, 24.0]).probabilities.tolist()
        )


def _kept_sites(run: Any) -> list[str]:
    import onnx

    proto = onnx.load_from_string(run.artifact("model.onnx").read_bytes())
    node = next(n for n in proto.graph.node if n.op_type == "LabelEncoder")
    keys_attr = next(a for a in node.attribute if a.name == "keys_strings")
    return [k.decode() for k in keys_attr.strings]


def test_a_date_run_reproduces(shipped: Any) -> None:
    ws, _, run, _ = shipped
    report = reproduce.reproduce(ws, run.id)
    assert report["match"], report
    assert report["inputs"]["datetimes"] == {"ts": None}
