"""LightGBM and XGBoost as edgekit families: their estimators, their ONNX converters, and early
stopping for every boosting family.

Conversion goes through onnxmltools' converters registered with skl2onnx, so a LightGBM or
XGBoost model is converted *inside* the same scikit-learn pipeline as every other family
(imputation-free numeric inputs, one-hot categoricals, probabilities as a tensor) and meets the
same parity gate; the graph uses onnxruntime's ``TreeEnsemble*`` operators, which the device
already runs. Both libraries learn a direction for missing values, which the converters carry
into the graph (``nodes_missing_value_tracks_true``).

XGBoost's classifier only takes labels ``0..C-1``; :class:`XGBLabelClassifier` encodes any
labels on the way in and reports them as ``classes_``, which is what the converter writes as the
graph's class labels.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

EARLY_STOPPING_ROUNDS = 20
EARLY_STOPPING_FRACTION = 0.1  # of the fitting rows, held out to decide when to stop
_registered = False


def lightgbm_estimator(task: str, seed: int, params: dict[str, Any]) -> BaseEstimator:
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if task == "classification" else LGBMRegressor
    return cls(random_state=seed, n_jobs=1, verbosity=-1, **params)


def xgboost_estimator(task: str, seed: int, params: dict[str, Any]) -> BaseEstimator:
    from xgboost import XGBRegressor

    if task == "classification":
        return _xgb_label_classifier()(random_state=seed, n_jobs=1, tree_method="hist", **params)
    return XGBRegressor(random_state=seed, n_jobs=1, tree_method="hist", **params)


def _xgb_label_classifier() -> type:
    """The XGBoost classifier with label encoding, defined on first use (xgboost is optional)."""
    cached = globals().get("XGBLabelClassifier")
    if cached is not None:
        return cast(type, cached)
    from xgboost import XGBClassifier

    class XGBLabelClassifier(XGBClassifier):
        """XGBClassifier for any labels: encoded to 0..C-1 for fitting, reported as ``classes_``."""

        def fit(self, X: Any, y: Any, **kwargs: Any) -> XGBLabelClassifier:
            labels = np.unique(np.asarray(y))
            if "eval_set" in kwargs:
                kwargs["eval_set"] = [(xe, np.searchsorted(labels, ye)) for xe, ye in kwargs["eval_set"]]
            self.__dict__.pop("labels_", None)  # XGBoost checks the encoded labels while fitting
            super().fit(X, np.searchsorted(labels, np.asarray(y)), **kwargs)
            self.labels_ = labels
            return self

        @property
        def classes_(self) -> np.ndarray:
            labels = self.__dict__.get("labels_")
            return cast(np.ndarray, labels if labels is not None else super().classes_)

        def predict(self, X: Any, **kwargs: Any) -> Any:
            return self.classes_[np.argmax(self.predict_proba(X, **kwargs), axis=1)]

    XGBLabelClassifier.__module__ = __name__
    globals()["XGBLabelClassifier"] = XGBLabelClassifier
    return XGBLabelClassifier


def register_converters() -> None:
    """Teach skl2onnx the LightGBM and XGBoost estimators (onnxmltools' converters), once. Called
    by the conversion, not by training: importing skl2onnx takes seconds, which a search's
    budget should not pay."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
    except ImportError:
        pass
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBRegressor

        update_registered_converter(
            _xgb_label_classifier(),
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
        )
    except ImportError:
        pass
    _registered = True


def fit_early_stopped(
    family: str, pipeline: Pipeline, X: np.ndarray, y: np.ndarray, task: str, seed: int
) -> tuple[Pipeline, int]:
    """Fit a boosting family's pipeline with early stopping: a tenth of the rows (stratified for
    classification) decides when more trees stop paying. Returns the fitted pipeline and the
    number of boosting rounds it kept, which becomes the configuration's tree count when the
    winner is refitted on all rows."""
    stratify = y if task == "classification" and _every_class_twice(y) else None
    fit_idx, stop_idx = train_test_split(
        np.arange(len(y)), test_size=EARLY_STOPPING_FRACTION, random_state=seed, stratify=stratify
    )
    prepare = Pipeline(pipeline.steps[:-1]) if len(pipeline.steps) > 1 else None
    model = pipeline.steps[-1][1]
    if prepare is not None:
        Xa = prepare.fit_transform(X[fit_idx], y[fit_idx])
        Xb = prepare.transform(X[stop_idx])
    else:
        Xa, Xb = X[fit_idx], X[stop_idx]
    ya, yb = y[fit_idx], y[stop_idx]
    if family == "lgbm":
        import lightgbm

        stop = lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)
        with warnings.catch_warnings():  # lightgbm 4.7's classifier passes eval_set on and warns about it
            warnings.filterwarnings("ignore", message=".*'eval_set' is deprecated")
            model.fit(Xa, ya, eval_set=[(Xb, yb)], callbacks=[stop])
        rounds = int(model.best_iteration_ or model.n_estimators)
    elif family == "xgb":
        model.set_params(early_stopping_rounds=EARLY_STOPPING_ROUNDS)
        model.fit(Xa, ya, eval_set=[(Xb, yb)], verbose=False)
        rounds = int(model.best_iteration) + 1
    elif family == "hgb":
        model.set_params(early_stopping=True, n_iter_no_change=EARLY_STOPPING_ROUNDS // 2, validation_fraction=None)
        model.fit(Xa, ya, X_val=Xb, y_val=yb)
        rounds = max(1, int(model.n_iter_) - EARLY_STOPPING_ROUNDS // 2)
    else:
        raise ValueError(f"{family} is not a boosting family")
    fitted = Pipeline([*(prepare.steps if prepare is not None else []), (pipeline.steps[-1][0], model)])
    return fitted, rounds


def rounds_param(family: str) -> str:
    """The parameter that holds a boosting family's number of rounds."""
    return "max_iter" if family == "hgb" else "n_estimators"


def _every_class_twice(y: np.ndarray) -> bool:
    _, counts = np.unique(y, return_counts=True)
    return bool(counts.min() >= 2 and int(len(y) * EARLY_STOPPING_FRACTION) >= len(counts))
