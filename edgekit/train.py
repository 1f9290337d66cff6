"""Fit one model (or search for the best one) on a training split and measure it honestly.

Classification and regression, numeric and categorical features, missing values. Every
pipeline starts with the preprocessing the device must not have to do: the ONNX graph gets
the raw features exactly as the table has them.

Preprocessing per family (``build_pipeline``)
    * numeric features: mean imputation where the training data had missing values, and a
      ``StandardScaler`` for the families that need one (logistic / linear regression, MLP: an
      MLP on raw breast_cancer / wine features converges poorly). Tree ensembles get **no**
      scaler: a float64 scaler in front of a tree makes the float32 ONNX graph compute the
      scaled value with a different rounding than scikit-learn, and rows near a split then take
      the other branch (the classic float32 pitfall). HistGradientBoosting gets no imputer
      either: it learns a direction for NaN, which the converted graph keeps.
    * categorical features: one-hot encoding with ``handle_unknown="ignore"`` (a category the
      model never saw encodes as all zeros rather than failing). Missing categoricals arrive as
      ``""`` (see :mod:`edgekit.data`) and are a category of their own, which is what a constant
      imputer would do, without the extra graph node.
    * MLP regression standardises the target while fitting and folds the scale back into the
      output layer (:class:`TargetScaledMLPRegressor`), so the converted graph predicts in the
      target's units with no extra node.

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
from sklearn.base import BaseEstimator, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from edgekit.categories import CategoryCap
from edgekit.data import FeatureInfo, Table
from edgekit.errors import DataError

MODELS = ("logreg", "rf", "et", "hgb", "mlp")  # classification families (``linear`` is an alias of logreg)
REGRESSION_MODELS = ("linear", "rf", "et", "hgb", "mlp")  # regression families (``logreg`` is an alias of linear)
CHOICES = ("logreg", "linear", "rf", "et", "hgb", "mlp", "auto")
CV_FOLDS = 5
SCALED_FAMILIES = frozenset({"logreg", "linear", "mlp"})

Progress = Callable[[str], None]


# --- metrics --------------------------------------------------------------------------------------


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
    if metric == "log_loss":
        return float(log_loss(y_true, proba, labels=classes))
    if metric == "roc_auc":
        return float(roc_auc_score(y_true == classes[1], proba[:, 1]))
    predicted = classes[np.argmax(proba, axis=1)]
    if metric == "accuracy":
        return float(accuracy_score(y_true, predicted))
    if metric == "f1_macro":
        return float(f1_score(y_true, predicted, average="macro"))
    raise DataError(f"unknown metric '{metric}'", f"choose one of: {', '.join(METRICS)}")


# --- pipelines ------------------------------------------------------------------------------------


class TargetScaledMLPRegressor(MLPRegressor):  # type: ignore[misc]
    """An MLPRegressor fitted on the standardised target, with the scale folded back into its
    output layer after fitting: ``predict`` (and the converted ONNX graph, which reads the same
    weights) returns values in the target's units. Plain MLPRegressor on a target like
    diabetes' (mean 152, std 77) converges poorly at default settings."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> TargetScaledMLPRegressor:
        target = np.asarray(y, dtype=np.float64)
        mean = float(target.mean())
        std = float(target.std()) or 1.0
        super().fit(X, (target - mean) / std, **kwargs)
        self.coefs_[-1] = self.coefs_[-1] * std
        self.intercepts_[-1] = self.intercepts_[-1] * std + mean
        return self


def canonical_family(model: str, task: str) -> str:
    if model in ("logreg", "linear"):
        return "logreg" if task == "classification" else "linear"
    if model in ("rf", "et", "hgb", "mlp"):
        return model
    families = MODELS if task == "classification" else REGRESSION_MODELS
    raise DataError(f"unknown model '{model}'", f"choose one of: {', '.join([*families, 'auto'])}")


def default_params(family: str, task: str) -> dict[str, Any]:
    """The defaults ``--model FAMILY`` trains with (and the first candidates of a search)."""
    if family == "logreg":
        return {"C": 1.0}
    if family == "linear":
        return {"alpha": 1.0}
    if family in ("rf", "et"):
        return {"n_estimators": 100, "max_features": "sqrt" if task == "classification" else 1.0, "min_samples_leaf": 1}
    if family == "hgb":
        return {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20}
    if family == "mlp":
        # Regression: early stopping on a 10 % validation split; without it the default MLP
        # overfits diabetes (holdout r2 -0.07; 0.35 with it).
        return {"hidden_layer_sizes": (64,), "alpha": 1e-4, "early_stopping": task == "regression"}
    raise DataError(f"unknown model '{family}'")


