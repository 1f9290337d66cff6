"""The MatMul form of linear models: LinearClassifier/LinearRegressor are rewritten into
MatMul + Add (+ Sigmoid for LOGISTIC, Softmax for SOFTMAX) with ArgMax + Gather over the
same class list for the label output — same output names, shapes, dtypes, class order.
It must match the original float graph to 1e-5 (relative for values above 1: float32 cannot
hold an absolute 1e-5 on a regression output of ~150) on every float output, as a batch and
row by row, and on every label, before anything else is done with it; int8 and fp16 then
apply to its weight initializer. Linear weights are tiny (F x C), so int8 rarely shrinks
the file: the scales and extra nodes outweigh the savings below a few hundred weights
(digits, 64 x 10: 0.45x; breast_cancer, 30 x 2: larger). The form itself is ~1 µs slower per
row than LinearClassifier (5 nodes instead of 1), so alone it never wins over compaction.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .context import _Context, _NotApplicable
from .graph import LINEAR_OPS, ML, _text, session

LINEAR_PARITY = 1e-5  # the MatMul form against the original linear operator, every output


def linear_to_matmul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each LinearClassifier/LinearRegressor node with standard operators computing
    the same outputs under the same names (returns a new model; raises _NotApplicable)."""
    out = copy.deepcopy(proto)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    found = 0
    for k, node in enumerate(graph.node):
        if node.domain != ML or node.op_type not in LINEAR_OPS:
            nodes.append(node)
            continue
        found += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        prefix = f"lin{k}_"
        if node.op_type == "LinearClassifier":
            new_nodes, inits = _linear_classifier(node, attrs, prefix)
        else:
            new_nodes, inits = _linear_regressor(node, attrs, prefix)
        nodes.extend(new_nodes)
        graph.initializer.extend(inits)
    if not found:
        raise _NotApplicable("no LinearClassifier/LinearRegressor node")
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _weights(attrs: dict[str, Any], rows: int, prefix: str) -> tuple[TensorProto, TensorProto, int]:
    coef = np.asarray(attrs["coefficients"], dtype=np.float32)
    if rows <= 0 or coef.size % rows:
        raise _NotApplicable(f"{coef.size} coefficients do not split into {rows} rows")
    w = coef.reshape(rows, -1).T.copy()  # [F, rows]
    b = np.asarray(attrs.get("intercepts") or [0.0] * rows, dtype=np.float32)
    if b.size != rows:
        raise _NotApplicable(f"{b.size} intercepts for {rows} rows")
    return numpy_helper.from_array(w, prefix + "W"), numpy_helper.from_array(b, prefix + "B"), w.shape[0]


def _linear_classifier(
    node: onnx.NodeProto, attrs: dict[str, Any], prefix: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    if "classlabels_ints" in attrs:
        labels = numpy_helper.from_array(np.asarray(attrs["classlabels_ints"], dtype=np.int64), prefix + "classes")
        n_labels = len(attrs["classlabels_ints"])
    elif "classlabels_strings" in attrs:
        strings = [s.decode() if isinstance(s, bytes) else str(s) for s in attrs["classlabels_strings"]]
        labels = numpy_helper.from_array(np.asarray(strings, dtype=object), prefix + "classes")
        n_labels = len(strings)
    else:
        raise _NotApplicable("LinearClassifier without class labels")
    n_coef = len(attrs.get("coefficients", []))
    intercepts = attrs.get("intercepts") or []
    rows = len(intercepts) if intercepts else n_labels
    if rows != n_labels or n_labels < 2:
        # One coefficient row for two classes is onnxruntime's special binary layout.
        raise _NotApplicable(f"{rows} coefficient rows for {n_labels} classes: only one row per class is rewritten")
    transform = _text(attrs.get("post_transform", b"NONE"))
    if transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise _NotApplicable(f"post_transform {transform} is not rewritten")
    w, b, _ = _weights(attrs, rows, prefix)
    if n_coef != w.dims[0] * rows:
        raise _NotApplicable("coefficients do not match the class count")
    label_out = node.output[0]
    score_out = node.output[1] if len(node.output) > 1 and node.output[1] else prefix + "unused_scores"
    raw = prefix + "raw" if transform != "NONE" else score_out
    nodes = [
        helper.make_node("MatMul", [node.input[0], w.name], [prefix + "mm"]),
        helper.make_node("Add", [prefix + "mm", b.name], [raw]),
    ]
    if transform == "LOGISTIC":
        nodes.append(helper.make_node("Sigmoid", [raw], [score_out]))
    elif transform == "SOFTMAX":
        nodes.append(helper.make_node("Softmax", [raw], [score_out], axis=1))
    if label_out:
        # onnxruntime picks the label from the raw scores, the first of equal maxima.
        nodes.append(helper.make_node("ArgMax", [raw], [prefix + "idx"], axis=1, keepdims=0))
        nodes.append(helper.make_node("Gather", [labels.name, prefix + "idx"], [label_out], axis=0))
    return nodes, [w, b, labels]


def _linear_regressor(
    node: onnx.NodeProto, attrs: dict[str, Any], prefix: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    transform = _text(attrs.get("post_transform", b"NONE"))
    if transform != "NONE":
        raise _NotApplicable(f"post_transform {transform} is not rewritten")
    targets = int(attrs.get("targets", 1))
    w, b, _ = _weights(attrs, targets, prefix)
    nodes = [
        helper.make_node("MatMul", [node.input[0], w.name], [prefix + "mm"]),
        helper.make_node("Add", [prefix + "mm", b.name], [node.output[0]]),
    ]
    return nodes, [w, b]


def linear_parity(original: bytes, rewritten: bytes, feed: dict[str, np.ndarray]) -> tuple[float, int]:
    """(max |Δ| / max(1, |value|) over every float output, label mismatches) between two
    models, on the rows as one batch and on each of the first 32 rows alone. Relative above
    1: an absolute 1e-5 is below float32's resolution for values above ~100 (regression)."""
    a, b = session(original), session(rewritten)
    n = len(next(iter(feed.values())))
    batches = [feed] + [{k: v[i : i + 1] for k, v in feed.items()} for i in range(min(n, 32))]
    worst, mismatches = 0.0, 0
    for rows in batches:
        for x, z in zip(a.run(None, rows), b.run(None, rows), strict=True):
            x, z = np.asarray(x), np.asarray(z)
            if x.shape != z.shape or x.dtype != z.dtype:
                return math.inf, len(x)
            if np.issubdtype(x.dtype, np.floating):
                x64 = x.astype(np.float64)
                rel = np.abs(x64 - z) / np.maximum(1.0, np.abs(x64))
                worst = max(worst, float(np.max(rel)) if rel.size else 0.0)
            elif rows is feed:
                mismatches += int(np.sum(x != z))
    return worst, mismatches


def _require_parity(ctx: _Context, proto: onnx.ModelProto) -> None:
    feed = ctx.feeder(np.concatenate([ctx.eval_rows, ctx.calib]))
    worst, mismatches = linear_parity(ctx.float_data, proto.SerializeToString(), feed)
    if worst > LINEAR_PARITY or mismatches:
        raise RuntimeError(
            f"the MatMul form differs from the linear operator: max |Δ| {worst:.3g} "
            f"(tolerance {LINEAR_PARITY:g}, relative above 1), {mismatches} label(s) differ"
        )
