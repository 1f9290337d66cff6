"""``edgekit fleet history|drift|events|alerts``: the fleet's past, from the telemetry store
that ``edgekit serve`` fills (no broker needed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from .. import workspace
from ..errors import UsageError, WorkspaceError
from ..telemetry import TelemetryStore, open_store, store_url
from .fleet import fleet_group, parse_duration
from .output import emit, json_option, table

F = TypeVar("F", bound=Callable[..., Any])


def parse_since(text: str | None, now: float) -> float | None:
    """``2h`` (that long ago), ``7d``, or an ISO 8601 time; None = the beginning."""
    if text is None or text == "all":
        return None
    try:
        return now - parse_duration(text)
    except UsageError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is neither a duration nor a time", "use e.g. 2h, 7d or 2026-03-01T12:00") from None
    return stamp.timestamp() if stamp.tzinfo else stamp.astimezone().timestamp()


def open_telemetry(store: str | None) -> tuple[TelemetryStore, workspace.Workspace | None]:
    ws = None
    try:
        ws = workspace.find()
    except WorkspaceError:
        if store is None:
            raise
    return open_store(store_url(ws.config if ws else None, ws.state if ws else None, store)), ws


def common(default_since: str) -> Callable[[F], F]:
    def wrap(func: F) -> F:
        for option in reversed(
            [
                click.option("--device", "devices", multiple=True, help="Only this device (repeatable)."),
                click.option("--group", default=None, help="Only the devices of this group."),
                click.option(
                    "--since",
                    default=default_since,
                    show_default=True,
                    help="From this long ago (30m, 2h, 7d), an ISO 8601 time, or 'all'.",
                ),
                click.option("--store", default=None, help="Telemetry store URL (default: as edgekit serve uses)."),
                json_option,
            ]
        ):
            func = option(func)
        return func

    return wrap


def _when(iso_text: str | None) -> str:
    return (iso_text or "-")[:19].replace("T", " ")


@fleet_group.command("events")
@common("24h")
@click.option("--kind", type=click.Choice(["failure", "lifecycle"]), default=None, help="Only failures or milestones.")
@click.option("--code", default=None, help="Only this code (e.g. row.not_finite).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most the newest N.")
def events_cmd(
    devices: tuple[str, ...],
    group: str | None,
    since: str,
    store: str | None,
    as_json: bool,
    kind: str | None,
    code: str | None,
    limit: int | None,
) -> None:
    """Failures and lifecycle events the devices reported, oldest first.

    Example: edgekit fleet events --group plant-a --since 2h --kind failure
    """
    from ..fleet import history

    s, _ = open_telemetry(store)
    try:
        found = history.events(
            s, history.devices_in(s, devices, group), parse_since(since, time.time()), kind=kind, code=code, limit=limit
        )
    finally:
        s.close()

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no events in this range"
        return table(
            [[_when(e["ts"]), e["device"], e["kind"], e["code"], e["detail"][:70]] for e in rows],
            ["TIME (UTC)", "DEVICE", "KIND", "CODE", "DETAIL"],
        )

    emit(found, as_json, text, kind="events", key="events")


@fleet_group.command("alerts")
@common("24h")
@click.option("--feature", default=None, help="Only alerts about this feature.")
@click.option("--state", type=click.Choice(["firing", "resolved"]), default=None, help="Only firing or resolved ones.")
@click.option("--rule", default=None, help="Only this rule (drift, offline, disk, … : docs/alerts.md).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N.")
def alerts_cmd(
    devices: tuple[str, ...],
    group: str | None,
    since: str,
    store: str | None,
    as_json: bool,
    feature: str | None,
    state: str | None,
    rule: str | None,
    limit: int | None,
) -> None:
    """Alerts firing now and those resolved within --since, most urgent first.

    Example: edgekit fleet alerts --state firing --json
    """
    from ..fleet import history

    s, _ = open_telemetry(store)
    try:
        chosen = history.devices_in(s, devices, group)
        found = history.alerts(
            s, chosen, group, parse_since(since, time.time()), state=state, rule=rule, feature=feature, limit=limit
        )
    finally:
        s.close()

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no alerts in this range"
        return table(
            [
                [
                    a["state"].upper() if a["state"] == "firing" else a["state"],
                    a["severity"],
                    a["rule"],
                    a["device"] or (f"group {a['group']}" if a["group"] else "-"),
                    _when(a["started"]),
                    a["summary"][:90],
                ]
                for a in rows
            ],
            ["STATE", "SEVERITY", "RULE", "SUBJECT", "SINCE (UTC)", "SUMMARY"],
        )

    emit(found, as_json, text, kind="alerts", key="alerts")


@fleet_group.command("drift")
@common("24h")
@click.option("--feature", default=None, help="Only this feature.")
def drift_cmd(
    devices: tuple[str, ...], group: str | None, since: str, store: str | None, as_json: bool, feature: str | None
) -> None:
    """Drift over a time range: every window, and all of them merged and judged as one.

    Merging adds the windows' raw bin counts, so a small shift that no single window shows
    can be seen over a longer range (needs the bundle in this workspace's registry).

    Example: edgekit fleet drift --device pump-7 --since 7d --feature temperature
    """
    from ..alerts.catalog import BundleCatalog
    from ..fleet import history

    s, ws = open_telemetry(store)
    try:
        found = history.drift(
            s,
            BundleCatalog(ws),
            history.devices_in(s, devices, group),
            parse_since(since, time.time()),
            feature=feature,
        )
    finally:
        s.close()

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no drift windows in this range"
        out = []
        for r in rows:
            b = r["bundle"]
            head = f"{r['device']} · {b['name']} v{b['version']} · {len(r['windows'])} windows from {_when(r['from'])}"
            out.append(f"{head}, {r['flagged']} flagged by the device")
            merged = r["merged"]
            if merged is None:
                out.append("  (bundle not in this workspace's registry: the windows' own verdicts only)")
                continue
            out.append(f"  merged ({merged['n']} rows): {merged['verdict']}")
            rows_ = [
                [
                    name,
                    f"{f.get('score', 0):.2f}",
                    f"{f.get('psi', 0):.4f}",
                    f"{f.get('psi_limit', 0):.4f}",
                    "-" if f.get("location_z") is None else f"{f['location_z']:.2f}",
                    ",".join(f.get("fired") or []) or "-",
                ]
                for name, f in sorted(merged["features"].items(), key=lambda kv: -(kv[1].get("score") or 0))[:12]
            ]
            out.append(
                "  " + table(rows_, ["FEATURE", "SCORE", "PSI", "LIMIT", "LOCATION Z", "FIRED"]).replace("\n", "\n  ")
            )
        return "\n".join(out)

    emit(found, as_json, text, kind="drift", key="ranges")


@fleet_group.command("history")
@common("24h")
@click.option("--feature", default=None, help="Drift and alerts about this feature only.")
def history_cmd(
    devices: tuple[str, ...], group: str | None, since: str, store: str | None, as_json: bool, feature: str | None
) -> None:
    """One timeline: online/offline, deployment phases, events, drift verdict changes, alerts.

    Example: edgekit fleet history --device pump-7 --since 2d
    """
    from ..fleet import history

    s, _ = open_telemetry(store)
    try:
        found = history.history(
            s, history.devices_in(s, devices, group), parse_since(since, time.time()), feature=feature
        )
    finally:
        s.close()

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "nothing happened in this range"
        return table(
            [[_when(e["ts"]), e["device"] or "-", e["kind"], e["text"][:100]] for e in rows],
            ["TIME (UTC)", "DEVICE", "WHAT", "DETAIL"],
        )

    emit(found, as_json, text, kind="history", key="entries")


COMMANDS: list[click.Command] = []  # the commands above live in the fleet group
