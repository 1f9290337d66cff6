"""scikit-learn pipeline → ONNX.

The device runs only onnxruntime, so the ONNX graph *is* the product: a model whose outputs
differ from the estimator we measured would ship metrics that are not its own, and
:func:`convert_checked` puts every conversion through the parity gate (:mod:`edgekit.parity`).
The whole pipeline is converted (imputation, scaling, one-hot encoding, the model), so the
device feeds raw features (``docs/contract-model-spec.md``):

* every feature numeric → layout ``tensor``: one ``[None, F]`` input named ``input``;
* any categorical feature → layout ``columns``: one ``[None, 1]`` input per feature, float32
  for numeric features and string for categorical ones.

Float64
    When more than 1 % of the holdout sits within float32 rounding of a decision boundary (the
    parity gate's ``precision_rows``), the data need more precision than float32 gives (epoch
    timestamps, large offsets): :func:`convert_checked` then converts again with a float64
    input (``tensor`` layout, families onnxruntime runs in double: logistic / linear
    regression, MLP, random-forest classifier, and no imputer), and keeps it if it passes.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import onnx
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
from skl2onnx.operator_converters.multilayer_perceptron import convert_sklearn_mlp_regressor
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.impute import SimpleImputer

from edgekit.boosting import register_converters
from edgekit.categories import CategoryCap, cap_converter, cap_shape
from edgekit.errors import ConversionError
from edgekit.onnx_model import OnnxModel, feeds, session

# The parity gate was part of this module: its names stay importable from here (``__all__``).
from edgekit.parity import (
    BISECT_STEPS,
    BOUNDARY_PAIRS,
    DEFAULT_TOLERANCE,
    MAX_PRECISION_SHARE,
    NOISE,
    WORST_ROWS,
    ParityReport,
    boundary_rows,
    check_parity,
    precision_loss,
    require_parity,
)
from edgekit.train import TargetScaledMLPRegressor, TrainResult

INPUT_NAME = "input"
# Pinned rather than "newest skl2onnx knows": onnxruntime 1.17 (the oldest the agent accepts)
# loads opset <= 20, and a pin keeps the produced graph stable across skl2onnx upgrades.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
_LABEL_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.STRING)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
DOUBLE_FAMILIES = {
    "classification": frozenset({"logreg", "mlp", "rf", "et"}),
    "regression": frozenset({"linear", "mlp"}),
}

update_registered_converter(CategoryCap, "EdgekitCategoryCap", cap_shape, cap_converter)
update_registered_converter(
    TargetScaledMLPRegressor,
    "EdgekitTargetScaledMLPRegressor",
    calculate_linear_regressor_output_shapes,
    convert_sklearn_mlp_regressor,
)


def input_names_for(feature_names: list[str]) -> list[str]:
    """One ONNX input name per feature: the feature's name made identifier-safe, deduplicated."""
    out: list[str] = []
    for name in feature_names:
        base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "f"
        if base[0].isdigit():
            base = "f_" + base
        candidate, k = base, 1
        while candidate in out:
            k += 1
            candidate = f"{base}_{k}"
        out.append(candidate)
    return out


def to_onnx(result: TrainResult, dtype: str = "float32") -> OnnxModel:
    """Convert the fitted pipeline. Numeric-only tables get one ``[None, F]`` input of ``dtype``;
    tables with a categorical feature one ``[None, 1]`` input per feature (float32 / string).
    Classifier probabilities come out as a tensor (no ZipMap)."""
    features = result.features or []
    columns = any(f.type == "categorical" for f in features)
    if columns and dtype != "float32":
        raise ConversionError("the columns layout takes float32 numeric inputs only")
    try:
        proto, names = _skl2onnx(result, columns, dtype)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "try another model family, or report it with the skl2onnx version"
        if "Expected an int, got a boolean" in detail:
            hint = "skl2onnx 1.20 needs protobuf < 7 for this model: install 'protobuf>=4,<7'"
        raise ConversionError(
            f"cannot convert the {result.model} model to ONNX ({dtype}): {type(exc).__name__}: {detail}", hint
        ) from exc
    dedupe_opset_imports(proto)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(
            f"the converted {result.model} model is not valid ONNX: {str(exc).splitlines()[0]}",
            "report it with the skl2onnx and onnx versions",
        ) from exc
    label, proba = _output_names(proto, result.task)
    return OnnxModel(
        data=proto.SerializeToString(),
        input_name=names[0],
        input_dtype=dtype,
        label_output=label,
        proba_output=proba,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        layout="columns" if columns else "tensor",
        input_names=names,
        feature_types=[f.type for f in features] if features else ["numeric"] * result.X_train.shape[1],
    )


