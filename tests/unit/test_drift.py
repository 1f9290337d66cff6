"""Drift maths and the streaming window, checked against independent computations.

Device-side only: references are written by hand here, so these tests need nothing beyond
the agent's own dependencies (the host builder is tested in tests/unit/host/test_reference.py).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.drift import (
    DEVICE_DRAWS,
    MAX_EDGES,
    NULL_DRAWS,
    DriftWindow,
    ExactNull,
    NullTail,
    Reference,
    assess,
    bin_index,
    calibration_rows,
    chi2_quantile,
    excess_count_p,
    js_distance,
    location_test,
    merge_windows,
    psi,
    psi_limit,
    psi_null,
    psi_rows,
    psi_threshold,
    reference_factor,
    welford_merge,
)
from device_agent.errors import ProtocolError
from device_agent.protocol import dumps

# --- independent reference implementations (plain loops, no shared code) -----------------


def naive_psi(ref: list[float], counts: list[int], eps: float = 1e-4) -> float:
    n = sum(counts)
    total = 0.0
    for p, c in zip(ref, counts, strict=True):
        q = max(c / n, eps)
        p = max(p, eps)
        total += (q - p) * math.log(q / p)
    return total


def naive_js(ref: list[float], counts: list[int]) -> float:
    n = sum(counts)
    s = sum(ref)
    p = [r / s for r in ref]
    q = [c / n for c in counts]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    return math.sqrt((kl(p, m) + kl(q, m)) / 2)


# --- a hand-written reference ---------------------------------------------------------------

DECILES = [NormalDist().inv_cdf(k / 10) for k in range(1, 10)]


def feature(name: str, **over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "name": name,
        "kind": "numeric",
        "edges": list(DECILES),
        "proportions": [0.1] * 10,
        "mean": 0.0,
        "std": 1.0,
        "min": -3.5,
        "max": 3.5,
        "missing_rate": 0.0,
    }
    f.update(over)
    return f


def reference_obj(n_features: int = 3, window: int = 200, n: int = 2000, **feature_over: Any) -> dict[str, Any]:
    names = [f"f{i}" for i in range(n_features)]
    alpha = 0.01
    return {
        "format": 1,
        "n": n,
        "alpha": alpha,
        "features": [feature(name, **feature_over) for name in names],
        "prediction": {"kind": "classes", "labels": ["a", "b", "c"], "proportions": [0.5, 0.3, 0.2]},
        "confidence": {
            "edges": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "proportions": [0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.1],
            "mean": 0.72,
        },
        "thresholds": {
            "window": window,
            "psi": {name: 0.15 for name in names},
            "prediction_psi": 0.06,
            "z": NormalDist().inv_cdf(1 - alpha / (2 * n_features)),
        },
    }


def make_window(obj: dict[str, Any] | None = None, window: int = 200) -> DriftWindow:
    return DriftWindow(Reference.from_json(obj or reference_obj()), window=window, low_confidence=0.5)


# --- PSI and JS -------------------------------------------------------------------------------


def test_psi_and_js_hand_computed() -> None:
    # q = [0.1, 0.2, 0.7] against p = [0.25, 0.25, 0.5]:
    # PSI = (0.1-0.25)·ln(0.4) + (0.2-0.25)·ln(0.8) + (0.7-0.5)·ln(1.4)
    #     = 0.1374436 + 0.0111572 + 0.0672944 = 0.2158952
    assert psi([0.25, 0.25, 0.5], [10, 20, 70]) == pytest.approx(0.2158952346710763, abs=1e-12)
    # M = [0.175, 0.225, 0.6]; KL(P||M) = 0.0351269, KL(Q||M) = 0.0409542 bits;
    # JS distance = sqrt((0.0351269 + 0.0409542) / 2) = 0.1950398
    assert js_distance([0.25, 0.25, 0.5], [10, 20, 70]) == pytest.approx(0.19503982425788832, abs=1e-12)


HAND_PICKED = [
    ([0.25] * 4, [10] * 4),  # identical: both zero
    ([0.1] * 10, [0, 0, 0, 0, 0, 0, 0, 0, 0, 100]),  # everything in one bin
    ([0.5, 0.5, 0.0], [0, 5, 5]),  # empty reference bin (eps floor) and empty window bin
    ([1.0], [7]),  # a single bin never drifts
    ([0.2, 0.3, 0.5], [1, 1, 1]),
    ([0.999, 0.001], [1, 999]),
]


@pytest.mark.parametrize(("ref", "counts"), HAND_PICKED)
def test_psi_js_match_naive_hand_picked(ref: list[float], counts: list[int]) -> None:
    assert psi(ref, counts) == pytest.approx(naive_psi(ref, counts), abs=1e-9)
    assert js_distance(ref, counts) == pytest.approx(naive_js(ref, counts), abs=1e-9)


def test_psi_js_match_naive_random() -> None:
    rng = np.random.default_rng(42)
    for _ in range(300):
        bins = int(rng.integers(2, 11))
        ref = rng.dirichlet(np.full(bins, rng.uniform(0.2, 3.0)))
        ref[rng.random(bins) < 0.1] = 0.0  # some empty reference bins
        ref = ref / ref.sum()
        counts = rng.multinomial(int(rng.integers(1, 500)), rng.dirichlet(np.ones(bins)))
        assert psi(ref, counts) == pytest.approx(naive_psi(list(ref), list(counts)), abs=1e-9)
        assert js_distance(ref, counts) == pytest.approx(naive_js(list(ref), list(counts)), abs=1e-9)


def test_js_of_identical_distributions_is_exactly_zero() -> None:
    # Ten 0.1s sum to 0.9999999999999999: the textbook formula leaves ~1e-16 of rounding in
    # the divergence, which the square root turns into a distance of ~1e-8.
    assert js_distance([0.1] * 10, [10] * 10) == 0.0
    assert psi([0.1] * 10, [10] * 10) == pytest.approx(0.0, abs=1e-15)


def test_js_extremes() -> None:
    assert js_distance([0.5, 0.5, 0.0], [0, 0, 9]) == pytest.approx(1.0, abs=1e-12)  # disjoint
    # A subnormal proportion must neither vanish nor turn into -inf * 0.
    assert js_distance([1.0, 5e-324], [0, 1]) == pytest.approx(1.0, abs=1e-12)
    assert js_distance([1.0, 5e-324], [1, 0]) == pytest.approx(0.0, abs=1e-12)


def test_psi_js_of_no_rows_is_zero() -> None:
    assert psi([0.5, 0.5], [0, 0]) == 0.0
    assert js_distance([0.5, 0.5], [0, 0]) == 0.0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10).filter(lambda v: sum(v) > 0),
    st.data(),
)
def test_psi_nonnegative_js_bounded(weights: list[float], data: st.DataObject) -> None:
    ref = [w / sum(weights) for w in weights]
    counts = data.draw(st.lists(st.integers(0, 1000), min_size=len(ref), max_size=len(ref)))
    assert psi(ref, counts) >= 0.0
    assert 0.0 <= js_distance(ref, counts) <= 1.0


# --- thresholds and Welford ---------------------------------------------------------------------


def test_chi2_quantile() -> None:
    assert chi2_quantile(0.99, 9) == pytest.approx(21.67, abs=0.2)
    # Published chi-square 0.99 quantiles: Wilson-Hilferty is within 1 % of each.
    for df, exact in [(1, 6.635), (2, 9.210), (3, 11.345), (5, 15.086), (9, 21.666), (20, 37.566)]:
        assert chi2_quantile(0.99, df) == pytest.approx(exact, rel=0.01)
    assert chi2_quantile(0.99, 0) == 0.0
    assert psi_threshold(200, 10, 0.01) == pytest.approx(21.67 / 200, rel=0.01)
    with pytest.raises(ValueError):
        chi2_quantile(1.0, 3)


def test_welford_merge_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(5.0, 2.0, size=257)
    for cut in (0, 1, 100, 257):
        a, b = data[:cut], data[cut:]

        def summary(x: np.ndarray) -> tuple[int, float, float]:
            return (x.size, float(x.mean()) if x.size else 0.0, float(((x - x.mean()) ** 2).sum()) if x.size else 0.0)

        n, mean, m2 = welford_merge(summary(a), summary(b))
        assert n == data.size
        assert mean == pytest.approx(data.mean(), rel=1e-12)
        assert m2 / n == pytest.approx(data.var(), rel=1e-12)
    assert welford_merge((0, 0.0, 0.0), (0, 0.0, 0.0)) == (0, 0.0, 0.0)


def test_psi_null_is_deterministic_and_above_chi2_for_small_windows() -> None:
    props = tuple([0.1] * 10)
    a = psi_null(props, 50).quantile(0.002)
    psi_null.cache_clear()
    assert psi_null(props, 50).quantile(0.002) == a
    # At 50 rows the eps floor makes the tail far heavier than chi-square predicts.
    assert a > 1.5 * psi_threshold(50, 10, 0.002)
    assert reference_factor(200, 2000) == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("props", "rows"),
    [
        ((0.1,) * 10, 200),
        ((0.6, 0.2, 0.1, 0.05, 0.03, 0.02), 200),
        ((0.5, 0.2, 0.1, 0.08, 0.05, 0.03, 0.02, 0.01, 0.006, 0.004), 100),
    ],
)
def test_null_tail_holds_its_rate_and_seed(props: tuple[float, ...], rows: int) -> None:
    """The fitted tail against 400,000 independent draws, at a Bonferroni-sized rate that
    20,000 draws cannot resolve empirically; and two seeds agree."""
    a = 2e-4
    truth = psi_rows(props, np.random.default_rng(99).multinomial(rows, props, size=400_000))
    limits = [psi_null(props, rows, seed).quantile(a) for seed in (1, 2, 3)]
    assert max(limits) / min(limits) < 1.15
    for limit in limits:
        assert 0.3 * a < np.mean(truth > limit) < 2.0 * a


def test_null_tail_never_interpolates_into_a_lattice() -> None:
    # A bin lit in 0.5 % of rows: at 50 rows the count of lit values is 0, 1, 2 or 3 with
    # P(>= 3) = 0.2 %, so the 0.1 % threshold must sit at (not below) the 3-lit PSI.
    props = (0.995, 0.005)
    three = psi(props, [47, 3])
    assert psi_null(props, 50).quantile(0.001) >= three
    exact_tail = sum(math.comb(50, k) * 0.005**k * 0.995 ** (50 - k) for k in range(4, 51))
    assert exact_tail < 0.001


def naive_quantile(props: list[float], rows: int, a: float) -> float:
    """The smallest PSI value exceeded with probability <= a, by listing every count of
    the second of two bins with its binomial probability."""
    support = []
    for k in range(rows + 1):
        prob = math.comb(rows, k) * props[1] ** k * props[0] ** (rows - k)
        support.append((naive_psi(props, [rows - k, k]), prob))
    for value, _ in sorted(support):
        if sum(p for v, p in support if v > value + 1e-12) <= a:
            return value
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("props", "rows", "a"), [((0.97, 0.03), 200, 1.6e-4), ((0.9993, 0.0007), 200, 1.6e-4), ((0.6, 0.4), 50, 0.003)]
)
def test_two_bin_null_is_exact(props: tuple[float, float], rows: int, a: float) -> None:
    assert psi_null(props, rows).quantile(a) == pytest.approx(naive_quantile(list(props), rows, a), abs=1e-9)
    # Exact means no seed: the draws never enter.
    assert psi_null(props, rows, 1).quantile(a) == psi_null(props, rows, 2).quantile(a)


def test_three_bin_null_against_draws() -> None:
    props = (0.9, 0.07, 0.03)
    exact = psi_null(props, 200)
    assert isinstance(exact, ExactNull)
    draws = psi_rows(props, np.random.default_rng(5).multinomial(200, props, size=400_000))
    for a in (0.01, 0.001):
        assert np.mean(draws > exact.quantile(a)) <= a * 1.1
    assert isinstance(psi_null(props, 1000), NullTail)  # 501,501 compositions: simulated


def test_null_tail_by_hand() -> None:
    tail = NullTail.fit(np.arange(20_000, dtype=float))  # uniform 0..19,999
    assert tail.quantile(0.5) == 9999.0 and tail.quantile(0.05) == 18999.0
    # The top 200 (19,800..19,999) lie above u = 19,799: u + their mean excess * ln(1 % / a).
    assert tail.quantile(0.001) == pytest.approx(19799 + 100.5 * math.log(10))
    # With >= 5 draws beyond the asked rate the empirical value is a floor: 0.6 % of the
    # draws lie above 19,879, where the exponential would say 19,850.
    assert tail.quantile(0.006) == 19879.0
    with pytest.raises(ValueError):
        tail.quantile(0.0)
    small = NullTail.fit(np.arange(1000, dtype=float))  # fewer draws: the tail is the top 20 %
    # Between knots, linear in log exceedance probability: 0.5 (value 499) and 0.2 (799).
    assert small.quantile(0.3) == pytest.approx(499 + 300 * math.log(0.5 / 0.3) / math.log(0.5 / 0.2))
    assert small.quantile(0.01) > 989.0


def test_calibration_rows_grid() -> None:
    assert [calibration_rows(m) for m in (1, 30, 64)] == [1, 30, 64]
    for m in range(65, 5000, 7):
        assert abs(calibration_rows(m) / m - 1.0) < 0.023
    assert len({calibration_rows(m) for m in range(100, 201)}) == 17
    # The shipped window's own threshold is simulated at exactly that size.
    props = (0.1,) * 10
    assert psi_limit(props, 200, 2000, 0.003, exact=True, draws=NULL_DRAWS) == pytest.approx(
        psi_null(props, 200).quantile(0.003) * reference_factor(200, 2000)
    )
    # Elsewhere the calibration point's threshold, scaled: m * PSI barely moves in 2 %.
    assert calibration_rows(180) == 181
    assert psi_limit(props, 180, 2000, 0.003) == pytest.approx(
        psi_null(props, 181, 0, DEVICE_DRAWS).quantile(0.003) * 181 / 180 * reference_factor(180, 2000)
    )


# --- the location test and the exact count test ----------------------------------------------


def naive_location(props: list[float], counts: list[int], n_ref: int) -> tuple[float, float]:
    """Mean ridit z and the skewness correction, written out with loops."""
    ridit, below = [], 0.0
    for p in props:
        ridit.append(below + p / 2)
        below += p
    var = sum(p * (r - 0.5) ** 2 for p, r in zip(props, ridit, strict=True))
    third = sum(p * (r - 0.5) ** 3 for p, r in zip(props, ridit, strict=True))
    m = sum(counts)
    mean = sum(c * r for c, r in zip(counts, ridit, strict=True)) / m
    z = (mean - 0.5) / math.sqrt(var * (1 / m + 1 / n_ref))
    gamma = third / var**1.5 * (1 / m**2 - 1 / n_ref**2) / (1 / m + 1 / n_ref) ** 1.5
    return z, gamma / 6


def test_location_test_against_naive() -> None:
    props = [0.1] * 10
    counts = [5, 10, 15, 20, 25, 30, 35, 30, 20, 10]
    z, g = naive_location(props, counts, 2000)
    assert g == pytest.approx(0.0, abs=1e-12)  # symmetric scores: no correction
    assert location_test(props, counts, 2000) == pytest.approx(z, rel=1e-12)
    skewed = [0.7, 0.2, 0.1]
    counts = [120, 50, 30]
    z, g = naive_location(skewed, counts, 1000)
    w = location_test(skewed, counts, 1000)
    assert w is not None and g != 0.0
    assert w + g * (w * w - 1) == pytest.approx(z, rel=1e-12)  # Cornish-Fisher, inverted
    assert location_test([1.0], [50], 1000) is None  # a single bin has no location
    assert location_test([0.995, 0.005], [199, 1], 1000) is None  # too skewed at 200 rows
    assert location_test([0.995, 0.005], [4950, 50], 100_000) is not None  # fine at 5,000


def naive_excess_p(k: int, m: int, a: int, n: int) -> float:
    total = a + k
    return sum(math.comb(total, x) * math.comb(n + m - total, m - x) for x in range(k, min(total, m) + 1)) / math.comb(
        n + m, m
    )


@pytest.mark.parametrize(
    ("k", "m", "a", "n"),
    [(0, 200, 0, 2000), (1, 200, 0, 2000), (3, 200, 0, 2000), (12, 200, 40, 2000), (60, 80, 10, 300), (5, 5, 0, 10)],
)
def test_excess_count_p_against_comb(k: int, m: int, a: int, n: int) -> None:
    assert excess_count_p(k, m, a, n) == pytest.approx(naive_excess_p(k, m, a, n), rel=1e-9)


def test_excess_count_p_hand_computed() -> None:
    # One value off the constant in 200 window rows, none in 2,000 reference rows: the
    # chance that the single such value landed in the window is 200 / 2,200.
    assert excess_count_p(1, 200, 0, 2000) == pytest.approx(200 / 2200)
    assert excess_count_p(3, 200, 0, 2000) == pytest.approx((200 * 199 * 198) / (2200 * 2199 * 2198))


# --- binning -------------------------------------------------------------------------------------


def edge_reference() -> dict[str, Any]:
    obj = reference_obj(n_features=1)
    obj["features"][0].update(edges=[0.0, 1.0, 2.0], proportions=[0.25] * 4, min=-1.0, max=3.0, mean=1.0, std=1.0)
    return obj


def test_binning_edges_nan_and_out_of_range() -> None:
    w = make_window(edge_reference())
    values = [0.0, 1.0, 2.0, -0.5, 0.5, math.nan, -5.0, 10.0, -1.0, 3.0, math.inf]
    w.update(np.array(values).reshape(-1, 1))
    f = w.report(min_rows=1)["features"]["f0"]
    # 0.0, 1.0, 2.0 sit on edges and go to the bin above; -5 and 10 (and inf) are out of
    # range but still counted in the end bins; -1 and 3 equal min/max: in range.
    assert f["counts"] == [3, 2, 1, 4]  # [-0.5, -5, -1], [0, 0.5], [1], [2, 10, 3, inf]
    assert f["missing"] == 1
    assert f["out_of_range"] == 3
    assert f["count"] == len(values) - 2  # moments skip NaN and inf
    assert f["mean"] == pytest.approx(np.mean([0.0, 1.0, 2.0, -0.5, 0.5, -5.0, 10.0, -1.0, 3.0]))
    assert sum(f["counts"]) + f["missing"] == w.n
    json.loads(dumps(w.report()))


def test_vectorised_binning_matches_searchsorted() -> None:
    rng = np.random.default_rng(5)
    obj = reference_obj(n_features=4)
    edges = [sorted(rng.choice(np.arange(-5.0, 6.0), size=k, replace=False).tolist()) for k in (0, 1, 4, 9)]
    for f, e in zip(obj["features"], edges, strict=True):
        f.update(edges=e, proportions=[1.0 / (len(e) + 1)] * (len(e) + 1), min=-6.0, max=6.0)
    # Lots of values exactly on edges, a few far outside, some NaN.
    x = rng.integers(-7, 8, size=(500, 4)).astype(float)
    x[rng.random(x.shape) < 0.05] = np.nan
    w = make_window(obj)
    for start in range(0, 500, 64):
        w.update(x[start : start + 64])
    rep = w.report()
    for j, e in enumerate(edges):
        col = x[:, j][~np.isnan(x[:, j])]
        expected = np.bincount(bin_index(e, col), minlength=len(e) + 1)
        assert rep["features"][f"f{j}"]["counts"] == expected.tolist()


# --- the window ---------------------------------------------------------------------------------


def close(a: Any, b: Any, path: str = "") -> None:
    """Equal structure and ints, floats equal to 1e-9 relative."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def random_batch(rng: np.random.Generator, rows: int, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    x = rng.standard_normal((rows, 3)) + shift
    x[rng.random(x.shape) < 0.03] = np.nan
    return x, rng.integers(0, 3, rows), rng.uniform(0.3, 1.0, rows)


