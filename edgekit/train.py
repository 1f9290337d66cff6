"""Fit one model (or search for the best one) on a training split and measure it honestly.

Classification and regression, numeric and categorical features, missing values. Every
pipeline starts with the preprocessing the device must not have to do: the ONNX graph gets
the raw features exactly as the table has them.

The families and their preprocessing live in :mod:`edgekit.families`, the metrics in
:mod:`edgekit.metrics`, the folds in :mod:`edgekit.crossval`; their names stay importable from
here.

Besides the fitted pipeline, training returns out-of-fold predictions on the training split:
the drift reference describes the model's outputs on rows it has not seen, because confidence
on its own training rows is inflated (0.958 vs 0.915 mean max-probability on wine).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from edgekit.crossval import CV_FOLDS, folds_for, out_of_fold
from edgekit.data import FeatureInfo, Table
from edgekit.errors import DataError
from edgekit.families import (
    SCALED_FAMILIES,
    TargetScaledMLPRegressor,
    build_pipeline,
    canonical_family,
    category_caps,
    default_params,
    families_for,
)
from edgekit.metrics import DEFAULT_METRIC, METRICS, Metric, check_metric, score
from edgekit.search import DEFAULT_BUDGET_S, search

MODELS = families_for("classification")  # the installed classification families, cheapest first
REGRESSION_MODELS = families_for("regression")
CHOICES = ("logreg", "linear", "rf", "et", "hgb", "lgbm", "xgb", "mlp", "auto")
__all__ = [  # moved to their own modules; importable from here as before
    "CV_FOLDS",
    "DEFAULT_METRIC",
    "METRICS",
    "SCALED_FAMILIES",
    "Metric",
    "TargetScaledMLPRegressor",
    "build_pipeline",
    "category_caps",
    "check_metric",
    "default_params",
    "folds_for",
    "out_of_fold",
    "score",
]

Progress = Callable[[str], None]


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: str  # the family that was fitted
    task: str  # "classification" | "regression"
    estimator: Pipeline  # fitted on the training split
    classes: list[Any]  # python scalars, in estimator.classes_ order (= probability columns); [] for regression
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    # out-of-fold outputs on the training split, rows as X_train: predict_proba (n, C) for
    # classification, predict (n,) for regression
    oof_proba: np.ndarray
    metrics: dict[str, Any]
    params: dict[str, Any]
    seed: int
    duration_s: float
    features: list[FeatureInfo] = field(default_factory=list)
    metric: str = "accuracy"  # the declared metric (selection metric for auto)
    warnings: list[str] = field(default_factory=list)
    leaderboard: list[dict[str, Any]] | None = None  # model="auto" only
    search: dict[str, Any] | None = None  # model="auto" only: budget, time used, candidates
    # Holdout rows as a device receives them (date/time values as text); None when that is X_test.
    rows_test: np.ndarray | None = None
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)  # capped categorical columns
    # Each training row's position in the table (-1: an added row), for finding it again.
    train_index: np.ndarray | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def target_scale(self) -> float:
        """Regression: the training target's standard deviation (parity is judged against it)."""
        if self.task != "regression":
            return 1.0
        return float(np.std(np.asarray(self.y_train, dtype=np.float64))) or 1.0


