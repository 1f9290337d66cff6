"""What ``edgekit fleet history|drift|events|alerts`` answer, read from the telemetry store.

Each function returns JSON-ready data (times as ISO 8601 UTC); the CLI prints it as a
table or, under ``--json``, as the documented document. The drift answer merges every
window of the range into one histogram per device and bundle and judges the sum with the
device's own rules (``device_agent.drift.assess``), which finds a small persistent shift no
single window shows; without the bundle's reference (not in this workspace's registry) it
reports the windows' own verdicts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from device_agent.drift import assess, merge_windows
from device_agent.protocol import DriftMessage

from ..alerts.alert import iso, ordering
from ..alerts.catalog import BundleCatalog
from ..telemetry import Stored, TelemetryStore
from .status import with_iso_times

FEATURE_KEYS = ("psi", "psi_limit", "score", "location_z", "shift", "missing", "out_of_range", "drifted", "fired")


def devices_in(store: TelemetryStore, device: Sequence[str] = (), group: str | None = None) -> list[str] | None:
    """The devices asked for (None = all): named ones, plus every member of ``group`` (its
    latest birth message names its groups)."""
    if not device and group is None:
        return None
    chosen = set(device)
    if group is not None:
        for name, status in store.latest().items():
            if status.state is not None and group in status.state.groups:
                chosen.add(name)
    return sorted(chosen)


def _windows(
    store: TelemetryStore, devices: list[str] | None, since: float | None, until: float | None
) -> list[Stored[DriftMessage]]:
    if devices is None:
        return store.drift_windows(since=since, until=until)
    return [w for d in devices for w in store.drift_windows(device=d, since=since, until=until)]


def _feature(entry: Any) -> dict[str, Any]:
    return {k: entry.get(k) for k in FEATURE_KEYS if isinstance(entry, dict) and k in entry}


def drift(
    store: TelemetryStore,
    catalog: BundleCatalog,
    devices: list[str] | None,
    since: float | None,
    until: float | None = None,
    feature: str | None = None,
) -> list[dict[str, Any]]:
    """Per device and bundle: the range's windows (verdicts and per-feature scores) and,
    when the registry knows the bundle, all of them merged and judged as one."""
    groups: dict[tuple[str, str], list[Stored[DriftMessage]]] = {}
    for w in _windows(store, devices, since, until):
        groups.setdefault((w.device, w.doc.bundle.sha256), []).append(w)
    out = []
    for (device, _sha), stored in sorted(groups.items()):
        bundle = stored[0].doc.bundle
        names = [feature] if feature else None
        windows = []
        for s in stored:
            report = s.doc.window
            feats = report.get("features") or {}
            keep = names or list(feats)
            windows.append(
                {
                    "boot_id": s.doc.boot_id,
                    "seq": s.doc.seq,
                    "ts": iso(s.doc.ts),
                    "n": report.get("n"),
                    "verdict": report.get("verdict"),
                    "drifted": [n for n in report.get("drifted") or [] if n in keep],
                    "features": {n: _feature(feats.get(n)) for n in keep if n in feats},
                }
            )
        entry: dict[str, Any] = {
            "device": device,
            "bundle": bundle.to_json(),
            "from": iso(stored[0].doc.ts),
            "to": iso(stored[-1].doc.ts),
            "windows": windows,
            "flagged": sum(1 for w in windows if w["drifted"]),
            "merged": None,
            "judged_by": "device",
        }
        info = catalog.lookup(bundle)
        if info is not None:
            try:
                judged = assess(info.reference, merge_windows([s.doc.window for s in stored]))
            except ValueError:
                judged = None
            if judged is not None:
                feats = judged["features"]
                keep = names or list(feats)
                entry["judged_by"] = "reference"
                entry["merged"] = {
                    "n": judged["n"],
                    "windows": len(stored),
                    "verdict": judged["verdict"],
                    "drifted": [n for n in judged["drifted"] if n in keep],
                    "features": {n: _feature(feats[n]) for n in keep if n in feats},
                    "prediction": {k: judged["prediction"][k] for k in ("psi", "drifted")},
                    "thresholds": {k: judged["thresholds"][k] for k in ("alpha", "feature_alpha", "z")},
                }
        out.append(entry)
    return out


def events(
    store: TelemetryStore,
    devices: list[str] | None,
    since: float | None,
    until: float | None = None,
    kind: str | None = None,
    code: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    found = []
    for d in devices if devices is not None else [None]:
        found += store.events(device=d, since=since, until=until, kind=kind, code=code, limit=limit)
    found.sort(key=lambda e: (e.doc.ts, e.device, e.doc.seq))
    if limit is not None:
        found = found[-limit:]
    return [{**with_iso_times(e.doc.to_json()), "received": iso(e.received)} for e in found]


def alerts(
    store: TelemetryStore,
    devices: list[str] | None,
    group: str | None,
    since: float | None,
    state: str | None = None,
    rule: str | None = None,
    feature: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    found = store.alerts(state=state, devices=devices, group=group, rule=rule, feature=feature, since=since)
    found.sort(key=ordering)
    return [a.to_json() for a in (found[:limit] if limit is not None else found)]


def history(
    store: TelemetryStore,
    devices: list[str] | None,
    since: float | None,
    until: float | None = None,
    feature: str | None = None,
) -> list[dict[str, Any]]:
    """One timeline: births and goodbyes, deployment phase changes, events, drift verdict
    changes and alerts, oldest first."""
    out: list[tuple[float, dict[str, Any]]] = []
    names = devices if devices is not None else None
    for d in names if names is not None else [None]:
        for s in store.states(device=d, since=since, until=until):
            st = s.doc
            ts = st.ts if st.ts is not None else s.received
            text = (
                f"online (boot {st.boot_id}, agent {st.agent})"
                if st.online
                else "offline" + (f": {st.reason}" if st.reason else " (connection lost)")
            )
            out.append((ts, {"kind": "online" if st.online else "offline", "device": s.device, "text": text}))
        last: dict[tuple[str, str], tuple[str, str | None]] = {}
        for r in store.reported(device=d, since=since, until=until):
            p = r.doc
            active = p.active.label if p.active else None
            key = (r.device, p.boot_id)
            now = (str(p.phase), active)
            if last.get(key) == now:
                continue
            last[key] = now
            why = f" ({p.last_error.code})" if p.phase == "failed" and p.last_error else ""
            out.append((p.ts, {"kind": "phase", "device": r.device, "text": f"{p.phase}{why}, active {active or '-'}"}))
        for e in store.events(device=d, since=since, until=until):
            ev = e.doc
            out.append((ev.ts, {"kind": ev.kind, "device": e.device, "text": f"{ev.code}: {ev.detail}"[:200]}))
        verdicts: dict[str, str | None] = {}
        for w in store.drift_windows(device=d, since=since, until=until):
            m = w.doc
            drifted = [n for n in m.drifted if feature is None or n == feature]
            verdict = "drift" if drifted else m.verdict if feature is None else "ok"
            if verdicts.get(w.device) == verdict:
                continue
            verdicts[w.device] = verdict
            text = f"drift window {m.seq}: {verdict}" + (f" ({', '.join(drifted[:4])})" if drifted else "")
            out.append((m.ts, {"kind": "drift", "device": w.device, "text": text}))
    for a in store.alerts(devices=devices, feature=feature, since=since):
        out.append((a.started, {"kind": "alert", "device": a.device or a.group, "text": f"fired: {a.summary}"}))
        if a.resolved is not None:
            why = a.evidence.get("resolution", "")
            out.append(
                (a.resolved, {"kind": "alert", "device": a.device or a.group, "text": f"resolved: {a.key} {why}"})
            )
    out.sort(key=lambda item: item[0])
    return [{"ts": iso(ts), **entry} for ts, entry in out if (since is None or ts >= since)]
