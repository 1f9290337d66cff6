"""build_reference: the file it writes, its bins, and whether its thresholds hold their
false-alarm rate on windows drawn from the training distribution (seeded, so no flakes)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from device_agent.drift import DriftWindow, FeatureRef, Reference, bin_index, psi
from edgekit.errors import DataError
from edgekit.reference import build_reference, feature_edges

NAMES5 = [f"x{i}" for i in range(5)]


def oof(rows: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(classes, 0.7), size=rows)


@pytest.fixture(scope="module")
def normal_data() -> np.ndarray:
    return np.random.default_rng(2024).standard_normal((2000, 5))


@pytest.fixture(scope="module")
def ref200(normal_data: np.ndarray) -> Reference:
    return Reference.from_json(build_reference(normal_data, NAMES5, ["no", "yes"], oof(2000, 2), window=200))


@pytest.fixture(scope="module")
def ref50(normal_data: np.ndarray) -> Reference:
    return Reference.from_json(build_reference(normal_data, NAMES5, ["no", "yes"], oof(2000, 2), window=50))


def alarm_rate(
    ref: Reference, rows: int, windows: int = 300, seed: int = 11, shift: float = 0.0, nan_share: float = 0.0
) -> float:
    """Share of windows from N(0, 1) (feature 2 optionally shifted / holed) called drift."""
    rng = np.random.default_rng(seed)
    window = DriftWindow(ref, window=rows, low_confidence=0.6)
    alarms = 0
    for _ in range(windows):
        x = rng.standard_normal((rows, 5))
        x[:, 2] += shift
        if nan_share:
            x[rng.random(rows) < nan_share, 2] = np.nan
        window.reset()
        for start in range(0, rows, 64):  # batches as the device sends them
            window.update(x[start : start + 64])
        alarms += window.report()["verdict"] == "drift"
    return alarms / windows


# --- the file ------------------------------------------------------------------------------------


def test_output_is_a_valid_reference(normal_data: np.ndarray) -> None:
    obj = build_reference(normal_data, NAMES5, [0, 1, 2], oof(1500, 3), window=200)
    text = json.dumps(obj, allow_nan=False)
    assert Reference.from_json(json.loads(text)).to_json() == obj
    assert obj["n"] == 2000 and obj["thresholds"]["window"] == 200
    assert set(obj["thresholds"]["psi"]) == set(NAMES5)
    assert obj["thresholds"]["z"] == pytest.approx(3.0902, abs=1e-3)  # inv_cdf(1 - 0.01/10)
    for f in obj["features"]:
        assert len(f["edges"]) == 9
        assert f["proportions"] == pytest.approx([0.1] * 10, abs=1e-12)  # exact deciles
        assert f["missing_rate"] == 0.0


def test_deterministic_for_a_seed(normal_data: np.ndarray) -> None:
    a = build_reference(normal_data, NAMES5, [0, 1], oof(2000, 2), seed=3, draws=300)
    b = build_reference(normal_data, NAMES5, [0, 1], oof(2000, 2), seed=3, draws=300)
    assert a == b


def test_labels_are_plain_json(normal_data: np.ndarray) -> None:
    obj = build_reference(normal_data, NAMES5, list(np.array([3, 7])), oof(2000, 2), draws=100)
    assert obj["prediction"]["labels"] == [3, 7]
    assert all(type(v) is int for v in obj["prediction"]["labels"])


def test_prediction_and_confidence_come_from_oof() -> None:
    x = np.random.default_rng(0).standard_normal((300, 2))
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]] * 75)
    obj = build_reference(x, ["a", "b"], ["p", "q", "r"], proba, draws=200)
    assert obj["prediction"]["proportions"] == pytest.approx([0.5, 0.25, 0.25])
    conf = obj["confidence"]
    assert conf["edges"] == pytest.approx(np.linspace(1 / 3, 1, 11)[1:-1])
    assert conf["mean"] == pytest.approx((0.9 + 0.5 + 0.34 + 0.8) / 4)
    expected = np.bincount(bin_index(conf["edges"], proba.max(axis=1)), minlength=10) / 300
    assert conf["proportions"] == pytest.approx(expected.tolist())


def test_missing_values_counted_not_binned() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 2))
    x[:150, 1] = np.nan
    obj = build_reference(x, ["a", "b"], [0, 1], oof(1000, 2), draws=200)
    b = obj["features"][1]
    assert b["missing_rate"] == pytest.approx(0.15)
    assert b["mean"] == pytest.approx(np.nanmean(x[:, 1]))
    assert sum(b["proportions"]) == pytest.approx(1.0)


# --- bins ----------------------------------------------------------------------------------------


def test_integer_feature_gets_one_bin_per_value() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.integers(0, 4, 800), rng.standard_normal(800)]).astype(float)
    obj = build_reference(x, ["count", "z"], [0, 1], oof(800, 2), draws=200)
    f = obj["features"][0]
    assert f["edges"] == [0.5, 1.5, 2.5]
    assert all(p > 0 for p in f["proportions"])
    expected = np.bincount(x[:, 0].astype(int), minlength=4) / 800
    assert f["proportions"] == pytest.approx(expected.tolist())


def test_heavily_tied_feature_keeps_every_bin_populated() -> None:
    rng = np.random.default_rng(3)
    values = np.where(rng.random(2000) < 0.6, 0.0, rng.exponential(1.0, 2000))  # 60 % zeros
    edges = feature_edges(values)
    assert edges.size < 9  # the tie collapsed deciles
    assert np.all(np.diff(edges) > 0)
    assert 0.0 < edges[0] < values[values > 0].min() + 1e-12
    counts = np.bincount(bin_index(edges, values), minlength=edges.size + 1)
    assert np.all(counts > 0)
    assert counts[0] == np.count_nonzero(values == 0.0)


def test_adjacent_float_values_still_separate() -> None:
    lo = 1.0
    hi = float(np.nextafter(lo, 2.0))
    edges = feature_edges(np.array([lo, hi, lo, hi]))
    assert edges.tolist() == [hi]  # the midpoint rounds onto lo, so the cut is hi itself
    assert bin_index(edges, [lo, hi]).tolist() == [0, 1]


def test_constant_feature_has_one_bin() -> None:
    x = np.column_stack([np.full(100, 4.0), np.arange(100.0)])
    obj = build_reference(x, ["const", "ramp"], [0, 1], oof(100, 2), draws=100)
    f = obj["features"][0]
    assert f["edges"] == [] and f["proportions"] == [1.0] and f["std"] == 0.0


@pytest.mark.parametrize(
    ("x", "names", "classes", "proba", "message"),
    [
        (np.full((10, 1), np.nan), ["a"], [0, 1], oof(10, 2), "no values"),
        (np.zeros((10, 2)), ["a"], [0, 1], oof(10, 2), "feature names"),
        (np.zeros((10, 2)), ["a", "a"], [0, 1], oof(10, 2), "unique"),
        (np.zeros((10, 1)), ["a"], [0, 1, 2], oof(10, 2), "oof_proba"),
        (np.zeros((10, 1)), ["a"], [0], oof(10, 1), "2 classes"),
        (np.array([[np.inf], [0.0]]), ["a"], [0, 1], oof(2, 2), "infinite"),
        (np.zeros(10), ["a"], [0, 1], oof(10, 2), "2-D"),
    ],
)
def test_bad_input_is_a_data_error(
    x: np.ndarray, names: list[str], classes: list[int], proba: np.ndarray, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        build_reference(x, names, classes, proba, draws=100)


# --- thresholds and calibration ------------------------------------------------------------------


def test_thresholds_are_at_least_the_chi_square_ones(ref200: Reference, ref50: Reference) -> None:
    for name in NAMES5:
        assert ref200.thresholds.psi[name] >= 26.0 / 200  # chi2(0.998, 9) ≈ 26.06
        # At 50 rows the bootstrap (heavy tail from the eps floor) dominates chi-square.
        assert ref50.thresholds.psi[name] > 1.5 * 26.0 / 50


def test_false_alarms_at_200_rows(ref200: Reference) -> None:
    assert alarm_rate(ref200, rows=200) <= 0.03


def test_half_sigma_shift_is_detected_at_200_rows(ref200: Reference) -> None:
    assert alarm_rate(ref200, rows=200, shift=0.5, seed=12) >= 0.90


def test_nan_injection_is_detected(ref200: Reference) -> None:
    assert alarm_rate(ref200, rows=200, nan_share=0.2, windows=50, seed=13) == 1.0


def test_false_alarms_at_50_rows_with_thresholds_shipped_for_50(ref50: Reference) -> None:
    assert alarm_rate(ref50, rows=50, seed=14) <= 0.03


def test_false_alarms_at_50_rows_with_thresholds_shipped_for_200(ref200: Reference) -> None:
    # The device recalibrates for a window size the bundle did not ship (time-based windows).
    assert alarm_rate(ref200, rows=50, seed=15) <= 0.03


def test_fixed_psi_rule_would_false_alarm_at_50_rows(ref50: Reference) -> None:
    """Why the thresholds exist: "any feature PSI > 0.1" on the same null windows."""
    rng = np.random.default_rng(16)
    props = [f.proportions for f in ref50.features]
    alarms = 0
    for _ in range(300):
        x = rng.standard_normal((50, 5))
        alarms += any(
            psi(p, np.bincount(bin_index(f.edges, x[:, j]), minlength=f.bins)) > 0.1
            for j, (f, p) in enumerate(zip(ref50.features, props, strict=True))
        )
    assert alarms / 300 > 0.5


def test_build_is_fast() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, 30))
    x[:, :5] = np.round(x[:, :5] * 2)  # some tied features too
    start = time.perf_counter()
    build_reference(x, [f"c{i}" for i in range(30)], [0, 1, 2], oof(500, 3))
    assert time.perf_counter() - start < 2.0


# --- categorical features and regressors ----------------------------------------------------------


def mixed_sample(n: int, seed: int, shift: float = 0.0, p: tuple[float, ...] = (0.5, 0.3, 0.15, 0.05)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.empty((n, 2), dtype=object)
    X[:, 0] = rng.standard_normal(n) + shift
    cats = rng.choice(["a", "b", "c", ""], size=n, p=p)  # "" = missing
    X[:, 1] = cats
    return X


def test_categorical_reference_and_codes() -> None:
    X = mixed_sample(2000, 0)
    obj = build_reference(X, ["x", "c"], [0, 1], oof(2000, 2), feature_types=["numeric", "categorical"], draws=300)
    f = obj["features"][1]
    assert f["kind"] == "categorical" and f["categories"] == ["a", "b", "c"]
    assert len(f["proportions"]) == 4 and f["proportions"][-1] == 0.0  # no "other" in training
    present = X[:, 1][X[:, 1] != ""]
    assert f["proportions"][0] == pytest.approx(np.mean(present == "a"))
    assert f["missing_rate"] == pytest.approx(np.mean(X[:, 1] == ""))
    assert "mean" not in f and "edges" not in f
    ref = Reference.from_json(json.loads(json.dumps(obj)))
    assert ref.category_codes() == [None, {"a": 0.0, "b": 1.0, "c": 2.0}]


def test_top_categories_and_other() -> None:
    from device_agent.drift import MAX_CATEGORIES

    values = [f"k{i:02d}" for i in range(30) for _ in range(30 - i)]  # 30 categories, k00 most frequent
    X = np.array([[v] for v in values], dtype=object)
    obj = build_reference(X, ["k"], [0, 1], oof(len(values), 2), feature_types=["categorical"], draws=100)
    f = obj["features"][0]
    assert f["categories"] == [f"k{i:02d}" for i in range(MAX_CATEGORIES)]
    other = sum(30 - i for i in range(MAX_CATEGORIES, 30)) / len(values)
    assert f["proportions"][-1] == pytest.approx(other)


def categorical_alarm_rate(ref: Reference, p: tuple[float, ...], windows: int = 200, seed: int = 21) -> float:
    codes = ref.category_codes()[1]
    assert codes is not None
    window = DriftWindow(ref, window=200, low_confidence=0.6)
    alarms = 0
    for k in range(windows):
        X = mixed_sample(200, seed + k, p=p)
        M = np.empty((200, 2))
        M[:, 0] = X[:, 0].astype(float)
        M[:, 1] = [np.nan if v == "" else codes.get(v, float(len(codes))) for v in X[:, 1]]
        window.reset()
        window.update(M)
        alarms += window.report()["verdict"] == "drift"
    return alarms / windows


@pytest.fixture(scope="module")
def mixed_ref() -> Reference:
    X = mixed_sample(3000, 1)
    obj = build_reference(X, ["x", "c"], ["n", "y"], oof(3000, 2), window=200, feature_types=["numeric", "categorical"])
    return Reference.from_json(obj)


def test_categorical_false_alarms_and_detection(mixed_ref: Reference) -> None:
    assert categorical_alarm_rate(mixed_ref, (0.5, 0.3, 0.15, 0.05)) <= 0.03
    assert categorical_alarm_rate(mixed_ref, (0.3, 0.3, 0.35, 0.05), windows=50, seed=99) >= 0.9


def test_categorical_report_counts_unseen_and_missing(mixed_ref: Reference) -> None:
    codes = mixed_ref.category_codes()[1]
    assert codes is not None
    M = np.zeros((100, 2))
    M[:, 1] = [codes["a"]] * 60 + [3.0] * 30 + [np.nan] * 10  # 30 unseen, 10 missing
    w = DriftWindow(mixed_ref, window=200, low_confidence=0.6)
    w.update(M)
    f = w.report()["features"]["c"]
    assert f["kind"] == "categorical" and f["counts"] == [60, 0, 0, 30] and f["unseen"] == 30
    assert f["missing"] == 10 and f["count"] == 90 and f["drifted"]
    assert "mean" not in f and "z" not in f


def test_regression_reference_bins_predictions() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 3))
    pred = x @ [2.0, -1.0, 0.5] + 10
    obj = build_reference(x, ["a", "b", "c"], [], pred, task="regression", draws=300)
    assert obj["confidence"] is None
    assert obj["prediction"]["kind"] == "bins" and len(obj["prediction"]["edges"]) == 9
    assert obj["prediction"]["proportions"] == pytest.approx([0.1] * 10, abs=1e-12)
    ref = Reference.from_json(json.loads(json.dumps(obj)))
    w = DriftWindow(ref, window=200, low_confidence=0.0)
    w.update(x[:200], predicted=pred[:200])
    rep = w.report()
    assert rep["confidence"] is None and rep["low_confidence_rate"] is None
    assert rep["prediction"]["kind"] == "bins" and sum(rep["prediction"]["counts"]) == 200
    assert not rep["prediction"]["drifted"]
    w.reset()
    w.update(x[:200], predicted=pred[:200] + 5.0)  # predictions shifted
    assert w.report()["prediction"]["drifted"]
    with pytest.raises(DataError, match="shape"):
        build_reference(x, ["a", "b", "c"], [], np.zeros((1000, 2)), task="regression")


# --- near-constant columns and stable thresholds -----------------------------------------------


def sparse_table(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Like digits' edge pixels: 0 almost always, now and then an integer up to 16 (lit in
    0.3-2 % of rows; the last two in 0.05 %, so a training sample usually never sees one),
    next to three ordinary columns."""
    lit = [0.02, 0.01, 0.005, 0.003, 0.0005, 0.0005]
    cols = [np.where(rng.random(rows) < p, rng.integers(1, 17, rows), 0).astype(float) for p in lit]
    return np.column_stack([*cols, rng.standard_normal((rows, 3))])


