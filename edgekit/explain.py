"""Permutation feature importance, measured on the model that ships (the ONNX graph).

For each feature, shuffle its column in held-out rows and see how much the score drops
(``sklearn.inspection.permutation_importance``, seeded, a few repeats). It is computed
with onnxruntime on the exported model rather than on the scikit-learn estimator: that is
the model devices run, and it works the same for models the user brings from elsewhere.

The score is the negative log loss for classifiers (a permutation that makes the model
less sure counts, not only one that flips a label: accuracy on a 45-row holdout barely
moves) and R² for regressors. Importance = baseline score − permuted score, so larger
means the model leans on the feature more; values near zero (or slightly negative) mean it
does not use the feature. The result goes into the run record and the bundle manifest
(``"explain"``), where drift alerts can be weighted by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .onnx_model import OnnxModel, feeds, input_features, session

N_REPEATS = 5
MAX_ROWS = 5000  # rows scored per repeat; larger holdouts are subsampled (seeded)


class OnnxPredictor:
    """Just enough of an estimator for permutation importance: an onnxruntime session and
    the model section of a manifest (which input, which outputs, which classes)."""

    def __init__(self, model_bytes: bytes, model: dict[str, Any]) -> None:
        self.session = session(model_bytes)
        self.model = model
        self.onnx = OnnxModel.from_record(model_bytes, model)
        self.classes = list(model.get("classes") or [])
        self.features = input_features(model)
        batch = self.session.get_inputs()[0].shape[0]
        self.row_by_row = isinstance(batch, int) and batch == 1
        outputs = model["outputs"]
        self.output = outputs.get("probabilities") if self.classes else outputs["label"]

    def fit(self, X: Any = None, y: Any = None) -> OnnxPredictor:
        """The graph is already trained; scikit-learn only checks that this method exists."""
        return self

    def _feeds(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return feeds(self.onnx, X)

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, C)`` for a classifier, values ``(n,)`` for a regressor."""
        if self.row_by_row:
            parts = [self.session.run([self.output], self._feeds(X[i : i + 1]))[0] for i in range(len(X))]
            out = np.concatenate([np.asarray(p).reshape(1, -1) for p in parts])
        else:
            out = np.asarray(self.session.run([self.output], self._feeds(X))[0])
        out = out.astype(np.float64)
        return out if self.classes else out.reshape(-1)

    def labels(self, X: np.ndarray) -> np.ndarray:
        labels: np.ndarray = np.asarray(self.classes, dtype=object)[np.argmax(self.outputs(X), axis=1)]
        return labels


def _neg_log_loss(classes: Sequence[Any]) -> Any:
    keys = [str(c) for c in classes]

    def score(predictor: OnnxPredictor, X: np.ndarray, y: np.ndarray) -> float:
        proba = np.clip(predictor.outputs(X), 1e-15, 1.0)
        proba = proba / proba.sum(axis=1, keepdims=True)
        index = {k: i for i, k in enumerate(keys)}
        cols = np.fromiter((index[str(v)] for v in y.tolist()), dtype=np.int64, count=len(y))
        return float(np.mean(np.log(proba[np.arange(len(y)), cols])))

    return score


def _r2(predictor: OnnxPredictor, X: np.ndarray, y: np.ndarray) -> float:
    truth = np.asarray(y, dtype=np.float64)
    pred = predictor.outputs(X)
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - float(np.sum((truth - pred) ** 2)) / total if total > 0 else 0.0


def permutation(
    model_bytes: bytes,
    model: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    n_repeats: int = N_REPEATS,
    rows_used: str = "holdout",
) -> dict[str, Any]:
    """Permutation importance of every feature of ``model`` (a manifest model section) on ``X, y``."""
    from sklearn.inspection import permutation_importance

    predictor = OnnxPredictor(model_bytes, model)
    names = [str(f["name"]) for f in input_features(model)]
    classification = bool(predictor.classes)
    if classification:
        known = {str(c) for c in predictor.classes}
        keep = np.array([str(v) in known for v in np.asarray(y).tolist()], dtype=bool)
        X, y = X[keep], np.asarray(y)[keep]
    metric = "neg_log_loss" if classification else "r2"
    scorer = _neg_log_loss(predictor.classes) if classification else _r2
    n = len(X)
    result = permutation_importance(
        predictor,
        X,
        np.asarray(y),
        scoring=scorer,
        n_repeats=n_repeats,
        random_state=seed,
        max_samples=min(n, MAX_ROWS) if n > MAX_ROWS else 1.0,
    )
    importance = {
        name: {"mean": round(float(m), 6), "std": round(float(s), 6)}
        for name, m, s in zip(names, result.importances_mean, result.importances_std, strict=True)
    }
    return {
        "permutation_importance": importance,
        "metric": metric,
        "baseline": round(float(scorer(predictor, X, np.asarray(y))), 6),
        "n_repeats": n_repeats,
        "rows": int(min(n, MAX_ROWS)),
        "on": rows_used,
        "seed": seed,
    }


def top_features(explain: dict[str, Any] | None, k: int = 5) -> list[tuple[str, float, float]]:
    """The ``k`` most important features as ``(name, mean, std)``, most important first."""
    imp = explain.get("permutation_importance") if isinstance(explain, dict) else None
    if not isinstance(imp, dict):
        return []
    found = []
    for name, v in imp.items():  # may come from an unverified manifest: skip what is not numbers
        try:
            found.append((str(name), float(v["mean"]), float(v.get("std", 0.0))))
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return sorted(found, key=lambda item: (-item[1], item[0]))[:k]


def manifest_section(explain: dict[str, Any] | None) -> dict[str, Any] | None:
    """What goes into a bundle manifest's ``"explain"``: importance and metric (plus how it was measured)."""
    if not explain or "permutation_importance" not in explain:
        return None
    keys = ("permutation_importance", "metric", "n_repeats", "rows", "on")
    return {k: explain[k] for k in keys if k in explain}
