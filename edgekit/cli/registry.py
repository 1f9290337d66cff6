"""``edgekit registry``: model versions, their stages, and the history of every change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import registry as reg
from .. import workspace
from .output import emit, json_option, table


def _versions(vs: list[int]) -> str:
    return ",".join(f"v{v}" for v in vs) or "-"


def _list_text(models: list[dict[str, Any]]) -> str:
    if not models:
        return "no models registered yet: build a bundle with 'edgekit bundle RUN --name NAME --key KEY'"
    rows = [
        [
            m["name"],
            f"v{m['production']}" if m["production"] else "-",
            _versions(m["staging"]),
            _versions(m["archived"]),
            f"v{m['latest']}",
            f"v{m['deployed']}" if m.get("deployed") else "-",
            str(m.get("updated") or "-"),
        ]
        for m in models
    ]
    return table(rows, ["MODEL", "PRODUCTION", "STAGING", "ARCHIVED", "LATEST", "DEPLOYED", "LAST CHANGE"])


def _move_text(d: dict[str, Any]) -> str:
    return "\n".join(
        f"{t['name']} v{t['version']}: {t['from_stage']} → {t['to_stage']}  ({t['actor']}, {t['at']}: {t['reason']})"
        for t in d["changes"]
    )


def _show_text(d: dict[str, Any]) -> str:
    rows = [
        [
            f"v{v['version']}",
            v["stage"],
            (f"rollback of v{v['rollback_of']}" if v.get("rollback_of") else "")
            or v["run_id"]
            or f"user model {str(v['model_sha256'])[:12]}",
            v["sha256"][:12],
            str(v["size"]),
            v["created"],
            v["created_by"],
        ]
        for v in d["versions"]
    ]
    prod = f"v{d['production']}" if d["production"] else "none"
    deployed = f"v{d['deployed']}" if d.get("deployed") else "never"
    lines = [
        f"{d['name']}  production: {prod}  highest deployed: {deployed} (devices refuse lower versions)",
        table(rows, ["VERSION", "STAGE", "FROM", "SHA256", "BYTES", "CREATED", "BY"]),
        "",
        "history",
    ]
    for t in d["history"]:
        lines.append(
            f"  {t['at']}  v{t['version']}  {t['from_stage'] or '(new)'} → {t['to_stage']}  "
            f"by {t['actor']}: {t['reason']}"
        )
    if d.get("deployments"):
        lines += ["", "deployments"]
        lines += [f"  {x['at']}  v{x['version']}  to {x['target']}  by {x['actor']}" for x in d["deployments"]]
    return "\n".join(lines)


@click.group("registry")
def registry_group() -> None:
    """Model versions and stages (staging → production → archived), with a full history.

    \b
    Example: edgekit registry promote pump 3 --to production --reason "passed the plant-a pilot"
    """


@registry_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List registered models: production version, versions per stage, last change.

    Example: edgekit registry list --json
    """
    emit(reg.models(workspace.find()), as_json, _list_text, "models", "models")


@registry_group.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str, as_json: bool) -> None:
    """Show a model's versions and every stage change (who, when, from, to, why).

    Example: edgekit registry show pump
    """
    emit(reg.show(workspace.find(), name), as_json, _show_text, "model")


@registry_group.command("promote")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--to",
    "stage",
    type=click.Choice([reg.PRODUCTION, reg.STAGING]),
    default=reg.PRODUCTION,
    show_default=True,
    help="Target stage; promoting to production archives the previous production version.",
)
@click.option("--reason", default=None, help="Why (recorded in the history; required without --evidence).")
@click.option(
    "--evidence",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The output of 'edgekit compare … --json' for this version: its verdict becomes the reason, kept with it.",
)
@json_option
def promote_cmd(name: str, version: int, stage: str, reason: str | None, evidence: Path | None, as_json: bool) -> None:
    """Promote a version; 'deploy NAME' then ships the production version.

    \b
    Example: edgekit registry promote pump 3 --to production --reason "beats v2 on the March holdout"
    Example: edgekit compare pump@2 pump@3 --on holdout.csv --on field.csv --json > cmp.json
             edgekit registry promote pump 3 --evidence cmp.json
    """
    if evidence is None and not (reason or "").strip():
        raise click.UsageError("Missing option '--reason' (or --evidence): every stage change says why")
    ws = workspace.find()
    kept = None
    if evidence is not None:
        from ..field.challenge import attach_evidence

        reason, kept = attach_evidence(ws, name, version, stage, evidence, reason)
    changes = reg.promote(ws, name, version, stage, reason or "")
    doc: dict[str, Any] = {"changes": [c.to_dict() for c in changes]}
    if kept is not None:
        doc["evidence"] = str(kept)
    emit(doc, as_json, _move_text, "stage_changes")


@registry_group.command("archive")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why (recorded in the history; required).")
@json_option
def archive_cmd(name: str, version: int, reason: str, as_json: bool) -> None:
    """Archive a version (from staging or production).

    Example: edgekit registry archive pump 2 --reason "false alarms on line 3"
    """
    change = reg.archive(workspace.find(), name, version, reason)
    emit({"changes": [change.to_dict()]}, as_json, _move_text, "stage_changes")


COMMANDS = [registry_group]