def test_near_constant_columns_stay_quiet_on_clean_windows() -> None:
    rng = np.random.default_rng(31)
    train = sparse_table(1300, rng)
    names = [f"p{j}" for j in range(train.shape[1])]
    ref = Reference.from_json(build_reference(train, names, [0, 1], oof(1300, 2), window=200))
    assert any(f.std == 0.0 for f in ref.features if isinstance(f, FeatureRef))  # a column never lit in training
    window = DriftWindow(ref, window=200, low_confidence=0.6)
    alarms = 0
    for _ in range(400):
        window.reset()
        window.update(sparse_table(200, rng))
        alarms += window.report()["verdict"] == "drift"
    assert alarms / 400 <= 0.03  # the promise: alpha = 1 % per test, a few tests per feature


def test_thresholds_agree_between_seeds() -> None:
    from sklearn.datasets import load_digits

    x = load_digits().data[:1300].astype(float)
    names = [f"px{j}" for j in range(64)]
    a = build_reference(x, names, [0, 1], oof(1300, 2), window=200, seed=0)["thresholds"]
    b = build_reference(x, names, [0, 1], oof(1300, 2), window=200, seed=1)["thresholds"]
    ratios = [max(a["psi"][k], b["psi"][k]) / min(a["psi"][k], b["psi"][k]) for k in names if a["psi"][k] > 0]
    assert max(ratios) < 1.3
    assert float(np.median(ratios)) < 1.06
    assert max(a["prediction_psi"], b["prediction_psi"]) / min(a["prediction_psi"], b["prediction_psi"]) < 1.25
