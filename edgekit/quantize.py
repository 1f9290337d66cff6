"""Shrink or speed up a converted model per model family, measured and reported honestly.

Every strategy that fits the graph is tried on the same rows; each candidate is checked (it
loads in onnxruntime, its inputs, outputs and class order are the float model's), measured
(bytes, single-row p50 latency on one onnxruntime thread, accuracy or R²/MAE, label changes
against the float model, each row run on its own as a device runs it) and gated. The
smallest candidate that passes and gains something ships; otherwise the float model ships,
byte for byte, and the report says "no gain". Every candidate's figures and verdict are in
the report (``candidates``).

What was found on skl2onnx graphs (onnxruntime 1.32, onnx 1.23, skl2onnx 1.20), and why the
strategies are what they are:

* **Dynamic int8** (``quantize_dynamic``) rewrites MatMul/Gemm only. The ``ai.onnx.ml``
  operators skl2onnx emits for linear and tree models (LinearClassifier, LinearRegressor,
  Scaler, TreeEnsemble*) come back untouched and a few bytes larger, so a candidate counts only
  if it added quantization operators. MLP: 0.31-0.48x the size (with compaction), accuracy
  unchanged, ~0.5 µs slower per row. Dynamic int8 computes a scale per input tensor, so a row's
  output depends on the batch it is in (digits: 0.9667 accuracy as one batch, 0.9733 row by
  row): rows are measured one at a time, as a device serves them.
* **Static QDQ int8** with calibration rows (a CalibrationDataReader over the rows given,
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
  resolves for it (which also makes the MatMul form of linear models below, a Scaler feeding a
  MatMul directly, calibrate).
  Only MatMul/Gemm are quantized: QDQ around every Add, Softmax and the probability output
  (the quantizer's default) made single rows 1.4-1.5x slower than float (MatMul only: ~1.2x),
  the file larger than MatMul-only, and the probabilities 8-bit steps. ``quant_pre_process``
  also needs ``sympy``, which is not installed. Static int8 passes the gates on every MLP here
  but never wins: dynamic int8 is as small and faster per row. QOperator form (QLinearMatMul,
  uint8 activations) is tried too: as small as dynamic int8, slower per row.
* **MatMul form of linear models**: LinearClassifier/LinearRegressor are rewritten into
  MatMul + Add (+ Sigmoid for LOGISTIC, Softmax for SOFTMAX) with ArgMax + Gather over the
  same class list for the label output — same output names, shapes, dtypes, class order.
  It must match the original float graph to 1e-5 (relative for values above 1: float32 cannot
  hold an absolute 1e-5 on a regression output of ~150) on every float output, as a batch and
  row by row, and on every label, before anything else is done with it; int8 and fp16 then
  apply to its weight initializer. Linear weights are tiny (F x C), so int8 rarely shrinks
  the file: the scales and extra nodes outweigh the savings below a few hundred weights
  (digits, 64 x 10: 0.45x; breast_cancer, 30 x 2: larger). The form itself is ~1 µs slower per
  row than LinearClassifier (5 nodes instead of 1), so alone it never wins over compaction.
* **fp16** with onnxruntime's own ``onnxruntime.transformers.float16`` (``keep_io_types=True``;
  its default block list keeps the ``ai.onnx.ml`` operators in float32; ArgMax is blocked too).
  It also needs typed tensors: without a type on a Scaler's output it inserts no Cast before
  the float16 MatMul and the graph does not load ("Type parameter (T) of Optype (MatMul) bound
  to different types"). MLP: 0.63-0.66x, ~1 µs slower per row, |Δp| ≤ 2e-3; linear: larger or
  too slow. onnxconverter-common's fp16 graphs do not load (FIELD-NOTES); it is not used. Tree
  ensembles are not converted: casting their input to fp16 moves rows across splits.
* **Compact (lossless)**, applied to every candidate and tried alone: internal tensor names
  shortened (skl2onnx and the quantizers use long ones), node names and doc strings dropped,
  tree attributes onnxruntime does not read or that hold only defaults dropped
  (``nodes_hitrates``; ``nodes_missing_value_tracks_true`` when all 0; zero class weights,
  keeping one entry per leaf and per class id), and the repeated float/int attributes written
  in protobuf's packed encoding: onnx.proto (proto2) declares them unpacked, one tag per
  value, and every protobuf parser must accept the packed form (it parses to the same
  message). A compacted candidate must give bit-identical outputs, or compaction is dropped.
  For tree ensembles this is the size win (RF 0.25-0.6x, HGB ~0.62x) with zero label changes
  and bit-identical probabilities; for linear models 0.85-0.9x. The device's onnxruntime
  parses it as it is (checked through the agent's own loader and health check).
* **Tree values rounded to float16-representable float32** (thresholds only where no row given
  changes side; leaf weights to the nearest): the attributes stay float32, so the file does
  not get smaller — only more compressible. Bundles store their members uncompressed (the
  device refuses compressed zip members) and MQTT does not compress, so this gains nothing on
  the wire or on disk; it is tried and reported (``size_zlib``) so that stays visible, and it
  counts as a label-changing strategy (``max_label_changes``).

Gates. Classification: accuracy loss at most ``max_accuracy_loss`` (a fraction, 0.005 =
0.5 pt). Regression: R² loss at most ``max_accuracy_loss``; ``accuracy_*`` then hold R², and a
row's "label" changes when its prediction moves by more than 1 % of the target's standard
deviation on the rows. Label changes (rows whose label differs from the float model's): at
most ``max_label_changes`` when given; by default 0 for tree ensembles and not limited for
the others (where the accuracy gate decides). Lossless strategies (compact, and the MatMul
rewrite at 1e-5) are held to their claim. A candidate must be at least 5 % smaller or 10 %
faster (p50) than the float model, and at most ``max_latency_increase`` slower, to count as a
gain.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.convert import OnnxModel, dedupe_opset_imports
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
ML = "ai.onnx.ml"
TREE_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor"})
LINEAR_OPS = frozenset({"LinearClassifier", "LinearRegressor"})

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

LINEAR_PARITY = 1e-5  # the MatMul form against the original linear operator, every output
MIN_SIZE_GAIN = 0.05  # at least 5 % smaller ...
MIN_LATENCY_GAIN = 0.10  # ... or 10 % faster, to count as a gain
REGRESSION_CHANGE = 0.01  # a regression "label" changes when it moves by > 1 % of std(y)


@dataclass
class Candidate:
    """One strategy tried: what it produced, its figures, and the verdict."""

    strategy: str
    verdict: str  # "chosen" | "passed" | "no gain" | "refused" | "failed" | "not applicable"
    reason: str
    steps: list[str] = field(default_factory=list)
    size: int | None = None
    size_zlib: int | None = None  # informational: bundles are stored uncompressed
    latency_p50_us: float | None = None
    accuracy: float | None = None  # R² for regression
    mae: float | None = None  # regression only
    label_agreement: float | None = None
    label_changes: int | None = None
    max_abs_diff: float | None = None  # largest |Δ| of probabilities (or predictions) vs float
    quantized_nodes: int = 0
    data: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items() if k != "data"}


@dataclass
class QuantizeReport:
    """``*_after`` and ``quantized_nodes`` describe what ships: the chosen candidate if
    ``applied``, else the float model (then they repeat ``*_before``). ``model`` is the
    shipped bytes. ``candidates`` holds every strategy tried, with its own figures.
    For regression, ``accuracy_*`` hold R² (``metric`` says which)."""

    applied: bool
    method: str  # the chosen strategy, or "none"
    quantized_nodes: int
    size_before: int
    size_after: int
    accuracy_before: float
    accuracy_after: float
    label_agreement: float  # shipped model vs float model, on the same rows
    max_accuracy_loss: float
    reason: str
    model: bytes = field(repr=False)
    task: str = "classification"
    metric: str = "accuracy"  # or "r2"
    mae_before: float | None = None
    mae_after: float | None = None
    latency_p50_us_before: float | None = None
    latency_p50_us_after: float | None = None
    size_zlib_before: int | None = None
    size_zlib_after: int | None = None
    label_changes: int = 0
    max_label_changes: int | None = None  # as given
    label_change_limit: int | None = None  # as applied: 0 for tree ensembles unless given
    rows: int = 0
    calibration_rows: int = 0
    family: str = "other"
    strategies: list[str] | None = None  # as restricted by the caller; None = all that fit the family
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items() if k != "model"}


def quantize(
    model: OnnxModel,
    X: np.ndarray,
    y: np.ndarray,
    classes: Sequence[Any] | None,
    max_accuracy_loss: float = 0.005,
    *,
    task: str | None = None,
    calibration: np.ndarray | None = None,
    max_label_changes: int | None = None,
    max_latency_increase: float = 0.5,
    strategies: Sequence[str] | None = None,
    latency_rounds: int = 5,
    latency_rows: int = 100,
) -> QuantizeReport:
    """Try the strategies that fit the model's family on ``X``/``y`` (held-out rows) and keep
    the smallest candidate that passes the gates and gains something.

    ``calibration`` rows feed static int8 calibration and the tree-threshold check (default:
    ``X``; pass training rows when there are any). ``task`` is "classification" or "regression"
    (default: classification when ``classes`` is given, else regression). ``strategies``
    restricts what is tried (names in :data:`STRATEGIES`).
    """
    task = task or ("classification" if classes else "regression")
    if task not in ("classification", "regression"):
        raise QuantizationError(f"unknown task {task!r}", "use 'classification' or 'regression'")
    truth = np.asarray(y)
    if len(truth) == 0 or len(truth) != len(X):
        raise QuantizationError(
            f"need the same, non-zero number of rows and labels to measure accuracy (got {len(X)} and {len(truth)})",
            "pass the holdout rows of the run",
        )
    if max_label_changes is not None and max_label_changes < 0:
        raise QuantizationError(f"max_label_changes is {max_label_changes}", "give 0 or more rows")
    unknown = sorted(set(strategies or ()) - set(STRATEGIES))
    if unknown:
        raise QuantizationError(f"unknown strategy {', '.join(unknown)}", f"choose from: {', '.join(STRATEGIES)}")
    try:
        float_sess = session(model.data)
    except Exception as exc:
        raise QuantizationError(
            f"the float model does not run in onnxruntime: {_describe(exc)}",
            "convert it again with edgekit's converter",
        ) from exc
    out_name = _device_output(model, task)
    feeder = _Feeder(float_sess)
    X = np.asarray(X)
    row_feeds = [feeder(X[i : i + 1]) for i in range(len(X))]
    calib = X if calibration is None else np.asarray(calibration)
    scorer = _Scorer(task, list(classes or []), truth, out_name)
    float_out = _run_rows(float_sess, row_feeds, out_name)
    scorer.check_shape(float_out)
    float_score = scorer.score(float_out)

    float_proto = onnx.load_from_string(model.data)
    family = _family(float_proto)
    wanted = [s for s in FAMILY_STRATEGIES[family] if strategies is None or s in strategies]
    ctx = _Context(
        float_proto=float_proto,
        float_data=model.data,
        feeder=feeder,
        calib=calib,
        eval_rows=X,
        check_feed=feeder(np.concatenate([X[:16], calib[:16]])),
    )
    limit = max_label_changes if max_label_changes is not None else (0 if family == "tree" else None)

    tried: list[tuple[Candidate, ort.InferenceSession | None]] = [_try(name, ctx, float_sess) for name in wanted]
    candidates = [c for c, _ in tried]
    loaded = [(c, s) for c, s in tried if s is not None]
    for cand, sess in loaded:
        outs = _run_rows(sess, row_feeds, out_name)
        _score_candidate(cand, scorer.score(outs), float_score, float_out, outs, scorer, limit, max_accuracy_loss)
    latencies = _latency([float_sess, *(s for _, s in loaded)], row_feeds, out_name, latency_rounds, latency_rows)
    p50_before = latencies[0]
    for (cand, _), p50 in zip(loaded, latencies[1:], strict=True):
        cand.latency_p50_us = p50
        _judge_gain(cand, len(model.data), p50_before, max_latency_increase)
    chosen = _choose(candidates)
    zlib_before = len(zlib.compress(model.data, 9))
    common: dict[str, Any] = {
        "size_before": len(model.data),
        "accuracy_before": float_score.metric,
        "max_accuracy_loss": max_accuracy_loss,
        "task": task,
        "metric": scorer.metric_name,
        "mae_before": float_score.mae,
        "latency_p50_us_before": p50_before,
        "size_zlib_before": zlib_before,
        "max_label_changes": max_label_changes,
        "label_change_limit": limit,
        "rows": len(X),
        "calibration_rows": len(calib),
        "family": family,
        "strategies": list(strategies) if strategies is not None else None,
        "candidates": [c.to_dict() for c in candidates],
    }
    if chosen is None or chosen.data is None:
        return QuantizeReport(
            applied=False,
            method="none",
            quantized_nodes=0,
            size_after=len(model.data),
            accuracy_after=float_score.metric,
            label_agreement=1.0,
            reason=_no_gain_reason(candidates, family),
            model=model.data,
            mae_after=float_score.mae,
            latency_p50_us_after=p50_before,
            size_zlib_after=zlib_before,
            **common,
        )
    return QuantizeReport(
        applied=True,
        method=chosen.strategy,
        quantized_nodes=chosen.quantized_nodes,
        size_after=chosen.size or len(chosen.data),
        accuracy_after=chosen.accuracy if chosen.accuracy is not None else float_score.metric,
        label_agreement=chosen.label_agreement if chosen.label_agreement is not None else 1.0,
        reason=_chosen_reason(chosen, len(model.data), p50_before, float_score.metric, scorer, len(candidates)),
        model=chosen.data,
        mae_after=chosen.mae,
        latency_p50_us_after=chosen.latency_p50_us,
        size_zlib_after=chosen.size_zlib,
        label_changes=chosen.label_changes or 0,
        **common,
    )


# --- measuring ---------------------------------------------------------------------------


@dataclass
class _Score:
    metric: float  # accuracy, or R²
    mae: float | None
    labels: np.ndarray  # class indices, or predictions


class _Scorer:
    def __init__(self, task: str, classes: list[Any], truth: np.ndarray, out_name: str) -> None:
        self.task = task
        self.classes = classes
        self.out_name = out_name
        self.metric_name = "accuracy" if task == "classification" else "r2"
        if task == "classification":
            self.truth_list = truth.tolist()
        else:
            self.truth = truth.astype(np.float64)
            spread = float(np.std(self.truth))
            self.change_tol = REGRESSION_CHANGE * (spread if spread > 0 else 1.0)

    def check_shape(self, out: np.ndarray) -> None:
        if self.task == "classification" and (out.ndim != 2 or out.shape[1] != len(self.classes)):
            raise QuantizationError(
                f"the model gives {out.shape[-1]} probability columns for {len(self.classes)} classes",
                "pass the class list of the run that produced the model",
            )
        if self.task == "regression" and out.size != out.shape[0]:
            raise QuantizationError(
                f"the regression output {self.out_name!r} has shape {list(out.shape)}, not one value per row",
                "pass task='classification' and the class list for a classifier",
            )

    def score(self, out: np.ndarray) -> _Score:
        if self.task == "classification":
            idx = np.argmax(out, axis=1)
            predicted = [self.classes[i] for i in idx.tolist()]
            correct = sum(1 for p, t in zip(predicted, self.truth_list, strict=True) if p == t)
            return _Score(correct / len(self.truth_list), None, idx)
        pred = out.reshape(-1).astype(np.float64)
        resid = pred - self.truth
        sst = float(np.sum((self.truth - self.truth.mean()) ** 2))
        r2 = 1.0 - float(np.sum(resid**2)) / sst if sst > 0 else 0.0
        return _Score(r2, float(np.mean(np.abs(resid))), pred)

    def changes(self, a: _Score, b: _Score) -> int:
        if self.task == "classification":
            return int(np.sum(a.labels != b.labels))
        return int(np.sum(np.abs(a.labels - b.labels) > self.change_tol))


class _Feeder:
    """Rows → the float model's inputs: one [N, F] tensor, or one [N, 1] column per input."""

    _DTYPES: ClassVar[dict[str, Any]] = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(string)": object,
    }

    def __init__(self, sess: ort.InferenceSession) -> None:
        self.inputs = [(i.name, self._DTYPES.get(i.type)) for i in sess.get_inputs()]
        for (name, dtype), i in zip(self.inputs, sess.get_inputs(), strict=True):
            if dtype is None:
                raise QuantizationError(f"input {name!r} has type {i.type}, which rows cannot be fed as")

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1:
            name, dtype = self.inputs[0]
            return {name: np.ascontiguousarray(X, dtype=dtype)}
        feed = {}
        for j, (name, dtype) in enumerate(self.inputs):
            col = np.asarray(X)[:, j : j + 1]
            feed[name] = col.astype(str).astype(object) if dtype is object else np.ascontiguousarray(col, dtype=dtype)
        return feed


