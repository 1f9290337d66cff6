"""--model auto: the cross-validated search, its budget and leaderboard, the run record and the
CLI. Real data sets, real models; small budgets so the file runs in well under a minute."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_diabetes, load_iris

from edgekit.data import Table
from edgekit.errors import DataError
from edgekit.search import search
from edgekit.train import train


def table(loader: Any, task: str) -> Table:
    X, y = loader(return_X_y=True)
    y = y.astype(float) if task == "regression" else y
    return Table("mem", "y", [f"x{i}" for i in range(X.shape[1])], np.asarray(X, dtype=float), y, {}, task=task)


@pytest.fixture(scope="module")
def iris() -> Table:
    return table(load_iris, "classification")


@pytest.fixture(scope="module")
def diabetes() -> Table:
    return table(load_diabetes, "regression")


@pytest.mark.parametrize(("name", "metric"), [("iris", "accuracy"), ("diabetes", "r2")])
def test_auto_scores_at_least_a_default_forest(request: pytest.FixtureRequest, name: str, metric: str) -> None:
    data: Table = request.getfixturevalue(name)
    rf = train(data, "rf", seed=0)
    auto = train(data, "auto", seed=0, time_budget=3.0, metric=metric)
    np.testing.assert_array_equal(auto.y_test, rf.y_test)  # the same holdout
    assert auto.metrics["holdout"][metric] >= rf.metrics["holdout"][metric]
    assert auto.search is not None and auto.search["chosen"]["model"] == auto.model
    assert auto.leaderboard is not None
    (chosen,) = [e for e in auto.leaderboard if e["chosen"]]
    assert chosen["model"] == auto.model


def test_leaderboard_budget_and_progress(iris: Table) -> None:
    events: list[dict[str, Any]] = []
    start = time.perf_counter()
    found = search(
        iris.X, iris.y, task="classification", features=iris.features, metric="f1_macro",
        seed=0, time_budget=2.0, progress=events.append,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    # A running candidate may finish, none starts after the budget; generous for a loaded CI machine.
    assert elapsed < 2.0 + 6.0
    board = found.leaderboard
    assert len(board) == found.evaluated == len(events) >= 2  # timing-dependent beyond that
    assert {e["model"] for e in board} <= {"logreg", "rf", "et", "hgb", "mlp"}
    # Every family's defaults go first, cheapest first.
    order = [e["model"] for e in events[:5]]
    assert order == ["logreg", "rf", "et", "hgb", "mlp"][: len(order)]
    assert events[1]["params"] == {"n_estimators": 100, "max_features": "sqrt", "min_samples_leaf": 1}
    means = [e["cv_mean"] for e in board]
    assert means == sorted(means, reverse=True) and board[0]["rank"] == 1
    for entry in board:
        assert set(entry) == {"rank", "model", "params", "cv_mean", "cv_std", "fit_seconds", "cv_seconds", "chosen"}
        assert entry["fit_seconds"] > 0 and 0.0 <= entry["cv_std"] < 0.2
    assert found.oof.shape == (150, 3) and found.summary()["metric"] == "f1_macro"
    json.dumps(found.summary())
    json.dumps(board)


def test_lower_is_better_metrics_rank_ascending(iris: Table) -> None:
    found = search(
        iris.X, iris.y, task="classification", features=iris.features, metric="log_loss", seed=0, time_budget=1.0
    )
    losses = [e["cv_mean"] for e in found.leaderboard]
    assert losses == sorted(losses) and found.greater_is_better is False


def test_tiny_budget_still_returns_a_model(diabetes: Table) -> None:
    result = train(diabetes, "auto", seed=0, time_budget=0.01)
    assert result.search is not None and result.search["evaluated"] >= 1
    assert result.model == "linear"  # the first (cheapest) candidate always completes


def test_search_refuses_a_bad_budget_or_metric(iris: Table) -> None:
    with pytest.raises(DataError, match="not positive"):
        train(iris, "auto", time_budget=0)
    with pytest.raises(DataError, match="'neg_mae' is not a classification metric"):
        train(iris, "auto", time_budget=1, metric="neg_mae")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_train_run_records_search_and_reproducible_inputs(tmp_path: Path) -> None:
    from edgekit import pipeline, runs, workspace

    ws = workspace.init(tmp_path / "ws")
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(200):
        a, site = rng.normal(), str(rng.choice(["n", "s", ""]))
        rows.append([a if rng.random() > 0.1 else "NA", site, int(a + (1 if site == "n" else 0) > 0.5)])
    path = write_csv(tmp_path / "d.csv", ["a", "site", "y"], rows)
    run = pipeline.train_run(ws, path, "y", "auto", seed=0, time_budget=2.0, metric="f1_macro")
    rec = run.record
    model = rec["model"]
    assert model["task"] == "classification" and model["classes"] == [0, 1]
    assert model["features"] == [
        {"name": "a", "type": "numeric", "allow_missing": True},
        {"name": "site", "type": "categorical", "allow_missing": True},
    ]
    assert model["input"] == {"layout": "columns", "names": ["a", "site"], "dtype": "float32"}
    assert model["outputs"]["probabilities"] and model["outputs"]["label"]
    assert rec["search"]["requested"] == "auto"
    assert [e["model"] for e in rec["leaderboard"] if e["chosen"]] == [model["family"]]
    assert rec["inputs"]["model"] == model["family"] and rec["inputs"]["params"] == rec["search"]["chosen"]["params"]
    assert rec["metric"] == "f1_macro" and rec["parity"]["ok"]
    reference = json.loads(run.artifact(runs.REFERENCE_FILE).read_text())
    assert [f["kind"] for f in reference["features"]] == ["numeric", "categorical"]
    X, _ = run.holdout()
    assert X.dtype.kind == "U" and X.shape == (50, 2)


def test_cli_auto_json_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit import workspace
    from edgekit.cli.runs import train_cmd

    workspace.init(tmp_path)
    monkeypatch.chdir(tmp_path)
    X, y = load_diabetes(return_X_y=True)
    write_csv(tmp_path / "diab.csv", [f"x{i}" for i in range(10)] + ["y"], [[*r, t] for r, t in zip(X, y, strict=True)])
    runner = CliRunner()
    out = runner.invoke(train_cmd, ["diab.csv", "--target", "y", "--model", "auto", "--time-budget", "2", "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["task"] == "regression" and record["leaderboard"] and record["model"]["classes"] == []
    assert record["model"]["outputs"]["probabilities"] is None
    text = runner.invoke(
        train_cmd, ["diab.csv", "--target", "y", "--model", "auto", "--time-budget", "1", "--metric", "neg_mae"]
    )
    assert text.exit_code == 0, text.output
    assert "search" in text.stdout and "MODEL" in text.stdout and "r2" in text.stdout
    assert "cv neg_mae" in text.stderr  # progress lines on stderr, none with --json
    assert "cv " not in out.stderr
