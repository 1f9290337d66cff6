"""load_table: real data sets round-trip; every refusal names what is wrong and where."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

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


def refusal(path: Path, target: str = "y", **kwargs: int) -> str:
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
    assert fp["schema"][0] == {"name": "mean radius", "type": "numeric"} and len(fp["schema"]) == 30
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


@pytest.mark.parametrize("value", ["", "NA", "nan", "?"])
def test_missing_value_names_column_and_line(tmp_path: Path, value: str) -> None:
    rows = small_rows()
    rows[2][0] = value
    message = refusal(write_csv(tmp_path / "m.csv", ["a", "b", "y"], rows))
    assert "missing value" in message and "not supported" in message
    assert "'a'" in message and "line 4" in message


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
