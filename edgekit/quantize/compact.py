"""Compaction (lossless), applied to every candidate and tried alone: internal tensor names
shortened (skl2onnx and the quantizers use long ones), node names and doc strings dropped,
tree attributes onnxruntime does not read or that hold only defaults dropped
(``nodes_hitrates``; ``nodes_missing_value_tracks_true`` when all 0; zero class weights,
keeping one entry per leaf and per class id), and the repeated float/int attributes written
in protobuf's packed encoding (:mod:`.packed`): onnx.proto (proto2) declares them unpacked,
one tag per value, and every protobuf parser must accept the packed form (it parses to the
same message). A compacted candidate must give bit-identical outputs, or compaction is
dropped. For tree ensembles this is the size win (RF 0.25-0.6x, HGB ~0.62x) with zero label
changes and bit-identical probabilities; for linear models 0.85-0.9x. The device's
onnxruntime parses it as it is (checked through the agent's own loader and health check).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort

from .context import _Context
from .graph import ML, TREE_OPS, session
from .packed import _NotLossless, packed_bytes


def _compact_verified(
    proto: onnx.ModelProto, data: bytes, sess: ort.InferenceSession, ctx: _Context, beat: int | None = None
) -> tuple[bytes, ort.InferenceSession]:
    """The compacted bytes and their session, if they are smaller (than ``beat``, default
    ``data``) and give bit-identical outputs on the rows; else _NotLossless."""
    compacted = packed_bytes(compact_proto(proto))
    if len(compacted) >= (len(data) if beat is None else beat):
        raise _NotLossless
    new = session(compacted)
    feed = ctx.feeder(np.concatenate([ctx.eval_rows[:64], ctx.calib[:64]]))
    for a, b in zip(sess.run(None, feed), new.run(None, feed), strict=True):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise _NotLossless
    return compacted, new


def compact_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Short internal names, no node names or doc strings, no unread tree attributes."""
    out = copy.deepcopy(proto)
    graph = out.graph
    out.doc_string = ""
    graph.doc_string = ""
    del graph.value_info[:]
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        if node.domain == ML and node.op_type in TREE_OPS:
            _drop_tree_defaults(node)
    if not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    ):
        _rename_internal(graph)
    return out


def _drop_tree_defaults(node: onnx.NodeProto) -> None:
    attrs = {a.name: a for a in node.attribute}
    drop = {"nodes_hitrates"}  # "used for performance and may be omitted"; onnxruntime does not read it
    tracks = attrs.get("nodes_missing_value_tracks_true")
    if tracks is not None and not any(tracks.ints):
        drop.add("nodes_missing_value_tracks_true")  # all 0 is the default
    keep = [a for a in node.attribute if a.name not in drop]
    del node.attribute[:]
    node.attribute.extend(keep)
    prefix = "class_" if node.op_type == "TreeEnsembleClassifier" else "target_"
    attrs = {a.name: a for a in node.attribute}
    names = [prefix + s for s in ("treeids", "nodeids", "ids", "weights")]
    if not all(n in attrs for n in names):
        return
    tree, nid, cid = (list(attrs[n].ints) for n in names[:3])
    weights = list(attrs[names[3]].floats)
    # Zero weights add nothing to a sum; keep one entry per leaf and per class id, so that
    # every leaf still exists and onnxruntime sees the same set of classes.
    seen_leaf: set[tuple[int, int]] = set()
    seen_class: set[int] = set()
    keep_idx = []
    for i in sorted(range(len(weights)), key=lambda i: weights[i] == 0.0):
        leaf = (tree[i], nid[i])
        if weights[i] != 0.0 or leaf not in seen_leaf or cid[i] not in seen_class:
            keep_idx.append(i)
            seen_leaf.add(leaf)
            seen_class.add(cid[i])
    keep_idx.sort()
    if len(keep_idx) == len(weights):
        return
    for n, src in zip(names, (tree, nid, cid), strict=False):
        del attrs[n].ints[:]
        attrs[n].ints.extend([src[i] for i in keep_idx])
    del attrs[names[3]].floats[:]
    attrs[names[3]].floats.extend([weights[i] for i in keep_idx])


def _rename_internal(graph: onnx.GraphProto) -> None:
    keep = {v.name for v in [*graph.input, *graph.output]} | {""}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            n, s = len(mapping), ""
            while True:
                n, r = divmod(n, 36)
                s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
                if n == 0:
                    break
            mapping[name] = "_" + s
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
