"""``edgekit rollout start|status|pause|resume|abort``: phased rollouts run by ``edgekit serve``.

The rollout library (gates, numpy) is imported when a rollout command runs, not with the CLI.
"""

from __future__ import annotations

import time
from typing import Any

import click

from .. import workspace
from .connection import BrokerChoice, broker_options
from .fleet import parse_duration
from .history import open_telemetry
from .output import ago, emit, json_option

store_option = click.option(
    "--store", default=None, help="Telemetry store URL (default: edgekit.toml [serve] store, else the workspace's)."
)


def rollout_doc(r: Any, requested: tuple[str, float, str] | None = None) -> dict[str, Any]:
    from ..rollout.controller import summary

    doc: dict[str, Any] = r.to_json()
    doc["summary"] = summary(r)
    doc["requested"] = None if requested is None else {"action": requested[0], "by": requested[2]}
    return doc


def _text(d: dict[str, Any]) -> str:
    b, prev = d["bundle"], d.get("previous") or {}
    phases = d["phases"]
    state = d["state"]
    where = f"phase {d['phase'] + 1}/{len(phases)} ({phases[min(d['phase'], len(phases) - 1)] * 100:g}%)"
    lines = [
        f"rollout {d['id']}: {b['name']} v{b['version']} to group {d['group']} (from v{prev.get('version', '?')}): "
        f"{state}" + (f", {where}" if state in ("running", "paused") else ""),
        f"  phases {d['phases_text']}, bake {d['bake_s']:.0f} s; told {d['summary']['told']} device(s) "
        f"({', '.join(str(n) for n in d['summary']['per_phase'])} per phase), "
        f"skipped {d['summary']['skipped']} offline",
    ]
    if d["baked_from"] and state == "running":
        lines.append(f"  baking since {ago(time.time() - d['baked_from'])}")
    if d.get("requested"):
        lines.append(f"  requested: {d['requested']['action']} by {d['requested']['by']} (edgekit serve applies it)")
    if d.get("rollback"):
        lines.append(f"  rolled back with v{d['rollback']['version']} (v{prev.get('version')} re-signed)")
    if d["skipped"]:
        lines.append(f"  skipped (offline at their turn): {', '.join(sorted(d['skipped'])[:10])}")
    if d["decisions"]:
        last = d["decisions"][-1]
        lines.append(f"  decision at phase {last['phase'] + 1}: {last['verdict']} ({last['reason']})")
        lines += [f"    {g['gate']:<17} {g['verdict']:<8} {g['summary']}" for g in last["gates"]]
    if d["note"] and state == "running":
        lines.append(f"  now: {d['note']}")
    lines += [f"  {e['at']}  {e['text']}" for e in d["log"][-8:]]
    return "\n".join(lines)


@click.group("rollout")
def rollout_group() -> None:
    """Phased rollouts with health and ML gates, run by 'edgekit serve' (docs/rollouts.md)."""


@rollout_group.command("start")
@click.argument("bundle")
@click.option("--group", required=True, help="The group of devices to roll out to.")
@click.option(
    "--phases", default=None, help="Shares of the group per phase (default: [rollout] phases, 1%,10%,50%,100%)."
)
@click.option(
    "--bake", default=None, help="How long each phase runs before it may widen: 10m, 90s (default: [rollout] bake_s)."
)
@click.option(
    "--key", "key_name", default=None, help="Key serve signs with (roles deploy and bundle; default: the only one)."
)
@broker_options
@store_option
@json_option
def start_cmd(
    bundle: str,
    group: str,
    phases: str | None,
    bake: str | None,
    key_name: str | None,
    broker: BrokerChoice,
    store: str | None,
    as_json: bool,
) -> None:
    """Start rolling NAME@VERSION out to a group, phase by phase; 'edgekit serve' runs it.

    Example: edgekit rollout start pump@3 --group plant-a --phases 1%,10%,50%,100% --bake 10m
    """

    ws = workspace.find()
    from ..rollout.commands import start
    from ..rollout.config import RolloutConfig
    from ..rollout.plan import parse_phases

    config = RolloutConfig.from_toml(ws.config.get("rollout"))
    shares = parse_phases(phases or config.phases)
    bake_s = parse_duration(bake) if bake is not None else config.bake_s
    db, _ = open_telemetry(store)
    try:
        r = start(ws, db, bundle, group, shares, bake_s, broker=broker.resolve(ws), key=key_name, config=config)
    finally:
        db.close()
    emit(
        rollout_doc(r),
        as_json,
        lambda d: _text(d) + f"\n'edgekit serve' runs it; follow it with: edgekit rollout status {d['id']}",
        kind="rollout",
    )


@rollout_group.command("status")
@click.argument("rollout_id", required=False)
@store_option
@json_option
def status_cmd(rollout_id: str | None, store: str | None, as_json: bool) -> None:
    """Where a rollout is: phase, devices told and skipped, each gate's verdict and evidence.

    Example: edgekit rollout status          # the newest (open ones first)
    """

    from ..telemetry import rollouts as stored

    db, _ = open_telemetry(store)
    try:
        r = stored.get(db, rollout_id)
        req = stored.requested(db, r.id)
    finally:
        db.close()
    emit(rollout_doc(r, req), as_json, _text, kind="rollout")


def _request_cmd(action: str, help_text: str) -> click.Command:
    @click.argument("rollout_id", required=False)
    @store_option
    @json_option
    def cmd(rollout_id: str | None, store: str | None, as_json: bool) -> None:
        from ..rollout.commands import request
        from ..telemetry import rollouts as stored

        db, _ = open_telemetry(store)
        try:
            r = request(db, rollout_id, action)
            req = stored.requested(db, r.id)
        finally:
            db.close()
        emit(rollout_doc(r, req), as_json, _text, kind="rollout")

    cmd.__doc__ = help_text
    return rollout_group.command(action)(cmd)


pause_cmd = _request_cmd(
    "pause", "Stop widening a rollout (serve deploys nothing more, judges nothing).\n\nExample: edgekit rollout pause"
)
resume_cmd = _request_cmd(
    "resume", "Resume a paused rollout; its phase bakes again from now.\n\nExample: edgekit rollout resume"
)
abort_cmd = _request_cmd(
    "abort", "Abort a rollout: serve rolls the group back to the previous version.\n\nExample: edgekit rollout abort"
)

COMMANDS = [rollout_group]
