"""Reference statistics for drift monitoring, built on the host from training data.

The output is the ``reference.json`` member of a bundle; its format, the binning rule and
the PSI definition live in :mod:`device_agent.drift` and are imported from there, so the
host and the device cannot disagree about a bin or a threshold.

Why the thresholds are calibrated: a fixed "PSI > 0.1" alarms on most windows of 50-100
rows purely from sampling noise, and the chi-square approximation of n*PSI is optimistic
below ~150 rows. The shipped PSI threshold of each feature is the ``alpha/F`` quantile of
PSI for windows of the deployed size drawn from the reference proportions — in distribution
exactly a bootstrap of windows from the training rows — computed once, in
:func:`device_agent.drift.psi_limit`, for host and device alike: exactly for columns of up
to 3 bins (near-constant ones), else from 20,000 simulated windows with a fitted exponential
tail, because a Bonferroni-sized quantile of 2,000 raw draws sat at their maximum (too low,
and 2.85x apart between seeds). Windows drawn from the reference match its proportions
exactly, while live windows are compared with proportions *estimated* from the training
rows, so the shipped value is widened by ``1 + window/n``
(:func:`device_agent.drift.reference_factor`).

Categorical features get their :data:`~device_agent.drift.MAX_CATEGORIES` most frequent
categories (ties by name) and one "other" share, computed over non-missing values; their PSI
thresholds are calibrated the same way over those bins. A regressor's reference describes
its out-of-fold predictions in bins (the numeric features' binning rule) and has no
confidence distribution.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from device_agent.drift import (
    FORMAT,
    MAX_CATEGORIES,
    NULL_DRAWS,
    Reference,
    bin_index,
    psi_limit,
)
from edgekit.errors import DataError

DECILES = np.linspace(0.1, 0.9, 9)
MAX_DISTINCT_AS_LEVELS = 10  # at most this many distinct values: one bin per value
CONFIDENCE_BINS = 10

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _between(lo: FloatArray, hi: FloatArray) -> FloatArray:
    """A cut strictly above ``lo`` and at most ``hi``: with the right-closed binning rule,
    ``lo`` falls below the cut and ``hi`` above it. Halving first avoids overflow; if the two
    values are adjacent floats the midpoint rounds onto ``lo``, so use ``hi`` itself."""
    mid = lo / 2.0 + hi / 2.0
    return np.where(mid > lo, mid, hi)


def feature_edges(values: FloatArray) -> FloatArray:
    """Bin edges for one feature's non-missing values.

    Few distinct values (integers, codes, flags): one bin per value, edges at midpoints.
    Otherwise deciles, taken as observed values (``method="lower"``) and deduplicated, with
    each edge moved to just above its observed value. Heavy ties then collapse edges rather
    than leave an edge *on* a tied value, where the right-closed rule would put the whole tie
    in the upper bin and leave the lower one empty: every bin is populated by construction.
    """
    distinct = np.unique(values)
    if distinct.size <= MAX_DISTINCT_AS_LEVELS:
        return _between(distinct[:-1], distinct[1:])
    cuts = np.unique(np.quantile(values, DECILES, method="lower"))
    cuts = cuts[cuts < distinct[-1]]
    above = distinct[np.searchsorted(distinct, cuts, side="right")]
    return _between(cuts, above)


def _proportions(counts: IntArray) -> list[float]:
    total = int(counts.sum())
    return [float(c) / total for c in counts]


def _scalar(value: Any) -> Any:
    """numpy scalars → plain Python, so labels serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def categorical_stats(values: Sequence[Any]) -> tuple[list[str], IntArray, IntArray]:
    """(top categories, counts per bin incl. "other", code per row) of one categorical column.
    Missing values ("" or None) get the code ``len(categories) + 1`` and are not counted."""
    present = [str(v) for v in values if v is not None and v != ""]
    freq = Counter(present)
    top = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CATEGORIES]]
    index = {c: i for i, c in enumerate(top)}
    other = len(top)
    codes = np.array([other + 1 if v is None or v == "" else index.get(str(v), other) for v in values], dtype=np.int64)
    counts = np.bincount(codes[codes <= other], minlength=other + 1)
    return top, counts, codes


