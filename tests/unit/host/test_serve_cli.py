"""``edgekit serve`` refuses what it cannot run with one clear line, before touching anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.cli.serve import JsonFormatter


def test_outside_a_workspace_it_needs_a_store_and_a_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEKIT_WORKSPACE", raising=False)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "no --store and --broker given" in result.output


def test_an_unknown_store_scheme_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--store", "mysql://db/x", "--broker", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "unsupported store URL scheme 'mysql'" in result.output


def test_an_unreachable_broker_is_a_fleet_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 't.db'}"
    result = CliRunner().invoke(main, ["serve", "--store", store, "--broker", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 6
    assert "cannot reach the MQTT broker" in result.output


def test_json_log_lines_are_json() -> None:
    import json
    import logging

    record = logging.LogRecord("edgekit.serve", logging.WARNING, __file__, 1, "asked %s", ("d1",), None)
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["level"], doc["logger"], doc["message"]) == ("warning", "edgekit.serve", "asked d1")


def test_the_workspace_names_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit import workspace

    ws = workspace.init(tmp_path / "ws", broker="mqtt://127.0.0.1:1")
    db = tmp_path / "elsewhere" / "telemetry.db"
    cfg = ws.root / "edgekit.toml"
    cfg.write_text(cfg.read_text().replace("[serve]", f'[serve]\nstore = "sqlite:///{db}"'))
    monkeypatch.chdir(ws.root)
    monkeypatch.delenv("EDGEKIT_WORKSPACE", raising=False)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 6 and "cannot reach the MQTT broker at 127.0.0.1:1" in result.output
    assert db.is_file()  # the store was opened (and its schema made) before the broker was tried

    cfg.write_text(cfg.read_text().replace("[serve]", '[serve]\nmetrics_port = "high"'))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2 and "metrics_port in edgekit.toml must be an integer" in result.output