def test_streaming_batches_equal_one_batch() -> None:
    x, labels, conf = random_batch(np.random.default_rng(9), 200, shift=0.3)
    whole = make_window()
    whole.update(x, labels, conf)
    parts = make_window()
    for lo, hi in [(0, 1), (1, 64), (64, 64), (64, 128), (128, 190), (190, 200)]:
        parts.update(x[lo:hi], labels[lo:hi], conf[lo:hi])
    assert parts.n == whole.n == 200
    close(parts.report(), whole.report())
    rep = whole.report()
    for name, f in rep["features"].items():
        col = x[:, int(name[1:])]
        present = col[~np.isnan(col)]
        assert f["count"] == present.size
        assert f["mean"] == pytest.approx(present.mean(), rel=1e-12)
        assert f["m2"] == pytest.approx(((present - present.mean()) ** 2).sum(), rel=1e-12)
    assert rep["prediction"]["counts"] == np.bincount(labels, minlength=3).tolist()
    assert rep["low_confidence"] == int((conf < 0.5).sum())
    assert rep["confidence"]["mean"] == pytest.approx(conf.mean())


def test_report_is_strict_json_even_when_empty() -> None:
    w = make_window()
    rep = w.report()
    assert rep["verdict"] == "insufficient"
    assert rep["features"]["f0"]["mean"] is None and rep["confidence"]["mean"] is None
    json.loads(dumps(rep))  # no NaN anywhere
    x, labels, conf = random_batch(np.random.default_rng(1), 100)
    w.update(x, labels, conf)
    json.loads(dumps(w.report()))
    w.reset()
    assert w.n == 0 and w.report()["features"]["f0"]["counts"] == [0] * 10


