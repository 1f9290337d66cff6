"""The metrics a user can declare, and how a prediction is scored by each.

Training reports them, the search optimises the declared one; both read this module."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from edgekit.errors import DataError


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    greater_is_better: bool
    binary_only: bool = False


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "classification", True),
        Metric("f1_macro", "classification", True),
        Metric("roc_auc", "classification", True, binary_only=True),
        Metric("log_loss", "classification", False),
        Metric("r2", "regression", True),
        Metric("neg_mae", "regression", True),
        Metric("neg_rmse", "regression", True),
    )
}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}


def check_metric(metric: str | None, task: str, n_classes: int = 0) -> Metric:
    name = metric or DEFAULT_METRIC[task]
    found = METRICS.get(name)
    choices = [m.name for m in METRICS.values() if m.task == task and not (m.binary_only and n_classes > 2)]
    if found is None or found.task != task:
        raise DataError(f"metric '{name}' is not a {task} metric", f"choose one of: {', '.join(choices)}")
    if found.binary_only and n_classes > 2:
        raise DataError(
            f"metric '{name}' needs a binary target; this one has {n_classes} classes",
            f"choose one of: {', '.join(choices)}",
        )
    return found


def score(metric: str, y_true: np.ndarray, output: np.ndarray, classes: np.ndarray | None = None) -> float:
    """``metric`` of predictions ``output``: class probabilities (n, C) in ``classes`` order for
    classification, predicted values (n,) for regression. Orientation as named (log_loss: lower
    is better; neg_mae / neg_rmse: higher is better)."""
    if metric in ("r2", "neg_mae", "neg_rmse"):
        pred = np.asarray(output, dtype=np.float64).reshape(-1)
        if metric == "r2":
            return float(r2_score(y_true, pred))
        if metric == "neg_mae":
            return -float(mean_absolute_error(y_true, pred))
        return -math.sqrt(float(mean_squared_error(y_true, pred)))
    assert classes is not None
    proba = np.asarray(output, dtype=np.float64)
    if metric == "log_loss":  # rows renormalised: XGBoost's float32 probabilities sum to 1 ± 1e-7
        return float(log_loss(y_true, proba / proba.sum(axis=1, keepdims=True), labels=classes))
    if metric == "roc_auc":
        return float(roc_auc_score(y_true == classes[1], proba[:, 1]))
    predicted = classes[np.argmax(proba, axis=1)]
    if metric == "accuracy":
        return float(accuracy_score(y_true, predicted))
    if metric == "f1_macro":
        return float(f1_score(y_true, predicted, average="macro"))
    raise DataError(f"unknown metric '{metric}'", f"choose one of: {', '.join(METRICS)}")
