"""compare (challenger against champion), the evidence promote records, and review (the
training data's suspicious labels)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

from edgekit import bundler, keys, pipeline, registry, workspace
from edgekit.errors import UsageError
from edgekit.field import challenge, oof
from edgekit.field.review import review
from edgekit.workspace import Workspace

FLIPPED = [5, 17, 90, 140]  # data rows whose label is changed on purpose


@pytest.fixture(scope="module")
def ws_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str, str, Path, Path]:
    root = tmp_path_factory.mktemp("challenge")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    y = data.target.copy()
    for i in FLIPPED:
        y[i] = (y[i] + 1) % 3
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        for x, t in zip(data.data, y, strict=True):
            w.writerow([*x.tolist(), int(t)])
    holdout = root / "holdout.csv"
    with holdout.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        for x, t in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(t)])
    a = pipeline.train_run(ws, path, "label", "logreg")
    b = pipeline.train_run(ws, path, "label", "rf")
    bundler.build(ws, a.id, "wine", "release")
    bundler.build(ws, b.id, "wine", "release")
    return ws, a.id, b.id, path, holdout


def test_the_verdict_needs_both_the_interval_and_the_test() -> None:
    assert challenge.verdict(0.1, (0.02, 0.2), 0.01) == "better"
    assert challenge.verdict(0.1, (0.02, 0.2), 0.2) == "not distinguishable"
    assert challenge.verdict(0.1, (-0.01, 0.2), 0.01) == "not distinguishable"
    assert challenge.verdict(-0.1, (-0.2, -0.02), 0.01) == "worse"
    assert challenge.overall(["better", "worse"]) == "worse"
    assert challenge.overall(["better", "not distinguishable"]) == "better"


def test_mcnemar_counts_the_rows_only_one_model_gets_right() -> None:
    a = np.array([True] * 10 + [False] * 30 + [True] * 60)
    b = np.array([False] * 10 + [True] * 30 + [True] * 60)
    test = challenge.mcnemar(a, b)
    assert (test["champion_only_right"], test["challenger_only_right"]) == (10, 30)
    assert 0.001 < test["p_value"] < 0.01
    assert challenge.mcnemar(a, a)["p_value"] == 1.0


def test_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    proba = np.array([[0.75, 0.25]] * 100)
    correct = np.array([True] * 75 + [False] * 25)
    assert challenge.ece(proba, correct) == pytest.approx(0.0)
    assert challenge.ece(proba, np.ones(100, dtype=bool)) == pytest.approx(0.25)


def test_a_model_against_itself_is_not_distinguishable(ws_runs: tuple[Workspace, str, str, Path, Path]) -> None:
    ws, a, _, _, holdout = ws_runs
    doc = challenge.compare_models(ws, a, "wine@1", [holdout])
    [s] = doc["on"]
    assert doc["verdict"] == s["verdict"] == "not distinguishable"
    assert s["changed_rows"]["count"] == 0 and s["test"]["p_value"] == 1.0
    assert all(m["delta"] == 0 and m["ci95"] == [0, 0] for m in s["metrics"].values())
    assert [c["support"] for c in s["per_class"]] == [59, 71, 48]


def test_two_models_are_compared_on_the_same_rows(ws_runs: tuple[Workspace, str, str, Path, Path]) -> None:
    ws, a, b, _, holdout = ws_runs
    doc = challenge.compare_models(ws, "wine@1", "wine@2", [holdout])
    [s] = doc["on"]
    acc = s["metrics"]["accuracy"]
    assert acc["delta"] == pytest.approx(acc["challenger"] - acc["champion"], abs=1e-6)
    assert acc["ci95"][0] <= acc["delta"] <= acc["ci95"][1]
    changed = s["changed_rows"]
    assert changed["count"] >= changed["fixed"] + changed["broken"]
    assert s["test"]["challenger_only_right"] - s["test"]["champion_only_right"] == changed["fixed"] - changed["broken"]
    assert doc["champion"]["run_id"] == a and doc["challenger"]["run_id"] == b


def test_promote_records_the_verdict_and_refuses_a_worse_challenger(
    ws_runs: tuple[Workspace, str, str, Path, Path], tmp_path: Path
) -> None:
    ws, _, _, _, holdout = ws_runs
    doc = {"schema": "edgekit.model_comparison/1", **challenge.compare_models(ws, "wine@1", "wine@2", [holdout])}
    cmp = tmp_path / "cmp.json"
    cmp.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="not wine v1"):
        challenge.attach_evidence(ws, "wine", 1, registry.PRODUCTION, cmp, None)
    reason, kept = challenge.attach_evidence(ws, "wine", 2, registry.PRODUCTION, cmp, "pilot passed")
    assert reason.startswith("pilot passed — compare vs wine v1: ") and kept.is_file()
    assert json.loads(kept.read_text()) == doc
    cmp.write_text(json.dumps({**doc, "verdict": "worse"}))
    with pytest.raises(UsageError, match="worse"):
        challenge.attach_evidence(ws, "wine", 2, registry.PRODUCTION, cmp, None)


def test_review_ranks_the_flipped_labels_first(ws_runs: tuple[Workspace, str, str, Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("cleanlab")
    ws, a, _, _, _ = ws_runs
    doc = review(ws, a, tmp_path / "review.csv")
    with (tmp_path / "review.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == doc["issues"] > 0 and rows[0]["label"] == ""
    # Every flipped row that landed in the training split is among the first issues found.
    positions = oof.positions(pipeline.load_run(ws, a).path)
    assert positions is not None
    flipped_in_training = {i for i in FLIPPED if i in set(positions.tolist())}
    assert flipped_in_training
    assert flipped_in_training <= {int(r["row"]) - 1 for r in rows[: len(FLIPPED) + 4]}