def test_insufficient_rows_flag_nothing() -> None:
    w = make_window()
    w.update(np.full((20, 3), 50.0))  # wildly off, but only 20 rows
    rep = w.report(min_rows=30)
    assert rep["verdict"] == "insufficient" and rep["drifted"] == []
    assert not any(f["drifted"] for f in rep["features"].values())
    assert w.report(min_rows=10)["verdict"] == "drift"


def test_missing_values_are_a_drift_signal() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3))
    x[:40, 1] = np.nan  # 20 % missing in a feature that never had any
    w = make_window()
    w.update(x)
    rep = w.report()
    assert rep["drifted"] == ["f1"] and rep["verdict"] == "drift"
    assert rep["features"]["f1"]["missing"] == 40
    # A reference that already had 20 % missing values sees nothing unusual.
    w = make_window(reference_obj(missing_rate=0.2))
    w.update(x)
    assert not w.report()["features"]["f1"]["drifted"]


def test_prediction_drift_is_reported_but_not_the_verdict() -> None:
    rng = np.random.default_rng(4)
    w = make_window()
    w.update(rng.standard_normal((200, 3)), np.full(200, 2), rng.uniform(0.5, 1.0, 200))
    rep = w.report()
    assert rep["prediction"]["drifted"]
    assert rep["verdict"] == "ok"


