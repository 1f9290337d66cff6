"""Which model ships. Every strategy that fits the graph is tried on the same rows, measured
and gated; the smallest candidate that passes and gains something ships, and no output is
traded for nothing (:func:`_choose`). Otherwise the float model ships, byte for byte, and the
report says "no gain" and why."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import QuantizationError
from ..onnx_model import OnnxModel
from ..progress import SILENT, Progress
from .context import _Context
from .gate import MIN_LATENCY_GAIN, MIN_SIZE_GAIN, _judge_gain, _score_candidate
from .graph import session
from .measure import _device_output, _Feeder, _latency, _run_rows, _Scorer
from .report import Candidate, QuantizeReport, _describe
from .strategies import FAMILY_STRATEGIES, STRATEGIES, _family, _try


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
    progress: Progress = SILENT,
) -> QuantizeReport:
    """Try the strategies that fit the model's family on ``X``/``y`` (held-out rows) and keep
    the smallest candidate that passes the gates and gains something.

    ``calibration`` rows feed static int8 calibration and the tree-threshold check (default:
    ``X``; pass training rows when there are any). ``task`` is "classification" or "regression"
    (default: classification when ``classes`` is given, else regression). ``strategies``
    restricts what is tried (names in :data:`STRATEGIES`). ``progress`` shows each strategy
    as it is tried, then the timing run.
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

    tried: list[tuple[Candidate, ort.InferenceSession | None]] = []
    with progress.task(f"quantizing a {family} model", len(wanted) + 1, unit="step") as steps:
        for name in wanted:
            cand, sess = _try(name, ctx, float_sess)
            if sess is not None:
                outs = _run_rows(sess, row_feeds, out_name)
                _score_candidate(
                    cand, scorer.score(outs), float_score, float_out, outs, scorer, limit, max_accuracy_loss
                )
            tried.append((cand, sess))
            steps.advance(1, f"{name}: {cand.verdict if cand.verdict != 'pending' else 'built'}")
        candidates = [c for c, _ in tried]
        loaded = [(c, s) for c, s in tried if s is not None]
        latencies, blocks = _latency(
            [float_sess, *(s for _, s in loaded)], row_feeds, out_name, latency_rounds, latency_rows
        )
        steps.advance(1, f"timed {len(loaded) + 1} models over {latency_rounds} rounds")
    p50_before = latencies[0]
    for (cand, _), p50, cand_blocks in zip(loaded, latencies[1:], blocks[1:], strict=True):
        cand.latency_p50_us = p50
        steady = all(c <= (1.0 - MIN_LATENCY_GAIN) * f for c, f in zip(cand_blocks, blocks[0], strict=True))
        _judge_gain(cand, len(model.data), p50_before, max_latency_increase, steadily_faster=steady)
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
