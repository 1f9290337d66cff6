"""One definition of a missing value: the file a model was trained on, replayed on the device,
is read the same way cell by cell (``NA``, ``n/a``, ``?``, ``null``, an empty cell…)."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from device_agent.bundle import Feature, verify
from device_agent.config import EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.missing import MISSING_MARKERS, is_missing_text
from device_agent.runtime import LoadedModel
from device_agent.sources import _csv_row, serve_csv
from edgekit import bundler, keys, pipeline, workspace
from edgekit.data import load_table
from edgekit.explain import OnnxPredictor

MARKERS = ["NA", "n/a", "?", "null", "", " NaN ", "None"]


def _sensor_csv(path: Path, rows: int = 240) -> None:
    rng = np.random.default_rng(3)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", "load", "state"])
        for i in range(rows):
            site = str(rng.choice(["north", "south", "east"]))
            temp = rng.normal(20 if site != "east" else 35, 3)
            load = rng.uniform(0, 1)
            state = "hot" if temp + 10 * load > 30 else "ok"
            temp_cell = MARKERS[i % len(MARKERS)] if i % 9 == 0 else f"{temp:.2f}"
            site_cell = MARKERS[i % len(MARKERS)] if i % 13 == 0 else site
            w.writerow([temp_cell, site_cell, f"{load:.3f}", state])


def test_the_markers_are_one_set() -> None:
    assert all(is_missing_text(m) for m in MARKERS)
    assert not any(is_missing_text(t) for t in ("0", "north", "n", "-", "NAN1"))
    assert "" in MISSING_MARKERS


def test_training_and_replay_read_the_same_cells_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    _sensor_csv(path)
    table = load_table(path, "state")
    features = list(table.features)
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    device_features = [Feature(f.name, f.type, f.allow_missing) for f in features]
    for i, record in enumerate(records):
        device_row = _csv_row(record, device_features)
        for j, f in enumerate(features):
            host = table.X[i, j]
            host_missing = host == "" if f.type == "categorical" else math.isnan(float(host))
            assert (device_row[j] is None) == host_missing, (i, f.name, record[f.name])


def test_the_device_serves_the_training_file_as_the_host_predicts_it(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    _sensor_csv(path)
    ws = workspace.init(tmp_path / "ws")
    keys.generate(ws, "release")
    run = pipeline.train_run(ws, path, "state", "logreg")
    built = bundler.build(ws, run.id, "sensors", "release")
    vb = verify(built.path.read_bytes(), keys.trust_file(ws), now=datetime.now(UTC).timestamp())
    engine = InferenceEngine(lambda _event: None, EngineSettings(drift_window_rows=1000))
    engine.activate(LoadedModel(vb))
    out = io.StringIO()
    assert serve_csv(engine, str(path), rate=0, out=out, wait_model_s=0) == 240
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a for a in answers if "error" in a] == []  # before: NA, n/a, ? were row.bad_value

    table = load_table(path, "state")
    host = OnnxPredictor(vb.files["model.onnx"], run.record["model"]).labels(table.X)
    assert [a["prediction"] for a in answers] == list(host)
