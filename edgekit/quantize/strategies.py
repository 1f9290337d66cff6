"""Which strategies each model family takes, and how one candidate is built, loaded and
checked. The family comes from the graph's operators because they decide what can work: int8
and fp16 act on MatMul/Gemm weights, which tree ensembles do not have (onnxruntime's
quantizers skip TreeEnsemble operators) and linear models get only from the MatMul rewrite
(:mod:`.linear`). Every candidate is compacted, losslessly, as its last step
(:mod:`.compact`), and refused if a device would see its outputs differently
(:mod:`.contract`)."""

from __future__ import annotations

import copy
import zlib

import onnx
import onnxruntime as ort

from ..convert import dedupe_opset_imports
from .compact import _compact_verified
from .context import _Context, _NotApplicable
from .contract import contract_problems
from .fp16 import _to_fp16
from .graph import LINEAR_OPS, TREE_OPS, _count_ops, _count_quantized, session
from .int8 import _quantize_dynamic, _quantize_static
from .linear import _require_parity, linear_to_matmul
from .packed import _NotLossless
from .report import Candidate, _describe
from .tree_values import _round_tree_values

# Strategy names, per family, in the order they are tried.
FAMILY_STRATEGIES: dict[str, tuple[str, ...]] = {
    "mlp": ("compact", "dynamic-int8", "static-qdq-int8", "static-qop-int8", "fp16"),
    "linear": (
        "compact",
        "linear-matmul",
        "linear-matmul+dynamic-int8",
        "linear-matmul+static-qdq-int8",
        "linear-matmul+fp16",
    ),
    "tree": ("compact", "tree-f16-values"),
    "other": ("compact", "dynamic-int8", "static-qdq-int8", "fp16"),
}

STRATEGIES = tuple(dict.fromkeys(s for family in FAMILY_STRATEGIES.values() for s in family))

LOSSLESS = frozenset({"compact", "linear-matmul"})


def _family(proto: onnx.ModelProto) -> str:
    ops = {n.op_type for n in proto.graph.node}
    if ops & TREE_OPS:
        return "tree"
    if ops & LINEAR_OPS:
        return "linear"
    if ops & {"MatMul", "Gemm"}:
        return "mlp"
    return "other"


def _try(name: str, ctx: _Context, float_sess: ort.InferenceSession) -> tuple[Candidate, ort.InferenceSession | None]:
    """Build one candidate (compacted, losslessly, as its last step), load it, check its contract."""
    cand = Candidate(strategy=name, verdict="pending", reason="")
    try:
        proto, steps = _build(name, ctx)
    except _NotApplicable as exc:
        cand.verdict, cand.reason = "not applicable", str(exc)
        return cand, None
    except Exception as exc:
        cand.verdict, cand.reason = "failed", f"the strategy failed: {_describe(exc)}"
        return cand, None
    _restore_io(proto, ctx.float_proto)
    cand.quantized_nodes = _count_quantized(proto) - _count_quantized(ctx.float_proto)
    data = proto.SerializeToString()
    try:
        sess = session(data)
    except Exception as exc:
        cand.verdict, cand.reason = "failed", f"the result does not load in onnxruntime: {_describe(exc)}"
        return cand, None
    try:
        # "compact" alone must beat the float model's bytes as given (they may be packed already).
        data, sess = _compact_verified(proto, data, sess, ctx, len(ctx.float_data) if name == "compact" else None)
        steps.append("compact")
    except _NotLossless:
        if name == "compact":
            cand.verdict, cand.reason = "no gain", "compaction would not make the file smaller"
            return cand, None
    problems = contract_problems(ctx.float_proto, onnx.load_from_string(data), float_sess, sess, ctx.check_feed)
    if problems:
        cand.verdict, cand.reason = "refused", "output contract changed: " + "; ".join(problems)
        return cand, None
    cand.steps, cand.data, cand.size = steps, data, len(data)
    cand.size_zlib = len(zlib.compress(data, 9))
    if "int8" in name and cand.quantized_nodes <= 0:
        cand.verdict = "no gain"
        cand.reason = "nothing was quantized: onnxruntime's quantizers only rewrite MatMul/Gemm-like operators"
    if name.endswith("fp16") and _count_ops(proto).get("Cast", 0) <= _count_ops(ctx.float_proto).get("Cast", 0):
        cand.verdict, cand.reason = "no gain", "nothing was converted to float16"
    return cand, sess


def _build(name: str, ctx: _Context) -> tuple[onnx.ModelProto, list[str]]:
    proto = copy.deepcopy(ctx.float_proto)
    dedupe_opset_imports(proto)  # a duplicated ai.onnx entry makes the quantizers fail
    steps: list[str] = []
    if name == "compact":
        return proto, steps
    if name.startswith("linear-matmul"):
        proto = linear_to_matmul(proto)
        _require_parity(ctx, proto)
        steps.append("linear-matmul")
        name = name.removeprefix("linear-matmul").removeprefix("+")
        if not name:
            return proto, steps
    if name == "dynamic-int8":
        proto = _quantize_dynamic(proto, ctx)
    elif name == "static-qdq-int8":
        proto = _quantize_static(proto, ctx, qdq=True)
    elif name == "static-qop-int8":
        proto = _quantize_static(proto, ctx, qdq=False)
    elif name == "fp16":
        proto = _to_fp16(proto, ctx)
    elif name == "tree-f16-values":
        proto = _round_tree_values(proto, ctx)
    else:  # pragma: no cover - names are checked up front
        raise _NotApplicable(f"unknown strategy {name}")
    steps.append(name)
    return proto, steps


def _restore_io(proto: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Put back the float model's declared inputs and outputs where only their shape
    annotations differ (shape inference names dynamic dimensions, e.g. ``unk__1``); a real
    change of name or element type is left for the contract check to refuse."""
    for mine, theirs in ((proto.graph.input, original.graph.input), (proto.graph.output, original.graph.output)):
        if [(v.name, v.type.tensor_type.elem_type) for v in mine] == [
            (v.name, v.type.tensor_type.elem_type) for v in theirs
        ]:
            del mine[:]
            mine.extend(copy.deepcopy(list(theirs)))
