"""MatMul/Gemm weights in float16, with onnxruntime's own ``onnxruntime.transformers.float16``
(``keep_io_types=True``; its default block list keeps the ``ai.onnx.ml`` operators in float32;
ArgMax is blocked too). It also needs typed tensors: without a type on a Scaler's output it
inserts no Cast before the float16 MatMul and the graph does not load ("Type parameter (T) of
Optype (MatMul) bound to different types"). MLP: 0.63-0.66x, ~1 µs slower per row,
|Δp| ≤ 2e-3; linear: larger or too slow. onnxconverter-common's fp16 graphs do not load
(FIELD-NOTES); it is not used. Tree ensembles are not converted: casting their input to fp16
moves rows across splits.
"""

from __future__ import annotations

import onnx

from .context import _Context, _NotApplicable
from .graph import annotate_types


def _to_fp16(proto: onnx.ModelProto, ctx: _Context) -> onnx.ModelProto:
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - ships with onnxruntime
        raise _NotApplicable(f"onnxruntime.transformers.float16 is not importable: {exc}") from exc
    if not any(n.op_type in ("MatMul", "Gemm") for n in proto.graph.node):
        raise _NotApplicable("no MatMul/Gemm weights to store in float16")
    # Typed tensors: without a type on the (float32) output of an ai.onnx.ml operator, the
    # converter inserts no Cast before the float16 MatMul and the graph does not load.
    converted: onnx.ModelProto = convert_float_to_float16(
        annotate_types(proto),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, "ArgMax", "ArgMin"],
    )
    return converted