def build_reference(
    X: npt.ArrayLike,
    feature_names: Sequence[str],
    classes: Sequence[Any],
    oof_proba: npt.ArrayLike,
    window: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
    draws: int = NULL_DRAWS,
    *,
    feature_types: Sequence[str] | None = None,
    task: str = "classification",
) -> dict[str, Any]:
    """Build ``reference.json`` from training features and out-of-fold predictions.

    ``X`` is (n, F): floats with NaN for missing values, or an object array whose categorical
    columns hold strings ("" or None for missing); ``feature_types`` gives each column's type
    ("numeric" / "categorical", default all numeric). For a classifier ``oof_proba`` is (m, C)
    out-of-fold class probabilities in the order of ``classes`` (in-sample predictions are
    over-confident and would make a healthy device look drifted); for a regressor
    (``task="regression"``, ``classes`` empty) it is the (m,) out-of-fold predicted values.
    ``window`` is the device's window size: the shipped PSI thresholds are calibrated for
    exactly that many rows at family-wise false-alarm rate ``alpha`` (Bonferroni over
    features), from ``draws`` simulated windows per feature where the null is not computed
    exactly. Deterministic for a given seed.
    """
    raw = np.asarray(X)
    names = list(feature_names)
    if raw.ndim != 2 or raw.shape[0] < 2:
        raise DataError(f"reference data must be a 2-D table with at least 2 rows, got shape {raw.shape}")
    n, n_features = raw.shape
    if len(names) != n_features:
        raise DataError(f"{len(names)} feature names for {n_features} columns")
    if len(set(names)) != len(names) or not all(isinstance(s, str) and s for s in names):
        raise DataError("feature names must be unique, non-empty strings")
    types = list(feature_types) if feature_types is not None else ["numeric"] * n_features
    if len(types) != n_features or not set(types) <= {"numeric", "categorical"}:
        raise DataError(f"feature_types must give 'numeric' or 'categorical' for each of the {n_features} columns")
    numeric_cols = [j for j, t in enumerate(types) if t == "numeric"]
    x = np.full((n, n_features), np.nan)
    if numeric_cols:
        x[:, numeric_cols] = np.asarray(raw[:, numeric_cols], dtype=np.float64)
    if np.isinf(x).any():
        raise DataError("reference data holds infinite values; use NaN for missing values")
    if task not in ("classification", "regression"):
        raise DataError(f"unknown task {task!r}")
    proba = np.asarray(oof_proba, dtype=np.float64)
    labels = [_scalar(c) for c in classes]
    if task == "classification":
        if len(labels) < 2:
            raise DataError("a classifier reference needs at least 2 classes")
        if proba.ndim != 2 or proba.shape[1] != len(labels) or proba.shape[0] < 1:
            raise DataError(f"oof_proba must have shape (m, {len(labels)}), got {proba.shape}")
    elif proba.ndim != 1 or proba.shape[0] < 2:
        raise DataError(f"a regressor's out-of-fold predictions must have shape (m,), got {proba.shape}")
    if not np.isfinite(proba).all():
        raise DataError("oof_proba holds non-finite values")
    if window < 1 or draws < 100:
        raise DataError(f"window must be positive and draws at least 100, got {window} and {draws}")
    if not 0.0 < alpha < 1.0:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")

    alpha_f = alpha / n_features
    features: list[dict[str, Any]] = []
    psi_thresholds: dict[str, float] = {}
    for j, name in enumerate(names):
        if types[j] == "categorical":
            top, counts, codes = categorical_stats(raw[:, j].tolist())
            if not top:
                raise DataError(f"feature {name!r} has no values in the reference data", hint="drop the column")
            props = _proportions(counts)
            missing = int(np.count_nonzero(codes > len(top)))
            psi_thresholds[name] = psi_limit(props, window, n, alpha_f, seed=seed, exact=True, draws=draws)
            features.append(
                {
                    "name": name,
                    "kind": "categorical",
                    "categories": top,
                    "proportions": props,
                    "missing_rate": missing / n,
                }
            )
            continue
        col = x[:, j]
        present = ~np.isnan(col)
        values = col[present]
        if values.size == 0:
            raise DataError(f"feature {name!r} has no values in the reference data", hint="drop the column")
        edges = feature_edges(values)
        bins = edges.size + 1
        counts = np.bincount(bin_index(edges, values), minlength=bins)
        props = _proportions(counts)
        psi_thresholds[name] = psi_limit(props, window, n, alpha_f, seed=seed, exact=True, draws=draws)
        features.append(
            {
                "name": name,
                "kind": "numeric",
                "edges": [float(e) for e in edges],
                "proportions": props,
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "min": float(values.min()),
                "max": float(values.max()),
                "missing_rate": (n - values.size) / n,
            }
        )

    prediction: dict[str, Any]
    confidence: dict[str, Any] | None
    if task == "classification":
        n_bins = len(labels)
        predicted = np.argmax(proba, axis=1)
        pred_props = _proportions(np.bincount(predicted, minlength=n_bins))
        prediction = {"kind": "classes", "labels": labels, "proportions": pred_props}
        top_p = proba.max(axis=1)
        conf_edges = np.linspace(1.0 / n_bins, 1.0, CONFIDENCE_BINS + 1)[1:-1]
        confidence = {
            "edges": [float(e) for e in conf_edges],
            "proportions": _proportions(np.bincount(bin_index(conf_edges, top_p), minlength=CONFIDENCE_BINS)),
            "mean": float(top_p.mean()),
        }
    else:
        pred_edges = feature_edges(proba)
        n_bins = pred_edges.size + 1
        predicted = bin_index(pred_edges, proba)
        pred_props = _proportions(np.bincount(predicted, minlength=n_bins))
        prediction = {"kind": "bins", "edges": [float(e) for e in pred_edges], "proportions": pred_props}
        confidence = None
    prediction_psi = psi_limit(pred_props, window, predicted.size, alpha, seed=seed, exact=True, draws=draws)

    obj: dict[str, Any] = {
        "format": FORMAT,
        "n": int(n),
        "alpha": float(alpha),
        "features": features,
        "prediction": prediction,
        "confidence": confidence,
        "thresholds": {
            "window": int(window),
            "psi": psi_thresholds,
            "prediction_psi": prediction_psi,
            "z": NormalDist().inv_cdf(1.0 - alpha / (2.0 * n_features)),
        },
    }
    Reference.from_json(obj)  # the device will parse it the same way; fail here, not there
    return obj
