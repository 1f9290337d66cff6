"""An onnxruntime session built from verified bytes, with input validation and a health check.

The hot path for all-numeric models (:meth:`LoadedModel.predict_row`) is a handful of
cheap operations: one Python ``sum`` whose finiteness stands for every value's, one copy
of the row into a pre-bound input buffer, one ``run_with_iobinding`` that skips the
Python wrapper's per-call validation and asks only for the output we use. Slow, precise
diagnostics happen only after a row has failed the cheap checks. Models with categorical
features (the "columns" layout of docs/contract-model-spec.md) take a per-column feed.

Many rows at once (:meth:`LoadedModel.predict_rows`, the local API's batches) go through one
``session.run`` on a matrix; each row is still validated on its own and gets its own answer
or error, exactly as it would one at a time.

A ``LoadedModel`` is not thread-safe (its input buffer is shared); the engine serialises
calls with its lock.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from .bundle import HEALTH, MODEL, DeviceProfile, ModelSpec, VerifiedBundle
from .errors import (
    BadValue,
    HealthCheckFailed,
    InferenceFailed,
    ModelLoadFailed,
    NotFinite,
    OutputNotFinite,
    ProtocolError,
    RowError,
    WrongShape,
)
from .features import DATETIME, Expander, Feature

_DTYPES = {"float32": np.float32, "float64": np.float64}
_OVERFLOW = "the model's output is not finite: an input value is probably outside the model's float range"


@functools.cache
def max_opset() -> int | None:
    """The highest default-domain ONNX opset this onnxruntime knows, from its operator schemas
    (None when this build does not expose them): what a bundle's ``compat.opset`` is held to."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        versions = [s.since_version for s in state.get_all_operator_schema() if s.domain in ("", "ai.onnx")]
    except Exception:  # a build without the schemas: the opset is left to the load
        return None
    return max(versions) if versions else None


def device_profile(device_class: str) -> DeviceProfile:
    """This device, as bundles' ``compat`` sees it."""
    return DeviceProfile(device_class=device_class, runtime=ort.__version__, max_opset=max_opset)


class Prediction(NamedTuple):
    label: Any
    class_index: int  # -1 for regression
    confidence: float  # max probability; NaN for regression
    probabilities: np.ndarray | None


class Columns(NamedTuple):
    """The answers to a matrix of rows as columns, with no object per row (tensor batches)."""

    class_index: np.ndarray  # class index per row; -1 for a regressor and for a row that failed
    score: np.ndarray  # confidence (classifier) or predicted value (regressor); NaN for a row that failed
    errors: dict[int, RowError]  # the rows that failed, by position

    def prediction(self, i: int, classes: Sequence[Any]) -> Prediction:
        j = int(self.class_index[i])
        score = float(self.score[i])
        if j < 0:
            return Prediction(score, -1, math.nan, None)
        return Prediction(classes[j], j, score, None)


_PENDING = Prediction(None, -1, math.nan, None)  # a batch row's place until the batch has run


