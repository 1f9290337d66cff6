"""Dynamic and static int8 with onnxruntime's quantizers, MatMul/Gemm only, without
pre-processing, on graphs whose every tensor is typed (:func:`~.graph.annotate_types`).

**Dynamic int8** (``quantize_dynamic``) rewrites MatMul/Gemm only. The ``ai.onnx.ml``
operators skl2onnx emits for linear and tree models (LinearClassifier, LinearRegressor,
Scaler, TreeEnsemble*) come back untouched and a few bytes larger, so a candidate counts only
if it added quantization operators. MLP: 0.31-0.48x the size (with compaction), accuracy
unchanged, ~0.5 µs slower per row. Dynamic int8 computes a scale per input tensor, so a row's
output depends on the batch it is in (digits: 0.9667 accuracy as one batch, 0.9733 row by
row): rows are measured one at a time, as a device serves them.

**Static QDQ int8** with calibration rows (a CalibrationDataReader over the rows given,
MinMax). "Only an existing tensor can be modified" comes from ``quant_pre_process``, not
from the quantizer: onnx has no type inference for ``ai.onnx.ml`` operators such as
Scaler, so the Scaler's output and everything after it is type-less. skl2onnx's MLP graph
survives only because of a float→float ``Cast`` after the Scaler (Cast's inference
re-types everything downstream); pre-processing optimizes that no-op Cast away, the
calibrator then collects no range for the Softmax output (it only calibrates tensors of
known float type), and the quantizer's "Softmax output is [0, 1]" adjustment assigns a range
to a tensor that has none — the error. Binary MLPs (Sigmoid) pass silently, with most of
their activations left unquantized (2 QuantizeLinear instead of 8). So: no pre-processing,
and before any quantizer runs every type-less tensor is given the type onnxruntime itself
resolves for it (which also makes the MatMul form of linear models (:mod:`.linear`), a Scaler
feeding a MatMul directly, calibrate).
Only MatMul/Gemm are quantized: QDQ around every Add, Softmax and the probability output
(the quantizer's default) made single rows 1.4-1.5x slower than float (MatMul only: ~1.2x),
the file larger than MatMul-only, and the probabilities 8-bit steps. ``quant_pre_process``
also needs ``sympy``, which is not installed. Static int8 passes the gates on every MLP here
but never wins: dynamic int8 is as small and faster per row. QOperator form (QLinearMatMul,
uint8 activations) is tried too: as small as dynamic int8, slower per row.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from .context import _Context
from .graph import annotate_types


def _quantize_dynamic(proto: onnx.ModelProto, ctx: _Context) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    typed = annotate_types(proto)
    with _files(typed) as (src, dst), _quiet_preprocess_advice():
        # No quant_pre_process: it needs sympy and breaks multiclass MLP graphs (module docstring).
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def _quantize_static(proto: onnx.ModelProto, ctx: _Context, qdq: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Rows(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    # MinMax ranges do not depend on the batching: 64 rows a batch for speed.
    feeds = [ctx.feeder(ctx.calib[i : i + 64]) for i in range(0, len(ctx.calib), 64)]
    typed = annotate_types(proto)
    with _files(typed) as (src, dst), _quiet_preprocess_advice():
        quantize_static(
            str(src),
            str(dst),
            Rows(feeds),
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            # QOperator: uint8 activations with int8 weights, the fast pairing on x86-64.
            activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
        return onnx.load(str(dst))


@contextlib.contextmanager
def _files(proto: onnx.ModelProto) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "out.onnx")
        onnx.save_model(proto, str(src))
        yield src, dst


_ADVICE = ("pre-processing before quantization", "Please use QuantFormat.QDQ")


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(advice in message for advice in _ADVICE)


@contextlib.contextmanager
def _quiet_preprocess_advice() -> Iterator[None]:
    """onnxruntime logs advice to pre-process on the root logger at every call; we skip
    pre-processing on purpose, so the advice is noise in a CLI's output."""
    advice = _DropPreprocessAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
