"""The model families: what each one is, what it needs, and the pipeline it trains in.

Training (``--model FAMILY``), the search (``--model auto``) and the conversion all read this
one registry, so a family added here is trained, searched, converted and parity-gated alike.
It lives apart from :mod:`edgekit.train` and :mod:`edgekit.search` because both need it and
the search is called by training.

Preprocessing per family (:func:`build_pipeline`)
    * numeric features: mean imputation where the training data had missing values, and a
      ``StandardScaler`` for the families that need one (logistic / linear regression, MLP: an
      MLP on raw breast_cancer / wine features converges poorly). Tree ensembles get **no**
      scaler: a float64 scaler in front of a tree makes the float32 ONNX graph compute the
      scaled value with a different rounding than scikit-learn, and rows near a split then take
      the other branch (the classic float32 pitfall). The gradient-boosting families (HGB,
      LightGBM, XGBoost) get no imputer either: they learn a direction for NaN, which the
      converted graph keeps.
    * categorical features: one-hot encoding with ``handle_unknown="ignore"`` (a category the
      model never saw encodes as all zeros rather than failing). Missing categoricals arrive as
      ``""`` (see :mod:`edgekit.data`) and are a category of their own, which is what a constant
      imputer would do, without the extra graph node. The same encoding feeds LightGBM and
      XGBoost, so the device contract (raw strings in, one-hot inside the graph) is the same
      for every family.
    * MLP regression standardises the target while fitting and folds the scale back into the
      output layer (:class:`TargetScaledMLPRegressor`), so the converted graph predicts in the
      target's units with no extra node.

LightGBM and XGBoost come with the ``[boosting]`` extra; without it they are not offered to the
search, and asking for one by name says which extra to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
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
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgekit.categories import CategoryCap
from edgekit.data import FeatureInfo
from edgekit.errors import DataError

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    tasks: tuple[str, ...] = (CLASSIFICATION, REGRESSION)
    scaled: bool = False  # numeric features standardised in front of the model
    native_missing: bool = False  # learns where NaN goes: no imputer in front
    boosting: bool = False  # grows trees one after another: early stopping applies
    module: str | None = None  # the optional library the family needs
    extra: str | None = None  # the pip extra that installs it

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def require(self) -> None:
        if not self.available():
            raise DataError(
                f"model '{self.name}' needs {self.module}, which is not installed",
                f"install the {self.extra} extra: pip install 'edgekit[{self.extra}]'",
            )


# Cheapest first: the order a search tries the defaults in.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("logreg", "logistic regression", tasks=(CLASSIFICATION,), scaled=True),
        Family("linear", "ridge regression", tasks=(REGRESSION,), scaled=True),
        Family("lgbm", "LightGBM", native_missing=True, boosting=True, module="lightgbm", extra="boosting"),
        Family("xgb", "XGBoost", native_missing=True, boosting=True, module="xgboost", extra="boosting"),
        Family("rf", "random forest"),
        Family("et", "extra trees"),
        Family("hgb", "histogram gradient boosting", native_missing=True, boosting=True),
        Family("mlp", "multi-layer perceptron", scaled=True),
    )
}
SCALED_FAMILIES = frozenset(f.name for f in FAMILIES.values() if f.scaled)
BOOSTING_FAMILIES = frozenset(f.name for f in FAMILIES.values() if f.boosting)
ALIASES = {"logreg": "linear", "linear": "logreg"}  # the linear family under its other task's name


def families_for(task: str, installed_only: bool = True) -> tuple[str, ...]:
    """The family names for ``task``, cheapest first; without the optional libraries' families
    when they are not installed."""
    return tuple(f.name for f in FAMILIES.values() if task in f.tasks and (f.available() or not installed_only))


def canonical_family(model: str, task: str) -> str:
    """The family ``model`` names for ``task`` (``linear`` and ``logreg`` are one family under
    two names); unknown names and missing libraries are a one-line error."""
    family = FAMILIES.get(model)
    if family is not None and task not in family.tasks and model in ALIASES:
        family = FAMILIES[ALIASES[model]]
    if family is None or task not in family.tasks:
        names = families_for(task, installed_only=False)
        raise DataError(f"unknown model '{model}'", f"choose one of: {', '.join([*names, 'auto'])}")
    family.require()
    return family.name


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


def default_params(family: str, task: str) -> dict[str, Any]:
    """The defaults ``--model FAMILY`` trains with (and the first candidates of a search):
    each library's own defaults, so ``auto`` is measured against what a user gets untuned."""
    if family == "logreg":
        return {"C": 1.0}
    if family == "linear":
        return {"alpha": 1.0}
    if family in ("rf", "et"):
        return {"n_estimators": 100, "max_features": "sqrt" if task == CLASSIFICATION else 1.0, "min_samples_leaf": 1}
    if family == "hgb":
        return {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20}
    if family == "lgbm":
        return {"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31, "min_child_samples": 20}
    if family == "xgb":
        return {"n_estimators": 100, "learning_rate": 0.3, "max_depth": 6, "min_child_weight": 1.0}
    if family == "mlp":
        # Regression: early stopping on a 10 % validation split; without it the default MLP
        # overfits diabetes (holdout r2 -0.07; 0.35 with it).
        return {"hidden_layer_sizes": (64,), "alpha": 1e-4, "early_stopping": task == REGRESSION}
    raise DataError(f"unknown model '{family}'")


def estimator(family: str, task: str, seed: int, params: dict[str, Any]) -> BaseEstimator:
    """The unfitted estimator of ``family`` with ``params`` (one thread: see edgekit.train)."""
    p = dict(params)
    classify = task == CLASSIFICATION
    if family == "logreg":
        return LogisticRegression(max_iter=2000, **p)
    if family == "linear":
        return Ridge(**p)
    if family == "rf":
        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **p)
    if family == "et":  # extremely randomised trees: random split points, often better on many features
        cls_e = ExtraTreesClassifier if classify else ExtraTreesRegressor
        return cls_e(random_state=seed, n_jobs=1, **p)
    if family == "hgb":
        cls_h = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        return cls_h(random_state=seed, **p)
    if family == "lgbm":
        from edgekit.boosting import lightgbm_estimator

        return lightgbm_estimator(task, seed, p)
    if family == "xgb":
        from edgekit.boosting import xgboost_estimator

        return xgboost_estimator(task, seed, p)
    if family == "mlp":
        if "hidden_layer_sizes" in p:
            p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
        if classify:
            return MLPClassifier(max_iter=1000, random_state=seed, **p)
        return TargetScaledMLPRegressor(max_iter=1000, random_state=seed, **p)
    raise DataError(f"unknown model '{family}'")


