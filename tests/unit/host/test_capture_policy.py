"""The capture policy a bundle ships: a percentile of the run's out-of-fold confidence, or the
user's number; off unless turned on."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

from device_agent.bundle import read_unverified
from edgekit import bundler, keys, pipeline, workspace
from edgekit.errors import UsageError
from edgekit.field import oof
from edgekit.field.policy import capture_section
from edgekit.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    root = tmp_path_factory.mktemp("capture")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    data = load_wine()
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "label", "logreg")
    return ws, run.id


def _policy(path: Path) -> dict:
    manifest, _ = read_unverified(path.read_bytes())
    return dict(manifest["policy"])


def test_the_run_keeps_its_out_of_fold_confidence(trained: tuple[Workspace, str]) -> None:
    ws, run_id = trained
    run = pipeline.load_run(ws, run_id)
    kept = oof.load(run.path)
    assert kept is not None
    X, y, proba = kept
    assert len(X) == len(y) == len(proba) and proba.shape[1] == 3
    percentiles = run.record["confidence"]["oof_percentiles"]
    assert percentiles[5] == pytest.approx(np.percentile(proba.max(axis=1), 5), abs=1e-6)


def test_a_bundle_ships_the_out_of_fold_p5_when_capture_is_on(trained: tuple[Workspace, str], tmp_path: Path) -> None:
    ws, run_id = trained
    p5 = pipeline.load_run(ws, run_id).record["confidence"]["oof_percentiles"][5]
    on = _policy(bundler.build(ws, run_id, "cap", "release", tmp_path, capture=True).path)
    assert on["capture"] == {"enabled": True, "below": p5, "basis": "out-of-fold p5", "uniform": 0.01}
    user = _policy(bundler.build(ws, run_id, "cap", "release", tmp_path, capture=True, capture_below="0.9").path)
    assert user["capture"]["below"] == 0.9 and user["capture"]["basis"] == "user"
    off = _policy(bundler.build(ws, run_id, "cap", "release", tmp_path).path)
    assert off["capture"]["enabled"] is False and off["capture"]["below"] == p5  # an agent may still turn it on


def test_a_bad_threshold_is_one_clear_error(trained: tuple[Workspace, str]) -> None:
    ws, run_id = trained
    record = pipeline.load_run(ws, run_id).record
    with pytest.raises(UsageError, match="neither pN nor a confidence"):
        capture_section(ws, record, True, "1.5")
    with pytest.raises(UsageError, match="did not keep"):
        capture_section(ws, {**record, "confidence": None}, True, "p5")
    assert capture_section(ws, {**record, "confidence": None}, False, "p5") is None
