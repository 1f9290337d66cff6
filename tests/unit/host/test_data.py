"""load_table: real data sets round-trip; every refusal names what is wrong and where."""

from __future__ import annotations

import csv
import sys
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris

from edgekit.data import load_table
from edgekit.errors import DataError


def write_csv(path: Path, header: list[str], rows: list[list[object]], newline: str = "\n") -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator=newline).writerows([header, *rows])
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def small_rows(n: int = 24) -> list[list[object]]:
    """Two numeric features and a two-class integer label."""
    return [[i, i * 0.5, i % 2] for i in range(n)]


def refusal(path: Path, target: str = "y", **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load_table(path, target, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_breast_cancer_round_trips(tmp_path: Path) -> None:
    data = load_breast_cancer()
    names = list(data.feature_names)
    path = write_csv(
        tmp_path / "bc.csv", [*names, "target"], [[*r, t] for r, t in zip(data.data, data.target, strict=True)]
    )
    table = load_table(path, "target")
    assert table.feature_names == names
    assert table.X.dtype == np.float64 and table.X.shape == (569, 30)
    np.testing.assert_allclose(table.X, data.data, rtol=1e-15)
    assert table.y.dtype == np.int64
    assert table.y.tolist() == data.target.tolist()
    fp = table.fingerprint
    assert fp["rows"] == 569 and fp["columns"] == 31 and fp["target"] == "target"
    assert fp["schema"][0] == {"name": "mean radius", "type": "numeric", "allow_missing": False}
    assert len(fp["schema"]) == 30 and fp["task"] == "classification"
    assert table.task == "classification" and table.numeric_only and table.warnings == []
    assert len(fp["sha256"]) == 64


def test_text_labels_and_target_in_the_middle(tmp_path: Path) -> None:
    data = load_iris()
    header = ["sl", "sw", "species", "pl", "pw"]
    rows = [[r[0], r[1], data.target_names[t], r[2], r[3]] for r, t in zip(data.data, data.target, strict=True)]
    table = load_table(write_csv(tmp_path / "iris.csv", header, rows), "species")
    assert table.feature_names == ["sl", "sw", "pl", "pw"]
    np.testing.assert_array_equal(table.X, data.data)
    assert table.y.dtype.kind == "U"
    assert sorted(set(table.y.tolist())) == ["setosa", "versicolor", "virginica"]


def test_fingerprint_ignores_formatting_but_not_values(tmp_path: Path) -> None:
    rows = small_rows()
    base = load_table(write_csv(tmp_path / "a.csv", ["a", "b", "y"], rows), "y").fingerprint
    crlf = write_csv(tmp_path / "b.csv", ["a", "b", "y"], rows, newline="\r\n")
    padded = write_text(
        tmp_path / "c.csv",
        "a , b,y\n\n" + "".join(f" {float(a)} ,{b:.3f}, {y}\n" for a, b, y in rows) + "\n\n",
    )
    assert load_table(crlf, "y").fingerprint == base
    assert load_table(padded, "y").fingerprint == base
    changed = [list(r) for r in rows]
    changed[5][1] = 99
    other = load_table(write_csv(tmp_path / "d.csv", ["a", "b", "y"], changed), "y").fingerprint
    assert other["sha256"] != base["sha256"] and other["rows"] == base["rows"]


def test_constant_column_is_accepted_without_warnings(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["a", "const", "y"], [[i, 7, i % 2] for i in range(30)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = load_table(path, "y")
    assert np.all(table.X[:, 1] == 7.0)


def test_missing_file(tmp_path: Path) -> None:
    message = refusal(tmp_path / "nope.csv")
    assert "nope.csv" in message and "no such file" in message


def test_unreadable_path(tmp_path: Path) -> None:
    assert "cannot read" in refusal(tmp_path)  # a directory


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b,y\n1,caf\xe9,0\n".encode("latin-1"))
    assert "UTF-8" in refusal(path)


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "empty" in refusal(write_text(tmp_path / "e.csv", text))


def test_target_missing_lists_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["alpha", "beta", "label"], small_rows())
    message = refusal(path, target="class")
    assert "'class'" in message and "alpha, beta, label" in message


def test_non_numeric_value_names_column_line_value(tmp_path: Path) -> None:
    rows = small_rows()
    rows[6][1] = "12,5"  # a decimal comma, quoted by the csv writer
    message = refusal(write_csv(tmp_path / "n.csv", ["a", "b", "y"], rows))
    assert "'b'" in message and "line 8" in message and "'12,5'" in message
    assert "mixed types" in message and "23 of 24 values are numbers" in message and "clean" in message


@pytest.mark.parametrize("value", ["", "NA", "nan", "?", "null", "None"])
def test_missing_numeric_values_become_nan_and_allow_missing(tmp_path: Path, value: str) -> None:
    rows = small_rows()
    rows[2][0] = value
    table = load_table(write_csv(tmp_path / "m.csv", ["a", "b", "y"], rows), "y")
    assert np.isnan(table.X[2, 0]) and np.isnan(table.X[:, 0]).sum() == 1
    assert [f.to_dict() for f in table.features] == [
        {"name": "a", "type": "numeric", "allow_missing": True},
        {"name": "b", "type": "numeric", "allow_missing": False},
    ]


def test_missing_label(tmp_path: Path) -> None:
    rows = small_rows()
    rows[10][2] = ""
    message = refusal(write_csv(tmp_path / "l.csv", ["a", "b", "y"], rows))
    assert "'y'" in message and "line 12" in message and "missing" in message


def test_infinite_value(tmp_path: Path) -> None:
    rows = small_rows()
    rows[0][0] = "inf"
    message = refusal(write_csv(tmp_path / "i.csv", ["a", "b", "y"], rows))
    assert "'a'" in message and "line 2" in message and "float32" in message


def test_ragged_row_counts_physical_lines(tmp_path: Path) -> None:
    body = "".join(f"{a},{b},{y}\n" for a, b, y in small_rows())
    lines = body.splitlines(keepends=True)
    lines[3] = "3,1.5\n"  # data row 4 is short
    text = "a,b,y\n\n" + "".join(lines)  # a blank line after the header shifts line numbers
    message = refusal(write_text(tmp_path / "r.csv", text))
    assert "line 6" in message and "2 fields" in message and "expected 3" in message


def test_duplicate_columns(tmp_path: Path) -> None:
    message = refusal(write_csv(tmp_path / "d.csv", ["a", "b", "a", "y"], [[*r, 0] for r in small_rows()]))
    assert "duplicate column names in the header: a (" in message


def test_too_few_rows(tmp_path: Path) -> None:
    message = refusal(write_csv(tmp_path / "f.csv", ["a", "b", "y"], small_rows(12)))
    assert "only 12 data rows" in message and "at least 20" in message
    assert load_table(tmp_path / "f.csv", "y", min_rows=10).X.shape == (12, 2)


def test_single_class(tmp_path: Path) -> None:
    rows = [[i, i, "ok"] for i in range(30)]
    message = refusal(write_csv(tmp_path / "s.csv", ["a", "b", "y"], rows))
    assert "single class 'ok'" in message and "30 rows" in message


# --- categorical, missing, regression, Parquet ---------------------------------------------------


def mixed_rows(n: int = 40) -> list[list[object]]:
    colors = ["red", "green", "blue", ""]
    return [[i * 0.5 if i % 7 else "NA", colors[i % 4], ("yes" if i % 3 else "no"), i % 2] for i in range(n)]


def test_categorical_and_missing_columns(tmp_path: Path) -> None:
    table = load_table(write_csv(tmp_path / "m.csv", ["num", "color", "flag", "y"], mixed_rows()), "y")
    assert [(f.name, f.type, f.allow_missing) for f in table.features] == [
        ("num", "numeric", True),
        ("color", "categorical", True),
        ("flag", "categorical", False),
    ]
    assert table.X.dtype == object and not table.numeric_only
    assert table.categorical_idx == [1, 2] and table.numeric_idx == [0]
    assert np.isnan(table.X[0, 0]) and table.X[1, 0] == 0.5
    assert table.X[3, 1] == "" and table.X[0, 1] == "red"  # missing category is ""
    assert table.fingerprint["schema"][1] == {"name": "color", "type": "categorical", "allow_missing": True}


def test_forced_categorical_and_fingerprint_depends_on_it(tmp_path: Path) -> None:
    rows = [[i % 3 + 1, i, i % 2] for i in range(30)]
    path = write_csv(tmp_path / "c.csv", ["level", "x", "y"], rows)
    plain = load_table(path, "y")
    forced = load_table(path, "y", categorical=["level"])
    assert plain.features[0].type == "numeric" and forced.features[0].type == "categorical"
    assert forced.X[0, 0] == "1"
    assert plain.fingerprint["sha256"] != forced.fingerprint["sha256"]
    assert "no column 'nope'" in refusal(path, categorical=["nope"])


def test_mostly_text_column_is_categorical_not_mixed(tmp_path: Path) -> None:
    rows = [["A" if i % 4 else "7", i, i % 2] for i in range(30)]
    table = load_table(write_csv(tmp_path / "t.csv", ["code", "x", "y"], rows), "y")
    assert table.features[0].type == "categorical" and set(table.X[:, 0]) == {"A", "7"}


def test_all_missing_column_is_refused(tmp_path: Path) -> None:
    rows = [[i, "", i % 2] for i in range(30)]
    message = refusal(write_csv(tmp_path / "a.csv", ["a", "empty", "y"], rows))
    assert "'empty'" in message and "all 30 rows are missing" in message and "drop the column" in message


def test_constant_columns_warn_and_all_constant_is_refused(tmp_path: Path) -> None:
    table = load_table(write_csv(tmp_path / "c.csv", ["a", "k", "y"], [[i, "same", i % 2] for i in range(30)]), "y")
    assert len(table.warnings) == 1 and "'k' is constant ('same')" in table.warnings[0]
    message = refusal(write_csv(tmp_path / "d.csv", ["a", "b", "y"], [[1, 2, i % 2] for i in range(30)]))
    assert "every feature column is constant (a, b)" in message


def test_identifier_like_text_column_is_refused_with_what_to_do(tmp_path: Path) -> None:
    rows = [[f"id-{i}", i, i % 2] for i in range(30)]
    path = write_csv(tmp_path / "i.csv", ["id", "x", "y"], rows)
    message = refusal(path)
    assert "'id' has 30 distinct values in 30 rows" in message and "--drop id" in message
    assert load_table(path, "y", drop=["id"]).feature_names == ["x"]
    forced = load_table(path, "y", categorical=["id"], max_categories=5)  # the user decided: capped
    assert forced.features[0].type == "categorical" and forced.features[0].max_categories == 5


def sensor_rows(n: int = 336) -> list[list[object]]:
    """Hourly readings over two weeks: a date column with one value per row."""
    start = datetime(2024, 3, 4)
    rng = np.random.default_rng(1)
    rows: list[list[object]] = []
    for i in range(n):
        t = start + timedelta(hours=i)
        temp = 20 + 5 * np.sin(t.hour / 24 * 2 * np.pi) + rng.normal(0, 0.5)
        rows.append([t.strftime("%Y-%m-%d %H:%M:%S"), f"{temp:.2f}", "on" if 8 <= t.hour < 18 else "off"])
    return rows


def test_a_date_column_is_refused_and_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", ["ts", "temp", "state"], sensor_rows())
    message = refusal(path, "state")
    assert "'ts' holds dates or times" in message and "--datetime ts" in message and "--drop ts" in message
    us = write_csv(
        tmp_path / "us.csv",
        ["ts", "temp", "state"],
        [[f"03/{1 + i % 28:02d}/2024 10:{i % 60:02d}", i, i % 2] for i in range(40)],
    )
    assert "write it as ISO 8601" in refusal(us, "state")


def test_datetime_columns_become_their_parts(tmp_path: Path) -> None:
    rows = sensor_rows()
    path = write_csv(tmp_path / "s.csv", ["ts", "temp", "state"], rows)
    table = load_table(path, "state", datetimes=["ts"])
    # March only: the month never changes, so it is left out of the default parts
    assert table.feature_names == ["ts.hour", "ts.weekday", "temp"]
    assert table.schema[0].to_dict() == {
        "name": "ts",
        "type": "datetime",
        "allow_missing": False,
        "parts": ["hour", "weekday"],
    }
    assert table.X[:3, 0].tolist() == [0.0, 1.0, 2.0] and table.X[0, 1] == 0.0  # 2024-03-04 is a Monday
    assert table.rows is not None and table.rows[5, 0] == rows[5][0]  # what a device receives
    chosen = load_table(path, "state", datetimes={"ts": ["month", "dayofyear"]})
    assert chosen.feature_names == ["ts.month", "ts.dayofyear", "temp"]
    assert "unknown date/time part 'hours'" in refusal(path, "state", datetimes={"ts": ["hours"]})
    bad = [list(r) for r in rows]
    bad[7][0] = "yesterday"
    assert "'yesterday' on line 9, which is not an ISO 8601" in refusal(
        write_csv(tmp_path / "b.csv", ["ts", "temp", "state"], bad), "state", datetimes=["ts"]
    )


def test_drop_and_datetime_names_are_checked(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", ["ts", "temp", "state"], sensor_rows(40))
    assert "no column 'tz' to drop" in refusal(path, "state", drop=["tz"])
    assert "'state' is the target" in refusal(path, "state", drop=["state"])
    assert "both as drop and as datetime" in refusal(path, "state", drop=["ts"], datetimes=["ts"])


def test_many_categories_are_capped(tmp_path: Path) -> None:
    rows = [[f"shop-{i % 60}", i % 7, i % 2] for i in range(600)]
    path = write_csv(tmp_path / "c.csv", ["shop", "x", "y"], rows)
    assert load_table(path, "y", max_categories=20).features[0].max_categories == 20
    assert load_table(path, "y", max_categories=None).features[0].max_categories is None
    assert load_table(path, "y", max_categories=60).features[0].max_categories is None


def test_regression_inferred_from_floats_and_many_integers(tmp_path: Path) -> None:
    floats = load_table(write_csv(tmp_path / "f.csv", ["x", "y"], [[i, i * 0.37] for i in range(30)]), "y")
    assert floats.task == "regression" and floats.y.dtype == np.float64
    many = load_table(write_csv(tmp_path / "m.csv", ["x", "y"], [[i, i * 3] for i in range(30)]), "y")
    assert many.task == "regression"
    few = load_table(write_csv(tmp_path / "c.csv", ["x", "y"], [[i, i % 5] for i in range(30)]), "y")
    assert few.task == "classification" and few.y.dtype == np.int64
    forced = load_table(tmp_path / "c.csv", "y", task="regression")
    assert forced.task == "regression" and forced.fingerprint["sha256"] == few.fingerprint["sha256"]
    as_class = load_table(tmp_path / "m.csv", "y", task="classification")
    assert as_class.task == "classification" and as_class.y.dtype == np.int64


def test_float_written_integer_labels_are_integer_classes(tmp_path: Path) -> None:
    table = load_table(write_csv(tmp_path / "f.csv", ["x", "y"], [[i, f"{i % 2}.0"] for i in range(30)]), "y")
    assert table.task == "classification" and table.y.dtype == np.int64 and set(table.y.tolist()) == {0, 1}


def test_regression_target_refusals(tmp_path: Path) -> None:
    rows = [[i, i * 0.5] for i in range(30)]
    rows[4][1] = "high"
    message = refusal(write_csv(tmp_path / "r.csv", ["x", "y"], rows), task="regression")
    assert "non-numeric value 'high'" in message and "line 6" in message
    message = refusal(write_csv(tmp_path / "k.csv", ["x", "y"], [[i, 2.5] for i in range(30)]), task="regression")
    assert "constant (2.5)" in message
    with pytest.raises(DataError, match="unknown task"):
        load_table(tmp_path / "k.csv", "y", task="ranking")


def test_fingerprint_of_numeric_tables_is_unchanged(tmp_path: Path) -> None:
    """Tables the previous loader accepted hash exactly as before (run records stay comparable)."""
    import hashlib
    import json

    rows = small_rows()
    fp = load_table(write_csv(tmp_path / "a.csv", ["a", "b", "y"], rows), "y").fingerprint
    digest = hashlib.sha256(b"edgekit-table-v1\n")
    digest.update((json.dumps(["a", "b", "y"]) + "\n").encode())
    for a, b, y in rows:
        digest.update((json.dumps([float(a), float(b), y]) + "\n").encode())
    assert fp["sha256"] == digest.hexdigest()


def test_parquet_without_pyarrow_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a machine without the [parquet] extra
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    message = refusal(path)
    assert message.startswith(f"{path}: install pyarrow to read Parquet")


def test_parquet_cells_are_read_like_csv_cells() -> None:
    """The Parquet reader's cell conversion (pyarrow is optional, so its values are fed by hand)."""
    from edgekit.data import _build, _Options, _parquet_cell

    columns = [
        [_parquet_cell(v) for v in col] for col in ([1.5, None, 3.0] * 10, ["a", None, "b"] * 10, [0, 1, 1] * 10)
    ]
    options = _Options(set(), set(), {})
    table = _build("t.parquet", ["x", "c", "y"], columns, lambda i: f"data row {i + 1}", "y", 20, None, options)
    assert [(f.type, f.allow_missing) for f in table.features] == [("numeric", True), ("categorical", True)]
    assert table.X[1, 1] == "" and np.isnan(table.X[1, 0]) and table.y.dtype == np.int64
    assert _parquet_cell(True) == "True" and _parquet_cell(" x ") == "x"


def test_parquet_reads_like_the_same_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 60
    x = [None if i % 11 == 0 else float(v) for i, v in enumerate(rng.normal(size=n))]
    site = [None if i % 13 == 0 else str(rng.choice(["a", "b", "c"])) for i in range(n)]
    count = [int(v) for v in rng.integers(0, 5, n)]
    label = ["yes" if (v or 0) > 0 else "no" for v in x]
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": x, "site": site, "count": count, "label": label}), parquet)
    csv_path = tmp_path / "t.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "site", "count", "label"])
        for row in zip(x, site, count, label, strict=True):
            writer.writerow(["" if v is None else v for v in row])
    from_parquet, from_csv = load_table(parquet, "label"), load_table(csv_path, "label")
    assert [f.to_dict() for f in from_parquet.features] == [f.to_dict() for f in from_csv.features]
    types = {f.name: f.type for f in from_parquet.features}
    assert types == {"x": "numeric", "site": "categorical", "count": "numeric"}
    assert from_parquet.y.tolist() == from_csv.y.tolist()
    assert from_parquet.X.shape == from_csv.X.shape == (n, 3)
    for j in range(3):
        a, b = from_parquet.X[:, j].tolist(), from_csv.X[:, j].tolist()
        assert [str(v) for v in a] == [str(v) for v in b]


def test_a_field_over_the_size_limit_says_so_and_how_to_raise_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [[i, f"site-{i % 3}", i % 2] for i in range(30)]
    rows[4][1] = "x" * 200_000  # a long field (or a quote left open) on data line 5 = file line 6
    path = write_csv(tmp_path / "long.csv", ["a", "b", "y"], rows)
    message = refusal(path)
    assert "line 6 has a field longer than 131,072 characters, the CSV reader's size limit" in message
    assert "EDGEKIT_CSV_FIELD_LIMIT=1048576" in message and "syntax" not in message
    monkeypatch.setenv("EDGEKIT_CSV_FIELD_LIMIT", "300000")
    table = load_table(path, "y")  # raised: the long value is read
    assert table.X.shape == (30, 2) and len(table.X[4, 1]) == 200_000
    assert csv.field_size_limit() == 131_072, "the csv module's limit is put back"
    monkeypatch.setenv("EDGEKIT_CSV_FIELD_LIMIT", "lots")
    assert "$EDGEKIT_CSV_FIELD_LIMIT is 'lots'" in refusal(path)