def _skl2onnx(result: TrainResult, columns: bool, dtype: str) -> tuple[onnx.ModelProto, list[str]]:
    final = result.estimator.steps[-1][1]
    if result.model in ("lgbm", "xgb"):
        register_converters()  # onnxmltools' LightGBM / XGBoost converters, inside the same pipeline
    if columns:
        names = input_names_for([f.name for f in result.features])
        initial: list[tuple[str, Any]] = [
            (n, StringTensorType([None, 1]) if f.type == "categorical" else FloatTensorType([None, 1]))
            for n, f in zip(names, result.features, strict=True)
        ]
    else:
        names = [INPUT_NAME]
        tensor = DoubleTensorType if dtype == "float64" else FloatTensorType
        initial = [(INPUT_NAME, tensor([None, result.X_train.shape[1]]))]
    # No ZipMap: a list of dicts per row is slow to build and awkward to read on a device.
    options = {id(final): {"zipmap": False}} if result.task == "classification" else None
    with warnings.catch_warnings():
        # protobuf 6 warns that skl2onnx's HGB converter passes booleans as ints; protobuf 7
        # rejects them (hence the pin < 7, and the hint in to_onnx). Known: not repeated per call.
        warnings.filterwarnings("ignore", message=".*Expected an int, got a boolean", category=DeprecationWarning)
        proto: onnx.ModelProto = skl_to_onnx(
            result.estimator, initial_types=initial, options=options, target_opset=TARGET_OPSET
        )
    return proto, names


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


def _output_names(proto: onnx.ModelProto, task: str = "classification") -> tuple[str, str | None]:
    """(label, probabilities), found by type: skl2onnx's names are not a contract. A regressor's
    label is its one float output and it has no probabilities."""
    outputs = list(proto.graph.output)
    found = ", ".join(o.name for o in outputs)
    if task == "regression":
        floats = [o.name for o in outputs if o.type.tensor_type.elem_type in _FLOAT_TYPES]
        if len(floats) != 1:
            raise ConversionError(
                f"the converted regressor's outputs ({found}) are not one float tensor",
                "report it with the skl2onnx version",
            )
        return floats[0], None
    label = proba = None
    for out in outputs:
        elem = out.type.tensor_type.elem_type
        if elem in _LABEL_TYPES and label is None:
            label = out.name
        elif elem in _FLOAT_TYPES and proba is None:
            proba = out.name
    if label is None or proba is None:
        raise ConversionError(
            f"the converted model's outputs ({found}) are not one label and one probability tensor",
            "report it with the skl2onnx version",
        )
    return label, proba


def can_use_float64(result: TrainResult) -> bool:
    """Whether a float64 tensor input is possible: numeric-only table, a family onnxruntime runs
    in double, and no imputer (onnxruntime's Imputer is float32-only)."""
    if result.features and any(f.type != "numeric" for f in result.features):
        return False
    if result.model not in DOUBLE_FAMILIES.get(result.task, frozenset()):
        return False
    return not any(isinstance(step, SimpleImputer) for _, step in result.estimator.steps)


def convert_checked(result: TrainResult, tolerance: float = DEFAULT_TOLERANCE) -> tuple[OnnxModel, ParityReport]:
    """Convert with float32 inputs and check parity; if that fails and a float64 input is
    possible, convert again with float64 and keep it if it passes. The report lists both
    attempts; when nothing passes it is the float32 one, with its explanation."""
    model = to_onnx(result, "float32")
    report = check_parity(result, model, tolerance)
    attempts = [_attempt(report)]
    if not report.ok and can_use_float64(result):
        model64 = to_onnx(result, "float64")
        report64 = check_parity(result, model64, tolerance)
        attempts.append(_attempt(report64))
        if report64.ok:
            model, report = model64, report64
    report.attempts = attempts
    return model, report


def _attempt(report: ParityReport) -> dict[str, Any]:
    return {
        "input_dtype": report.input_dtype,
        "ok": report.ok,
        "max_abs_dp": report.max_abs_dp,
        "boundary_max_abs_dp": report.boundary_max_abs_dp,
        "precision_rows": report.precision_rows,
        "divergent_rows": report.divergent_rows,
    }


__all__ = [
    "BISECT_STEPS",
    "BOUNDARY_PAIRS",
    "DEFAULT_TOLERANCE",
    "DOUBLE_FAMILIES",
    "INPUT_NAME",
    "MAX_PRECISION_SHARE",
    "NOISE",
    "TARGET_OPSET",
    "WORST_ROWS",
    "OnnxModel",
    "ParityReport",
    "boundary_rows",
    "can_use_float64",
    "check_parity",
    "convert_checked",
    "dedupe_opset_imports",
    "feeds",
    "input_names_for",
    "precision_loss",
    "require_parity",
    "session",
    "to_onnx",
]