def _device_output(model: OnnxModel, task: str) -> str:
    """The output a device reads: probabilities for a classifier, the prediction otherwise."""
    proba = getattr(model, "proba_output", None)
    if task == "classification":
        if not proba:
            raise QuantizationError("a classifier needs a probability output", "pass the run's model outputs")
        return str(proba)
    return str(model.label_output)


def _run_rows(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], out_name: str) -> np.ndarray:
    """One row at a time, as a device serves (dynamic int8 scales per input tensor)."""
    outs = [sess.run([out_name], feed)[0] for feed in feeds]
    return np.concatenate([np.asarray(o).reshape(1, -1) for o in outs]).astype(np.float64)


def _latency(
    sessions: list[ort.InferenceSession],
    feeds: list[dict[str, np.ndarray]],
    out_name: str,
    rounds: int,
    rows: int,
) -> list[float]:
    """Single-row p50 in µs per session: all sessions interleaved row by row, the order
    rotating each row (none always first after a cache-cold gap), a warm-up pass not timed."""
    feeds = feeds[: max(1, rows)]
    samples: list[list[int]] = [[] for _ in sessions]
    for feed in feeds[:10]:
        for sess in sessions:
            sess.run([out_name], feed)
    clock = time.perf_counter_ns
    for r in range(max(1, rounds)):
        for i, feed in enumerate(feeds):
            shift = (r + i) % len(sessions)
            for k in range(len(sessions)):
                j = (k + shift) % len(sessions)
                run = sessions[j].run
                t0 = clock()
                run([out_name], feed)
                samples[j].append(clock() - t0)
    return [round(statistics.median(s) / 1000.0, 3) for s in samples]


