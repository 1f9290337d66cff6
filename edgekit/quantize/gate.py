"""Each candidate's verdict against the float model.

Gates. Classification: accuracy loss at most ``max_accuracy_loss`` (a fraction, 0.005 =
0.5 pt). Regression: R² loss at most ``max_accuracy_loss``; ``accuracy_*`` then hold R², and a
row's "label" changes when its prediction moves by more than 1 % of the target's standard
deviation on the rows. Label changes (rows whose label differs from the float model's): at
most ``max_label_changes`` when given; by default 0 for tree ensembles and not limited for
the others (where the accuracy gate decides). Lossless strategies (compact, and the MatMul
rewrite at 1e-5) are held to their claim. A candidate must be at least 5 % smaller or 10 %
faster (p50, and in every stretch of the timing run) than the float model, and at most
``max_latency_increase`` slower, to count as a gain.
"""

from __future__ import annotations

import numpy as np

from .measure import _Score, _Scorer
from .report import Candidate

MIN_SIZE_GAIN = 0.05  # at least 5 % smaller ...

MIN_LATENCY_GAIN = 0.10  # ... or 10 % faster, to count as a gain


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


def _judge_gain(
    cand: Candidate, size_before: int, p50_before: float, max_latency_increase: float, *, steadily_faster: bool
) -> None:
    """``steadily_faster``: the candidate beat the float model by MIN_LATENCY_GAIN in every
    stretch of the latency run, not only in the overall median (which noise alone can move)."""
    if cand.verdict != "pending" or cand.size is None or cand.latency_p50_us is None:
        return
    size_ratio = cand.size / size_before
    lat_ratio = cand.latency_p50_us / p50_before if p50_before > 0 else 1.0
    figures = f"{size_ratio:.2f}× the size, p50 {p50_before:.1f} → {cand.latency_p50_us:.1f} µs"
    if lat_ratio > 1.0 + max_latency_increase:
        cand.verdict = "refused"
        cand.reason = f"too slow: {figures} (at most +{max_latency_increase:.0%} allowed)"
    elif size_ratio <= 1.0 - MIN_SIZE_GAIN or (lat_ratio <= 1.0 - MIN_LATENCY_GAIN and steadily_faster):
        cand.verdict, cand.reason = "passed", figures
    else:
        cand.verdict = "no gain"
        cand.reason = f"{figures}: under {MIN_SIZE_GAIN:.0%} smaller and under {MIN_LATENCY_GAIN:.0%} faster"
        if cand.size_zlib is not None and cand.strategy == "tree-f16-values":
            cand.reason += (
                f"; it would only help a compressed bundle (zlib {cand.size_zlib} bytes), and bundles "
                "are stored uncompressed"
            )
