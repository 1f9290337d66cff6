"""Rows for simulated devices to serve: real data replayed, or drawn from the reference.

A device's drift windows are only as honest as its rows. Given a CSV (the data the model was
trained on, say), rows are drawn from it with replacement, so windows look like production and
a clean device reports no drift. Without one, each numeric feature is drawn from the bundle's
own reference histogram (a bin by its share, a value uniform within it): every marginal is
right, but the features are independent, so a model's predictions can look shifted. Pass
``--rows`` when the ML verdicts matter.

Drift is injected by shifting the first numeric features by a number of their reference
standard deviations; bad rows are rows with one value made NaN.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from device_agent.drift import FeatureRef, Reference

from ..errors import DataError

DRIFT_FEATURES = 2  # how many leading numeric features a drift fault shifts


class RowPool:
    """A matrix of rows in a bundle's feature order, and how to draw from it."""

    def __init__(self, matrix: np.ndarray, reference: Reference) -> None:
        self.matrix = matrix
        numeric = [j for j, f in enumerate(reference.features) if isinstance(f, FeatureRef) and f.std > 0]
        self.shift = np.zeros(matrix.shape[1])
        for j in numeric[:DRIFT_FEATURES]:
            feature = reference.features[j]
            assert isinstance(feature, FeatureRef)
            self.shift[j] = feature.std

    def draw(self, rng: np.random.Generator, n: int, drift_sigma: float = 0.0, error_rate: float = 0.0) -> np.ndarray:
        rows = self.matrix[rng.integers(0, len(self.matrix), n)]
        if drift_sigma:
            rows = rows + drift_sigma * self.shift
        if error_rate:
            bad = np.flatnonzero(rng.random(n) < error_rate)
            if len(bad):
                rows = rows.copy()
                rows[bad, 0] = math.nan
        return rows


def from_csv(path: Path, names: Sequence[str], reference: Reference, limit: int = 20_000) -> RowPool:
    """The first ``limit`` rows of a CSV with a header naming (at least) the model's features."""
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            where = {n: i for i, n in enumerate(header)}
            missing = [n for n in names if n not in where]
            if missing:
                raise DataError(
                    f"{path} has no column {missing[0]!r} (the model's features: {', '.join(names[:6])}…)",
                    "pass the CSV the model was trained on, or leave --rows out",
                )
            cols = [where[n] for n in names]
            rows = []
            for i, line in enumerate(reader):
                if i >= limit:
                    break
                rows.append([_number(line[c]) for c in cols])
    except (OSError, StopIteration) as exc:
        raise DataError(f"cannot read rows from {path}: {exc or 'empty file'}") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    return RowPool(np.asarray(rows, dtype=np.float64), reference)


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def from_reference(reference: Reference, seed: int, n: int = 5000) -> RowPool:
    """Rows drawn feature by feature from the reference histograms (independent features)."""
    rng = np.random.default_rng(seed)
    cols = []
    for feature in reference.features:
        if not isinstance(feature, FeatureRef):
            raise DataError(f"feature {feature.name!r} is categorical: simulated rows need --rows CSV for this model")
        props = np.asarray(feature.proportions, dtype=np.float64)
        bins = rng.choice(len(props), size=n, p=props / props.sum())
        bounds = [feature.min, *feature.edges, feature.max]
        lo = np.asarray(bounds[:-1])[bins]
        hi = np.maximum(np.asarray(bounds[1:])[bins], lo)
        cols.append(lo + (hi - lo) * rng.random(n))
    return RowPool(np.column_stack(cols), reference)