def _score_candidate(
    cand: Candidate,
    score: _Score,
    float_score: _Score,
    float_out: np.ndarray,
    out: np.ndarray,
    scorer: _Scorer,
    limit: int | None,
    max_accuracy_loss: float,
) -> None:
    n = len(score.labels)
    cand.accuracy = score.metric
    cand.mae = score.mae
    cand.label_changes = scorer.changes(score, float_score)
    cand.label_agreement = 1.0 - cand.label_changes / n
    cand.max_abs_diff = float(np.max(np.abs(out - float_out))) if out.size else 0.0
    if cand.verdict != "pending":
        return
    loss = float_score.metric - score.metric
    what = "accuracy" if scorer.task == "classification" else "R²"
    if cand.strategy == "compact" and cand.max_abs_diff != 0.0:
        cand.verdict, cand.reason = "refused", f"not lossless: outputs moved by up to {cand.max_abs_diff:.3g}"
    elif loss > max_accuracy_loss:
        cand.verdict = "refused"
        cand.reason = (
            f"{what} loss {loss * 100:.2f} pt is above the {max_accuracy_loss * 100:.1f} pt gate "
            f"({float_score.metric:.4f} → {score.metric:.4f})"
        )
    elif limit is not None and cand.label_changes > limit:
        cand.verdict = "refused"
        cand.reason = f"{cand.label_changes} of {n} labels changed; at most {limit} allowed" + (
            "" if limit else " (trees keep every label unless --max-label-changes says otherwise)"
        )


