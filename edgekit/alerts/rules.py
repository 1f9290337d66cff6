"""The alert rules: pure functions from :class:`~edgekit.alerts.facts.FleetFacts` to findings.

Each rule says, per subject (a device, a device's feature, a group's feature), one of:

* ``fire``: the condition holds; the finding carries the evidence (windows, values,
  thresholds) and a severity;
* ``hold``: not enough to fire, not enough to call it over (the hysteresis band: a
  drifting feature with 2 of its last 5 windows flagged and the last one too);
* nothing at all: the condition does not hold, and an alert of that key resolves.

Why each rule is built the way it is, with its defaults, is in docs/alerts.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.drift import Reference, assess, excess_count_p, merge_windows
from device_agent.protocol import BundleRef

from .alert import iso
from .config import (
    AlertConfig,
    CpuRule,
    DiskRule,
    DriftRule,
    ErrorRateRule,
    FleetDriftRule,
    LatencyRule,
    LowConfidenceRule,
    MemoryRule,
    OfflineRule,
    PredictionDriftRule,
    SkewRule,
)
from .facts import Beat, BundleInfo, DeviceFacts, FleetFacts, Window

FIRE, HOLD = "fire", "hold"
MIB = float(1 << 20)


@dataclass(frozen=True)
class Finding:
    rule: str
    key: str
    verdict: str  # fire | hold
    severity: str = "warning"
    summary: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    group: str | None = None
    feature: str | None = None
    bundle: BundleRef | None = None
    weight: float = 0.0
    since: float | None = None  # when the condition began, if the evidence says (e.g. the first flagged window)


def clean(value: Any) -> Any:
    """JSON-ready: numpy numbers as Python ones, NaN and infinities as None, floats rounded."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return round(v, 6) if math.isfinite(v) else None
    return value


# ── judging windows ───────────────────────────────────────────────────────────────────


def _rejudged(windows: Sequence[Window], info: BundleInfo | None, alpha: float) -> list[Mapping[str, Any]]:
    """Each window's report: the device's own, or judged again at ``alpha`` when the host
    asks for another false-alarm rate and knows the reference."""
    if info is None or alpha <= 0.0 or alpha == info.reference.alpha:
        return [w.report for w in windows]
    out: list[Mapping[str, Any]] = []
    for w in windows:
        try:
            out.append(assess(info.reference, w.report, alpha=alpha))
        except ValueError:
            out.append(w.report)
    return out


def merged(reference: Reference, windows: Sequence[Window], alpha: float = 0.0) -> dict[str, Any] | None:
    """The windows added up and judged as one (:func:`device_agent.drift.merge_windows`)."""
    if not windows:
        return None
    try:
        return assess(reference, merge_windows([w.report for w in windows]), alpha=alpha if alpha > 0 else None)
    except ValueError:
        return None


def _flagged(report: Mapping[str, Any]) -> set[str]:
    features = report.get("features") or {}
    return {n for n, e in features.items() if isinstance(e, Mapping) and e.get("drifted")}