def test_constant_reference_feature() -> None:
    obj = reference_obj(n_features=1)
    obj["features"][0].update(edges=[], proportions=[1.0], mean=4.0, std=0.0, min=4.0, max=4.0)
    w = make_window(obj)
    w.update(np.full((50, 1), 4.0))
    f = w.report()["features"]["f0"]
    assert not f["drifted"] and f["z"] == 0.0 and f["differs_p"] == 1.0
    # One value off the constant is what 2,000 reference rows cannot rule out (p = 51/2051):
    # the old rule called it drift, and digits' edge pixels false-alarmed on it.
    w.update(np.full((1, 1), 4.5))
    f = w.report()["features"]["f0"]
    assert not f["drifted"] and f["z"] is None and f["psi"] == 0.0 and f["out_of_range"] == 1
    assert f["differs_p"] == pytest.approx(51 / 2051)
    w.update(np.full((4, 1), 4.5))  # 5 of 55: p ~ 3e-8
    f = w.report()["features"]["f0"]
    assert f["drifted"] and f["fired"] == ["differs"] and f["score"] > 1.0


def test_missing_values_need_more_than_chance() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 3))
    w = make_window()
    x[:2, 0] = np.nan  # 2 NaN against none in 2,000 reference rows: p = 0.0083 > 0.01/3
    w.update(x)
    f = w.report()["features"]["f0"]
    assert not f["drifted"] and f["missing_p"] == pytest.approx(naive_excess_p(2, 200, 0, 2000))
    w.reset()
    x[2, 0] = np.nan  # 3: p = 7.5e-4
    w.update(x)
    f = w.report()["features"]["f0"]
    assert f["drifted"] and f["fired"] == ["missing"]
    assert f["missing_z"] > 3.0  # the display z still says how unusual it is