def train(
    table: Table,
    model: str = "logreg",
    seed: int = 0,
    test_size: float = 0.25,
    *,
    params: dict[str, Any] | None = None,
    metric: str | None = None,
    time_budget: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Split, cross-validate on the training split, fit on it, score on the holdout.

    ``extra`` (X, y) are rows added to the training split only (labelled field rows): the
    holdout stays the base table's, so a challenger's holdout metrics compare with its
    champion's.

    ``model`` is a family (``logreg``/``linear``, ``rf``, ``hgb``, ``mlp``) or ``auto``: a
    cross-validated search over families and hyperparameters (:mod:`edgekit.search`) within
    ``time_budget`` seconds, choosing by ``metric`` (default accuracy / r2). ``progress`` gets
    one dict per evaluated search candidate. ``params`` override a family's defaults.
    """
    started = time.perf_counter()
    task = table.task
    if model != "auto":
        canonical_family(model, task)  # unknown names fail before any work
    if not 0.0 < test_size < 1.0:
        raise DataError(f"test size {test_size} is not a fraction", "use a value between 0 and 1, e.g. 0.25")
    if task == "classification":
        _check_class_counts(table.y, test_size)
        stratify: np.ndarray | None = table.y
    else:
        _check_regression_rows(len(table.y), test_size)
        stratify = None
    # The row indices ride along (the split depends only on the row count and stratify), so the
    # holdout's raw rows can be kept for a device's health samples.
    X_train, X_test, y_train, y_test, train_idx, test_idx = train_test_split(
        table.X, table.y, np.arange(len(table.y)), test_size=test_size, random_state=seed, stratify=stratify
    )
    relabelled = 0
    if extra is not None and len(extra[1]):
        # An added row with exactly a training row's features is a person's label for that row
        # (a correction from `edgekit review`): it replaces the row, never sits beside it.
        X_extra = np.asarray(extra[0], dtype=X_train.dtype)
        added = {_row_key(r) for r in X_extra}
        keep = np.array([_row_key(r) not in added for r in X_train], dtype=bool)
        relabelled = int(np.count_nonzero(~keep))
        X_train = np.concatenate([X_train[keep], X_extra])
        y_train = np.concatenate([y_train[keep], np.asarray(extra[1]).astype(y_train.dtype)])
        train_idx = np.concatenate([train_idx[keep], np.full(len(X_extra), -1)])
    if task == "classification":
        _check_class_counts(y_train, test_size, after_split=True)
    n_classes = len(np.unique(table.y)) if task == "classification" else 0
    declared = check_metric(metric, task, n_classes)
    warnings = list(table.warnings) + unseen_categories(table.features, X_train, X_test)
    if relabelled:
        warnings.append(f"{relabelled} training rows were relabelled by added rows with the same features")
    features = list(table.features)

    leaderboard: list[dict[str, Any]] | None = None
    search_info: dict[str, Any] | None = None
    # One BLAS/OpenMP thread: on tables this size threads cost more than they bring, and on a
    # busy 2-core host OpenMP spin-waits made one HGB fit take 0.4-14 s instead of a steady 0.3 s.
    with threadpool_limits(limits=1):
        if model == "auto":
            found = search(
                X_train,
                y_train,
                task=task,
                features=features,
                metric=declared.name,
                seed=seed,
                time_budget=DEFAULT_BUDGET_S if time_budget is None else time_budget,
                progress=progress,
            )
            family, chosen = found.family, found.params
            pipeline = build_pipeline(family, seed, task, features, chosen)
            oof, folds = found.oof, found.fold_scores
            leaderboard, search_info = found.leaderboard, found.summary()
        else:
            family = canonical_family(model, task)
            chosen = {**default_params(family, task), **(params or {})}
            pipeline = build_pipeline(family, seed, task, features, chosen)
            oof, folds = out_of_fold(pipeline, X_train, y_train, task, seed, [declared.name])
        estimator = clone(pipeline).fit(X_train, y_train)

    metrics: dict[str, Any]
    if task == "classification":
        classes_arr = estimator.classes_
        classes = [c.item() if isinstance(c, np.generic) else c for c in classes_arr]
        proba = estimator.predict_proba(X_test)
        holdout = {name: score(name, y_test, proba, classes_arr) for name in ("accuracy", "f1_macro", "log_loss")}
        if n_classes == 2:
            holdout["roc_auc"] = score("roc_auc", y_test, proba, classes_arr)
        cv_acc = folds.get("accuracy") or [score("accuracy", y_train, oof, classes_arr)]
        cv: dict[str, Any] = {"accuracy_mean": float(np.mean(cv_acc)), "accuracy_std": float(np.std(cv_acc))}
    else:
        classes = []
        pred = estimator.predict(X_test)
        holdout = {
            "r2": score("r2", y_test, pred),
            "mae": -score("neg_mae", y_test, pred),
            "rmse": -score("neg_rmse", y_test, pred),
        }
        r2s = folds.get("r2") or [score("r2", y_train, oof)]
        cv = {"r2_mean": float(np.mean(r2s)), "r2_std": float(np.std(r2s))}
    chosen_scores = folds.get(declared.name)
    if chosen_scores:
        cv["metric"] = declared.name
        cv["mean"] = float(np.mean(chosen_scores))
        cv["std"] = float(np.std(chosen_scores))
    metrics = {"holdout": holdout, "cv": cv}

    out_params = {k: _json_safe(v) for k, v in estimator.steps[-1][1].get_params(deep=False).items()}
    out_params.update(model=family, seed=seed, test_size=test_size)
    return TrainResult(
        model=family,
        task=task,
        estimator=estimator,
        classes=classes,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        oof_proba=oof,
        metrics=metrics,
        params=out_params,
        seed=seed,
        duration_s=time.perf_counter() - started,
        features=features,
        metric=declared.name,
        warnings=warnings,
        leaderboard=leaderboard,
        search=search_info,
        rows_test=None if table.rows is None else table.rows[test_idx],
        categories=category_caps(estimator, features),
        train_index=np.asarray(train_idx),
    )


def _row_key(row: np.ndarray) -> tuple[str, ...]:
    return tuple(repr(v) for v in np.asarray(row).tolist())


def unseen_categories(features: Sequence[FeatureInfo], X_train: np.ndarray, X_test: np.ndarray) -> list[str]:
    """One warning per categorical feature whose holdout has categories the training split
    never had: the model still answers (one-hot ignores unknown categories: all zeros), but the
    holdout metrics then include rows the model knows less about, and a device will meet them too."""
    out: list[str] = []
    for j, f in enumerate(features):
        if f.type != "categorical":
            continue
        seen = set(X_train[:, j].tolist())
        new = Counter(v for v in X_test[:, j].tolist() if v not in seen)
        if not new:
            continue
        shown = ", ".join(repr("<missing>" if v == "" else v) for v, _ in new.most_common(5))
        more = f" and {len(new) - 5} more" if len(new) > 5 else ""
        treated = (
            "the model puts them in its 'other' category"
            if f.max_categories is not None
            else "the model encodes them as 'unknown' (all-zero one-hot)"
        )
        out.append(
            f"column '{f.name}': {sum(new.values())} holdout rows have categories never seen in training "
            f"({shown}{more}); {treated}"
        )
    return out


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


def _regression_split_ok(n: int, test_size: float) -> bool:
    n_test = math.ceil(n * test_size)
    return n_test >= 2 and n - n_test >= 2 * CV_FOLDS


def _check_regression_rows(n: int, test_size: float) -> None:
    """Regression needs two rows per cross-validation fold (r2 is undefined on one) and two
    in the holdout."""
    if _regression_split_ok(n, test_size):
        return
    needed = next(m for m in range(n, 100_000) if _regression_split_ok(m, test_size))
    raise DataError(
        f"only {n} rows: a {CV_FOLDS}-fold cross-validation plus a {test_size:.0%} holdout needs at least {needed}",
        "add rows, or use a smaller holdout (--test-size)",
    )


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