def _entry(report: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    e = (report.get("features") or {}).get(name)
    return e if isinstance(e, Mapping) else {}


def _importance(info: BundleInfo | None, name: str, top: int, floor: float) -> tuple[str, dict[str, Any], float]:
    """(severity, evidence, share) of drift in feature ``name``: critical for the ``top``
    features by permutation importance, info for one the model ignores, else warning."""
    if info is None or not info.importance:
        return "warning", {"known": False}, 0.0
    shares, ranks = info.shares(), info.ranks()
    share, rank = shares.get(name, 0.0), ranks.get(name)
    ev = {"known": True, "share": share, "rank": rank, "features": len(ranks), "mean": info.importance.get(name)}
    if share < floor or rank is None:
        return "info", ev, share
    return ("critical" if rank <= top else "warning"), ev, share


def _feature_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("psi", "psi_limit", "score", "location_z", "shift", "missing", "missing_p", "out_of_range", "drifted")
    out = {k: entry.get(k) for k in keys if k in entry}
    out["fired"] = list(entry.get("fired") or [])
    return out


def _judged_recent(dev: DeviceFacts, n: int) -> list[Window]:
    return [w for w in dev.recent if w.judged][-n:] if n > 0 else []


# ── drift, prediction drift, skew, fleet drift ────────────────────────────────────────


def drift(facts: FleetFacts, cfg: DriftRule) -> Iterator[Finding]:
    span = max(cfg.m, cfg.resolve_after)
    for dev in facts.devices.values():
        windows = _judged_recent(dev, span)
        if not windows:
            continue
        bundle = windows[-1].bundle
        info = facts.info(bundle)
        reports = _rejudged(windows, info, cfg.alpha)
        flags = [_flagged(r) for r in reports]
        last_m = list(zip(windows[-cfg.m :], reports[-cfg.m :], flags[-cfg.m :], strict=True))
        tail = flags[-cfg.resolve_after :]
        candidates = set().union(*flags)
        view: dict[str, Any] | None = None
        for name in sorted(candidates):
            hits = [w for w, _, f in last_m if name in f]
            if len(hits) >= cfg.k:
                verdict = FIRE
            elif len(tail) >= cfg.resolve_after and not any(name in f for f in tail):
                continue  # clean long enough: resolved
            elif not hits:
                continue
            else:
                verdict = HOLD
            severity, importance, share = _importance(info, name, cfg.top, cfg.min_importance)
            features = len(reports[-1].get("features") or {}) or 1
            weight = (share if importance["known"] else 1.0 / features) * len(hits) / cfg.m
            evidence: dict[str, Any] = {
                "k": cfg.k,
                "m": cfg.m,
                "hits": len(hits),
                "judged_by": "device" if info is None else "reference",
                "alpha": (cfg.alpha or info.reference.alpha) if info is not None else None,
                "importance": importance,
                "windows": [
                    {
                        "boot_id": w.boot_id,
                        "seq": w.seq,
                        "ts": iso(w.ts),
                        "n": r.get("n"),
                        "flagged": name in f,
                        **_feature_view(_entry(r, name)),
                    }
                    for w, r, f in last_m
                ],
            }
            if info is not None and verdict == FIRE:
                if view is None:
                    view = merged(info.reference, [w for w, _, _ in last_m], cfg.alpha) or {}
                if view:
                    evidence["merged"] = {
                        "n": view.get("n"),
                        "windows": len(last_m),
                        **_feature_view(_entry(view, name)),
                    }
            elif info is None:
                evidence["note"] = "bundle unknown to the registry: judged by the device's own verdicts, unweighted"
            rank = f", importance rank {importance['rank']} of {importance['features']}" if importance["known"] else ""
            yield Finding(
                "drift",
                f"drift:{dev.device}:{name}",
                verdict,
                severity,
                f"{name!r} drifted in {len(hits)} of the last {len(last_m)} windows on {dev.device} "
                f"({bundle.label}{rank})",
                clean(evidence),
                device=dev.device,
                feature=name,
                bundle=bundle,
                weight=weight,
                since=hits[0].ts if hits else None,
            )


def prediction_drift(facts: FleetFacts, cfg: PredictionDriftRule) -> Iterator[Finding]:
    span = max(cfg.m, cfg.resolve_after)
    for dev in facts.devices.values():
        windows = _judged_recent(dev, span)
        if not windows:
            continue
        bundle = windows[-1].bundle

        def moved(w: Window) -> bool:
            pred = w.report.get("prediction")
            return isinstance(pred, Mapping) and bool(pred.get("drifted"))

        last_m = windows[-cfg.m :]
        hits = [w for w in last_m if moved(w)]
        tail = windows[-cfg.resolve_after :]
        if len(hits) >= cfg.k:
            verdict = FIRE
        elif not hits or (len(tail) >= cfg.resolve_after and not any(moved(w) for w in tail)):
            continue
        else:
            verdict = HOLD
        evidence: dict[str, Any] = {
            "k": cfg.k,
            "m": cfg.m,
            "hits": len(hits),
            "windows": [
                {
                    "boot_id": w.boot_id,
                    "seq": w.seq,
                    "ts": iso(w.ts),
                    "flagged": moved(w),
                    "psi": (w.report.get("prediction") or {}).get("psi"),
                    "limit": (w.report.get("thresholds") or {}).get("prediction_psi"),
                    "counts": (w.report.get("prediction") or {}).get("counts"),
                }
                for w in last_m
            ],
        }
        info = facts.info(bundle)
        if info is not None and verdict == FIRE:
            view = merged(info.reference, last_m)
            if view:
                pred = view["prediction"]
                evidence["merged"] = {
                    "n": view["n"],
                    "psi": pred["psi"],
                    "limit": view["thresholds"]["prediction_psi"],
                    "counts": pred["counts"],
                    "reference": list(info.reference.prediction.proportions),
                }
        yield Finding(
            "prediction_drift",
            f"prediction_drift:{dev.device}",
            verdict,
            "warning",
            f"the prediction mix moved in {len(hits)} of the last {len(last_m)} windows on {dev.device} "
            f"({bundle.label})",
            clean(evidence),
            device=dev.device,
            bundle=bundle,
            weight=len(hits) / cfg.m,
            since=hits[0].ts if hits else None,
        )


def skew(facts: FleetFacts, cfg: SkewRule, drift_cfg: DriftRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        first = [w for w in dev.first if w.judged][: cfg.windows]
        if len(first) < cfg.windows:
            continue
        bundle = first[0].bundle
        info = facts.info(bundle)
        recent = [w for w in _judged_recent(dev, cfg.windows) if w.bundle.sha256 == bundle.sha256]
        features: dict[str, Any] = {}
        if info is not None:
            view = merged(info.reference, first, drift_cfg.alpha)
            if not view:
                continue
            skewed = list(view["drifted"])
            features = {n: _feature_view(_entry(view, n)) for n in skewed}
            later = merged(info.reference, recent, drift_cfg.alpha) if recent != first else view
            still = [n for n in skewed if later and n in later["drifted"]]
        else:
            counts: dict[str, int] = {}
            for w in first:
                for n in w.flagged():
                    counts[n] = counts.get(n, 0) + 1
            skewed = sorted(n for n, c in counts.items() if c * 2 > len(first))
            still = [n for n in skewed if sum(n in w.flagged() for w in recent) * 2 > len(recent)]
        if not skewed or not still:
            continue
        graded = sorted(
            ((*_importance(info, n, drift_cfg.top, drift_cfg.min_importance), n) for n in skewed),
            key=lambda g: (-_SEVERITY[g[0]], -g[2], g[3]),
        )
        severity, importance, share, top_name = graded[0]
        evidence = {
            "windows": [{"boot_id": w.boot_id, "seq": w.seq, "ts": iso(w.ts), "n": w.report.get("n")} for w in first],
            "features": features or {n: {} for n in skewed},
            "still_drifting": still,
            "judged_by": "device" if info is None else "reference",
            "importance": {n: _importance(info, n, drift_cfg.top, drift_cfg.min_importance)[1] for n in skewed},
        }
        if info is None:
            evidence["note"] = "bundle unknown to the registry: features flagged in most of the first windows"
        yield Finding(
            "skew",
            f"skew:{dev.device}:{bundle.sha256[:12]}",
            FIRE,
            severity,
            f"training-serving skew on {dev.device}: the first {len(first)} windows of {bundle.label} differ from "
            f"the reference in {', '.join(repr(n) for n in skewed[:3])}" + (" …" if len(skewed) > 3 else ""),
            clean(evidence),
            device=dev.device,
            feature=top_name,
            bundle=bundle,
            weight=share if importance["known"] else 1.0,
            since=first[0].ts,
        )


_SEVERITY = {"info": 0, "warning": 1, "critical": 2}


def fleet_drift(facts: FleetFacts, cfg: FleetDriftRule, drift_cfg: DriftRule) -> Iterator[Finding]:
    groups: dict[tuple[str, str], list[tuple[DeviceFacts, list[Window]]]] = {}
    for dev in facts.devices.values():
        windows = _judged_recent(dev, cfg.windows)
        if not windows:
            continue
        for g in dev.groups:
            groups.setdefault((g, windows[-1].bundle.name), []).append((dev, windows))
    for (group, name), members in sorted(groups.items()):
        total = len(members)
        by_feature: dict[str, list[tuple[DeviceFacts, list[Window]]]] = {}
        for dev, windows in members:
            for feature in set().union(*(w.flagged() for w in windows)):
                by_feature.setdefault(feature, []).append((dev, windows))
        for feature, flagged in sorted(by_feature.items()):
            share = len(flagged) / total
            if len(flagged) >= cfg.min_devices and share >= cfg.share:
                verdict = FIRE
            elif share >= cfg.share / 2:
                verdict = HOLD
            else:
                continue
            bundles = {w.bundle.sha256 for _, ws in flagged for w in ws}
            info = facts.info(flagged[0][1][-1].bundle) if len(bundles) == 1 else None
            severity, importance, weight = _importance(info, feature, drift_cfg.top, drift_cfg.min_importance)
            evidence: dict[str, Any] = {
                "devices": sorted(d.device for d, _ in flagged),
                "reporting": total,
                "share": share,
                "threshold": cfg.share,
                "min_devices": cfg.min_devices,
                "windows_per_device": cfg.windows,
                "importance": importance,
            }
            if info is not None and verdict == FIRE:
                view = merged(info.reference, [w for _, ws in flagged for w in ws], drift_cfg.alpha)
                if view:
                    evidence["merged"] = {"n": view["n"], **_feature_view(_entry(view, feature))}
            yield Finding(
                "fleet_drift",
                f"fleet_drift:{group}:{name}:{feature}",
                verdict,
                severity,
                f"{feature!r} drifts on {len(flagged)} of {total} devices of group {group} ({name})",
                clean(evidence),
                group=group,
                feature=feature,
                bundle=flagged[0][1][-1].bundle,
                weight=(weight if importance["known"] else 1.0) * share,
            )


# ── serving: errors, offline, latency, confidence ─────────────────────────────────────


def refused(beats: Sequence[Beat]) -> tuple[int, int]:
    """(rows refused, rows received) between the first and last of ``beats`` (oldest first),
    from the heartbeats' cumulative counters, boot by boot (a restart starts them at zero).
    The error-rate rule and the rollout gate count alike."""
    rejected = rows = 0
    by_boot: dict[str, list[Beat]] = {}
    for b in beats:
        if b.served is not None and b.rejected is not None:
            by_boot.setdefault(b.boot_id, []).append(b)
    for run in by_boot.values():
        a, z = run[0], run[-1]
        assert a.served is not None and a.rejected is not None and z.served is not None and z.rejected is not None
        r = max(0, z.rejected - a.rejected)
        rejected += r
        rows += max(0, z.served - a.served) + r
    return rejected, rows


def low_counts(reports: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(low-confidence predictions, predictions with a confidence) over window reports: what
    the low-confidence rule and the rollout gate compare."""
    low = sum(int(r.get("low_confidence") or 0) for r in reports)
    counted = sum(sum((r.get("confidence") or {}).get("counts") or []) for r in reports)
    return low, counted


def error_rate(facts: FleetFacts, cfg: ErrorRateRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        if not dev.beats:
            continue
        boot = dev.beats[-1].boot_id
        beats = [
            b
            for b in dev.beats
            if b.boot_id == boot
            and b.ts >= facts.now - cfg.window_s
            and b.served is not None
            and b.rejected is not None
        ]
        if len(beats) < 2:
            continue
        a, b = beats[0], beats[-1]
        rejected, rows = refused(beats)
        if rows == 0 or rejected == 0:
            continue
        rate = rejected / rows
        if rejected >= cfg.min_errors and rate >= cfg.rate:
            verdict = FIRE
        elif rate >= cfg.rate / 2:
            verdict = HOLD
        else:
            continue
        yield Finding(
            "error_rate",
            f"error_rate:{dev.device}",
            verdict,
            "critical" if rate >= 0.5 else "warning",
            f"{dev.device} refused {rejected} of {rows} rows ({rate:.1%}) in the last {b.ts - a.ts:.0f} s",
            clean(
                {
                    "rejected": rejected,
                    "rows": rows,
                    "rate": rate,
                    "threshold": cfg.rate,
                    "min_errors": cfg.min_errors,
                    "from": iso(a.ts),
                    "to": iso(b.ts),
                    "boot_id": boot,
                }
            ),
            device=dev.device,
            bundle=dev.bundle,
            weight=rate,
        )


def offline(facts: FleetFacts, cfg: OfflineRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        if dev.status not in ("offline", "stale") or dev.last_seen is None:
            continue
        age = facts.now - dev.last_seen
        if age > cfg.forget_after_s:
            continue
        verdict = FIRE if age >= cfg.after_s else HOLD
        lost = dev.status == "offline" and not dev.said_goodbye
        how = "lost its connection" if lost else ("shut down" if dev.status == "offline" else "stopped reporting")
        yield Finding(
            "offline",
            f"offline:{dev.device}",
            verdict,
            "critical" if lost else "warning",
            f"{dev.device} is {dev.status}: {how}, last seen {iso(dev.last_seen)}",
            {
                "status": dev.status,
                "last_seen": iso(dev.last_seen),
                "goodbye": dev.said_goodbye,
                "after_s": cfg.after_s,
            },
            device=dev.device,
            bundle=dev.bundle,
            weight=1.0,
            since=dev.last_seen,
        )


def latency(facts: FleetFacts, cfg: LatencyRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        if not dev.beats or dev.previous_p99 is None:
            continue
        current = dev.beats[-1].active
        now = [
            b.p99_us
            for b in dev.beats
            if b.active == current and b.ts >= facts.now - cfg.window_s and b.p99_us is not None
        ]
        before_ref, before = dev.previous_p99
        if len(now) < cfg.min_heartbeats or len(before) < cfg.min_heartbeats:
            continue
        cur, prev = statistics.median(now), statistics.median(before)
        if prev <= 0 or cur < cfg.ratio * prev or cur - prev < cfg.min_increase_ms * 1000.0:
            continue
        label = before_ref.label if isinstance(before_ref, BundleRef) else str(before_ref)[:12]
        yield Finding(
            "latency",
            f"latency:{dev.device}",
            FIRE,
            "warning",
            f"p99 latency on {dev.device} is {cur / 1000:.2f} ms, {cur / prev:.1f}x the "
            f"{prev / 1000:.2f} ms of {label}",
            clean(
                {
                    "p99_us": cur,
                    "heartbeats": len(now),
                    "previous_p99_us": prev,
                    "previous_heartbeats": len(before),
                    "previous_bundle": before_ref.to_json() if isinstance(before_ref, BundleRef) else before_ref,
                    "ratio": cur / prev,
                    "threshold_ratio": cfg.ratio,
                    "min_increase_ms": cfg.min_increase_ms,
                }
            ),
            device=dev.device,
            bundle=dev.bundle,
            weight=cur / prev,
        )


def expected_low_share(reference: Reference, threshold: float) -> float | None:
    """The share of out-of-fold predictions below ``threshold`` confidence, read off the
    reference's confidence histogram (linear within the bin holding the threshold)."""
    conf = reference.confidence
    if conf is None:
        return None
    lows = [0.0, *conf.edges]
    highs = [*conf.edges, 1.0]
    share = 0.0
    for lo, hi, p in zip(lows, highs, conf.proportions, strict=True):
        if hi <= threshold:
            share += p
        elif lo < threshold:
            share += p * (threshold - lo) / (hi - lo) if hi > lo else 0.0
    return min(max(share, 0.0), 1.0)


def low_confidence(facts: FleetFacts, cfg: LowConfidenceRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        windows = _judged_recent(dev, cfg.windows)
        if not windows:
            continue
        low, counted = low_counts([w.report for w in windows])
        if counted <= 0:
            continue  # a regressor, or nothing served
        rate = low / counted
        bundle = windows[-1].bundle
        info = facts.info(bundle)
        expected = None
        if info is not None and info.low_confidence is not None:
            expected = expected_low_share(info.reference, info.low_confidence)
        evidence: dict[str, Any] = {
            "low": low,
            "rows": counted,
            "rate": rate,
            "windows": [{"boot_id": w.boot_id, "seq": w.seq, "ts": iso(w.ts)} for w in windows],
        }
        if expected is not None and info is not None:
            n_ref = info.reference.n
            p = excess_count_p(low, counted, round(expected * n_ref), n_ref)
            evidence.update(expected=expected, p=p, alpha=cfg.alpha, margin=cfg.margin, threshold=info.low_confidence)
            if p < cfg.alpha and rate >= expected + cfg.margin:
                verdict = FIRE
            elif rate >= expected + cfg.margin / 2 and p < 10 * cfg.alpha:
                verdict = HOLD
            else:
                continue
            against = f"the reference's {expected:.1%}"
        else:
            evidence.update(threshold_rate=cfg.rate, note="bundle unknown to the registry: a fixed rate")
            if rate >= cfg.rate:
                verdict = FIRE
            elif rate >= 0.8 * cfg.rate:
                verdict = HOLD
            else:
                continue
            against = f"the fixed {cfg.rate:.0%}"
        yield Finding(
            "low_confidence",
            f"low_confidence:{dev.device}",
            verdict,
            "warning",
            f"{rate:.1%} of predictions on {dev.device} were low-confidence over {len(windows)} windows, "
            f"against {against}",
            clean(evidence),
            device=dev.device,
            bundle=bundle,
            weight=rate,
        )


# ── resources ─────────────────────────────────────────────────────────────────────────


def disk(facts: FleetFacts, cfg: DiskRule) -> Iterator[Finding]:
    for dev in facts.devices.values():
        beats = [
            b for b in dev.beats if b.disk_free is not None and b.disk_total and b.ts >= facts.now - cfg.trend_window_s
        ]
        if not beats:
            continue
        last = beats[-1]
        assert last.disk_free is not None and last.disk_total is not None
        pct = 100.0 * last.disk_free / last.disk_total
        slope = eta = None
        if len(beats) >= 3 and last.ts - beats[0].ts >= cfg.min_span_s:
            t = np.array([b.ts - beats[0].ts for b in beats])
            free = np.array([float(b.disk_free or 0) for b in beats])
            slope = float(np.polyfit(t, free, 1)[0])
            if slope < 0:
                eta = last.disk_free / -slope
        within = cfg.full_within_h * 3600.0
        if pct < cfg.min_free_pct or (eta is not None and eta < within):
            verdict = FIRE
        elif pct < 1.2 * cfg.min_free_pct or (eta is not None and eta < 2 * within):
            verdict = HOLD
        else:
            continue
        critical = pct < cfg.min_free_pct / 2 or (eta is not None and eta < 3600.0)
        when = f", full in {eta / 3600:.1f} h at the current rate" if eta is not None else ""
        yield Finding(
            "disk",
            f"disk:{dev.device}",
            verdict,
            "critical" if critical else "warning",
            f"{dev.device} has {last.disk_free / MIB:.0f} MiB free under its state dir ({pct:.1f}%){when}",
            clean(
                {
                    "free_bytes": last.disk_free,
                    "total_bytes": last.disk_total,
                    "free_pct": pct,
                    "min_free_pct": cfg.min_free_pct,
                    "slope_bytes_per_s": slope,
                    "full_in_h": None if eta is None else eta / 3600.0,
                    "full_within_h": cfg.full_within_h,
                    "heartbeats": len(beats),
                }
            ),
            device=dev.device,
            bundle=dev.bundle,
            weight=1.0 - pct / 100.0,
        )


def _median_rule(
    facts: FleetFacts,
    rule: str,
    window_s: float,
    min_beats: int,
    limit: float,
    value: Callable[[Any], float | None],
    unit: str,
    scale: float,
    what: str,
) -> Iterator[Finding]:
    for dev in facts.devices.values():
        values = [v for b in dev.beats if b.ts >= facts.now - window_s and (v := value(b)) is not None]
        if len(values) < min_beats:
            continue
        med = statistics.median(values)
        if med > limit:
            verdict = FIRE
        elif med > 0.9 * limit:
            verdict = HOLD
        else:
            continue
        yield Finding(
            rule,
            f"{rule}:{dev.device}",
            verdict,
            "warning",
            f"{dev.device}'s agent {what} {med / scale:.1f} {unit} (median of {len(values)} heartbeats), "
            f"above {limit / scale:.1f} {unit}",
            clean({"median": med, "limit": limit, "heartbeats": len(values), "window_s": window_s, "max": max(values)}),
            device=dev.device,
            bundle=dev.bundle,
            weight=med / limit,
        )


def memory(facts: FleetFacts, cfg: MemoryRule) -> Iterator[Finding]:
    yield from _median_rule(
        facts,
        "memory",
        cfg.window_s,
        cfg.min_heartbeats,
        cfg.max_mib * MIB,
        lambda b: None if b.rss_bytes is None else float(b.rss_bytes),
        "MiB",
        MIB,
        "uses",
    )


def cpu(facts: FleetFacts, cfg: CpuRule) -> Iterator[Finding]:
    yield from _median_rule(
        facts, "cpu", cfg.window_s, cfg.min_heartbeats, cfg.max_pct, lambda b: b.cpu_pct, "%", 1.0, "runs at"
    )


# ── all of them ───────────────────────────────────────────────────────────────────────


def evaluate(facts: FleetFacts, config: AlertConfig) -> tuple[list[Finding], set[str]]:
    """Every enabled rule over ``facts``: (findings, the rules that ran)."""
    c = config
    runs: dict[str, Callable[[], Iterator[Finding]]] = {
        "drift": lambda: drift(facts, c.drift),
        "prediction_drift": lambda: prediction_drift(facts, c.prediction_drift),
        "skew": lambda: skew(facts, c.skew, c.drift),
        "fleet_drift": lambda: fleet_drift(facts, c.fleet_drift, c.drift),
        "error_rate": lambda: error_rate(facts, c.error_rate),
        "offline": lambda: offline(facts, c.offline),
        "latency": lambda: latency(facts, c.latency),
        "low_confidence": lambda: low_confidence(facts, c.low_confidence),
        "disk": lambda: disk(facts, c.disk),
        "memory": lambda: memory(facts, c.memory),
        "cpu": lambda: cpu(facts, c.cpu),
    }
    ran = set(c.enabled_rules())
    findings = [f for name in c.enabled_rules() for f in runs[name]()]
    return findings, ran
