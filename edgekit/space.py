"""What the search may try for each family: the hyperparameter ranges, each family's defaults as
a point of that space, and a cost estimate per configuration.

Ranges start where configurations are cheap (few trees, small leaves) and reach the large
ones; the boosting families' tree counts are caps (early stopping picks the count, see
:mod:`edgekit.boosting`). Every family's defaults are a point of its space, so the search's
first candidates are exactly what ``--model FAMILY`` trains (apart from early stopping).
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from edgekit.families import default_params

MAX_FEATURES = ("sqrt", "log2", "0.3", "0.5", "0.7", "1.0")
HIDDEN = ("32", "64", "128", "64-32", "128-64")


def suggest(trial: optuna.Trial, family: str, task: str) -> dict[str, Any]:
    """The configuration ``trial`` proposes for ``family`` (parameters named ``family.param``,
    so families never share a distribution), as the family's estimator parameters."""

    def f(name: str, lo: float, hi: float, log: bool = False) -> float:
        return trial.suggest_float(f"{family}.{name}", lo, hi, log=log)

    def i(name: str, lo: int, hi: int, log: bool = True) -> int:
        return trial.suggest_int(f"{family}.{name}", lo, hi, log=log)

    def c(name: str, choices: tuple[Any, ...]) -> Any:
        return trial.suggest_categorical(f"{family}.{name}", choices)

    if family == "logreg":
        return {"C": f("C", 1e-3, 1e3, log=True)}
    if family == "linear":
        return {"alpha": f("alpha", 1e-3, 1e3, log=True)}
    if family in ("rf", "et"):
        params: dict[str, Any] = {
            "n_estimators": i("n_estimators", 16, 512),
            "max_features": _max_features(c("max_features", MAX_FEATURES)),
            "min_samples_leaf": i("min_samples_leaf", 1, 16),
        }
        if task == "classification":
            params["criterion"] = c("criterion", ("gini", "entropy"))
        return params
    if family == "hgb":
        return {
            "learning_rate": f("learning_rate", 0.01, 0.5, log=True),
            "max_iter": i("max_iter", 16, 1024),
            "max_leaf_nodes": i("max_leaf_nodes", 4, 128),
            "min_samples_leaf": i("min_samples_leaf", 2, 64),
            "l2_regularization": f("l2_regularization", 0.0, 10.0),
        }
    if family == "lgbm":
        subsample = f("subsample", 0.5, 1.0)
        return {
            "n_estimators": i("n_estimators", 8, 1024),
            "learning_rate": f("learning_rate", 0.01, 0.5, log=True),
            "num_leaves": i("num_leaves", 4, 256),
            "min_child_samples": i("min_child_samples", 2, 100),
            "colsample_bytree": f("colsample_bytree", 0.3, 1.0),
            "subsample": subsample,
            "subsample_freq": 1 if subsample < 1.0 else 0,
            "reg_lambda": f("reg_lambda", 0.0, 10.0),
        }
    if family == "xgb":
        return {
            "n_estimators": i("n_estimators", 8, 1024),
            "learning_rate": f("learning_rate", 0.01, 0.5, log=True),
            "max_depth": i("max_depth", 2, 10, log=False),
            "min_child_weight": f("min_child_weight", 0.01, 20.0, log=True),
            "subsample": f("subsample", 0.5, 1.0),
            "colsample_bytree": f("colsample_bytree", 0.3, 1.0),
            "reg_lambda": f("reg_lambda", 0.01, 100.0, log=True),
        }
    if family == "mlp":
        return {
            "hidden_layer_sizes": [int(n) for n in c("hidden_layer_sizes", HIDDEN).split("-")],
            "alpha": f("alpha", 1e-6, 1e-1, log=True),
            "learning_rate_init": f("learning_rate_init", 1e-4, 1e-2, log=True),
            "early_stopping": c("early_stopping", (False, True)),
        }
    raise ValueError(f"no search space for '{family}'")


def default_point(family: str, task: str) -> dict[str, Any]:
    """The family's defaults (:func:`edgekit.families.default_params`) as trial parameters, for
    ``study.enqueue_trial``; parameters the defaults leave to the library are given its values."""
    d = default_params(family, task)
    if family in ("logreg", "linear"):
        return {f"{family}.{k}": v for k, v in d.items()}
    if family in ("rf", "et"):
        point = {
            f"{family}.n_estimators": d["n_estimators"],
            f"{family}.max_features": str(d["max_features"]),
            f"{family}.min_samples_leaf": d["min_samples_leaf"],
        }
        if task == "classification":
            point[f"{family}.criterion"] = "gini"
        return point
    if family == "hgb":
        return {**{f"hgb.{k}": v for k, v in d.items()}, "hgb.l2_regularization": 0.0}
    if family == "lgbm":
        extra = {"colsample_bytree": 1.0, "subsample": 1.0, "reg_lambda": 0.0}
        return {f"lgbm.{k}": v for k, v in {**d, **extra}.items()}
    if family == "xgb":
        extra = {"subsample": 1.0, "colsample_bytree": 1.0, "reg_lambda": 1.0}
        return {f"xgb.{k}": v for k, v in {**d, **extra}.items()}
    if family == "mlp":
        return {
            "mlp.hidden_layer_sizes": "-".join(str(n) for n in d["hidden_layer_sizes"]),
            "mlp.alpha": d["alpha"],
            "mlp.learning_rate_init": 1e-3,
            "mlp.early_stopping": d["early_stopping"],
        }
    raise ValueError(f"no search space for '{family}'")


def cost_units(family: str, params: dict[str, Any]) -> float:
    """A configuration's relative fitting cost within its family (trees × leaves, iterations,
    hidden units): a measured time per unit predicts the next configuration's time."""
    if family in ("rf", "et"):
        leaf = float(params.get("min_samples_leaf", 1))
        return float(params.get("n_estimators", 100)) * (0.5 + 0.5 / math.sqrt(leaf))
    if family == "hgb":
        return float(params.get("max_iter", 100)) * (0.5 + float(params.get("max_leaf_nodes", 31)) / 62.0)
    if family == "lgbm":
        return float(params.get("n_estimators", 100)) * (0.5 + float(params.get("num_leaves", 31)) / 62.0)
    if family == "xgb":
        return float(params.get("n_estimators", 100)) * (0.5 + math.pow(2.0, float(params.get("max_depth", 6))) / 128.0)
    if family == "mlp":
        return float(sum(params.get("hidden_layer_sizes", [64])))
    return 1.0


def _max_features(choice: str) -> str | float:
    return choice if choice in ("sqrt", "log2") else float(choice)