def _judge_gain(cand: Candidate, size_before: int, p50_before: float, max_latency_increase: float) -> None:
    if cand.verdict != "pending" or cand.size is None or cand.latency_p50_us is None:
        return
    size_ratio = cand.size / size_before
    lat_ratio = cand.latency_p50_us / p50_before if p50_before > 0 else 1.0
    figures = f"{size_ratio:.2f}× the size, p50 {p50_before:.1f} → {cand.latency_p50_us:.1f} µs"
    if lat_ratio > 1.0 + max_latency_increase:
        cand.verdict = "refused"
        cand.reason = f"too slow: {figures} (at most +{max_latency_increase:.0%} allowed)"
    elif size_ratio <= 1.0 - MIN_SIZE_GAIN or lat_ratio <= 1.0 - MIN_LATENCY_GAIN:
        cand.verdict, cand.reason = "passed", figures
    else:
        cand.verdict = "no gain"
        cand.reason = f"{figures}: under {MIN_SIZE_GAIN:.0%} smaller and under {MIN_LATENCY_GAIN:.0%} faster"
        if cand.size_zlib is not None and cand.strategy == "tree-f16-values":
            cand.reason += (
                f"; it would only help a compressed bundle (zlib {cand.size_zlib} bytes), and bundles "
                "are stored uncompressed"
            )


