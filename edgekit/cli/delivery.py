"""``edgekit bundles gc`` and ``edgekit rollback``."""

from __future__ import annotations

from typing import Any

import click

from .. import workspace
from ..fleet.gc import collect_garbage
from .output import emit, json_option


@click.group("bundles")
def bundles_group() -> None:
    """Bundles stored on the broker."""


@bundles_group.command("gc")
@click.option("--broker", default=None, help="MQTT broker URL (default: edgekit.toml).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def gc_cmd(broker: str | None, dry_run: bool, as_json: bool) -> None:
    """Clear retained bundle versions that no device needs (active, previous or desired).

    Example: edgekit bundles gc --dry-run
    """
    ws = workspace.find()
    report = collect_garbage(broker or ws.broker, ws.prefix, dry_run=dry_run)

    def text(d: dict[str, Any]) -> str:
        verb = "would remove" if d["dry_run"] else "removed"
        lines = [f"{verb} {len(d['removed'])} version(s), {d['bytes_freed']} bytes, {d['messages_cleared']} messages"]
        lines += [f"  - {r['name']} v{r['version']}" for r in d["removed"]]
        lines += [f"  kept {k['name']} v{k['version']} ({k['why']})" for k in d["kept"]]
        return "\n".join(lines)

    emit(report.to_dict(), as_json, text)


COMMANDS = [bundles_group]
