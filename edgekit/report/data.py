"""What the fleet report shows, read from the telemetry store and the workspace registry.

Plain data (no plotting here), so what the page shows can be tested apart from how it is
drawn: the fleet table, open and recent alerts, drift scores over time per device and
feature (1.0 is each window's decision boundary), reference against live histograms of the
features that drifted (every window of the range merged), prediction and confidence
distributions per bundle, latency and resource use over time, and the deployment history.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_agent.drift import CategoricalRef, FeatureRef, Reference, assess, merge_windows
from device_agent.protocol import BundleRef, DriftMessage

from .. import registry
from ..alerts.alert import Alert, iso, ordering, severity_rank
from ..alerts.catalog import BundleCatalog
from ..errors import EdgekitError
from ..telemetry import Stored, TelemetryStore
from ..workspace import Workspace

MAX_FEATURES_PER_DEVICE = 8  # drift lines per device chart: the highest-scoring features
MAX_HISTOGRAMS = 12
MAX_POINTS = 600  # per device series; longer ones are thinned evenly


@dataclass
class Series:
    device: str
    ts: list[float] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class Histogram:
    title: str
    labels: list[str]
    live: list[float]  # proportions
    reference: list[float] | None  # None when the registry does not know the bundle
    rows: int
    device: str | None = None
    feature: str | None = None
    psi: float | None = None
    limit: float | None = None


@dataclass
class ReportData:
    generated: float
    since: float | None
    store: str
    devices: list[dict[str, Any]]
    alerts: list[Alert]
    drift: list[Series]  # per device: each feature's score per window
    histograms: list[Histogram]
    predictions: list[Histogram]
    confidences: list[Histogram]
    latency: list[Series]  # p50_ms, p99_ms
    resources: list[Series]  # rss_mib, cpu_pct, disk_free_gib
    deployments: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _labels(feature: FeatureRef | CategoricalRef) -> list[str]:
    if isinstance(feature, CategoricalRef):
        return [str(c) for c in feature.categories] + ["other"]
    return _edge_labels(feature.edges)


def _edge_labels(edges: tuple[float, ...]) -> list[str]:
    if not edges:
        return ["all"]
    out = [f"< {edges[0]:.4g}"]
    out += [f"{a:.4g} – {b:.4g}" for a, b in itertools.pairwise(edges)]
    out.append(f"≥ {edges[-1]:.4g}")
    return out


def _props(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _thin(n: int) -> list[int]:
    if n <= MAX_POINTS:
        return list(range(n))
    step = n / MAX_POINTS
    return sorted({min(n - 1, int(i * step)) for i in range(MAX_POINTS)} | {n - 1})


def collect(
    store: TelemetryStore, ws: Workspace | None, since: float | None, now: float | None = None, store_label: str = ""
) -> ReportData:
    now = time.time() if now is None else now
    catalog = BundleCatalog(ws)
    statuses = store.latest()
    alerts = sorted(store.alerts(since=since), key=ordering)
    worst: dict[str, Alert] = {}
    for a in alerts:
        if a.firing and a.device and (a.device not in worst or ordering(a) < ordering(worst[a.device])):
            worst[a.device] = a
    devices = []
    for name in sorted(statuses):
        d = statuses[name].to_dict(now)
        firing = [a for a in alerts if a.firing and a.device == name]
        d["alerts_firing"] = len(firing)
        d["alert_severity"] = worst[name].severity if name in worst else None
        devices.append(d)

    windows = store.drift_windows(since=since)
    by_device: dict[str, list[Stored[DriftMessage]]] = {}
    for w in windows:
        by_device.setdefault(w.device, []).append(w)
    alerted = {
        (str(a.device), str(a.feature)) for a in alerts if a.rule in ("drift", "skew") and a.device and a.feature
    }
    drift_series = [_drift_series(d, ws_, alerted) for d, ws_ in sorted(by_device.items())]

    histograms: list[Histogram] = []
    notes: list[str] = []
    predictions: list[Histogram] = []
    confidences: list[Histogram] = []
    by_bundle: dict[str, list[Stored[DriftMessage]]] = {}
    for device, stored in sorted(by_device.items()):
        current = stored[-1].doc.bundle
        mine = [s for s in stored if s.doc.bundle.sha256 == current.sha256]
        by_bundle.setdefault(current.sha256, []).extend(mine)
        info = catalog.lookup(current)
        try:
            merged = merge_windows([s.doc.window for s in mine])
        except ValueError:
            continue
        if info is None:
            notes.append(
                f"{current.label} (on {device}) is not in this workspace's registry: live data without its reference"
            )
        chosen = _drifting(mine, alerted, device)
        for name in chosen:
            if len(histograms) >= MAX_HISTOGRAMS:
                break
            histograms.append(_feature_histogram(device, name, merged, mine, info.reference if info else None))
    for stored in by_bundle.values():
        bundle = stored[-1].doc.bundle
        info = catalog.lookup(bundle)
        try:
            merged = merge_windows([s.doc.window for s in stored])
        except ValueError:
            continue
        devices_of = sorted({s.device for s in stored})
        title = f"{bundle.label} on {len(devices_of)} device(s)"
        pred, conf = _output_histograms(title, merged, info.reference if info else None)
        predictions.append(pred)
        if conf is not None:
            confidences.append(conf)

    latency, resources = _heartbeat_series(store, since)
    return ReportData(
        generated=now,
        since=since,
        store=store_label or store.backend,
        devices=devices,
        alerts=alerts,
        drift=drift_series,
        histograms=histograms,
        predictions=predictions,
        confidences=confidences,
        latency=latency,
        resources=resources,
        deployments=_deployments(store, ws, since, {s[-1].doc.bundle.name for s in by_device.values()}),
        notes=notes,
    )


def _drift_series(device: str, stored: list[Stored[DriftMessage]], alerted: set[tuple[str, str]]) -> Series:
    series = Series(device)
    peak: dict[str, float] = {}
    for s in stored:
        for name, entry in (s.doc.window.get("features") or {}).items():
            score = entry.get("score") if isinstance(entry, Mapping) else None
            if isinstance(score, int | float):
                peak[name] = max(peak.get(name, 0.0), float(score))
    keep = sorted(peak, key=lambda n: (-((device, n) in alerted), -peak[n], n))[:MAX_FEATURES_PER_DEVICE]
    idx = _thin(len(stored))
    series.ts = [stored[i].doc.ts for i in idx]
    for name in keep:
        vals: list[float | None] = []
        for i in idx:
            entry = (stored[i].doc.window.get("features") or {}).get(name)
            score = entry.get("score") if isinstance(entry, Mapping) else None
            vals.append(
                float(score) if isinstance(score, int | float) and stored[i].doc.verdict != "insufficient" else None
            )
        series.values[name] = vals
    return series


def _drifting(stored: list[Stored[DriftMessage]], alerted: set[tuple[str, str]], device: str) -> list[str]:
    """Features to show as histograms: those alerted on, then those flagged most often."""
    counts: dict[str, int] = {}
    for s in stored:
        for name in s.doc.drifted:
            counts[name] = counts.get(name, 0) + 1
    names = sorted(counts, key=lambda n: (-((device, n) in alerted), -counts[n], n))
    return [n for n in names if counts[n] >= 2 or (device, n) in alerted][:3]


def _feature_histogram(
    device: str, name: str, merged: Mapping[str, Any], stored: list[Stored[DriftMessage]], ref: Reference | None
) -> Histogram:
    entry = merged["features"][name]
    counts = list(entry["counts"])
    labels: list[str] = [f"bin {i}" for i in range(len(counts))]
    reference = None
    psi = limit = None
    if ref is not None:
        feat = next((f for f in ref.features if f.name == name), None)
        if feat is not None and feat.bins == len(counts):
            labels, reference = _labels(feat), list(feat.proportions)
        try:
            judged = assess(ref, dict(merged))["features"][name]
            psi, limit = judged["psi"], judged["psi_limit"]
        except (ValueError, KeyError):
            pass
    return Histogram(
        f"{name} on {device}, {len(stored)} windows",
        labels,
        _props(counts),
        reference,
        sum(counts),
        device,
        name,
        psi,
        limit,
    )


def _output_histograms(
    title: str, merged: Mapping[str, Any], ref: Reference | None
) -> tuple[Histogram, Histogram | None]:
    pred_counts = list(merged["prediction"]["counts"])
    if ref is not None and ref.prediction.bins == len(pred_counts):
        labels = (
            [str(x) for x in ref.prediction.labels]
            if ref.prediction.kind == "classes"
            else _edge_labels(ref.prediction.edges)
        )
        pred_ref: list[float] | None = list(ref.prediction.proportions)
    else:
        labels, pred_ref = [f"class {i}" for i in range(len(pred_counts))], None
    pred = Histogram(f"predictions: {title}", labels, _props(pred_counts), pred_ref, sum(pred_counts))
    conf_in = merged.get("confidence")
    if not isinstance(conf_in, Mapping):
        return pred, None
    conf_counts = list(conf_in["counts"])
    if ref is not None and ref.confidence is not None and len(ref.confidence.proportions) == len(conf_counts):
        conf_labels, conf_ref = _edge_labels(ref.confidence.edges), list(ref.confidence.proportions)
    else:
        conf_labels, conf_ref = [f"bin {i}" for i in range(len(conf_counts))], None
    return pred, Histogram(f"confidence: {title}", conf_labels, _props(conf_counts), conf_ref, sum(conf_counts))


def _heartbeat_series(store: TelemetryStore, since: float | None) -> tuple[list[Series], list[Series]]:
    latency: dict[str, Series] = {}
    resources: dict[str, Series] = {}
    beats = store.heartbeats(since=since)
    per: dict[str, list[Any]] = {}
    for b in beats:
        per.setdefault(b.device, []).append(b.doc)
    for device, docs in sorted(per.items()):
        lat = latency[device] = Series(device, values={"p50_ms": [], "p99_ms": []})
        res = resources[device] = Series(device, values={"rss_mib": [], "cpu_pct": [], "disk_free_gib": []})
        for i in _thin(len(docs)):
            h = docs[i]
            if h.stats.latency is not None:
                lat.ts.append(h.ts)
                lat.values["p50_ms"].append(h.stats.latency.p50_us / 1000.0)
                lat.values["p99_ms"].append(h.stats.latency.p99_us / 1000.0)
            r = h.stats.resources
            if r is not None:
                res.ts.append(h.ts)
                res.values["rss_mib"].append(r.rss_bytes / float(1 << 20))
                res.values["cpu_pct"].append(r.cpu_pct)
                res.values["disk_free_gib"].append(r.disk_free_bytes / float(1 << 30))
    return [s for s in latency.values() if s.ts], [s for s in resources.values() if s.ts]


def _deployments(
    store: TelemetryStore, ws: Workspace | None, since: float | None, names: set[str]
) -> list[dict[str, Any]]:
    """The registry's deployments of the bundles seen, and each device's activations (its
    ``lifecycle.activated`` events), newest first."""
    out: list[dict[str, Any]] = []
    if ws is not None:
        for name in sorted(names):
            try:
                for d in registry.deployments(ws, name):
                    out.append(
                        {
                            "at": d.at,
                            "what": f"{d.name} v{d.version}",
                            "where": d.target,
                            "who": d.actor,
                            "how": "deployed",
                        }
                    )
            except (EdgekitError, OSError):
                continue
    for e in store.events(since=since, kind="lifecycle", code="lifecycle.activated"):
        b: BundleRef | None = e.doc.bundle
        out.append(
            {
                "at": iso(e.doc.ts),
                "what": b.label if b is not None else "?",
                "where": f"device:{e.device}",
                "who": e.device,
                "how": "activated",
            }
        )
    out.sort(key=lambda d: str(d["at"]), reverse=True)
    return out


def severity_of(devices: list[dict[str, Any]]) -> str | None:
    ranked = [d["alert_severity"] for d in devices if d.get("alert_severity")]
    return max(ranked, key=severity_rank) if ranked else None