def _chosen_reason(
    c: Candidate, size_before: int, p50_before: float, metric_before: float, scorer: _Scorer, tried: int
) -> str:
    what = "accuracy" if scorer.task == "classification" else "R²"
    return (
        f"{c.strategy}: {(c.size or 0) / size_before:.2f}× the size ({size_before} → {c.size} bytes), "
        f"p50 {p50_before:.1f} → {c.latency_p50_us:.1f} µs, {what} {metric_before:.4f} → {c.accuracy:.4f}, "
        f"{c.label_changes} label change(s); best of {tried} strategies tried"
    )


def _no_gain_reason(candidates: list[Candidate], family: str) -> str:
    if not candidates:
        return (
            f"no gain: none of the requested strategies applies to a {family} model "
            f"(it takes: {', '.join(FAMILY_STRATEGIES[family])}); shipping the float model"
        )
    parts = [f"{c.strategy}: {c.verdict} ({c.reason})" for c in candidates]
    head = "no gain: no strategy passed the gates with a gain; shipping the float model"
    if family == "tree":
        head += " (int8 and fp16 do not apply: onnxruntime's quantizers skip TreeEnsemble operators)"
    return head + "; " + "; ".join(parts)


# --- strategies ----------------------------------------------------------------------------


@dataclass
class _Context:
    float_proto: onnx.ModelProto
    float_data: bytes
    feeder: _Feeder
    calib: np.ndarray
    eval_rows: np.ndarray
    check_feed: dict[str, np.ndarray]


class _NotApplicable(Exception):
    pass


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


def _choose(candidates: list[Candidate]) -> Candidate | None:
    """The smallest passing candidate of the most faithful tier, where a less faithful tier
    (exact → the MatMul rewrite, equal to 1e-5 → lossy) wins only by being 5 % smaller still:
    no output is traded for nothing. (Not "or faster": candidates of one structure differ in
    p50 by noise alone, and the lossy variants here are never faster than their base.)"""
    passing = [c for c in candidates if c.verdict == "passed"]
    best: Candidate | None = None
    for tier in _TIERS:
        here = min((c for c in passing if _tier(c) == tier), key=_rank, default=None)
        if here is not None and (best is None or (here.size or 0) <= (1.0 - MIN_SIZE_GAIN) * (best.size or 0)):
            best = here
    for c in passing:
        if c is best or best is None or _tier(c) <= _tier(best):
            continue
        c.verdict = "no gain"
        c.reason += f"; not {MIN_SIZE_GAIN:.0%} smaller than {best.strategy} ({best.size} bytes), which changes " + (
            "no output" if best.strategy == "compact" else "no output by more than 1e-5"
        )
        if c.strategy == "tree-f16-values":
            c.reason += f"; it only makes the file more compressible (zlib {c.size_zlib} vs {best.size_zlib} bytes)"
    if best is not None:
        best.verdict = "chosen"
        for c in passing:
            if c.verdict == "passed":
                c.reason += f"; passed, but {best.strategy} is chosen ({best.size} bytes)"
    return best


_TIERS = (0, 1, 2)


def _tier(c: Candidate) -> int:
    return {"compact": 0, "linear-matmul": 1}.get(c.strategy, 2)


def _rank(c: Candidate) -> tuple[int, float]:
    return (c.size or 0, c.latency_p50_us or 0.0)


def _family(proto: onnx.ModelProto) -> str:
    ops = {n.op_type for n in proto.graph.node}
    if ops & TREE_OPS:
        return "tree"
    if ops & LINEAR_OPS:
        return "linear"
    if ops & {"MatMul", "Gemm"}:
        return "mlp"
    return "other"


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


@contextlib.contextmanager
def _files(proto: onnx.ModelProto) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "out.onnx")
        onnx.save_model(proto, str(src))
        yield src, dst


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


# --- the MatMul form of linear models -------------------------------------------------------