def _estimator(family: str, task: str, seed: int, params: dict[str, Any]) -> BaseEstimator:
    p = dict(params)
    if family == "logreg":
        return LogisticRegression(max_iter=2000, **p)
    if family == "linear":
        return Ridge(**p)
    if family == "rf":
        cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **p)
    if family == "et":  # extremely randomised trees: random split points, often better on many features
        cls_e = ExtraTreesClassifier if task == "classification" else ExtraTreesRegressor
        return cls_e(random_state=seed, n_jobs=1, **p)
    if family == "hgb":
        cls_h = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
        return cls_h(random_state=seed, **p)
    if family == "mlp":
        if "hidden_layer_sizes" in p:
            p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
        if task == "classification":
            return MLPClassifier(max_iter=1000, random_state=seed, **p)
        return TargetScaledMLPRegressor(max_iter=1000, random_state=seed, **p)
    raise DataError(f"unknown model '{family}'")


def build_pipeline(
    model: str,
    seed: int,
    task: str = "classification",
    features: Sequence[FeatureInfo] | None = None,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """The preprocessing + model pipeline for one family (see the module docstring).

    ``features`` defaults to all-numeric without missing values (no imputer)."""
    family = canonical_family(model, task)
    merged = {**default_params(family, task), **(params or {})}
    estimator = _estimator(family, task, seed, merged)
    feats = list(features or [])
    scale = family in SCALED_FAMILIES
    numeric = [i for i, f in enumerate(feats) if f.type == "numeric"]
    categorical = [i for i, f in enumerate(feats) if f.type == "categorical"]
    impute = family != "hgb" and any(feats[i].allow_missing for i in numeric)
    num_steps: list[tuple[str, Any]] = []
    if impute:
        num_steps.append(("impute", SimpleImputer(strategy="mean")))
    if scale:
        num_steps.append(("scale", StandardScaler()))
    if not categorical:
        return Pipeline([*num_steps, ("model", estimator)])
    transformers: list[tuple[str, Any, list[int]]] = []
    if numeric:
        transformers.append(("numeric", Pipeline(num_steps) if num_steps else "passthrough", numeric))
    uncapped = [i for i in categorical if feats[i].max_categories is None]
    if uncapped:
        transformers.append(("categorical", _one_hot(), uncapped))
    for i in categorical:
        cap = feats[i].max_categories
        if cap is not None:  # most frequent categories kept, the rest "other", in the graph
            transformers.append((f"capped_{i}", Pipeline([("cap", CategoryCap(cap)), ("onehot", _one_hot())]), [i]))
    return Pipeline([("prepare", ColumnTransformer(transformers)), ("model", estimator)])


def _one_hot() -> OneHotEncoder:
    return OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)


def category_caps(estimator: Pipeline, features: Sequence[FeatureInfo]) -> dict[str, dict[str, Any]]:
    """Per capped categorical column, what the fitted cap kept: distinct values in the training
    split, categories kept, share of training rows that became "other"."""
    prepare = estimator.named_steps.get("prepare")
    if not isinstance(prepare, ColumnTransformer):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, fitted, columns in prepare.transformers_:
        if name.startswith("capped_") and isinstance(fitted, Pipeline):
            cap = fitted.named_steps["cap"]
            out[features[columns[0]].name] = {**cap.summary(), "max_categories": cap.max_categories}
    return out


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
) -> TrainResult:
    """Split, cross-validate on the training split, fit on it, score on the holdout.

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
    X_train, X_test, y_train, y_test, _, test_idx = train_test_split(
        table.X, table.y, np.arange(len(table.y)), test_size=test_size, random_state=seed, stratify=stratify
    )
    if task == "classification":
        _check_class_counts(y_train, test_size, after_split=True)
    n_classes = len(np.unique(table.y)) if task == "classification" else 0
    declared = check_metric(metric, task, n_classes)
    warnings = list(table.warnings) + unseen_categories(table.features, X_train, X_test)
    features = list(table.features)

    leaderboard: list[dict[str, Any]] | None = None
    search_info: dict[str, Any] | None = None
    # One BLAS/OpenMP thread: on tables this size threads cost more than they bring, and on a
    # busy 2-core host OpenMP spin-waits made one HGB fit take 0.4-14 s instead of a steady 0.3 s.
    with threadpool_limits(limits=1):
        if model == "auto":
            from edgekit.search import DEFAULT_BUDGET_S, search

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
    )


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
