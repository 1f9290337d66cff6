"""A cap on the categories of one column, with an "other" bucket, inside the ONNX graph.

A column with hundreds of categories one-hot encodes into hundreds of model inputs: a large
model that learns little from the rare ones. :class:`CategoryCap` keeps a column's most
frequent categories (at most ``max_categories``, ties broken by name) and maps every other
value — rare in training, or never seen — to one "other" category, which the one-hot encoder
after it then treats like any category.

scikit-learn's own ``OneHotEncoder(max_categories=…)`` does this, but skl2onnx cannot convert
it (1.20: "Infrequent categories are not implemented"). The converter here writes the cap as
one ``ai.onnx.ml`` ``LabelEncoder`` (kept categories map to themselves, anything else to
"other"), so the device feeds the raw category and the graph applies the cap: one definition,
the one the parity gate checks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

OTHER = "__other__"  # the category every value outside the kept ones becomes


class CategoryCap(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """Keep the ``max_categories`` most frequent values of one column; map the rest to :data:`OTHER`."""

    def __init__(self, max_categories: int = 30) -> None:
        self.max_categories = max_categories

    def fit(self, X: Any, y: Any = None) -> CategoryCap:
        col = _column(X)
        counts = Counter(col.tolist())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.kept_ = [value for value, _ in ranked[: self.max_categories]]
        self.distinct_ = len(counts)
        self.other_share_ = 1.0 - sum(counts[v] for v in self.kept_) / max(1, len(col))
        return self

    def transform(self, X: Any) -> np.ndarray:
        kept = set(self.kept_)
        col = _column(X)
        return np.array([[v if v in kept else OTHER] for v in col.tolist()], dtype=object)

    def summary(self) -> dict[str, Any]:
        """What the cap did on the rows it was fitted on."""
        return {"distinct": self.distinct_, "kept": len(self.kept_), "other_share": round(self.other_share_, 4)}


def _column(X: Any) -> np.ndarray:
    arr = np.asarray(X, dtype=object)
    if arr.ndim != 2 or arr.shape[1] != 1:
        raise ValueError(f"CategoryCap takes one column, got shape {arr.shape}")
    return np.array(["" if v is None else str(v) for v in arr[:, 0].tolist()], dtype=object)


def cap_shape(operator: Any) -> None:
    """skl2onnx shape calculator: one string column in, one string column out."""
    from skl2onnx.common.data_types import StringTensorType

    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = StringTensorType([n, 1])


def cap_converter(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx converter: one LabelEncoder, kept categories to themselves, the rest to OTHER."""
    cap: CategoryCap = operator.raw_operator
    kept = [str(v) for v in cap.kept_]
    container.add_node(
        "LabelEncoder",
        operator.inputs[0].full_name,
        operator.outputs[0].full_name,
        op_domain="ai.onnx.ml",
        op_version=2,
        name=scope.get_unique_operator_name("CategoryCap"),
        keys_strings=kept,
        values_strings=kept,
        default_string=OTHER,
    )
