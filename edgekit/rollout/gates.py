"""The rollout gates: pure functions from what the store knows to a decision with evidence.

A phase's devices (the *new* side, running the new version) are compared with the group's
devices still on the previous version (the *old* side) **over the same period**: whatever
the field does to both (a busy hour, a sensor fault upstream, seasonal drift) cancels out,
and what is left is the version. Cohorts are random (:mod:`edgekit.rollout.plan`), so both
sides see the same inputs, and the ML gates can ask more than "did anything break":

* ``failures``: deployments that failed, trials the device reverted, devices not done in
  time — as AWS IoT Jobs' abort criteria, a share of the devices deployed to;
* ``error_rate``, ``latency``: rows refused and p99 latency against the old side's;
* ``drift``: input drift the new side sees against its own reference and the old side does
  not see against its own (the new model was trained on data unlike the field's);
* ``prediction_shift``: the new side's mix of predicted classes against the old side's, a
  two-sample test on the class counts (same inputs, so a different mix is the model);
* ``low_confidence``: the new side's low-confidence rate against the old side's.

Each gate says ``pass``, ``fail`` or ``no_data`` (not enough rows or heartbeats yet: a gate
that cannot judge never widens a rollout on its own, it just does not stop one), with its
evidence; :func:`decide` turns them into ``abort``, ``widen`` or ``wait``. The counting is
the alert rules' own (:func:`edgekit.alerts.rules.refused`, :func:`~edgekit.alerts.rules.low_counts`,
:func:`~edgekit.alerts.rules.merged`), so an alert and a gate never disagree on a number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.drift import chi2_quantile, excess_count_p, merge_windows, psi
from device_agent.protocol import BundleRef

from ..alerts.alert import iso
from ..alerts.facts import Beat, BundleInfo, Window
from ..alerts.rules import clean, expected_low_share, low_counts, merged, refused
from .config import (
    DriftGate,
    ErrorRateGate,
    FailuresGate,
    LatencyGate,
    LowConfidenceGate,
    PredictionShiftGate,
    RolloutConfig,
)

PASS, FAIL, NO_DATA = "pass", "fail", "no_data"
ABORT, WIDEN, WAIT = "abort", "widen", "wait"
# What a device told to run the new version is doing (from its retained 'reported' document).
ACTIVE, FAILED, PENDING, OFFLINE = "active", "failed", "pending", "offline"
REVERT_CODES = frozenset({"trial.failed", "trial.crashed"})


@dataclass(frozen=True)
class Outcome:
    """One device told to run the new version: where it is, and since when it was told."""

    device: str
    state: str  # active | failed | pending | offline
    told: float
    code: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Side:
    """The devices of one version over the period: their heartbeats (only those with the
    version active) and drift windows, and what the registry knows of the version."""

    bundle: BundleRef | None
    devices: tuple[str, ...] = ()
    beats: Mapping[str, Sequence[Beat]] = field(default_factory=dict)  # per device, oldest first
    windows: Sequence[Window] = ()
    info: BundleInfo | None = None


@dataclass(frozen=True)
class GateFacts:
    now: float
    since: float  # the period compared: since the phase's devices were all done (or told)
    outcomes: Mapping[str, Outcome]  # every device told to run the new version so far
    reverts: Mapping[str, Sequence[str]]  # device -> failure codes of the new version's trial reverts
    new: Side
    old: Side


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: str  # pass | fail | no_data
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "verdict": self.verdict, "summary": self.summary, "evidence": self.evidence}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> GateResult:
        return cls(str(doc["gate"]), str(doc["verdict"]), str(doc.get("summary", "")), dict(doc.get("evidence") or {}))


@dataclass(frozen=True)
class Decision:
    """What the gates say about a phase at one moment, and why."""

    verdict: str  # abort | widen | wait
    at: float
    phase: int
    reason: str
    gates: tuple[GateResult, ...] = ()

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.verdict == FAIL]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "at": iso(self.at),
            "ts": self.at,
            "phase": self.phase,
            "reason": self.reason,
            "gates": [g.to_json() for g in self.gates],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Decision:
        return cls(
            str(doc["verdict"]),
            float(doc["ts"]),
            int(doc["phase"]),
            str(doc.get("reason", "")),
            tuple(GateResult.from_json(g) for g in doc.get("gates") or []),
        )


# ── deployment failures ───────────────────────────────────────────────────────────────


def failures(facts: GateFacts, cfg: FailuresGate) -> GateResult:
    failed: dict[str, dict[str, Any]] = {}
    for d, o in sorted(facts.outcomes.items()):
        if o.state == FAILED:
            failed[d] = {"device": d, "why": "failed", "code": o.code, "detail": o.detail}
        elif o.state == PENDING and facts.now - o.told > cfg.install_timeout_s:
            failed[d] = {
                "device": d,
                "why": "timed_out",
                "code": None,
                "detail": f"not active {cfg.install_timeout_s:.0f} s after it was told ({o.detail or 'pending'})",
            }
    for d, codes in sorted(facts.reverts.items()):
        if d in facts.outcomes and codes and d not in failed:
            failed[d] = {"device": d, "why": "reverted", "code": sorted(codes)[0], "detail": "the trial reverted"}
    counted = [o for o in facts.outcomes.values() if o.state != OFFLINE]
    deployed = len(counted)
    share = len(failed) / deployed if deployed else 0.0
    evidence = {
        "deployed": deployed,
        "active": sum(o.state == ACTIVE for o in counted),
        "pending": sorted(d for d, o in facts.outcomes.items() if o.state == PENDING and d not in failed),
        "offline": sorted(d for d, o in facts.outcomes.items() if o.state == OFFLINE),
        "failed": [failed[d] for d in sorted(failed)],
        "share": share,
        "max_share": cfg.max_share,
        "min_failures": cfg.min_failures,
        "install_timeout_s": cfg.install_timeout_s,
    }
    if len(failed) >= cfg.min_failures and share > cfg.max_share:
        codes = sorted({str(f["code"] or f["why"]) for f in failed.values()})
        return GateResult(
            "failures",
            FAIL,
            f"{len(failed)} of {deployed} devices failed the new version ({', '.join(codes)}), "
            f"above {cfg.max_share:.0%}",
            clean(evidence),
        )
    return GateResult("failures", PASS, f"{len(failed)} of {deployed} devices failed", clean(evidence))


# ── serving: refused rows and latency ─────────────────────────────────────────────────


def _side_refused(side: Side) -> tuple[int, int]:
    rejected = rows = 0
    for beats in side.beats.values():
        r, n = refused(beats)
        rejected += r
        rows += n
    return rejected, rows


def error_rate(facts: GateFacts, cfg: ErrorRateGate) -> GateResult:
    new_rej, new_rows = _side_refused(facts.new)
    old_rej, old_rows = _side_refused(facts.old)
    evidence: dict[str, Any] = {
        "new": {"rejected": new_rej, "rows": new_rows, "rate": new_rej / new_rows if new_rows else None},
        "old": {"rejected": old_rej, "rows": old_rows, "rate": old_rej / old_rows if old_rows else None},
        "ratio": cfg.ratio,
        "margin": cfg.margin,
        "min_errors": cfg.min_errors,
    }
    if new_rows == 0:
        return GateResult("error_rate", NO_DATA, "no rows served by the new version yet", clean(evidence))
    rate = new_rej / new_rows
    if old_rows:
        old_rate = old_rej / old_rows
        limit = max(old_rate * cfg.ratio, old_rate + cfg.margin)
        against = f"{old_rate:.1%} on the previous version"
    else:
        limit = cfg.rate
        against = "no previous-version device reporting: the fixed rate"
        evidence["note"] = against
    evidence["limit"] = limit
    text = f"the new version refused {new_rej} of {new_rows} rows ({rate:.1%}); limit {limit:.1%} ({against})"
    verdict = FAIL if new_rej >= cfg.min_errors and rate >= limit else PASS
    return GateResult("error_rate", verdict, text, clean(evidence))


def _p99s(side: Side) -> list[float]:
    return [b.p99_us for beats in side.beats.values() for b in beats if b.p99_us is not None]


def latency(facts: GateFacts, cfg: LatencyGate) -> GateResult:
    new, old = _p99s(facts.new), _p99s(facts.old)
    evidence: dict[str, Any] = {
        "new": {"heartbeats": len(new), "p99_us": statistics.median(new) if new else None},
        "old": {"heartbeats": len(old), "p99_us": statistics.median(old) if old else None},
        "ratio": cfg.ratio,
        "min_increase_ms": cfg.min_increase_ms,
        "min_heartbeats": cfg.min_heartbeats,
    }
    if len(new) < cfg.min_heartbeats or len(old) < cfg.min_heartbeats:
        return GateResult(
            "latency",
            NO_DATA,
            f"{len(new)} and {len(old)} heartbeats with a p99; {cfg.min_heartbeats} needed each",
            clean(evidence),
        )
    cur, prev = statistics.median(new), statistics.median(old)
    text = f"median p99 {cur / 1000:.2f} ms on the new version, {prev / 1000:.2f} ms on the previous"
    slow = prev > 0 and cur >= cfg.ratio * prev and cur - prev >= cfg.min_increase_ms * 1000.0
    return GateResult("latency", FAIL if slow else PASS, text, clean(evidence))


# ── the ML gates ──────────────────────────────────────────────────────────────────────


def _merge(side: Side) -> dict[str, Any] | None:
    try:
        return merge_windows([w.report for w in side.windows]) if side.windows else None
    except ValueError:
        return None


def _rows(windows: Sequence[Window]) -> int:
    return sum(int(w.report.get("n") or 0) for w in windows)


def _newest(windows: Sequence[Window], k: int) -> list[Window]:
    return sorted(windows, key=lambda w: (w.ts, w.device, w.seq))[-k:] if k > 0 else []


def drift(facts: GateFacts, cfg: DriftGate) -> GateResult:
    """Each side's newest windows, as many on both (so both tests have the same power: with
    more rows on one side, a drift both sides have would be seen on that side only), merged
    and judged against that side's own reference. A feature fails the gate when it drifts on
    the new side and is clearly quiet on the old one (its score, 1.0 at the decision
    boundary, below ``old_quiet``): a borderline old side is no evidence either way."""
    new, old = facts.new, facts.old
    evidence: dict[str, Any] = {"alpha": cfg.alpha, "min_rows": cfg.min_rows, "old_quiet": cfg.old_quiet}
    if new.info is None:
        return GateResult("drift", NO_DATA, "the registry does not know the new version: no reference", evidence)
    new_w, old_w = list(new.windows), list(old.windows) if old.info is not None else []
    alone = not old.devices
    if not alone:
        k = min(len(new_w), len(old_w))
        new_w, old_w = _newest(new_w, k), _newest(old_w, k)
    rows = _rows(new_w)
    evidence["new"] = {"windows": len(new_w), "n": rows}
    if rows < cfg.min_rows or (not alone and _rows(old_w) < cfg.min_rows):
        return GateResult(
            "drift",
            NO_DATA,
            f"{rows} and {_rows(old_w)} rows in comparable windows of the two versions; {cfg.min_rows} needed",
            evidence,
        )
    view = merged(new.info.reference, new_w, cfg.alpha)
    if view is None:
        return GateResult("drift", NO_DATA, "the new version's windows do not merge", evidence)
    shares = new.info.shares()
    drifted = [f for f in view["drifted"] if not shares or shares.get(f, 0.0) >= cfg.min_importance]
    evidence["new"].update(drifted=list(view["drifted"]), judged=drifted)
    evidence["new"]["features"] = {
        f: {k: view["features"][f].get(k) for k in ("psi", "psi_limit", "score", "shift", "fired")} for f in drifted
    }
    loud: set[str] = set()  # features not clearly quiet on the old side
    if alone:
        evidence["old"] = None
        evidence["note"] = "no device on the previous version: the new side alone"
    else:
        assert old.info is not None
        old_view = merged(old.info.reference, old_w, cfg.alpha)
        if old_view is None:
            return GateResult("drift", NO_DATA, "the previous version's windows do not merge", clean(evidence))
        scores = {f: e.get("score") for f, e in (old_view.get("features") or {}).items() if isinstance(e, dict)}
        loud = {f for f, sc in scores.items() if not isinstance(sc, int | float) or sc >= cfg.old_quiet}
        loud |= set(old_view["drifted"])
        evidence["old"] = {
            "windows": len(old_w),
            "n": old_view["n"],
            "drifted": sorted(old_view["drifted"]),
            "scores": {f: scores.get(f) for f in drifted},
        }
    only_new = [f for f in drifted if f not in loud]
    evidence["only_new"] = only_new
    if only_new:
        names = ", ".join(repr(f) for f in only_new[:3]) + (" …" if len(only_new) > 3 else "")
        return GateResult(
            "drift",
            FAIL,
            f"inputs drift from the new version's reference in {names}; not on the previous",
            clean(evidence),
        )
    both = sorted(set(drifted) & loud)
    seen = f" (on both sides: {', '.join(both)})" if both else ""
    return GateResult("drift", PASS, f"no drift only the new version sees over {rows} rows{seen}", clean(evidence))


def two_sample_chi2(a: Sequence[int], b: Sequence[int]) -> tuple[float, int]:
    """Pearson's statistic of homogeneity of two count vectors, and its degrees of freedom
    (categories seen on either side, minus one)."""
    x = np.asarray([a, b], dtype=np.float64)
    x = x[:, x.sum(axis=0) > 0]
    if x.shape[1] < 2 or (x.sum(axis=1) == 0).any():
        return 0.0, 0
    expected = np.outer(x.sum(axis=1), x.sum(axis=0)) / x.sum()
    return float(((x - expected) ** 2 / expected).sum()), x.shape[1] - 1


def prediction_shift(facts: GateFacts, cfg: PredictionShiftGate) -> GateResult:
    new_m, old_m = _merge(facts.new), _merge(facts.old)
    evidence: dict[str, Any] = {"alpha": cfg.alpha, "min_psi": cfg.min_psi, "min_rows": cfg.min_rows}
    if new_m is None or old_m is None:
        return GateResult("prediction_shift", NO_DATA, "windows of both versions are needed", evidence)
    a, b = list(new_m["prediction"]["counts"]), list(old_m["prediction"]["counts"])
    evidence["new"] = {"counts": a, "n": sum(a)}
    evidence["old"] = {"counts": b, "n": sum(b)}
    ni, oi = facts.new.info, facts.old.info
    kinds = (new_m["prediction"].get("kind"), old_m["prediction"].get("kind"))
    if ni is not None and oi is not None:
        aligned = (
            ni.reference.prediction.kind == "classes"
            and ni.reference.prediction.labels == oi.reference.prediction.labels
        )
        evidence["labels"] = list(ni.reference.prediction.labels) if aligned else None
    else:
        aligned = kinds == ("classes", "classes") and len(a) == len(b)
        evidence["note"] = "a version unknown to the registry: classes taken to line up by position"
    if not aligned or len(a) != len(b):
        return GateResult(
            "prediction_shift", NO_DATA, "the two versions do not predict the same classes", clean(evidence)
        )
    if sum(a) < cfg.min_rows or sum(b) < cfg.min_rows:
        return GateResult(
            "prediction_shift",
            NO_DATA,
            f"{sum(a)} and {sum(b)} predictions; {cfg.min_rows} needed each",
            clean(evidence),
        )
    stat, df = two_sample_chi2(a, b)
    limit = chi2_quantile(1.0 - cfg.alpha, df) if df > 0 else float("inf")
    old_props = np.asarray(b, dtype=np.float64) / sum(b)
    value = psi(old_props, a)
    evidence.update(chi2=stat, df=df, chi2_limit=limit, psi=value)
    text = f"prediction mix PSI {value:.3f} against the previous version's (chi² {stat:.1f}, limit {limit:.1f})"
    return GateResult(
        "prediction_shift", FAIL if stat > limit and value >= cfg.min_psi else PASS, text, clean(evidence)
    )


def low_confidence(facts: GateFacts, cfg: LowConfidenceGate) -> GateResult:
    low, counted = low_counts([w.report for w in facts.new.windows])
    old_low, old_counted = low_counts([w.report for w in facts.old.windows])
    evidence: dict[str, Any] = {
        "new": {"low": low, "rows": counted, "rate": low / counted if counted else None},
        "old": {"low": old_low, "rows": old_counted, "rate": old_low / old_counted if old_counted else None},
        "alpha": cfg.alpha,
        "margin": cfg.margin,
        "min_rows": cfg.min_rows,
    }
    if counted < cfg.min_rows:
        return GateResult(
            "low_confidence", NO_DATA, f"{counted} predictions with a confidence; {cfg.min_rows} needed", evidence
        )
    rate = low / counted
    info = facts.new.info
    if old_counted >= cfg.min_rows:
        base_low, base_n, against = old_low, old_counted, "the previous version"
    elif (
        info is not None
        and info.low_confidence is not None
        and (e := expected_low_share(info.reference, info.low_confidence)) is not None
    ):
        base_n = info.reference.n
        base_low, against = round(e * base_n), "the new version's reference (no previous-version windows)"
        evidence["note"] = against
    else:
        return GateResult("low_confidence", NO_DATA, "nothing to compare with: no previous-version windows", evidence)
    base_rate = base_low / base_n
    p = excess_count_p(low, counted, base_low, base_n)
    evidence.update(base_rate=base_rate, p=p)
    text = f"{rate:.1%} low-confidence predictions against {base_rate:.1%} on {against} (p = {p:.2g})"
    return GateResult(
        "low_confidence", FAIL if p < cfg.alpha and rate >= base_rate + cfg.margin else PASS, text, clean(evidence)
    )


GATES: dict[str, Callable[[GateFacts, Any], GateResult]] = {
    "failures": failures,
    "error_rate": error_rate,
    "latency": latency,
    "drift": drift,
    "prediction_shift": prediction_shift,
    "low_confidence": low_confidence,
}


def evaluate(facts: GateFacts, config: RolloutConfig) -> list[GateResult]:
    return [gate(facts, config.gate(name)) for name, gate in GATES.items() if config.gate(name).enabled]


def decide(facts: GateFacts, config: RolloutConfig, phase: int, baked: bool) -> Decision:
    """``abort`` as soon as a gate fails (no need to wait for the bake to end: the evidence
    is in); ``widen`` once the phase has baked, every device told is done (active, failed or
    offline) and no gate failed; else ``wait``."""
    results = evaluate(facts, config)
    bad = [g for g in results if g.verdict == FAIL]
    if bad:
        return Decision(ABORT, facts.now, phase, "; ".join(f"{g.gate}: {g.summary}" for g in bad), tuple(results))
    timeout = config.failures.install_timeout_s
    busy = [d for d, o in facts.outcomes.items() if o.state == PENDING and facts.now - o.told <= timeout]
    if busy:
        return Decision(WAIT, facts.now, phase, f"{len(busy)} device(s) still installing", tuple(results))
    if not baked:
        return Decision(WAIT, facts.now, phase, "baking", tuple(results))
    unjudged = [g.gate for g in results if g.verdict == NO_DATA]
    reason = "every gate passed" + (f" (no data: {', '.join(unjudged)})" if unjudged else "")
    return Decision(WIDEN, facts.now, phase, reason, tuple(results))
