"""Signed but hostile models, built with onnx.helper: each one has the test bundle's inputs and
outputs (so it verifies and loads like a good one) and does something a device must survive."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from device_agent.bundle import MODEL
from tests.unit.bundle_factory import CLASSES, FEATURES, INPUT_NAME, LABEL_NAME, PROBA_NAME, default_files

_W = np.eye(len(FEATURES), len(CLASSES), dtype=np.float32)


def _classifier(nodes: list[onnx.NodeProto], features: str, extra: list[onnx.TensorProto] | None = None) -> bytes:
    """``nodes`` turn the input into ``features`` ([N, 3]); a softmax classifier follows."""
    graph = helper.make_graph(
        [
            *nodes,
            helper.make_node("MatMul", [features, "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [PROBA_NAME], axis=1),
            helper.make_node("ArgMax", [PROBA_NAME], [LABEL_NAME], axis=1, keepdims=0),
        ],
        "hostile",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, len(FEATURES)])],
        [
            helper.make_tensor_value_info(PROBA_NAME, TensorProto.FLOAT, [None, len(CLASSES)]),
            helper.make_tensor_value_info(LABEL_NAME, TensorProto.INT64, [None]),
        ],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, list(_W.shape), _W.flatten().tolist()), *(extra or [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def endless_loop(trips: int = 10**12) -> bytes:
    """A ``Loop`` with ``trips`` iterations that adds zero to the input each time."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "zero"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [None, len(FEATURES)]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None, len(FEATURES)]),
        ],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    nodes = [helper.make_node("Loop", ["trips", "cond", INPUT_NAME], ["looped"], body=body)]
    extra = [
        helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
        helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
    ]
    return _classifier(nodes, "looped", extra)


def huge_allocation(floats_per_row: int = 750_000_000) -> bytes:
    """Per row, a tensor of ``floats_per_row`` float32 zeros (3 GB by default), summed into the input."""
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["shape"]),
        helper.make_node("Slice", ["shape", "zero_i", "one_i"], ["rows"]),
        helper.make_node("Concat", ["rows", "width"], ["big_shape"], axis=0),
        helper.make_node(
            "ConstantOfShape", ["big_shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
        ),
        helper.make_node("ReduceSum", ["big", "axis1"], ["total"], keepdims=1),
        helper.make_node("Add", [INPUT_NAME, "total"], ["fed"]),
    ]
    extra = [
        helper.make_tensor("zero_i", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one_i", TensorProto.INT64, [1], [1]),
        helper.make_tensor("width", TensorProto.INT64, [1], [floats_per_row]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
    ]
    return _classifier(nodes, "fed", extra)


def files_with(model: bytes) -> dict[str, bytes]:
    """The test bundle's files with this model in place of the good one."""
    return {**default_files(), MODEL: model}
