"""A converted model and the way the host runs it: the one piece conversion, the parity gate,
quantization, explanation and reproduction all share.

Each of them needs the same three things: the model's bytes with the names of its input and
outputs (:class:`OnnxModel`), a session configured as a device configures one (:func:`session`),
and rows fed as a device feeds them (:func:`feeds`). Keeping them here, rather than in the
converter, lets the parity gate and the quantizer use them without importing the converter
(which imports them), so no module has to hide an import inside a function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from device_agent.features import Feature, model_inputs


@dataclass
class OnnxModel:
    data: bytes = field(repr=False)
    input_name: str  # the tensor layout's input; the first column's input for "columns"
    input_dtype: str  # "float32" | "float64" (numeric inputs; categorical ones are strings)
    label_output: str
    proba_output: str | None  # None for regression
    opset: int  # the default (ai.onnx) domain's version
    layout: str = "tensor"  # "tensor" | "columns"
    input_names: list[str] = field(default_factory=list)  # one per feature for "columns"
    feature_types: list[str] = field(default_factory=list)  # "numeric" | "categorical", per model input

    def __post_init__(self) -> None:
        if not self.input_names:
            self.input_names = [self.input_name]

    def input_spec(self) -> dict[str, Any]:
        """The manifest's ``model.input`` object (docs/contract-model-spec.md)."""
        if self.layout == "columns":
            return {"layout": "columns", "names": list(self.input_names), "dtype": "float32"}
        return {"layout": "tensor", "name": self.input_name, "dtype": self.input_dtype}

    def outputs_spec(self) -> dict[str, Any]:
        return {"label": self.label_output, "probabilities": self.proba_output}

    @classmethod
    def from_record(cls, data: bytes, model: dict[str, Any]) -> OnnxModel:
        """The model described by a run record's (or a manifest's) ``model`` section."""
        inp = model["input"]
        layout = str(inp.get("layout", "tensor"))
        names = [str(n) for n in inp["names"]] if layout == "columns" else [str(inp["name"])]
        return cls(
            data=data,
            input_name=names[0],
            input_dtype=str(inp.get("dtype", "float32")),
            label_output=str(model["outputs"]["label"]),
            proba_output=model["outputs"].get("probabilities"),
            opset=int(model.get("opset") or 0),
            layout=layout,
            input_names=names,
            feature_types=[str(f.get("type", "numeric")) for f in input_features(model)],
        )


def input_features(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's inputs, in order, from a ``model`` section whose ``features`` are what a row
    carries: a date/time feature becomes its parts, as the device expands it."""
    features = [
        Feature(
            str(f["name"]), str(f.get("type", "numeric")), bool(f.get("allow_missing")), tuple(f.get("parts") or ())
        )
        for f in model["features"]
    ]
    return [{"name": f.name, "type": f.type, "allow_missing": f.allow_missing} for f in model_inputs(features)]


def session(data: bytes) -> ort.InferenceSession:
    """An onnxruntime session with one thread (what a device uses, and deterministic), without
    onnxruntime's warnings on stderr."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def feeds(model: OnnxModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime inputs for rows ``X`` (float (n, F), or object (n, F) with str categoricals;
    a missing category is ``""``, as the device feeds it)."""
    if model.layout == "tensor":
        return {model.input_name: np.ascontiguousarray(np.asarray(X, dtype=np.float64), dtype=model.input_dtype)}
    out: dict[str, np.ndarray] = {}
    for j, (name, kind) in enumerate(zip(model.input_names, model.feature_types, strict=True)):
        col = np.asarray(X)[:, j : j + 1]
        if kind == "categorical":
            out[name] = np.array([["" if v is None else str(v)] for v in col[:, 0].tolist()], dtype=object)
        else:
            out[name] = np.ascontiguousarray(np.asarray(col, dtype=np.float64), dtype=np.float32)
    return out