def linear_to_matmul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each LinearClassifier/LinearRegressor node with standard operators computing
    the same outputs under the same names (returns a new model; raises _NotApplicable)."""
    out = copy.deepcopy(proto)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    found = 0
    for k, node in enumerate(graph.node):
        if node.domain != ML or node.op_type not in LINEAR_OPS:
            nodes.append(node)
            continue
        found += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        prefix = f"lin{k}_"
        if node.op_type == "LinearClassifier":
            new_nodes, inits = _linear_classifier(node, attrs, prefix)
        else:
            new_nodes, inits = _linear_regressor(node, attrs, prefix)
        nodes.extend(new_nodes)
        graph.initializer.extend(inits)
    if not found:
        raise _NotApplicable("no LinearClassifier/LinearRegressor node")
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _weights(attrs: dict[str, Any], rows: int, prefix: str) -> tuple[TensorProto, TensorProto, int]:
    coef = np.asarray(attrs["coefficients"], dtype=np.float32)
    if rows <= 0 or coef.size % rows:
        raise _NotApplicable(f"{coef.size} coefficients do not split into {rows} rows")
    w = coef.reshape(rows, -1).T.copy()  # [F, rows]
    b = np.asarray(attrs.get("intercepts") or [0.0] * rows, dtype=np.float32)
    if b.size != rows:
        raise _NotApplicable(f"{b.size} intercepts for {rows} rows")
    return numpy_helper.from_array(w, prefix + "W"), numpy_helper.from_array(b, prefix + "B"), w.shape[0]


def _linear_classifier(
    node: onnx.NodeProto, attrs: dict[str, Any], prefix: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    if "classlabels_ints" in attrs:
        labels = numpy_helper.from_array(np.asarray(attrs["classlabels_ints"], dtype=np.int64), prefix + "classes")
        n_labels = len(attrs["classlabels_ints"])
    elif "classlabels_strings" in attrs:
        strings = [s.decode() if isinstance(s, bytes) else str(s) for s in attrs["classlabels_strings"]]
        labels = numpy_helper.from_array(np.asarray(strings, dtype=object), prefix + "classes")
        n_labels = len(strings)
    else:
        raise _NotApplicable("LinearClassifier without class labels")
    n_coef = len(attrs.get("coefficients", []))
    intercepts = attrs.get("intercepts") or []
    rows = len(intercepts) if intercepts else n_labels
    if rows != n_labels or n_labels < 2:
        # One coefficient row for two classes is onnxruntime's special binary layout.
        raise _NotApplicable(f"{rows} coefficient rows for {n_labels} classes: only one row per class is rewritten")
    transform = _text(attrs.get("post_transform", b"NONE"))
    if transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise _NotApplicable(f"post_transform {transform} is not rewritten")
    w, b, _ = _weights(attrs, rows, prefix)
    if n_coef != w.dims[0] * rows:
        raise _NotApplicable("coefficients do not match the class count")
    label_out = node.output[0]
    score_out = node.output[1] if len(node.output) > 1 and node.output[1] else prefix + "unused_scores"
    raw = prefix + "raw" if transform != "NONE" else score_out
    nodes = [
        helper.make_node("MatMul", [node.input[0], w.name], [prefix + "mm"]),
        helper.make_node("Add", [prefix + "mm", b.name], [raw]),
    ]
    if transform == "LOGISTIC":
        nodes.append(helper.make_node("Sigmoid", [raw], [score_out]))
    elif transform == "SOFTMAX":
        nodes.append(helper.make_node("Softmax", [raw], [score_out], axis=1))
    if label_out:
        # onnxruntime picks the label from the raw scores, the first of equal maxima.
        nodes.append(helper.make_node("ArgMax", [raw], [prefix + "idx"], axis=1, keepdims=0))
        nodes.append(helper.make_node("Gather", [labels.name, prefix + "idx"], [label_out], axis=0))
    return nodes, [w, b, labels]


def _linear_regressor(
    node: onnx.NodeProto, attrs: dict[str, Any], prefix: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    transform = _text(attrs.get("post_transform", b"NONE"))
    if transform != "NONE":
        raise _NotApplicable(f"post_transform {transform} is not rewritten")
    targets = int(attrs.get("targets", 1))
    w, b, _ = _weights(attrs, targets, prefix)
    nodes = [
        helper.make_node("MatMul", [node.input[0], w.name], [prefix + "mm"]),
        helper.make_node("Add", [prefix + "mm", b.name], [node.output[0]]),
    ]
    return nodes, [w, b]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def linear_parity(original: bytes, rewritten: bytes, feed: dict[str, np.ndarray]) -> tuple[float, int]:
    """(max |Δ| / max(1, |value|) over every float output, label mismatches) between two
    models, on the rows as one batch and on each of the first 32 rows alone. Relative above
    1: an absolute 1e-5 is below float32's resolution for values above ~100 (regression)."""
    a, b = session(original), session(rewritten)
    n = len(next(iter(feed.values())))
    batches = [feed] + [{k: v[i : i + 1] for k, v in feed.items()} for i in range(min(n, 32))]
    worst, mismatches = 0.0, 0
    for rows in batches:
        for x, z in zip(a.run(None, rows), b.run(None, rows), strict=True):
            x, z = np.asarray(x), np.asarray(z)
            if x.shape != z.shape or x.dtype != z.dtype:
                return math.inf, len(x)
            if np.issubdtype(x.dtype, np.floating):
                x64 = x.astype(np.float64)
                rel = np.abs(x64 - z) / np.maximum(1.0, np.abs(x64))
                worst = max(worst, float(np.max(rel)) if rel.size else 0.0)
            elif rows is feed:
                mismatches += int(np.sum(x != z))
    return worst, mismatches


def _require_parity(ctx: _Context, proto: onnx.ModelProto) -> None:
    feed = ctx.feeder(np.concatenate([ctx.eval_rows, ctx.calib]))
    worst, mismatches = linear_parity(ctx.float_data, proto.SerializeToString(), feed)
    if worst > LINEAR_PARITY or mismatches:
        raise RuntimeError(
            f"the MatMul form differs from the linear operator: max |Δ| {worst:.3g} "
            f"(tolerance {LINEAR_PARITY:g}, relative above 1), {mismatches} label(s) differ"
        )


# --- tree values rounded to float16-representable float32 -----------------------------------


def _round_tree_values(proto: onnx.ModelProto, ctx: _Context) -> onnx.ModelProto:
    """Thresholds moved to a float16-representable value only where no row (calibration and
    evaluation rows) changes side; leaf weights rounded to the nearest float16 value."""
    trees = [n for n in proto.graph.node if n.domain == ML and n.op_type in TREE_OPS]
    if not trees:
        raise _NotApplicable("no TreeEnsemble node")
    values = _tensor_values(proto, [n.input[0] for n in trees], ctx.feeder(np.concatenate([ctx.eval_rows, ctx.calib])))
    for node in trees:
        x = values[node.input[0]]
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" in attrs and "nodes_featureids" in attrs and "nodes_modes" in attrs:
            thresholds = list(attrs["nodes_values"].floats)
            features = list(attrs["nodes_featureids"].ints)
            modes = [_text(m) for m in attrs["nodes_modes"].strings]
            for i, (t, f, mode) in enumerate(zip(thresholds, features, modes, strict=True)):
                if mode in ("BRANCH_LEQ", "BRANCH_LT"):
                    thresholds[i] = _safe_threshold(t, x[:, f], mode == "BRANCH_LEQ")
            del attrs["nodes_values"].floats[:]
            attrs["nodes_values"].floats.extend(thresholds)
        for key in ("class_weights", "target_weights"):
            if key in attrs:
                w = np.asarray(attrs[key].floats, dtype=np.float32)
                del attrs[key].floats[:]
                attrs[key].floats.extend(_to_f16_grid(w).tolist())
    return proto


