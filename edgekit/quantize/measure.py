"""The figures the gates judge, measured on the same rows for the float model and every
candidate: accuracy or R²/MAE, label changes against the float model, and single-row p50
latency on one onnxruntime thread. Each row runs on its own, as a device serves it: dynamic
int8 computes a scale per input tensor, so a row's output depends on the batch it is in
(:mod:`.int8`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from ..errors import QuantizationError
from ..onnx_model import OnnxModel

REGRESSION_CHANGE = 0.01  # a regression "label" changes when it moves by > 1 % of std(y)


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


LATENCY_BLOCKS = 5  # stretches of a latency run that must all agree on a speed-up


def _latency(
    sessions: list[ort.InferenceSession],
    feeds: list[dict[str, np.ndarray]],
    out_name: str,
    rounds: int,
    rows: int,
) -> tuple[list[float], list[list[float]]]:
    """Single-row p50 in µs per session: all sessions interleaved row by row, the order
    rotating each row (none always first after a cache-cold gap), a warm-up pass not timed.

    Also the medians of LATENCY_BLOCKS consecutive stretches of the run, per session: a
    speed-up counts only when it holds in every stretch, since on a shared machine one
    session's p50 moves by 30 % or more between calls by noise alone."""
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
    p50 = [round(statistics.median(s) / 1000.0, 3) for s in samples]
    size = max(1, -(-len(samples[0]) // LATENCY_BLOCKS))
    blocks = [[statistics.median(s[i : i + size]) / 1000.0 for i in range(0, len(s), size)] for s in samples]
    return p50, blocks
