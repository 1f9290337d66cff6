"""Labelled field rows: checked against the model's training data (the error names the line
and the value), kept as versioned datasets, and added to a challenger's training split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

from edgekit import keys, pipeline, workspace
from edgekit.errors import DataError
from edgekit.field import labels, oof
from edgekit.field.samples import META
from edgekit.workspace import Workspace


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str, Path, list[str]]:
    root = tmp_path_factory.mktemp("labels")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "cultivar"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "cultivar", "logreg")
    return ws, run.id, path, names


def _pulled(path: Path, names: list[str], rows: list[tuple[list[float], str]], device: str = "d1") -> Path:
    """A CSV as fleet samples pull writes it, labels filled in (or not)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, *META, "label"])
        for i, (x, label) in enumerate(rows):
            w.writerow([*x, 0, 0.41, device, "wine@1", f"2026-01-01T00:00:0{i % 10}Z", "low", label])
    return path


def _field_rows(n: int = 30, start: int = 0) -> list[tuple[list[float], str]]:
    data = load_wine()
    picked = np.random.default_rng(0).permutation(len(data.target))[start : start + n]
    return [((data.data[i] * 1.1).tolist(), str(int(data.target[i]))) for i in picked]


def test_import_checks_and_versions_the_rows(base: tuple[Workspace, str, Path, list[str]], tmp_path: Path) -> None:
    ws, run_id, _, names = base
    rows = _field_rows()
    rows[3] = (rows[3][0], "")  # not labelled yet
    f = _pulled(tmp_path / "field.csv", names, rows)
    v1 = labels.import_labels(ws, f, "wine-field", run=run_id)
    assert (v1["version"], v1["rows"], v1["added"], v1["unlabelled"]) == (1, 29, 29, 1)
    assert v1["devices"] == ["d1"] and v1["run_id"] == run_id and v1["target"] == "cultivar"
    assert v1["imported_by"] and v1["imported_at"] and len(v1["fingerprint"]) == 64
    path, meta = labels.resolve(ws, "wine-field@1")
    with path.open() as fh:
        header = next(csv.reader(fh))
    assert header == [*names, "cultivar"] and meta == v1
    # The same file again: a new version, the duplicates left out; more rows from another device.
    more = _pulled(tmp_path / "more.csv", names, _field_rows(10, start=30), device="d2")
    labels.import_labels(ws, f, "wine-field", run=run_id)
    v3 = labels.import_labels(ws, more, "wine-field", run=run_id)
    assert (v3["version"], v3["rows"], v3["devices"]) == (3, 39, ["d1", "d2"])
    assert labels.resolve(ws, "wine-field")[1]["version"] == 3 and len(v3["sources"]) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: (["abc", *r[0][1:]], r[1]), r"line 4: column 'alcohol' value 'abc' is not a number"),
        (lambda r: (r[0], "7"), r"line 4: label '7' is not one of the model's classes"),
        (lambda r: (["", *r[0][1:]], r[1]), r"line 4: column 'alcohol' is missing a value"),
    ],
)
def test_a_bad_cell_is_named_with_its_line_and_value(
    base: tuple[Workspace, str, Path, list[str]], tmp_path: Path, change: object, message: str
) -> None:
    ws, run_id, _, names = base
    rows = _field_rows(5)
    rows[2] = change(rows[2])  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        labels.import_labels(ws, _pulled(tmp_path / "bad.csv", names, rows), "bad", run=run_id)
    assert labels.versions(ws, "bad") == []


def test_a_missing_feature_column_is_named(base: tuple[Workspace, str, Path, list[str]], tmp_path: Path) -> None:
    ws, run_id, _, names = base
    f = _pulled(tmp_path / "short.csv", ["x", *names[1:]], _field_rows(3))
    with pytest.raises(DataError, match="no column 'alcohol'"):
        labels.import_labels(ws, f, "short", run=run_id)


def test_a_challenger_trains_on_the_base_data_plus_the_labelled_rows(
    base: tuple[Workspace, str, Path, list[str]], tmp_path: Path
) -> None:
    ws, run_id, data, names = base
    f = _pulled(tmp_path / "f.csv", names, _field_rows(30))
    record = labels.import_labels(ws, f, "wine-more", run=run_id)
    champion = pipeline.load_run(ws, run_id)
    challenger = pipeline.train_run(ws, data, "cultivar", "logreg", add=[f"dataset:wine-more@{record['version']}"])
    added = challenger.record["data"]["added"]
    assert added == [
        {"dataset": "wine-more", "version": 1, "devices": ["d1"], "rows": 30, "fingerprint": record["fingerprint"]}
    ]
    assert challenger.record["data"]["sha256"] == champion.record["data"]["sha256"]  # the same base table
    assert challenger.record["inputs"]["add"] == ["dataset:wine-more@1"]
    # The added rows joined the training split only: the holdout is the champion's.
    assert np.array_equal(challenger.holdout()[0], champion.holdout()[0])
    kept_c, kept_b = oof.load(challenger.path), oof.load(champion.path)
    assert kept_c is not None and kept_b is not None and len(kept_c[0]) == len(kept_b[0]) + 30
    from_file = pipeline.train_run(ws, data, "cultivar", "logreg", add=[str(f)])
    assert from_file.record["data"]["added"][0]["fingerprint"] == record["fingerprint"]


def test_rows_of_one_class_with_categories_and_new_values_are_added(tmp_path: Path) -> None:
    """Field rows are often all of one class, and carry categories training never had."""
    ws = workspace.init(tmp_path / "ws")
    rng = np.random.default_rng(2)
    base = tmp_path / "base.csv"
    with base.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", "alarm"])
        for _ in range(200):
            site = str(rng.choice(["north", "south"]))
            temp = round(float(rng.normal(0, 1)), 4)
            w.writerow([temp, site, "yes" if temp + (0.5 if site == "north" else -0.5) > 0 else "no"])
    run = pipeline.train_run(ws, base, "alarm", "logreg")
    field = tmp_path / "field.csv"
    with field.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["temp", "site", *META, "label"])
        for i in range(12):
            w.writerow([0.1 * i, "east", "no", 0.5, "d9", "alarm@1", "2026-01-01T00:00:00Z", "low", "yes"])
    record = labels.import_labels(ws, field, "alarms", run=run.id)
    assert record["rows"] == 12 and record["labels"] == {"yes": 12}
    with pytest.raises(DataError, match="label 'maybe' is not one of the model's classes"):
        bad = tmp_path / "bad.csv"
        bad.write_text(field.read_text().replace(",yes\n", ",maybe\n", 1))
        labels.import_labels(ws, bad, "alarms", run=run.id)
    challenger = pipeline.train_run(ws, base, "alarm", "logreg", add=["dataset:alarms"])
    assert challenger.record["data"]["added"][0]["rows"] == 12
    kept = oof.load(challenger.path)
    assert kept is not None and list(kept[0][-1]) == ["1.1", "east"] and kept[1][-1] == "yes"