def test_thresholds_follow_the_window_size() -> None:
    obj = reference_obj(window=200)
    rng = np.random.default_rng(6)
    w = make_window(obj)
    w.update(rng.standard_normal((200, 3)))
    assert w.report()["thresholds"]["psi"]["f0"] == 0.15  # shipped, calibrated for 200 rows
    w.reset()
    w.update(rng.standard_normal((50, 3)))
    small = w.report()["thresholds"]["psi"]["f0"]
    w.reset()
    w.update(rng.standard_normal((400, 3)))
    large = w.report()["thresholds"]["psi"]["f0"]
    alpha_f = 0.01 / 3
    assert small > psi_threshold(50, 10, alpha_f) * reference_factor(50, 2000)
    assert large >= psi_threshold(400, 10, alpha_f) * reference_factor(400, 2000)
    assert small > large


def test_update_rejects_bad_batches_without_changing_state() -> None:
    w = make_window()
    w.update(np.zeros((5, 3)))
    before = w.report()
    bad: list[Callable[[], None]] = [
        lambda: w.update(np.zeros((4, 2))),
        lambda: w.update(np.zeros(3)),
        lambda: w.update(np.zeros((4, 3)), np.array([0, 1, 2, 3])),
        lambda: w.update(np.zeros((4, 3)), np.array([0, 1, -1, 0])),
        lambda: w.update(np.zeros((4, 3)), np.array([0, 1])),
        lambda: w.update(np.zeros((4, 3)), np.array([0.0, 1.0, 0.0, 0.0])),
        lambda: w.update(np.zeros((4, 3)), None, np.ones(3)),
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()
    assert w.report() == before


def test_window_full() -> None:
    w = make_window(window=100)
    w.update(np.zeros((64, 3)))
    assert not w.full
    w.update(np.zeros((64, 3)))
    assert w.full and w.n == 128


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.floats(-10, 10), st.just(math.nan)), min_size=3, max_size=3),
        min_size=0,
        max_size=80,
    )
)
def test_counts_and_missing_sum_to_rows(rows: list[list[float]]) -> None:
    w = make_window()
    w.update(np.array(rows, dtype=float).reshape(-1, 3))
    rep = w.report(min_rows=1)
    for f in rep["features"].values():
        assert sum(f["counts"]) + f["missing"] == rep["n"] == len(rows)
        assert f["psi"] >= 0.0 and 0.0 <= f["js"] <= 1.0


