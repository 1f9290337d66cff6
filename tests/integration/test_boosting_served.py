"""LightGBM and XGBoost models, trained with categorical features, missing values and string
labels, parity-gated, compacted by quantize, bundled, deployed and served by a real agent: the
device needs nothing new (onnxruntime's tree operators run them)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edgekit import bundler, keys, pipeline, workspace
from edgekit.data import load_table
from edgekit.fleet.deploy import Target, deploy
from edgekit.train import train
from tests.support.agent import AgentProcess
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
P = "edgekit/v1"


def _csv(path: Path) -> Path:
    rng = np.random.default_rng(4)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", "load", "mode", "state"])
        for _ in range(500):
            site = str(rng.choice(["north", "south", "east", ""]))
            temp = rng.normal(20 if site != "east" else 32, 4)
            load = rng.uniform(0, 1)
            mode = str(rng.choice(["auto", "manual"]))
            score = temp + 10 * load + (3 if mode == "manual" else 0)
            state = "hot" if score > 33 else ("warm" if score > 26 else "ok")
            w.writerow(["" if rng.random() < 0.08 else f"{temp:.2f}", site, f"{load:.3f}", mode, state])
    return path


@pytest.mark.parametrize("family", ["lgbm", "xgb"])
def test_boosting_model_served_by_a_real_agent(tmp_path: Path, broker: Broker, family: str) -> None:
    pytest.importorskip("lightgbm" if family == "lgbm" else "xgboost")
    ws = workspace.init(tmp_path / "ws")
    keys.generate(ws, "release")
    trust = tmp_path / "trust.json"
    trust.write_bytes(keys.trust_file(ws).to_json())
    path = _csv(tmp_path / "machines.csv")
    run = pipeline.train_run(ws, path, "state", family)
    record = run.record
    assert record["model"]["family"] == family and record["model"]["input"]["layout"] == "columns"
    assert record["parity"]["ok"] and record["parity"]["boundary_rows"] > 0
    run, report = pipeline.quantize_run(ws, run.id)
    assert report.family == "tree"  # the same compact-trees path as the scikit-learn forests
    built = bundler.build(ws, run.id, "machines", "release")
    key = keys.load_private(ws, "release")

    # The same model on the host (training is deterministic with one thread and a seed).
    host = train(load_table(path, "state"), family, seed=int(record["seed"]))
    rows = [
        [38.0, "east", 0.9, "manual"],
        [15.0, "north", 0.05, "auto"],
        [None, "south", 0.5, "auto"],  # missing temperature: the trees' own NaN branch
        [24.0, "", 0.7, "manual"],  # the missing-site category seen in training
        [21.0, "a site never seen", 0.4, "auto"],  # unknown category: all-zero one-hot
    ]
    X = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=object)
    expected = host.estimator.predict(X)
    proba = host.estimator.predict_proba(X).max(axis=1)

    agent = AgentProcess(f"{family}1", broker.url, tmp_path / family / "state", trust)
    try:
        result = deploy(broker.url, P, built.path, Target(device=f"{family}1"), key, key, keys.trust_file(ws), wait=30)
        assert result.outcome == {f"{family}1": "active"}, result.outcome
        answers = [agent.ask(r) for r in rows]
        assert [a["prediction"] for a in answers] == list(expected), answers
        np.testing.assert_allclose([a["confidence"] for a in answers], proba, atol=1e-4)
        assert all(a["bundle"] == "machines@1" for a in answers)
        assert "Traceback" not in agent.stderr()
    finally:
        agent.stop()
