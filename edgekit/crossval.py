"""k-fold cross-validation on the training split: the folds every family and every search
candidate is scored on, and the out-of-fold predictions the drift reference is built from."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline

from edgekit.metrics import score

CV_FOLDS = 5


def folds_for(task: str, seed: int) -> StratifiedKFold | KFold:
    if task == "classification":
        return StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    return KFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)


def out_of_fold(
    pipeline: Pipeline,
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    seed: int,
    metrics: Sequence[str] = (),
    deadline: float | None = None,
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """k-fold out-of-fold outputs (what ``cross_val_predict`` computes) plus per-fold scores
    for ``metrics`` (and accuracy / r2), in one pass so each fold is fitted once.

    With ``deadline`` (a ``time.perf_counter()`` value) it raises :class:`TimeoutError` between
    folds once the deadline has passed."""
    names = list(dict.fromkeys([*metrics, "accuracy" if task == "classification" else "r2"]))
    scores: dict[str, list[float]] = {name: [] for name in names}
    classes = np.unique(y) if task == "classification" else None
    shape = (len(y), len(classes)) if classes is not None else (len(y),)
    out: np.ndarray = np.zeros(shape, dtype=np.float64)
    for fit_idx, val_idx in folds_for(task, seed).split(X, y):
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError
        fold = clone(pipeline).fit(X[fit_idx], y[fit_idx])
        # Every class is in every fit split (checked above), so the columns line up with `classes`.
        out[val_idx] = fold.predict_proba(X[val_idx]) if classes is not None else fold.predict(X[val_idx])
        for name in names:
            scores[name].append(score(name, y[val_idx], out[val_idx], classes))
    return out, scores
