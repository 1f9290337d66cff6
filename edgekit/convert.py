"""scikit-learn pipeline → ONNX, and the parity gate that decides whether the ONNX model is
the same model.

The device runs only onnxruntime, so the ONNX graph *is* the product: a model whose
probabilities differ from the estimator we measured would ship metrics that are not its own.
On the bundled data sets a correct conversion differs by at most ~1.4e-6; the default
tolerance (1e-4) is far above float32 noise and far below any real change.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType

from edgekit.errors import ConversionError
from edgekit.train import TrainResult

INPUT_NAME = "input"
# Pinned rather than "newest skl2onnx knows": onnxruntime 1.17 (the oldest the agent accepts)
# loads opset <= 20, and a pin keeps the produced graph stable across skl2onnx upgrades.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
_LABEL_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.STRING)


@dataclass
class OnnxModel:
    data: bytes = field(repr=False)
    input_name: str
    input_dtype: str  # "float32"
    label_output: str
    proba_output: str
    opset: int  # the default (ai.onnx) domain's version


@dataclass
class ParityReport:
    """onnxruntime on the float32 holdout rows vs the fitted estimator.

    The gate compares against the estimator on the *original* rows: that is the model whose
    metrics were measured, and a correct conversion reproduces it (skl2onnx casts tree
    thresholds to float32 as well, and rounding is monotonic, so float32 input and thresholds
    take the float64 branches, barring a value that rounds onto a threshold). The estimator on the float32-cast rows is
    compared and reported too (``f32_rows_*``), not gated: HistGradientBoosting keeps float64
    thresholds, so casting only the input moves rows across splits (|Δp| ~1e-3 on
    breast_cancer) with no conversion fault at all.

    ``ties`` counts label differences on rows whose top two probabilities are within the
    tolerance: either label is right there, so they do not fail the gate.
    """

    rows: int
    max_abs_dp: float
    label_agreement: float
    tolerance: float
    ok: bool
    ties: int = 0
    f32_rows_max_abs_dp: float = 0.0
    f32_rows_label_agreement: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_onnx(result: TrainResult) -> OnnxModel:
    """Convert the fitted pipeline: one float32 input ``[None, F]``, probabilities as a tensor."""
    try:
        proto = _skl2onnx(result)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "try another model family, or report it with the skl2onnx version"
        if "Expected an int, got a boolean" in detail:
            hint = "skl2onnx 1.20 needs protobuf < 7 for this model: install 'protobuf>=4,<7'"
        raise ConversionError(
            f"cannot convert the {result.model} model to ONNX: {type(exc).__name__}: {detail}", hint
        ) from exc
    dedupe_opset_imports(proto)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(
            f"the converted {result.model} model is not valid ONNX: {str(exc).splitlines()[0]}",
            "report it with the skl2onnx and onnx versions",
        ) from exc
    label, proba = _output_names(proto)
    return OnnxModel(
        data=proto.SerializeToString(),
        input_name=INPUT_NAME,
        input_dtype="float32",
        label_output=label,
        proba_output=proba,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
    )


def _skl2onnx(result: TrainResult) -> onnx.ModelProto:
    classifier = result.estimator.steps[-1][1]
    with warnings.catch_warnings():
        # protobuf 6 warns that skl2onnx's HGB converter passes booleans as ints; protobuf 7
        # rejects them (hence the pin < 7, and the hint in to_onnx). Known: not repeated per call.
        warnings.filterwarnings("ignore", message=".*Expected an int, got a boolean", category=DeprecationWarning)
        proto: onnx.ModelProto = skl_to_onnx(
            result.estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, result.X_train.shape[1]]))],
            # No ZipMap: a list of dicts per row is slow to build and awkward to read on a device.
            options={id(classifier): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
    return proto


def dedupe_opset_imports(proto: onnx.ModelProto) -> None:
    """Keep one opset import per domain (the highest version), in place.

    skl2onnx can list the default domain twice; onnxruntime's quantizers then fail with
    "Failed to find proper ai.onnx domain".
    """
    versions: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    del proto.opset_import[:]
    for domain, version in versions.items():
        proto.opset_import.add(domain=domain, version=version)


def _output_names(proto: onnx.ModelProto) -> tuple[str, str]:
    """(label, probabilities), found by type: skl2onnx's names are not a contract."""
    label = proba = None
    for out in proto.graph.output:
        elem = out.type.tensor_type.elem_type
        if elem in _LABEL_TYPES and label is None:
            label = out.name
        elif elem == onnx.TensorProto.FLOAT and proba is None:
            proba = out.name
    if label is None or proba is None:
        found = ", ".join(o.name for o in proto.graph.output)
        raise ConversionError(
            f"the converted model's outputs ({found}) are not one label and one probability tensor",
            "report it with the skl2onnx version",
        )
    return label, proba


def session(data: bytes) -> ort.InferenceSession:
    """An onnxruntime session with one thread: what a device uses, and deterministic."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def check_parity(result: TrainResult, model: OnnxModel, tolerance: float = 1e-4) -> ParityReport:
    """Run the holdout rows through onnxruntime (as float32, like a device) and the estimator."""
    X32 = np.ascontiguousarray(result.X_test, dtype=np.float32)
    labels, proba = session(model.data).run([model.label_output, model.proba_output], {model.input_name: X32})
    onnx_labels = np.asarray(labels).tolist()  # int64 or str, compared as python values
    proba = np.asarray(proba, dtype=np.float64)

    ref_proba = result.estimator.predict_proba(result.X_test)
    ref_labels = result.estimator.predict(result.X_test).tolist()
    differs = np.array([a != b for a, b in zip(onnx_labels, ref_labels, strict=True)])
    top2 = np.sort(ref_proba, axis=1)[:, -2:]
    ties = int(np.sum(differs & ((top2[:, 1] - top2[:, 0]) <= tolerance)))
    max_abs_dp = float(np.max(np.abs(proba - ref_proba)))

    f32_labels = result.estimator.predict(X32).tolist()
    return ParityReport(
        rows=len(X32),
        max_abs_dp=max_abs_dp,
        label_agreement=1.0 - float(np.mean(differs)),
        tolerance=tolerance,
        ok=max_abs_dp <= tolerance and int(np.sum(differs)) == ties,
        ties=ties,
        f32_rows_max_abs_dp=float(np.max(np.abs(proba - result.estimator.predict_proba(X32)))),
        f32_rows_label_agreement=float(np.mean([a == b for a, b in zip(onnx_labels, f32_labels, strict=True)])),
    )


def require_parity(report: ParityReport) -> None:
    """The parity gate: refuse to go on with an ONNX model that is not the measured model."""
    if report.ok:
        return
    raise ConversionError(
        f"the ONNX model diverges from the scikit-learn model on {report.rows} holdout rows: "
        f"max |Δp| {report.max_abs_dp:.3g} (tolerance {report.tolerance:g}), "
        f"label agreement {report.label_agreement:.2%} ({report.ties} at near-ties)",
        "this is a conversion bug, do not ship the model: try another model family, "
        "or report it with the skl2onnx and onnxruntime versions",
    )
