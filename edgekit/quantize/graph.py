"""Graph helpers every strategy shares, so that each one counts, runs and types a graph the
same way: operator facts, quantized-node counts, one-thread quiet sessions, and the types
onnxruntime resolves where onnx cannot infer them (:func:`annotate_types`)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import onnx
from onnx import TensorProto, helper

from ..onnx_model import session as session  # one thread, quiet: how every graph here is run

# Operators that only exist in a graph because something was quantized.
QUANTIZED_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
        "QuantizeLinear",
        "DequantizeLinear",
        "QGemm",
        "QAttention",
    }
)

ML = "ai.onnx.ml"

TREE_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor"})

LINEAR_OPS = frozenset({"LinearClassifier", "LinearRegressor"})


def _count_ops(proto: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in proto.graph.node)


def _count_quantized(proto: onnx.ModelProto) -> int:
    return sum(n for op, n in _count_ops(proto).items() if op in QUANTIZED_OPS or op.startswith("QLinear"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_ORT_TYPES = {
    "tensor(float)": TensorProto.FLOAT,
    "tensor(double)": TensorProto.DOUBLE,
    "tensor(float16)": TensorProto.FLOAT16,
    "tensor(int64)": TensorProto.INT64,
    "tensor(int32)": TensorProto.INT32,
    "tensor(int8)": TensorProto.INT8,
    "tensor(uint8)": TensorProto.UINT8,
    "tensor(bool)": TensorProto.BOOL,
    "tensor(string)": TensorProto.STRING,
}


def annotate_types(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node output has a typed value_info.

    onnx cannot infer the output types of ``ai.onnx.ml`` operators (Scaler, Normalizer,
    ...), so tensors after them are type-less and the quantizers' calibrators skip them. The
    types come from onnxruntime, which resolves them when it builds the graph.
    """
    inferred = onnx.shape_inference.infer_shapes(proto)
    typed = {v.name for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    typed |= {i.name for i in inferred.graph.initializer}
    missing = [o for n in inferred.graph.node for o in n.output if o and o not in typed]
    if not missing:
        return inferred
    probe = copy.deepcopy(inferred)
    for name in missing:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(probe.SerializeToString())
    types = {o.name: o.type for o in sess.get_outputs()}
    for name in missing:
        elem = _ORT_TYPES.get(types.get(name, ""))
        if elem is not None:
            inferred.graph.value_info.append(helper.make_tensor_value_info(name, elem, None))
    return onnx.shape_inference.infer_shapes(inferred)
