"""Categorical features, missing values and regression, all the way to a real agent: the
device receives raw values exactly as the CSV has them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.client import AgentClient, RequestRefused
from edgekit import bundler, keys, pipeline, workspace
from edgekit.fleet.deploy import Target, deploy
from edgekit.fleet.status import fleet_status
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
P = "edgekit/v1"


def _workspace(tmp_path: Path) -> tuple[workspace.Workspace, Path]:
    ws = workspace.init(tmp_path / "ws")
    keys.generate(ws, "release")
    trust = tmp_path / "trust.json"
    trust.write_bytes(keys.trust_file(ws).to_json())
    return ws, trust


def _ship(ws: workspace.Workspace, run_id: str, name: str, broker: Broker, device: str) -> None:
    built = bundler.build(ws, run_id, name, "release")
    key = keys.load_private(ws, "release")
    result = deploy(broker.url, P, built.path, Target(device=device), key, key, keys.trust_file(ws), wait=30)
    assert result.outcome == {device: "active"}, result.outcome


def test_categorical_and_missing_values_are_served_raw(tmp_path: Path, broker: Broker) -> None:
    ws, trust = _workspace(tmp_path)
    rng = np.random.default_rng(0)
    path = tmp_path / "machines.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", "load", "state"])
        for _ in range(400):
            site = str(rng.choice(["north", "south", "east"]))
            temp = rng.normal(20 if site != "east" else 35, 3)
            load = rng.uniform(0, 1)
            state = "hot" if temp + 10 * load > 30 else "ok"
            w.writerow(["" if rng.random() < 0.05 else f"{temp:.2f}", site, f"{load:.3f}", state])
    run = pipeline.train_run(ws, path, "state", "logreg")
    model = run.record["model"]
    assert model["input"]["layout"] == "columns"
    assert {f["name"]: f["type"] for f in model["features"]}["site"] == "categorical"
    assert {f["name"]: f["allow_missing"] for f in model["features"]}["temp"] is True

    agent = AgentProcess("mx1", broker.url, tmp_path / "mx1" / "state", trust)
    try:
        _ship(ws, run.id, "machines", broker, "mx1")
        hot = agent.ask({"values": {"temp": 38.0, "site": "east", "load": 0.9}})
        ok = agent.ask({"values": {"temp": 15.0, "site": "north", "load": 0.05}})
        assert (hot["prediction"], ok["prediction"]) == ("hot", "ok")
        assert "prediction" in agent.ask([None, "south", 0.5]), "a missing temperature is imputed in the graph"
        assert "prediction" in agent.ask([21.0, "a site never seen", 0.5]), "unknown categories are ignored"
        assert agent.ask([21.0, 3, 0.5])["error"] == "row.bad_value"  # a number where a category belongs
        assert agent.ask([21.0, None, 0.5])["error"] == "row.bad_value"  # site had no missing values
    finally:
        agent.stop()


def test_regression_end_to_end(tmp_path: Path, broker: Broker) -> None:
    from sklearn.datasets import load_diabetes

    ws, trust = _workspace(tmp_path)
    data = load_diabetes()
    path = tmp_path / "diabetes.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*data.feature_names, "progression"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), float(y)])
    run = pipeline.train_run(ws, path, "progression", "linear")
    assert run.record["task"] == "regression"
    agent = AgentProcess("rg1", broker.url, tmp_path / "rg1" / "state", trust, extra=("--drift-window", "50"))
    try:
        _ship(ws, run.id, "diabetes", broker, "rg1")
        answers = [agent.ask(row.tolist()) for row in data.data[:60]]
        preds = np.array([a["prediction"] for a in answers])
        assert "confidence" not in answers[0]
        assert np.corrcoef(preds, data.target[:60])[0, 1] > 0.5  # a real model, not a constant
        assert all(isinstance(a["prediction"], float) for a in answers)
        json.dumps(answers)
        # The regressor's predictions feed a drift window too (prediction bins, no confidence).
        status = wait_until(
            lambda: next((d for d in fleet_status(broker.url, P) if (d.get("drift") or {}).get("n")), None),
            what="a drift window from the regressor",
        )
        assert status["drift"]["n"] == 50
        assert "Traceback" not in agent.stderr()
    finally:
        agent.stop()


def test_dates_and_capped_categories_through_a_real_agent(tmp_path: Path, broker: Broker) -> None:
    """A date column used through its parts and a site code with many values, capped: the
    agent gets the raw text and answers as the host's model does."""
    from datetime import datetime, timedelta

    ws, trust = _workspace(tmp_path)
    rng = np.random.default_rng(5)
    path = tmp_path / "sensors.csv"
    start = datetime(2024, 3, 1)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "site", "temp", "state"])
        for i in range(500):
            t = start + timedelta(hours=i)
            busy = 8 <= t.hour < 18 and t.weekday() < 5
            w.writerow([t.isoformat(sep=" "), f"S{int(rng.zipf(1.4)) % 60:02d}", f"{20 + rng.normal(0, 2):.2f}",
                        "busy" if busy else "idle"])  # fmt: skip
    run = pipeline.train_run(ws, path, "state", "rf", datetimes={"ts": None}, max_categories=6)
    agent = AgentProcess("dt1", broker.url, tmp_path / "dt1" / "state", trust, extra=("--drift-window", "30"))
    try:
        _ship(ws, run.id, "sensors", broker, "dt1")
        assert agent.ask({"values": {"ts": "2024-04-02 10:00:00", "site": "S01", "temp": 21.0}})["prediction"] == "busy"
        assert agent.ask(["2024-04-06 10:00:00", "never-seen", 21.0])["prediction"] == "idle"  # a Saturday
        assert agent.ask(["soon", "S01", 21.0])["error"] == "row.bad_value"
        # The same rows as a batch through the local API: one call, the same answers, row by row.
        rows = [
            ["2024-04-02 10:00:00", "S01", 21.0],
            ["2024-04-06 10:00:00", "never-seen", 21.0],
            ["soon", "S01", 21.0],
        ]
        with AgentClient(str(tmp_path / "dt1" / "state" / "agent.sock")) as app:
            batch = app.predict_many(rows)
            assert [a.get("prediction") for a in batch] == ["busy", "idle", None]
            assert batch[2]["error"] == "row.bad_value"
            with pytest.raises(RequestRefused, match="date/time features: send its rows as JSON"):
                app.predict_array([[1.0, 2.0, 3.0]])
        for k in range(30):
            agent.ask([f"2024-04-0{1 + k % 5} {8 + k % 10:02d}:00:00", "S02", 21.0])
        status = wait_until(
            lambda: next((d for d in fleet_status(broker.url, P) if (d.get("drift") or {}).get("n")), None),
            what="a drift window on the date parts",
        )
        assert status["drift"]["n"] == 30
        assert "Traceback" not in agent.stderr()
    finally:
        agent.stop()