def build_pipeline(
    model: str,
    seed: int,
    task: str = CLASSIFICATION,
    features: Sequence[FeatureInfo] | None = None,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """The preprocessing + model pipeline for one family (see the module docstring).

    ``features`` defaults to all-numeric without missing values (no imputer)."""
    family = canonical_family(model, task)
    merged = {**default_params(family, task), **(params or {})}
    model_step = estimator(family, task, seed, merged)
    feats = list(features or [])
    spec = FAMILIES[family]
    numeric = [i for i, f in enumerate(feats) if f.type == "numeric"]
    categorical = [i for i, f in enumerate(feats) if f.type == "categorical"]
    impute = not spec.native_missing and any(feats[i].allow_missing for i in numeric)
    num_steps: list[tuple[str, Any]] = []
    if impute:
        num_steps.append(("impute", SimpleImputer(strategy="mean")))
    if spec.scaled:
        num_steps.append(("scale", StandardScaler()))
    if not categorical:
        return Pipeline([*num_steps, ("model", model_step)])
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
    return Pipeline([("prepare", ColumnTransformer(transformers)), ("model", model_step)])


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


def model_size(pipeline: Pipeline) -> int:
    """A fitted model's size in stored numbers (tree nodes, coefficients): what the ONNX file
    grows with, so ties in the search go to the smaller model."""
    final = pipeline.steps[-1][1]
    if hasattr(final, "estimators_"):  # forests
        return int(sum(t.tree_.node_count for t in final.estimators_))
    if hasattr(final, "_predictors"):  # HistGradientBoosting
        return int(sum(len(p.nodes) for it in final._predictors for p in it))
    if hasattr(final, "booster_"):  # LightGBM
        dump = final.booster_.dump_model()
        return int(sum(2 * t["num_leaves"] - 1 for t in dump["tree_info"]))
    if hasattr(final, "get_booster"):  # XGBoost
        return int(sum(d.count("\n") for d in final.get_booster().get_dump()))
    if hasattr(final, "coefs_"):  # MLP
        return int(sum(w.size for w in final.coefs_) + sum(b.size for b in final.intercepts_))
    if hasattr(final, "coef_"):
        return int(np.size(final.coef_) + np.size(getattr(final, "intercept_", 0)))
    return 0
