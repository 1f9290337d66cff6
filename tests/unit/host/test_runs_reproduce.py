"""Runs recorded, compared, explained and reproduced — real data, real models, real SQLite."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from edgekit import compare, explain, pipeline, reproduce, runs, workspace
from edgekit.errors import DataError, UsageError
from edgekit.workspace import Workspace


def _cancer_csv(path: Path) -> Path:
    data = load_breast_cancer()
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*data.feature_names, "diagnosis"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), ["malignant", "benign"][int(y)]])
    return path


@pytest.fixture(scope="module")
def ws_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path, runs.Run, runs.Run]:
    root = tmp_path_factory.mktemp("runs")
    ws = workspace.init(root)
    data = _cancer_csv(root / "cancer.csv")
    a = pipeline.train_run(ws, data, "diagnosis", "logreg", seed=0)
    b = pipeline.train_run(ws, data, "diagnosis", "logreg", seed=1)
    return ws, data, a, b


def test_run_records_what_the_issue_asks_for(ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]) -> None:
    _, data, a, _ = ws_runs
    rec = a.record
    assert rec["data"]["sha256"] and rec["data"]["rows"] == 569 and rec["data"]["columns"] == 31
    assert rec["data"]["path"] == str(data) and len(rec["data"]["schema"]) == 30
    assert "code_version" in rec and rec["seed"] == 0 and rec["params"]["test_size"] == 0.25
    assert set(rec["metrics"]) >= {"holdout", "cv"} and rec["parity"]["ok"]
    assert rec["environment"]["packages"]["scikit-learn"] and rec["environment"]["platform"]
    assert rec["duration_s"] > 0


def test_permutation_importance_is_stored_with_the_run(ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]) -> None:
    ws, _, a, _ = ws_runs
    stored = runs.load_run(ws, a.id).record["explain"]
    assert stored["metric"] == "neg_log_loss" and stored["n_repeats"] == explain.N_REPEATS
    assert stored["on"] == "holdout" and stored["rows"] == 143
    imp = stored["permutation_importance"]
    assert set(imp) == {f["name"] for f in a.record["model"]["features"]}
    assert all(set(v) == {"mean", "std"} and v["std"] >= 0 for v in imp.values())
    top = explain.top_features(stored, 3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and top[0][1] > 0.005
    # Seeded: computing it again on the same run gives the same numbers.
    again = explain.permutation(
        a.artifact(runs.FLOAT_MODEL).read_bytes(), a.record["model"], *a.holdout(), seed=a.record["seed"]
    )
    assert again["permutation_importance"] == imp


def test_compare_marks_what_differs(ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]) -> None:
    _, _, a, b = ws_runs
    result = compare.compare([a, b])
    assert result["runs"] == [a.id, b.id]
    by_field = {f["field"]: f for f in result["fields"]}
    assert by_field["seed"]["differs"] and by_field["seed"]["values"] == [0, 1]
    assert by_field["seed"]["delta"] == [0.0, 1.0]
    assert not by_field["data.sha256"]["differs"] and not by_field["model.family"]["differs"]
    assert not by_field["params.C"]["differs"]
    assert by_field["metrics.holdout.log_loss"]["differs"]  # another split, another score
    assert result["differing"] == sum(f["differs"] for f in result["fields"])
    # Sections come in a fixed order: data before params before metrics.
    fields = [f["field"] for f in result["fields"]]
    assert fields.index("data.sha256") < fields.index("params.C") < fields.index("metrics.holdout.accuracy")
    same = compare.compare([a, a])
    assert same["differing"] == 0


def test_the_diff_filter_is_the_library_s(ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]) -> None:
    """--diff-only --json gives a script what a person sees: only the differing rows, with the
    count of every field compared."""
    _, _, a, b = ws_runs
    full = compare.compare([a, b])
    only = compare.compare([a, b], diff_only=True)
    assert only["fields"] == [f for f in full["fields"] if f["differs"]]
    assert only["total"] == full["total"] == len(full["fields"]) > only["differing"] == len(only["fields"]) > 0
    assert only["diff_only"] and not full["diff_only"]
    with pytest.raises(UsageError):
        compare.compare([a])


def test_reproduce_matches_exactly(ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]) -> None:
    ws, _, a, _ = ws_runs
    report = reproduce.reproduce(ws, a.id)
    assert report["match"] and report["metrics_match"] and report["predictions_match"]
    assert report["predictions"]["max_abs_dp"] == 0.0 and report["predictions"]["same_holdout_rows"]
    assert report["predictions"]["label_agreement"] == 1.0 and report["predictions"]["rows"] == 143
    assert all(m["delta"] == 0.0 for m in report["metrics"].values())
    assert report["inputs"] == {"model": "logreg", "seed": 0, "test_size": 0.25, "max_categories": 30}
    assert report["model_bytes_identical"]
    new = runs.load_run(ws, report["reproduction"])
    assert new.record["reproduces"] == a.id and new.id != a.id


def test_reproduce_refuses_changed_data_before_training(
    tmp_path: Path, ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]
) -> None:
    ws, data, a, _ = ws_runs
    before = len(runs.list_runs(ws))
    changed = tmp_path / "cancer.csv"
    lines = data.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[0], "99.5", 1)  # one value of one row
    changed.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="the data changed since run") as exc:
        reproduce.reproduce(ws, a.id, changed)
    assert "569 rows" in str(exc.value) and exc.value.exit_code == 3
    with pytest.raises(DataError, match="is gone"):
        reproduce.reproduce(ws, a.id, tmp_path / "missing.csv")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(data.read_text().replace("diagnosis", "label", 1))
    with pytest.raises(DataError, match=r"no longer loads as it did: .*no target column 'diagnosis'"):
        reproduce.reproduce(ws, a.id, renamed)
    assert len(runs.list_runs(ws)) == before  # nothing was trained


def test_reproduce_from_a_moved_file_with_the_same_content(
    tmp_path: Path, ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]
) -> None:
    ws, data, _, b = ws_runs
    moved = tmp_path / "elsewhere.csv"
    # Same table, other bytes: CRLF line endings do not change the fingerprint.
    moved.write_bytes(data.read_bytes().replace(b"\n", b"\r\n"))
    report = reproduce.reproduce(ws, b.id, moved)
    assert report["match"] and report["inputs"]["seed"] == 1


def test_reproduce_notices_a_model_that_is_not_what_was_recorded(
    tmp_path: Path, ws_runs: tuple[Workspace, Path, runs.Run, runs.Run]
) -> None:
    """A run whose stored model is not the one its recorded inputs produce (here: the model
    file of another seed's run) does not reproduce, and the report says by how much."""
    ws, _, a, b = ws_runs
    copy_id = a.id[:-6] + "c0ffee"
    shutil.copytree(a.path, ws.runs_dir / copy_id)
    forged = runs.Run(ws.runs_dir / copy_id, {**a.record, "id": copy_id})
    shutil.copyfile(b.artifact(runs.FLOAT_MODEL), forged.artifact(runs.FLOAT_MODEL))
    forged.save()
    report = reproduce.reproduce(ws, copy_id)
    assert not report["match"] and not report["predictions_match"] and report["metrics_match"]
    assert report["predictions"]["max_abs_dp"] > 1e-3 and not report["model_bytes_identical"]
    # The original holdout rows are compared, with the reproduction's model on the same rows.
    X, _ = a.holdout()
    assert report["predictions"]["rows"] == len(X) and np.isfinite(report["predictions"]["max_abs_dp"])


def test_reproduce_quantizes_again_when_the_run_was_quantized(
    ws_runs: tuple[Workspace, Path, runs.Run, runs.Run],
) -> None:
    ws, data, _, _ = ws_runs
    run = pipeline.train_run(ws, data, "diagnosis", "logreg", seed=2)
    run, _ = pipeline.quantize_run(ws, run.id)
    report = reproduce.reproduce(ws, run.id)
    q = report["quantization"]
    recorded = run.record["quantization"]
    assert q["applied"][0] == bool(recorded["applied"]) and q["method"][0] == recorded.get("method")
    assert q["match"] and report["match"] and q["settings"]["max_accuracy_loss"] == recorded["max_accuracy_loss"]
    assert runs.load_run(ws, report["reproduction"]).record["quantization"]["applied"] == recorded["applied"]


def test_an_auto_search_reproduces_by_retraining_its_choice(
    ws_runs: tuple[Workspace, Path, runs.Run, runs.Run],
) -> None:
    """The search depends on the time budget; the family and parameters it chose do not."""
    ws, data, _, _ = ws_runs
    run = pipeline.train_run(ws, data, "diagnosis", "auto", time_budget=1.0)
    report = reproduce.reproduce(ws, run.id)
    chosen = run.record["inputs"]
    assert report["inputs"]["model"] == chosen["model"] != "auto"
    assert report["inputs"].get("params") == chosen["params"]
    assert report["match"] and report["predictions"]["max_abs_dp"] == 0.0


def test_categorical_and_missing_values_are_explained_reproduced_and_bundled(tmp_path: Path) -> None:
    """A run whose model takes one input per column (strings for categories, NaN for missing):
    importance feeds the columns, reproduce matches, and the bundle's health rows are raw values."""
    import json
    import time

    from device_agent.bundle import HEALTH, verify
    from edgekit import bundler, keys

    rng = np.random.default_rng(0)
    path = tmp_path / "sites.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", "load", "alarm"])
        for _ in range(300):
            site, temp, load = rng.choice(["north", "south", "east"]), rng.normal(20, 5), rng.normal(0, 1)
            alarm = int((temp > 21) ^ (site == "east"))
            w.writerow(
                [round(temp, 3) if rng.random() > 0.05 else "", site if rng.random() > 0.05 else "", load, alarm]
            )
    ws = workspace.init(tmp_path / "ws")
    keys.generate(ws, "release")
    run = pipeline.train_run(ws, path, "alarm", "logreg")
    assert run.record["model"]["input"]["layout"] == "columns"
    imp = runs.load_run(ws, run.id).record["explain"]["permutation_importance"]
    assert set(imp) == {"temp", "site", "load"} and imp["load"]["mean"] < min(imp["temp"]["mean"], imp["site"]["mean"])
    assert reproduce.reproduce(ws, run.id)["match"]

    built = bundler.build(ws, run.id, "sites", "release")
    vb = verify(built.path.read_bytes(), keys.trust_file(ws), now=time.time())
    rows = json.loads(vb.files[HEALTH])["rows"]
    assert all(isinstance(r[1], str) or r[1] is None for r in rows)
    assert all(isinstance(r[0], float) or r[0] is None for r in rows) and all(isinstance(r[2], float) for r in rows)
