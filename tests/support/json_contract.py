"""The ``--json`` contract's schemas (docs/json.md) and a CLI runner that holds commands to them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from edgekit.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "json.md"
# The commands that need a broker (checked in tests/integration/test_fleet_json.py), and their kinds.
FLEET_KIND = {
    ("deploy",): "deployment",
    ("fleet", "status"): "fleet",
    ("fleet", "forget"): "forgotten",
    ("desired", "refresh"): "refreshed",
    ("desired", "recover"): "refreshed",
    ("bundles", "gc"): "gc",
    ("rollback",): "bundle",
    ("broker", "check"): "broker",
    ("fleet", "samples", "pull"): "samples",
}
# The commands that read the telemetry store (checked in tests/unit/host/test_history_cli.py), and their kinds.
STORE_KIND = {
    ("fleet", "alerts"): "alerts",
    ("fleet", "events"): "events",
    ("fleet", "drift"): "drift",
    ("fleet", "history"): "history",
    ("report",): "report",
}
# The rollout commands (start in tests/integration/test_rollout.py, the rest in tests/unit/host/test_rollout_cli.py).
ROLLOUT_KIND = {
    ("rollout", "start"): "rollout",
    ("rollout", "status"): "rollout",
    ("rollout", "pause"): "rollout",
    ("rollout", "resume"): "rollout",
    ("rollout", "abort"): "rollout",
}

# Enrolment and the broker's configuration (checked in tests/unit/host/test_enrolment.py), and their kinds.
SECURITY_KIND = {
    ("devices", "add"): "device",
    ("devices", "revoke"): "device",
    ("devices", "list"): "devices",
    ("broker", "config"): "broker_config",
}

# The fleet simulator (checked in tests/integration/test_sim.py).
SIM_KIND = {("sim",): "sim"}


def load_schemas() -> dict[str, dict[str, Any]]:
    text = DOCS.read_text()
    blocks = dict(re.findall(r"<!-- schema: (\S+) -->\s*```json\n(.*?)\n```", text, flags=re.S))
    defs = json.loads(blocks.pop("$defs"))
    out = {}
    for kind, body in blocks.items():
        schema = {**json.loads(body), "$defs": defs}
        Draft202012Validator.check_schema(schema)
        out[kind] = schema
    return out


SCHEMAS = load_schemas()


def check(kind: str, doc: Any) -> None:
    errors = sorted(Draft202012Validator(SCHEMAS[kind]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{kind}: " + "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def json_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += json_commands(command, (*path, name))
        elif any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
            found.append((*path, name))
    return found


class Cli:
    """Runs ``edgekit ... --json`` in a workspace and returns the one document it printed."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.runner = CliRunner()
        self.env = {"EDGEKIT_WORKSPACE": str(root), "EDGEKIT_USER": "ci", **(env or {})}

    def __call__(self, *args: str, code: int = 0) -> Any:
        result = self.runner.invoke(main, [*args, "--json"], env=self.env)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr, result.exception)
        assert result.stderr == "", result.stderr  # under --json everything is the one document on stdout
        return json.loads(result.stdout)
