"""Tree values rounded to float16-representable float32 (thresholds only where no row given
changes side; leaf weights to the nearest): the attributes stay float32, so the file does
not get smaller — only more compressible. Bundles store their members uncompressed (the
device refuses compressed zip members) and MQTT does not compress, so this gains nothing on
the wire or on disk; it is tried and reported (``size_zlib``) so that stays visible, and it
counts as a label-changing strategy (``max_label_changes``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx

from .context import _Context, _NotApplicable
from .graph import ML, TREE_OPS, _text, session


def _round_tree_values(proto: onnx.ModelProto, ctx: _Context) -> onnx.ModelProto:
    """Thresholds moved to a float16-representable value only where no row (calibration and
    evaluation rows) changes side; leaf weights rounded to the nearest float16 value."""
    trees = [n for n in proto.graph.node if n.domain == ML and n.op_type in TREE_OPS]
    if not trees:
        raise _NotApplicable("no TreeEnsemble node")
    values = _tensor_values(proto, [n.input[0] for n in trees], ctx.feeder(np.concatenate([ctx.eval_rows, ctx.calib])))
    for node in trees:
        x = values[node.input[0]]
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" in attrs and "nodes_featureids" in attrs and "nodes_modes" in attrs:
            thresholds = list(attrs["nodes_values"].floats)
            features = list(attrs["nodes_featureids"].ints)
            modes = [_text(m) for m in attrs["nodes_modes"].strings]
            for i, (t, f, mode) in enumerate(zip(thresholds, features, modes, strict=True)):
                if mode in ("BRANCH_LEQ", "BRANCH_LT"):
                    thresholds[i] = _safe_threshold(t, x[:, f], mode == "BRANCH_LEQ")
            del attrs["nodes_values"].floats[:]
            attrs["nodes_values"].floats.extend(thresholds)
        for key in ("class_weights", "target_weights"):
            if key in attrs:
                w = np.asarray(attrs[key].floats, dtype=np.float32)
                del attrs[key].floats[:]
                attrs[key].floats.extend(_to_f16_grid(w).tolist())
    return proto


def _to_f16_grid(w: np.ndarray) -> np.ndarray:
    out = w.astype(np.float16).astype(np.float32)
    return np.where(np.isfinite(out) & (np.abs(w) < 65504), out, w)


def _safe_threshold(t: float, column: np.ndarray, leq: bool) -> float:
    """A float16-representable threshold that sends every row of ``column`` the same way as ``t``."""
    t32 = np.float32(t)
    if not abs(t32) < 65504:
        return float(t32)
    left = column <= t32 if leq else column < t32
    lo = column[left].max(initial=-np.inf)
    hi = column[~left].min(initial=np.inf)
    h = np.float16(t32)
    for cand in (h, np.nextafter(h, np.float16(-np.inf)), np.nextafter(h, np.float16(np.inf))):
        c = np.float32(cand)
        if math.isfinite(c) and ((lo <= c < hi) if leq else (lo < c <= hi)):
            return float(c)
    return float(t32)


def _tensor_values(proto: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph_inputs = {i.name for i in proto.graph.input}
    wanted = [n for n in dict.fromkeys(names) if n not in graph_inputs]
    out = {n: np.asarray(v) for n, v in feed.items() if n in names}
    if wanted:
        probe = copy.deepcopy(proto)
        for n in wanted:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))
        got = session(probe.SerializeToString()).run(wanted, feed)
        out.update({n: np.asarray(v) for n, v in zip(wanted, got, strict=True)})
    return {n: v.reshape(len(v), -1).astype(np.float32) for n, v in out.items()}
