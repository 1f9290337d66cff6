"""Fit one candidate model on a stratified training split and measure it honestly.

Classification only for now. The task is a field of the result and the pipelines are built
per task, so regression can be added beside it without changing the callers.

Besides the fitted pipeline, training returns out-of-fold probabilities on the training split:
the drift reference describes the model's confidence on rows it has not seen, because
confidence on its own training rows is inflated (0.958 vs 0.915 mean max-probability on wine).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from edgekit.data import Table
from edgekit.errors import DataError

MODELS = ("logreg", "rf", "hgb", "mlp")
CV_FOLDS = 5


@dataclass
class TrainResult:
    model: str
    task: str  # "classification"
    estimator: Pipeline  # fitted on the training split
    classes: list[Any]  # python scalars, in estimator.classes_ order (= probability columns)
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    oof_proba: np.ndarray  # out-of-fold predict_proba on the training split, rows as X_train
    metrics: dict[str, Any]
    params: dict[str, Any]
    seed: int
    duration_s: float


def build_pipeline(model: str, seed: int) -> Pipeline:
    """The candidate pipelines. Scalers go in front of the models that need them: an MLP on
    raw breast_cancer / wine features converges poorly."""
    if model == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if model == "rf":
        return make_pipeline(RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1))
    if model == "hgb":
        return make_pipeline(HistGradientBoostingClassifier(random_state=seed))
    if model == "mlp":
        return make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=seed)
        )
    raise DataError(f"unknown model '{model}'", f"choose one of: {', '.join(MODELS)}")


def train(table: Table, model: str = "logreg", seed: int = 0, test_size: float = 0.25) -> TrainResult:
    """Split, cross-validate on the training split, fit on it, score on the holdout."""
    started = time.perf_counter()
    pipeline = build_pipeline(model, seed)
    if not 0.0 < test_size < 1.0:
        raise DataError(f"test size {test_size} is not a fraction", "use a value between 0 and 1, e.g. 0.25")
    _check_class_counts(table.y, test_size)
    X_train, X_test, y_train, y_test = train_test_split(
        table.X, table.y, test_size=test_size, random_state=seed, stratify=table.y
    )
    _check_class_counts(y_train, test_size, after_split=True)

    # One BLAS/OpenMP thread: on tables this size threads cost more than they bring, and on a
    # busy 2-core host OpenMP spin-waits made one HGB fit take 0.4-14 s instead of a steady 0.3 s.
    with threadpool_limits(limits=1):
        oof_proba, fold_accuracy = _out_of_fold(pipeline, X_train, y_train, seed)
        estimator = clone(pipeline).fit(X_train, y_train)
    classes = [c.item() if isinstance(c, np.generic) else c for c in estimator.classes_]
    proba = estimator.predict_proba(X_test)
    predicted = estimator.predict(X_test)
    metrics = {
        "holdout": {
            "accuracy": float(accuracy_score(y_test, predicted)),
            "f1_macro": float(f1_score(y_test, predicted, average="macro")),
            "log_loss": float(log_loss(y_test, proba, labels=estimator.classes_)),
        },
        "cv": {"accuracy_mean": float(np.mean(fold_accuracy)), "accuracy_std": float(np.std(fold_accuracy))},
    }
    params = {k: _json_safe(v) for k, v in estimator.steps[-1][1].get_params(deep=False).items()}
    params.update(model=model, seed=seed, test_size=test_size)
    return TrainResult(
        model=model,
        task="classification",
        estimator=estimator,
        classes=classes,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        oof_proba=oof_proba,
        metrics=metrics,
        params=params,
        seed=seed,
        duration_s=time.perf_counter() - started,
    )


def _check_class_counts(y: np.ndarray, test_size: float, after_split: bool = False) -> None:
    """Every class needs a row in the holdout and ``CV_FOLDS`` rows in the training split.

    The count per class is checked before splitting (for a clear message) and again on the
    training split, because the stratified split rounds per class.
    """
    needed = max(CV_FOLDS + 1, math.ceil(CV_FOLDS / (1.0 - test_size)) + 1)
    label, count = min(Counter(y.tolist()).items(), key=lambda item: item[1])
    if count < (CV_FOLDS if after_split else needed):
        where = " in the training split" if after_split else ""
        raise DataError(
            f"class {label!r} has only {count} rows{where}; a {CV_FOLDS}-fold cross-validation plus "
            f"a {test_size:.0%} holdout needs at least {needed} rows per class",
            "add rows of that class, merge it with another, or drop it",
        )


def _out_of_fold(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, list[float]]:
    """Stratified k-fold predict_proba (what ``cross_val_predict`` computes) plus the per-fold
    accuracy, in one pass so each fold is fitted once."""
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)), dtype=np.float64)
    accuracy: list[float] = []
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fit_idx, val_idx in folds.split(X, y):
        fold = clone(pipeline).fit(X[fit_idx], y[fit_idx])
        # Every class is in every fit split (checked above), so the columns line up with `classes`.
        proba[val_idx] = fold.predict_proba(X[val_idx])
        predicted = classes[np.argmax(proba[val_idx], axis=1)]
        accuracy.append(float(np.mean(predicted == y[val_idx])))
    return proba, accuracy


def _json_safe(value: Any) -> Any:
    """Estimator parameters as JSON values; anything else (objects, NaN) as its string form."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)