# --- reference.json validation -----------------------------------------------------------------


def test_reference_round_trip() -> None:
    obj = reference_obj()
    ref = Reference.from_json(obj)
    assert ref.to_json() == obj
    assert ref.names == ("f0", "f1", "f2")
    assert Reference.from_json(json.loads(dumps(ref.to_json()))) == ref


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _two_features_named_alike(obj: dict[str, Any]) -> None:
    obj["features"][1]["name"] = "f0"


BAD: dict[str, Callable[[dict[str, Any]], None]] = {
    "format 2": _set(["format"], 2),
    "format true": _set(["format"], True),
    "no features": _delete(["features"]),
    "empty features": _set(["features"], []),
    "no thresholds": _delete(["thresholds"]),
    "no prediction": _delete(["prediction"]),
    "no confidence": _delete(["confidence"]),
    "n zero": _set(["n"], 0),
    "n bool": _set(["n"], True),
    "alpha 0": _set(["alpha"], 0.0),
    "alpha nan": _set(["alpha"], math.nan),
    "feature not object": _set(["features", 0], "f0"),
    "feature no edges": _delete(["features", 0, "edges"]),
    "feature no std": _delete(["features", 0, "std"]),
    "feature categorical": _set(["features", 0, "kind"], "categorical"),
    "feature empty name": _set(["features", 0, "name"], ""),
    "edges tied": _set(["features", 0, "edges"], [0.0, 0.0, 1.0]),
    "edges decreasing": _set(["features", 0, "edges"], [1.0, 0.0]),
    "edges too many": _set(["features", 0, "edges"], [float(i) for i in range(MAX_EDGES + 1)]),
    "edges infinite": _set(["features", 0, "edges"], [0.0, math.inf]),
    "edges strings": _set(["features", 0, "edges"], ["0", "1"]),
    "proportions short": _set(["features", 0, "proportions"], [0.1] * 9),
    "proportions sum": _set(["features", 0, "proportions"], [0.1] * 9 + [0.2]),
    "proportions negative": _set(["features", 0, "proportions"], [-0.1, 0.3, *[0.1] * 8]),
    "proportions nan": _set(["features", 0, "proportions"], [math.nan, *[0.1] * 9]),
    "mean nan": _set(["features", 0, "mean"], math.nan),
    "mean inf": _set(["features", 0, "mean"], math.inf),
    "std negative": _set(["features", 0, "std"], -1.0),
    "min above max": _set(["features", 0, "min"], 9.0),
    "missing rate above 1": _set(["features", 0, "missing_rate"], 1.5),
    "duplicate feature names": _two_features_named_alike,
    "prediction kind": _set(["prediction", "kind"], "bins"),
    "prediction labels duplicate": _set(["prediction", "labels"], ["a", "a", "c"]),
    "prediction labels null": _set(["prediction", "labels"], ["a", None, "c"]),
    "prediction proportions length": _set(["prediction", "proportions"], [0.5, 0.5]),
    "confidence mean above 1": _set(["confidence", "mean"], 1.2),
    "confidence edges tied": _set(["confidence", "edges"], [0.4, 0.4, 0.6, 0.7, 0.8, 0.9]),
    "thresholds window 0": _set(["thresholds", "window"], 0),
    "thresholds psi missing a feature": _delete(["thresholds", "psi", "f2"]),
    "thresholds psi unknown feature": _set(["thresholds", "psi", "zz"], 0.1),
    "thresholds psi negative": _set(["thresholds", "psi", "f0"], -0.1),
    "thresholds z missing": _delete(["thresholds", "z"]),
    "thresholds prediction_psi inf": _set(["thresholds", "prediction_psi"], math.inf),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_from_json_rejects_malformed(case: str) -> None:
    obj = copy.deepcopy(reference_obj())
    BAD[case](obj)
    with pytest.raises(ProtocolError) as err:
        Reference.from_json(obj)
    assert err.value.detail.startswith("reference")


def test_from_json_rejects_non_object() -> None:
    with pytest.raises(ProtocolError):
        Reference.from_json([reference_obj()])


# --- categorical features and regressors (hand-written references) ---------------------------------


def categorical_obj() -> dict[str, Any]:
    obj = reference_obj(n_features=2)
    obj["features"][1] = {
        "name": "f1",
        "kind": "categorical",
        "categories": ["red", "green"],
        "proportions": [0.6, 0.3, 0.1],
        "missing_rate": 0.05,
    }
    return obj


def test_categorical_reference_round_trip_and_codes() -> None:
    obj = categorical_obj()
    ref = Reference.from_json(obj)
    assert ref.to_json() == obj
    assert ref.category_codes() == [None, {"red": 0.0, "green": 1.0}]


def test_categorical_counts_psi_js_against_naive() -> None:
    w = make_window(categorical_obj())
    codes = [0.0] * 50 + [1.0] * 20 + [2.0] * 25 + [math.nan] * 5
    X = np.column_stack([np.zeros(100), codes])
    w.update(X)
    f = w.report()["features"]["f1"]
    assert f["counts"] == [50, 20, 25] and f["unseen"] == 25 and f["missing"] == 5 and f["count"] == 95
    assert f["psi"] == pytest.approx(naive_psi([0.6, 0.3, 0.1], [50, 20, 25]), abs=1e-9)
    assert f["js"] == pytest.approx(naive_js([0.6, 0.3, 0.1], [50, 20, 25]), abs=1e-9)
    assert f["drifted"] and set(f) == {
        "kind",
        "counts",
        "missing",
        "unseen",
        "count",
        "psi",
        "js",
        "missing_z",
        "drifted",
        "psi_limit",
        "missing_p",
        "score",
        "fired",
    }
    assert f["fired"] == ["psi"] and f["psi_limit"] == w.report()["thresholds"]["psi"]["f1"]
    assert w.report()["features"]["f0"]["kind"] == "numeric"


def test_categorical_codes_are_validated_before_any_state_changes() -> None:
    w = make_window(categorical_obj())
    w.update(np.zeros((3, 2)))
    before = w.report()
    for bad in (3.0, -1.0, 0.5):
        with pytest.raises(ValueError, match="codes"):
            w.update(np.array([[0.0, 0.0], [0.0, bad]]))
    assert w.report() == before


def regression_obj() -> dict[str, Any]:
    obj = reference_obj(n_features=1)
    obj["prediction"] = {"kind": "bins", "edges": [0.0, 10.0], "proportions": [0.2, 0.5, 0.3]}
    obj["confidence"] = None
    return obj


def test_regression_reference_and_window() -> None:
    obj = regression_obj()
    ref = Reference.from_json(obj)
    assert ref.to_json() == obj and ref.confidence is None and ref.prediction.bins == 3
    w = DriftWindow(ref, window=200, low_confidence=0.5)
    w.update(np.zeros((4, 1)), predicted=[-1.0, 0.0, 5.0, math.nan])
    rep = w.report(min_rows=1)
    assert rep["prediction"]["counts"] == [1, 2, 0] and rep["prediction"]["mean"] == pytest.approx(4 / 3)
    assert rep["confidence"] is None and rep["low_confidence_rate"] is None
    json.loads(dumps(rep))
    with pytest.raises(ValueError, match="regressor"):
        w.update(np.zeros((1, 1)), label_idx=[0])
    with pytest.raises(ValueError, match="confidence"):
        w.update(np.zeros((1, 1)), confidence=[0.5])
    with pytest.raises(ValueError, match="predicted"):
        make_window().update(np.zeros((1, 3)), predicted=[1.0])


BAD_EXTENDED: dict[str, Callable[[dict[str, Any]], None]] = {
    "categories not strings": _set(["features", 1, "categories"], ["red", 2]),
    "categories duplicate": _set(["features", 1, "categories"], ["red", "red"]),
    "categories too many": _set(["features", 1, "categories"], [f"c{i}" for i in range(21)]),
    "categorical proportions length": _set(["features", 1, "proportions"], [0.6, 0.4]),
    "categorical no missing_rate": _delete(["features", 1, "missing_rate"]),
    "kind unknown": _set(["features", 1, "kind"], "ordinal"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXTENDED))
def test_from_json_rejects_malformed_categorical(case: str) -> None:
    obj = copy.deepcopy(categorical_obj())
    BAD_EXTENDED[case](obj)
    with pytest.raises(ProtocolError):
        Reference.from_json(obj)


def test_regression_reference_needs_null_confidence() -> None:
    obj = regression_obj()
    obj["confidence"] = reference_obj()["confidence"]
    with pytest.raises(ProtocolError, match="confidence must be null"):
        Reference.from_json(obj)
    obj = regression_obj()
    obj["prediction"]["edges"] = [1.0, 0.0]
    with pytest.raises(ProtocolError):
        Reference.from_json(obj)


# --- judging merged windows on the host ----------------------------------------------------------


def windows_of(ref: Reference, x: np.ndarray, rows: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Reports of consecutive windows over ``x``, as devices would publish them."""
    out = []
    w = DriftWindow(ref, window=rows, low_confidence=0.5)
    for start in range(0, x.shape[0], rows):
        part = x[start : start + rows]
        w.reset()
        w.update(part, rng.integers(0, 3, part.shape[0]), rng.uniform(0.3, 1.0, part.shape[0]))
        out.append(json.loads(dumps(w.report())))  # through the wire format
    return out


def test_merged_windows_are_judged_like_one_long_window() -> None:
    ref = Reference.from_json(reference_obj())
    x, labels, conf = random_batch(np.random.default_rng(21), 1000, shift=0.1)
    long = DriftWindow(ref, window=1000, low_confidence=0.5)
    long.update(x, labels, conf)
    parts = []
    for start in range(0, 1000, 200):
        w = DriftWindow(ref, window=200, low_confidence=0.5)
        w.update(x[start : start + 200], labels[start : start + 200], conf[start : start + 200])
        parts.append(json.loads(dumps(w.report())))
    merged = merge_windows(parts)
    assert merged["windows"] == 5 and merged["n"] == 1000
    close(assess(ref, merged), long.report())
    json.loads(dumps(assess(ref, merged)))


def test_merged_windows_see_a_shift_single_windows_miss() -> None:
    ref = Reference.from_json(reference_obj())
    rng = np.random.default_rng(22)
    x = rng.standard_normal((5000, 3))
    x[:, 0] += 0.15
    reports = windows_of(ref, x, 200, rng)
    single = np.mean([r["features"]["f0"]["drifted"] for r in reports])
    assert single < 0.5
    merged = assess(ref, merge_windows(reports))
    assert merged["drifted"] == ["f0"] and "location" in merged["features"]["f0"]["fired"]
    assert merged["features"]["f0"]["location_z"] > 2 * merged["thresholds"]["z"]


def test_merged_clean_windows_stay_quiet() -> None:
    ref = Reference.from_json(reference_obj())
    rng = np.random.default_rng(23)
    alarms = 0
    for _ in range(150):
        reports = windows_of(ref, rng.standard_normal((2000, 3)), 200, rng)
        alarms += assess(ref, merge_windows(reports))["verdict"] == "drift"
    assert alarms / 150 <= 0.03


def test_assess_at_another_rate() -> None:
    ref = Reference.from_json(reference_obj())
    rng = np.random.default_rng(24)
    x = rng.standard_normal((200, 3))
    x[:, 1] += 0.25
    (report,) = windows_of(ref, x, 200, rng)
    strict, loose = assess(ref, report), assess(ref, report, alpha=0.3)
    assert loose["thresholds"]["alpha"] == 0.3 and loose["thresholds"]["feature_alpha"] == pytest.approx(0.1)
    assert loose["thresholds"]["z"] == pytest.approx(NormalDist().inv_cdf(1 - 0.3 / 6))
    assert loose["thresholds"]["psi"]["f1"] < strict["thresholds"]["psi"]["f1"]
    assert set(strict["drifted"]) <= set(loose["drifted"]) and "f1" in loose["drifted"]
    assert strict == report  # the shipped rate reproduces the device's own verdict


def test_assess_and_merge_refuse_what_does_not_fit() -> None:
    ref = Reference.from_json(reference_obj())
    (report,) = windows_of(ref, np.zeros((50, 3)), 50, np.random.default_rng(25))
    short = copy.deepcopy(report)
    short["features"]["f0"]["counts"] = [1, 2]
    other = copy.deepcopy(report)
    del other["features"]["f2"]
    negative = copy.deepcopy(report)
    negative["features"]["f1"]["missing"] = -1
    for bad, message in [(short, "10 counts"), (other, "one entry per"), (negative, "non-negative")]:
        with pytest.raises(ValueError, match=message):
            assess(ref, bad)
    with pytest.raises(ValueError, match="alpha"):
        assess(ref, report, alpha=1.0)
    with pytest.raises(ValueError, match="no windows"):
        merge_windows([])
    with pytest.raises(ValueError, match="same features"):
        merge_windows([report, other])
    with pytest.raises(ValueError, match="line up"):
        merge_windows([report, short])
