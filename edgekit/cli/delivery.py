"""``edgekit bundles gc`` and ``edgekit rollback``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import registry, workspace
from ..fleet.gc import collect_garbage
from ..rollback import rollback
from .connection import BrokerChoice, broker_options
from .output import emit, json_option


@click.group("bundles")
def bundles_group() -> None:
    """Bundles stored on the broker."""


@bundles_group.command("gc")
@broker_options
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def gc_cmd(broker: BrokerChoice, dry_run: bool, as_json: bool) -> None:
    """Clear retained bundle versions that no device needs (active, previous or desired).

    Example: edgekit bundles gc --dry-run
    """
    ws = workspace.find()
    report = collect_garbage(broker.resolve(ws), ws.prefix, dry_run=dry_run, protected=registry.protected_versions(ws))

    def text(d: dict[str, Any]) -> str:
        verb = "would remove" if d["dry_run"] else "removed"
        lines = [f"{verb} {len(d['removed'])} version(s), {d['bytes_freed']} bytes, {d['messages_cleared']} messages"]
        lines += [f"  - {r['name']} v{r['version']}" for r in d["removed"]]
        lines += [f"  kept {k['name']} v{k['version']} ({k['why']})" for k in d["kept"]]
        return "\n".join(lines)

    emit(report.to_dict(), as_json, text, kind="gc")


@click.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", type=int, required=True, help="The older version to go back to.")
@click.option("--key", "key_name", required=True, help="Signing key (role 'bundle').")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
@json_option
def rollback_cmd(name: str, to_version: int, key_name: str, out_dir: Path, as_json: bool) -> None:
    """Ship an older version again as a new, higher version marked as a rollback; deploy it next.

    Example: edgekit rollback wine --to 3 --key release && edgekit deploy wine-v5.ekb --group plant-a
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built = rollback(workspace.find(), name, to_version, key_name, out_dir)
    emit(
        {**built.to_dict(), "rollback_of": to_version},
        as_json,
        lambda d: (
            f"{d['path']}  {d['name']} v{d['version']} restores v{to_version}\n"
            f"deploy it like any upgrade: edgekit deploy {d['name']}@{d['version']} --group GROUP "
            f"(or promote it: edgekit registry promote {d['name']} {d['version']} --to production --reason ...)"
        ),
        kind="bundle",
    )


COMMANDS = [bundles_group, rollback_cmd]
