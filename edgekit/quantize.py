"""Dynamic int8 quantization with an accuracy gate, reported honestly.

onnxruntime's quantizers only rewrite MatMul/Gemm/Conv-like operators. The ``ai.onnx.ml``
operators skl2onnx emits for linear and tree models (LinearClassifier, Scaler,
TreeEnsembleClassifier) are left as they are, and the "quantized" file comes back a few bytes
*larger* with nothing changed. So success is decided by counting the quantization operators the
quantizer added, never by the quantizer returning without an error. An MLP is quantized
(its MatMuls become MatMulInteger), typically to about half its size.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgekit.convert import OnnxModel, dedupe_opset_imports, session
from edgekit.errors import QuantizationError

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


@dataclass
class QuantizeReport:
    """``*_after`` describe the quantizer's candidate; when there is none (the quantizer
    failed) they repeat ``*_before``. ``model`` is what ships: the candidate if ``applied``,
    else the float model, byte for byte."""

    applied: bool
    method: str  # "dynamic-int8" or "none"
    quantized_nodes: int
    size_before: int
    size_after: int
    accuracy_before: float
    accuracy_after: float
    label_agreement: float  # candidate vs float model, on the same rows
    max_accuracy_loss: float
    reason: str
    model: bytes = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "model"}


def quantize(
    model: OnnxModel, X: np.ndarray, y: np.ndarray, classes: list[Any], max_accuracy_loss: float = 0.005
) -> QuantizeReport:
    """Quantize weights to int8 and keep the result only if it changed something and the
    accuracy on ``X``/``y`` (held-out rows) drops by at most ``max_accuracy_loss`` (a fraction)."""
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    truth = np.asarray(y).tolist()
    if not truth or len(truth) != len(X32):
        raise QuantizationError(
            f"need the same, non-zero number of rows and labels to measure accuracy (got {len(X32)} and {len(truth)})",
            "pass the holdout rows of the run",
        )
    try:
        float_labels = _predict(model, model.data, X32, classes)
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"the float model does not run in onnxruntime: {_describe(exc)}",
            "convert it again with edgekit's converter",
        ) from exc
    accuracy_before = _accuracy(float_labels, truth)
    report = _Draft(model.data, max_accuracy_loss, accuracy_before)

    try:
        candidate = _quantize_dynamic(model.data)
    except Exception as exc:
        return report.refuse(f"the quantizer failed ({_describe(exc)}); shipping the float model")
    added = _count_quantized(candidate) - _count_quantized(model.data)
    try:
        labels = _predict(model, candidate, X32, classes)
    except Exception as exc:
        return report.refuse(
            f"the quantized model does not run in onnxruntime ({_describe(exc)}); shipping the float model",
            candidate,
        )
    accuracy_after = _accuracy(labels, truth)
    agreement = _accuracy(labels, float_labels)
    if added <= 0:
        ops = ", ".join(sorted(_op_types(model.data)))
        return report.refuse(
            f"nothing in the graph is quantizable ({ops}): onnxruntime's quantizers do not touch "
            "ai.onnx.ml operators such as LinearClassifier and TreeEnsembleClassifier; shipping the float model",
            candidate,
            accuracy_after,
            agreement,
        )
    if len(candidate) >= len(model.data):
        # Tiny weight matrices: the scales, zero points and extra nodes outweigh the int8 savings,
        # and a single row gets slower. Nothing is gained by shipping it.
        return report.refuse(
            f"{added} quantization nodes added but the model is not smaller ({len(candidate)} vs "
            f"{len(model.data)} bytes): its weights are too small to gain from int8; shipping the float model",
            candidate,
            accuracy_after,
            agreement,
            added,
        )
    loss = accuracy_before - accuracy_after
    if loss > max_accuracy_loss:
        return report.refuse(
            f"accuracy loss {loss * 100:.1f} pt is above the {max_accuracy_loss * 100:.1f} pt gate "
            f"({accuracy_before:.2%} → {accuracy_after:.2%}); shipping the float model",
            candidate,
            accuracy_after,
            agreement,
            added,
        )
    return QuantizeReport(
        applied=True,
        method="dynamic-int8",
        quantized_nodes=added,
        size_before=len(model.data),
        size_after=len(candidate),
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        label_agreement=agreement,
        max_accuracy_loss=max_accuracy_loss,
        reason=(
            f"{added} quantization nodes added, {len(candidate) / len(model.data):.2f}× the size, "
            f"accuracy {accuracy_before:.2%} → {accuracy_after:.2%} "
            f"(gate: at most {max_accuracy_loss * 100:.1f} pt lost)"
        ),
        model=candidate,
    )


@dataclass
class _Draft:
    """What every refusal shares: the float model ships unchanged."""

    data: bytes
    max_accuracy_loss: float
    accuracy_before: float

    def refuse(
        self,
        reason: str,
        candidate: bytes | None = None,
        accuracy_after: float | None = None,
        agreement: float = 1.0,
        added: int = 0,
    ) -> QuantizeReport:
        return QuantizeReport(
            applied=False,
            method="none",
            quantized_nodes=added,
            size_before=len(self.data),
            size_after=len(candidate if candidate is not None else self.data),
            accuracy_before=self.accuracy_before,
            accuracy_after=self.accuracy_before if accuracy_after is None else accuracy_after,
            label_agreement=agreement,
            max_accuracy_loss=self.max_accuracy_loss,
            reason=reason,
            model=self.data,
        )


def _quantize_dynamic(data: bytes) -> bytes:
    proto = onnx.load_from_string(data)
    dedupe_opset_imports(proto)  # a duplicated ai.onnx entry makes the quantizer fail
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp, _quiet_preprocess_advice():
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(proto, str(src))
        # No quant_pre_process: it needs sympy and breaks multiclass MLP graphs (FIELD-NOTES).
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _predict(model: OnnxModel, data: bytes, X32: np.ndarray, classes: list[Any]) -> list[Any]:
    """Labels as python values, from the probabilities (the output a device acts on)."""
    (proba,) = session(data).run([model.proba_output], {model.input_name: X32})
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise QuantizationError(
            f"the model gives {proba.shape[-1]} probability columns for {len(classes)} classes",
            "pass the class list of the run that produced the model",
        )
    return [classes[i] for i in np.argmax(proba, axis=1).tolist()]


def _accuracy(predicted: list[Any], truth: list[Any]) -> float:
    return sum(1 for p, t in zip(predicted, truth, strict=True) if p == t) / len(truth)


def _describe(exc: Exception) -> str:
    """One line: reports and errors end up in one-line CLI messages and JSON records."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _op_types(data: bytes) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load_from_string(data).graph.node)


def _count_quantized(data: bytes) -> int:
    return sum(n for op, n in _op_types(data).items() if op in QUANTIZED_OPS or op.startswith("QLinear"))


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


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
