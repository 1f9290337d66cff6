"""An onnxruntime session built from verified bytes, with input validation and a health check.

The hot path (:meth:`LoadedModel.predict_row`) is kept to a handful of cheap operations:
building the array from the row, one finiteness check on a Python sum, one ``run`` that
asks only for the outputs we use. Slow, precise diagnostics happen only after a row has
already failed the cheap checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .bundle import HEALTH, MODEL, ModelSpec, VerifiedBundle
from .errors import BadValue, HealthCheckFailed, InferenceFailed, ModelLoadFailed, NotFinite, ProtocolError, WrongShape

_DTYPES = {"float32": np.float32, "float64": np.float64}
_OVERFLOW = "the model's output is not finite: an input value is probably outside the model's float range"


@dataclass(frozen=True)
class Prediction:
    label: Any
    class_index: int  # -1 for regression
    confidence: float  # max probability; NaN for regression
    probabilities: np.ndarray | None


def _session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class LoadedModel:
    """A ready-to-serve model: the session, its schema and where its answer lives."""

    def __init__(self, bundle: VerifiedBundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.spec: ModelSpec = bundle.spec
        self.n_features = len(self.spec.features)
        self._dtype = _DTYPES[self.spec.input_dtype]
        self._classes = list(self.spec.classes)
        try:
            self.session = _session(bundle.files[MODEL], threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise ModelLoadFailed(f"model of {bundle.name} v{bundle.version} does not load: {exc}") from None
        names = {o.name for o in self.session.get_outputs()}
        wanted = self.spec.proba_output if self.spec.task == "classification" else self.spec.label_output
        if wanted is None or wanted not in names:
            raise ModelLoadFailed(f"model has no output {wanted!r} (it has {sorted(names)})")
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != self.spec.input_name:
            raise ModelLoadFailed(f"model input is not the single tensor {self.spec.input_name!r}")
        self._outputs = [wanted]
        self._input = self.spec.input_name
        self._is_classifier = self.spec.task == "classification"

    def to_array(self, row: Sequence[Any]) -> np.ndarray:
        """Validate one row and return it as a (1, F) array, or raise a RowError.

        Numbers (booleans count as 0/1, as JSON and CSV sources produce them) are accepted;
        None, strings, NaN and infinity are not. The fast path is one Python ``sum`` whose
        finiteness stands for every value's; only a row that fails it is looked at value by
        value (a sum can overflow where no single value does).
        """
        if not isinstance(row, (list, tuple)):
            raise WrongShape(f"a row must be a list of {self.n_features} numbers")
        if len(row) != self.n_features:
            raise WrongShape(f"row has {len(row)} values, the model expects {self.n_features}")
        try:
            total = sum(row)
            x = np.array(row, dtype=self._dtype)
        except (TypeError, ValueError, OverflowError):
            raise self._first_bad_value(row) or BadValue("row could not be converted to numbers") from None
        if x.ndim != 1:
            raise BadValue("row values must be numbers, not lists")
        if not math.isfinite(total):
            err = self._first_bad_value(row)
            if err is not None:
                raise err
        return x.reshape(1, self.n_features)

    def _first_bad_value(self, row: Sequence[Any]) -> BadValue | NotFinite | None:
        """The slow path: name the first value that is not a finite number, if any."""
        for feature, value in zip(self.spec.features, row, strict=False):
            if not isinstance(value, (int, float)):
                shown = "null" if value is None else repr(value)[:40]
                return BadValue(f"feature {feature.name!r} is {shown}; this model needs a number")
            if isinstance(value, int) and abs(value) > 1e300:
                return BadValue(f"feature {feature.name!r} is an integer too large for this model")
            if not math.isfinite(value):
                return NotFinite(f"feature {feature.name!r} is {value}; this model does not accept NaN or infinity")
        return None

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            out: np.ndarray = self.session.run(self._outputs, {self._input: x})[0]
        except Exception as exc:  # onnxruntime's errors carry no useful type
            raise InferenceFailed(f"inference failed: {exc}") from None
        return out

    def predict_row(self, row: Sequence[Any]) -> Prediction:
        return self.predict_row_array(self.to_array(row))

    def predict_row_array(self, x: np.ndarray) -> Prediction:
        out = self.run(x)
        if self._is_classifier:
            probs = out[0]
            idx = int(probs.argmax())
            confidence = float(probs[idx])
            if not math.isfinite(confidence):
                raise NotFinite(_OVERFLOW)
            return Prediction(self._classes[idx], idx, confidence, probs)
        value = float(out.reshape(-1)[0])
        if not math.isfinite(value):
            raise NotFinite(_OVERFLOW)
        return Prediction(value, -1, math.nan, None)

    def health_check(self, atol: float = 1e-4) -> int:
        """Run the bundle's health samples; raise HealthCheckFailed unless the host's answers reproduce."""
        try:
            health = self.bundle.json_file(HEALTH)
            rows = health["rows"]
            expected_labels = health["labels"]
            expected_proba = health.get("probabilities")
            atol = float(health.get("atol", atol))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise HealthCheckFailed(f"health samples are unreadable: {exc}") from None
        if not rows or len(rows) != len(expected_labels):
            raise HealthCheckFailed("health samples are empty or inconsistent")
        for i, row in enumerate(rows):
            try:
                pred = self.predict_row(row)
            except Exception as exc:
                raise HealthCheckFailed(f"health sample {i} failed: {exc}") from None
            expected = expected_labels[i]
            mismatch = (
                abs(float(pred.label) - float(expected)) > atol if pred.class_index < 0 else pred.label != expected
            )
            if mismatch:
                raise HealthCheckFailed(f"health sample {i}: model says {pred.label!r}, the host computed {expected!r}")
            if expected_proba is not None and pred.probabilities is not None:
                diff = float(np.max(np.abs(pred.probabilities - np.asarray(expected_proba[i]))))
                if not diff <= atol:
                    raise HealthCheckFailed(f"health sample {i}: probabilities differ by {diff:.2e} > {atol}")
        return len(rows)