def _session(model: bytes | str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _bad_value(feature: Feature, value: Any) -> RowError | None:
    """Why ``value`` cannot be fed for ``feature``, or None when it can."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if feature.allow_missing:
            return None
        if value is None:
            return BadValue(f"feature {feature.name!r} is null; this model was trained without missing values")
        return NotFinite(f"feature {feature.name!r} is NaN; this model was trained without missing values")
    if feature.type == "categorical":
        if isinstance(value, str):
            return None
        return BadValue(f"feature {feature.name!r} is {value!r}; this model needs a category (a string)")
    if not isinstance(value, (int, float)):
        return BadValue(f"feature {feature.name!r} is {repr(value)[:40]}; this model needs a number")
    if isinstance(value, int) and abs(value) > 1e300:
        return BadValue(f"feature {feature.name!r} is an integer too large for this model")
    if not math.isfinite(value):
        return NotFinite(f"feature {feature.name!r} is {value}; this model does not accept infinity")
    return None


def _same(row: Sequence[Any]) -> Sequence[Any]:
    return row


class LoadedModel:
    """A ready-to-serve model: the session, its schema and where its answer lives.

    A row carries the manifest's features; the model takes its inputs (the same, except that a
    date/time feature becomes its parts, :mod:`device_agent.features`). :meth:`model_row` turns
    one into the other, :meth:`predict_inputs` serves the result, :meth:`predict_row` does both.
    """

    def __init__(
        self, bundle: VerifiedBundle, threads: int = 1, model_path: str | os.PathLike[str] | None = None
    ) -> None:
        """``model_path``: a file holding the bundle's verified model.onnx, for a bundle verified
        without it (``keep_model=False``). onnxruntime reads a file into its graph directly;
        handed bytes, its Python binding copies them once more and keeps them for the session's
        life."""
        self.bundle = bundle
        self.spec: ModelSpec = bundle.spec
        self.features = self.spec.inputs  # what the model takes, validated and fed per value
        self.n_features = len(self.features)
        self.model_row = Expander(self.spec.features) if any(f.type == DATETIME for f in self.spec.features) else _same
        self._dtype = _DTYPES[self.spec.input_dtype]
        self._classes = list(self.spec.classes)
        self._is_classifier = self.spec.task == "classification"
        self._tensor = self.spec.layout == "tensor"
        source: bytes | str | None = os.fspath(model_path) if model_path is not None else bundle.files.get(MODEL)
        if source is None:
            raise ModelLoadFailed(
                f"bundle {bundle.name} v{bundle.version} was verified without its model; no file given"
            )
        try:
            self.session = _session(source, threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise ModelLoadFailed(f"model of {bundle.name} v{bundle.version} does not load: {exc}") from None
        names = {o.name for o in self.session.get_outputs()}
        wanted = self.spec.proba_output if self._is_classifier else self.spec.label_output
        if wanted is None or wanted not in names:
            raise ModelLoadFailed(f"model has no output {wanted!r} (it has {sorted(names)})")
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != list(self.spec.input_names):
            raise ModelLoadFailed(
                f"model inputs {graph_inputs} do not match the manifest's {list(self.spec.input_names)}"
            )
        self._output = wanted
        self._any_missing = any(f.allow_missing for f in self.features)
        # A graph whose batch dimension is fixed (say to 1) cannot take a matrix of rows.
        self._batchable = all(not isinstance(i.shape[0], int) for i in self.session.get_inputs() if i.shape)
        if self._tensor:
            # One pre-bound input buffer: a row is copied in and run without re-validation.
            self._buf = np.zeros((1, self.n_features), dtype=self._dtype)
            self._binding = self.session.io_binding()
            self._binding.bind_ortvalue_input(self.spec.input_name, ort.OrtValue.ortvalue_from_numpy(self._buf))
            self._binding.bind_output(wanted)

    # ── validation ──────────────────────────────────────────────────────────────────

    def _check_slow(self, row: Sequence[Any]) -> None:
        for feature, value in zip(self.features, row, strict=True):
            err = _bad_value(feature, value)
            if err is not None:
                raise err

    def _load(self, row: Sequence[Any]) -> None:
        """Validate a row for the tensor layout and copy it into the bound input buffer."""
        values = self._ready(row)
        try:
            self._buf[0] = values
        except (TypeError, ValueError, OverflowError):
            self._check_slow(row)
            raise BadValue("row values must be plain numbers") from None

    def _ready(self, row: Sequence[Any]) -> Sequence[Any]:
        """Validate a row for the tensor layout; the values to feed (a missing value as NaN)."""
        if not isinstance(row, (list, tuple)):
            raise WrongShape(f"a row must be a list of {self.n_features} values")
        if len(row) != self.n_features:
            raise WrongShape(f"row has {len(row)} values, the model expects {self.n_features}")
        total: Any
        try:
            total = sum(row)  # a string, None or a nested list fails here, before numpy can coerce it
        except (TypeError, OverflowError):  # OverflowError: an integer beyond any float, plus a float
            self._check_slow(row)
            total = 0.0  # only missing values (allowed) made the sum fail
        try:
            finite = math.isfinite(total)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            self._check_slow(row)  # raises for NaN/inf/overflow where not allowed
        return [math.nan if v is None else v for v in row] if self._any_missing else row

    def _feed(self, row: Sequence[Any]) -> dict[str, np.ndarray]:
        """Validate a row for the columns layout and build one [1, 1] array per input."""
        if not isinstance(row, (list, tuple)):
            raise WrongShape(f"a row must be a list of {self.n_features} values")
        if len(row) != self.n_features:
            raise WrongShape(f"row has {len(row)} values, the model expects {self.n_features}")
        self._check_slow(row)
        feed: dict[str, np.ndarray] = {}
        for name, feature, value in zip(self.spec.input_names, self.features, row, strict=True):
            if feature.type == "categorical":
                feed[name] = np.array([["" if value is None else value]], dtype=object)
            else:
                feed[name] = np.array([[math.nan if value is None else value]], dtype=np.float32)
        return feed

    # ── inference ───────────────────────────────────────────────────────────────────

    def _run(self, row: Sequence[Any]) -> np.ndarray:
        if self._tensor:
            self._load(row)
            try:
                self.session.run_with_iobinding(self._binding)
                out: np.ndarray = self._binding.copy_outputs_to_cpu()[0]
            except Exception as exc:  # onnxruntime's errors carry no useful type
                raise InferenceFailed(f"inference failed: {exc}") from None
            return out
        feed = self._feed(row)
        try:
            result: np.ndarray = self.session.run([self._output], feed)[0]
        except Exception as exc:
            raise InferenceFailed(f"inference failed: {exc}") from None
        return result

    def predict_row(self, row: Sequence[Any]) -> Prediction:
        """Serve a row of features (date/time values as text)."""
        return self.predict_inputs(self.model_row(row))

    def predict_inputs(self, row: Sequence[Any]) -> Prediction:
        """Serve a row of model inputs (:meth:`model_row` of a row of features)."""
        out = self._run(row)
        if self._is_classifier:
            return self._classified(out[0])
        return self._regressed(float(out.reshape(-1)[0]))

    def _classified(self, probs: np.ndarray) -> Prediction:
        listed = probs.tolist()
        confidence = max(listed)
        if not math.isfinite(confidence):
            raise OutputNotFinite(_OVERFLOW)
        idx = listed.index(confidence)
        return Prediction(self._classes[idx], idx, confidence, probs)

    @staticmethod
    def _regressed(value: float) -> Prediction:
        if not math.isfinite(value):
            raise OutputNotFinite(_OVERFLOW)
        return Prediction(value, -1, math.nan, None)

    # ── many rows at once ───────────────────────────────────────────────────────────

    def predict_rows(self, rows: Sequence[Any]) -> tuple[list[Sequence[Any] | None], list[Prediction | RowError]]:
        """Answer every row of features, in order, through one onnxruntime call; return each
        row's model inputs (what drift accounts; None for a row that failed before the model) and
        its answer. A row that fails its checks gets its own error and the others are served.
        Should the call itself fail, each row is run alone, so only a row that makes the model
        fail is answered with InferenceFailed (the error a trial counts against the model),
        exactly as if the rows had come one by one."""
        inputs: list[Sequence[Any] | None] = []
        results: list[Prediction | RowError] = []
        ready: list[Sequence[Any]] = []
        at: list[int] = []
        for i, row in enumerate(rows):
            try:
                x = self.model_row(row)  # date/time values become their parts, as in training
                ready.append(self._ready(x) if self._tensor else self._checked(x))
            except RowError as exc:
                inputs.append(None)
                results.append(exc)
            else:
                inputs.append(x)
                results.append(_PENDING)
                at.append(i)
        if not at:
            return inputs, results
        try:
            if not self._batchable:
                raise InferenceFailed("the model takes one row at a time")
            out = self._run_batch(ready)
        except InferenceFailed:
            for i in at:
                results[i] = self._one(inputs[i] or ())
            return inputs, results
        for i, answer in zip(at, self._answers(out, len(at)), strict=True):
            results[i] = answer
        return inputs, results

    def predict_matrix(self, x: np.ndarray) -> Columns:
        """Rows that arrive already as one numeric matrix (a tensor batch): validated and
        answered column-wise, with the same checks, errors and fallback as :meth:`predict_rows`."""
        if not self._tensor or self.model_row is not _same:
            raise WrongShape("this model takes categorical or date/time features: send its rows as JSON")
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise WrongShape(f"rows have {x.shape[-1] if x.ndim else 0} values, the model expects {self.n_features}")
        n = len(x)
        errors: dict[int, RowError] = {}
        finite = np.isfinite(x)
        if not bool(finite.all()):
            for i in np.flatnonzero(~finite.all(axis=1)).tolist():
                for feature, value in zip(self.features, x[i].tolist(), strict=True):
                    err = _bad_value(feature, value)
                    if err is not None:
                        errors[i] = err
                        break
        index = np.full(n, -1, dtype=np.int64)
        score = np.full(n, math.nan, dtype=np.float64)
        ok = np.ones(n, dtype=bool)
        ok[list(errors)] = False
        if not bool(ok.any()):
            return Columns(index, score, errors)
        try:
            if not self._batchable:
                raise InferenceFailed("the model takes one row at a time")
            out = self._run_batch(x if not errors else x[ok])
        except InferenceFailed:  # one call failed: each row alone, so only a row that breaks the model fails
            for i in np.flatnonzero(ok).tolist():
                answer = self._one(x[i].tolist())
                if isinstance(answer, RowError):
                    errors[i] = answer
                else:
                    index[i] = answer.class_index
                    score[i] = answer.confidence if answer.class_index >= 0 else answer.label
            return Columns(index, score, errors)
        rows = np.flatnonzero(ok)
        if self._is_classifier:
            probs = out.reshape(len(rows), -1)
            index[rows] = probs.argmax(axis=1)
            score[rows] = probs.max(axis=1)
        else:
            score[rows] = out.reshape(len(rows), -1)[:, 0]
        if not bool(np.isfinite(score[rows]).all()):
            for i in rows[~np.isfinite(score[rows])].tolist():
                errors[i] = OutputNotFinite(_OVERFLOW)
                index[i], score[i] = -1, math.nan
        return Columns(index, score, errors)

    def _one(self, inputs: Sequence[Any]) -> Prediction | RowError:
        try:
            return self.predict_inputs(inputs)
        except RowError as exc:
            return exc

    def _checked(self, row: Sequence[Any]) -> Sequence[Any]:
        if not isinstance(row, (list, tuple)):
            raise WrongShape(f"a row must be a list of {self.n_features} values")
        if len(row) != self.n_features:
            raise WrongShape(f"row has {len(row)} values, the model expects {self.n_features}")
        self._check_slow(row)
        return row

    def _run_batch(self, ready: list[Sequence[Any]] | np.ndarray) -> np.ndarray:
        if self._tensor:
            try:
                x = np.asarray(ready, dtype=self._dtype)
            except (TypeError, ValueError, OverflowError):
                raise InferenceFailed("rows could not be put in one matrix; serving them one by one") from None
            feed = {self.spec.input_name: x}
        else:
            feed = {}
            for j, (name, feature) in enumerate(zip(self.spec.input_names, self.features, strict=True)):
                if feature.type == "categorical":
                    feed[name] = np.array([["" if r[j] is None else r[j]] for r in ready], dtype=object)
                else:
                    feed[name] = np.array([[math.nan if r[j] is None else r[j]] for r in ready], dtype=np.float32)
        try:
            result: np.ndarray = self.session.run([self._output], feed)[0]
        except Exception as exc:  # onnxruntime's errors carry no useful type
            raise InferenceFailed(f"inference failed: {exc}") from None
        return result

    def _answers(self, out: np.ndarray, n: int) -> list[Prediction | RowError]:
        if self._is_classifier:
            probs = out.reshape(n, -1)
            if bool(np.isfinite(probs).all()):
                index = probs.argmax(axis=1).tolist()
                confidence = probs.max(axis=1).tolist()
                classes = self._classes
                return [
                    Prediction(classes[j], j, c, probs[k])
                    for k, (j, c) in enumerate(zip(index, confidence, strict=True))
                ]
            rows: list[Prediction | RowError] = []
            for k in range(n):  # a rare overflow: each row exactly as predict_row decides it
                try:
                    rows.append(self._classified(probs[k]))
                except RowError as exc:
                    rows.append(exc)
            return rows
        answers: list[Prediction | RowError] = []
        for value in out.reshape(n, -1)[:, 0].tolist():
            answers.append(self._regressed(value) if math.isfinite(value) else OutputNotFinite(_OVERFLOW))
        return answers

    # ── health ──────────────────────────────────────────────────────────────────────

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
            if pred.class_index < 0:
                mismatch = not abs(float(pred.label) - float(expected)) <= atol * max(1.0, abs(float(expected)))
            else:
                mismatch = pred.label != expected
            if mismatch:
                raise HealthCheckFailed(f"health sample {i}: model says {pred.label!r}, the host computed {expected!r}")
            if expected_proba is not None and pred.probabilities is not None:
                diff = float(np.max(np.abs(pred.probabilities - np.asarray(expected_proba[i]))))
                if not diff <= atol:
                    raise HealthCheckFailed(f"health sample {i}: probabilities differ by {diff:.2e} > {atol}")
        return len(rows)