def _to_f16_grid(w: np.ndarray) -> np.ndarray:
    out = w.astype(np.float16).astype(np.float32)
    return np.where(np.isfinite(out) & (np.abs(w) < 65504), out, w)


def _safe_threshold(t: float, column: np.ndarray, leq: bool) -> float:
    """A float16-representable threshold that sends every row of ``column`` the same way as ``t``."""
    t32 = np.float32(t)
    if not abs(t32) < 65504:
        return float(t32)
    left = column <= t32 if leq else column < t32
    lo = column[left].max(initial=-np.inf)
    hi = column[~left].min(initial=np.inf)
    h = np.float16(t32)
    for cand in (h, np.nextafter(h, np.float16(-np.inf)), np.nextafter(h, np.float16(np.inf))):
        c = np.float32(cand)
        if math.isfinite(c) and ((lo <= c < hi) if leq else (lo < c <= hi)):
            return float(c)
    return float(t32)


def _tensor_values(proto: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph_inputs = {i.name for i in proto.graph.input}
    wanted = [n for n in dict.fromkeys(names) if n not in graph_inputs]
    out = {n: np.asarray(v) for n, v in feed.items() if n in names}
    if wanted:
        probe = copy.deepcopy(proto)
        for n in wanted:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))
        got = session(probe.SerializeToString()).run(wanted, feed)
        out.update({n: np.asarray(v) for n, v in zip(wanted, got, strict=True)})
    return {n: v.reshape(len(v), -1).astype(np.float32) for n, v in out.items()}


# --- compaction (lossless) -------------------------------------------------------------------


class _NotLossless(Exception):
    pass


def _compact_verified(
    proto: onnx.ModelProto, data: bytes, sess: ort.InferenceSession, ctx: _Context, beat: int | None = None
) -> tuple[bytes, ort.InferenceSession]:
    """The compacted bytes and their session, if they are smaller (than ``beat``, default
    ``data``) and give bit-identical outputs on the rows; else _NotLossless."""
    compacted = packed_bytes(compact_proto(proto))
    if len(compacted) >= (len(data) if beat is None else beat):
        raise _NotLossless
    new = session(compacted)
    feed = ctx.feeder(np.concatenate([ctx.eval_rows[:64], ctx.calib[:64]]))
    for a, b in zip(sess.run(None, feed), new.run(None, feed), strict=True):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise _NotLossless
    return compacted, new


def compact_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Short internal names, no node names or doc strings, no unread tree attributes."""
    out = copy.deepcopy(proto)
    graph = out.graph
    out.doc_string = ""
    graph.doc_string = ""
    del graph.value_info[:]
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        if node.domain == ML and node.op_type in TREE_OPS:
            _drop_tree_defaults(node)
    if not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    ):
        _rename_internal(graph)
    return out


def _drop_tree_defaults(node: onnx.NodeProto) -> None:
    attrs = {a.name: a for a in node.attribute}
    drop = {"nodes_hitrates"}  # "used for performance and may be omitted"; onnxruntime does not read it
    tracks = attrs.get("nodes_missing_value_tracks_true")
    if tracks is not None and not any(tracks.ints):
        drop.add("nodes_missing_value_tracks_true")  # all 0 is the default
    keep = [a for a in node.attribute if a.name not in drop]
    del node.attribute[:]
    node.attribute.extend(keep)
    prefix = "class_" if node.op_type == "TreeEnsembleClassifier" else "target_"
    attrs = {a.name: a for a in node.attribute}
    names = [prefix + s for s in ("treeids", "nodeids", "ids", "weights")]
    if not all(n in attrs for n in names):
        return
    tree, nid, cid = (list(attrs[n].ints) for n in names[:3])
    weights = list(attrs[names[3]].floats)
    # Zero weights add nothing to a sum; keep one entry per leaf and per class id, so that
    # every leaf still exists and onnxruntime sees the same set of classes.
    seen_leaf: set[tuple[int, int]] = set()
    seen_class: set[int] = set()
    keep_idx = []
    for i in sorted(range(len(weights)), key=lambda i: weights[i] == 0.0):
        leaf = (tree[i], nid[i])
        if weights[i] != 0.0 or leaf not in seen_leaf or cid[i] not in seen_class:
            keep_idx.append(i)
            seen_leaf.add(leaf)
            seen_class.add(cid[i])
    keep_idx.sort()
    if len(keep_idx) == len(weights):
        return
    for n, src in zip(names, (tree, nid, cid), strict=False):
        del attrs[n].ints[:]
        attrs[n].ints.extend([src[i] for i in keep_idx])
    del attrs[names[3]].floats[:]
    attrs[names[3]].floats.extend([weights[i] for i in keep_idx])


def _rename_internal(graph: onnx.GraphProto) -> None:
    keep = {v.name for v in [*graph.input, *graph.output]} | {""}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            n, s = len(mapping), ""
            while True:
                n, r = divmod(n, 36)
                s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
                if n == 0:
                    break
            mapping[name] = "_" + s
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]


def packed_bytes(proto: onnx.ModelProto) -> bytes:
    """``proto`` serialized with its repeated float/int attributes in packed encoding.

    onnx.proto is proto2 and declares ``AttributeProto.floats``/``ints`` unpacked: a tag byte
    before every value. Protobuf parsers must accept the packed form for any repeated scalar
    field, and it parses to the same message (checked here): a float costs 4 bytes instead of
    5, a small int 1 instead of 2.
    """
    data = proto.SerializeToString()
    packed = _pack(data, "model")
    if onnx.load_from_string(packed) != proto:
        raise _NotLossless
    return packed


_SUBMESSAGES = {"model": {7: "graph"}, "graph": {1: "node"}, "node": {5: "attr"}, "attr": {6: "graph", 11: "graph"}}


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pack(data: bytes, kind: str) -> bytes:
    pieces: list[bytes | int] = []
    packed: dict[int, bytearray] = {}
    i = 0
    while i < len(data):
        start = i
        tag, i = _read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        payload_at = i
        if wire == 0:
            _, i = _read_varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, payload_at = _read_varint(data, i)
            i = payload_at + length
        else:
            raise _NotLossless  # groups: not in onnx.proto
        if kind == "attr" and (number, wire) in ((7, 5), (8, 0)):
            if number not in packed:
                packed[number] = bytearray()
                pieces.append(number)
            packed[number] += data[payload_at:i]
            continue
        sub = _SUBMESSAGES[kind].get(number)
        if sub is not None and wire == 2:
            inner = _pack(data[payload_at:i], sub)
            pieces.append(_varint(tag) + _varint(len(inner)) + inner)
        else:
            pieces.append(data[start:i])
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, int):
            out += _varint((piece << 3) | 2) + _varint(len(packed[piece])) + packed[piece]
        else:
            out += piece
    return bytes(out)


# --- the output contract ---------------------------------------------------------------------


def contract_problems(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    before_sess: ort.InferenceSession,
    after_sess: ort.InferenceSession,
    feed: dict[str, np.ndarray],
) -> list[str]:
    """What a device would see differently (docs/contract-model-spec.md): input names, types
    and shapes; output names, order, types and shapes; the default opset; and, on real rows,
    each output's dtype and shape and the label each class index maps to (class order)."""
    problems = []

    def sig(args: list[Any]) -> list[tuple[str, str, list[Any]]]:
        return [(a.name, a.type, list(a.shape)) for a in args]

    if sig(before_sess.get_inputs()) != sig(after_sess.get_inputs()):
        problems.append(f"inputs {sig(after_sess.get_inputs())} != {sig(before_sess.get_inputs())}")
    if sig(before_sess.get_outputs()) != sig(after_sess.get_outputs()):
        problems.append(f"outputs {sig(after_sess.get_outputs())} != {sig(before_sess.get_outputs())}")
    if _default_opset(before) != _default_opset(after):
        problems.append(f"opset {_default_opset(after)} != {_default_opset(before)}")
    if problems:
        return problems
    single = {k: v[:1] for k, v in feed.items()}
    for rows in (feed, single):
        a = before_sess.run(None, rows)
        b = after_sess.run(None, rows)
        for out, x, z in zip(before_sess.get_outputs(), a, b, strict=True):
            x, z = np.asarray(x), np.asarray(z)
            if x.dtype != z.dtype or x.shape != z.shape:
                problems.append(f"output {out.name!r} is {z.dtype}{list(z.shape)}, was {x.dtype}{list(x.shape)}")
        problems.extend(_class_order_problems(a, b))
    return list(dict.fromkeys(problems))


def _class_order_problems(a: list[Any], b: list[Any]) -> list[str]:
    """Where a label output and a [N, C] probability output exist: rows whose arg-max agrees
    must carry the same label (a permuted class list would not)."""
    labels = [
        i for i, x in enumerate(a) if np.asarray(x).ndim == 1 and not np.issubdtype(np.asarray(x).dtype, np.floating)
    ]
    probas = [i for i, x in enumerate(a) if np.asarray(x).ndim == 2 and np.issubdtype(np.asarray(x).dtype, np.floating)]
    if not labels or not probas:
        return []
    la, lb = np.asarray(a[labels[0]]), np.asarray(b[labels[0]])
    pa, pb = np.asarray(a[probas[0]]), np.asarray(b[probas[0]])
    same = np.argmax(pa, axis=1) == np.argmax(pb, axis=1)
    if np.any(la[same] != lb[same]):
        return ["labels differ on rows with the same arg-max: the class order changed"]
    return []


def _default_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


# --- small helpers -----------------------------------------------------------------------------


def session(data: bytes) -> ort.InferenceSession:
    """One thread, as a device runs (and as :func:`edgekit.convert.session`), without
    onnxruntime's warnings on stderr (graph clean-ups of the quantizers' output)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_number(value.item())
    return value


def _describe(exc: Exception) -> str:
    """One line: reports and errors end up in one-line CLI messages and JSON records."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _count_ops(proto: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in proto.graph.node)


def _count_quantized(proto: onnx.ModelProto) -> int:
    return sum(n for op, n in _count_ops(proto).items() if op in QUANTIZED_OPS or op.startswith("QLinear"))


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


__all__ = [
    "FAMILY_STRATEGIES",
    "STRATEGIES",
    "Candidate",
    "QuantizeReport",
    "annotate_types",
    "compact_proto",
    "contract_problems",
    "linear_parity",
    "linear_to_matmul",
    "packed_bytes",
    "quantize",
]
