"""The agent as a service: its systemd unit (checked by systemd-analyze), its logs, its settings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent import cli, logs, systemd
from device_agent.config import AgentConfig
from device_agent.errors import ConfigError

AGENT = str(Path(sys.executable).parent / "edgekit-agent")


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "pump-7"\nstate_dir = "/var/lib/edgekit"\ntrust = "/etc/edgekit/trust.json"\n{text}')
    return path


def unit_lines(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_runs_the_agent_unprivileged_and_confined(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[api]\nsocket = "/run/edgekit-agent/agent.sock"\n[service]\nmemory_max = "128M"\n')
    result = CliRunner().invoke(
        cli.main, ["service", "write-unit", "--config", str(config), "--exec", AGENT, "--systemd-version", "252"]
    )
    assert result.exit_code == 0, result.output
    unit = unit_lines(result.output)
    assert unit["ExecStart"] == [f"{AGENT} --config {config} --input none"]
    assert (unit["User"], unit["Group"]) == (["edgekit"], ["edgekit"])
    assert unit["NoNewPrivileges"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["ProtectSystem"] == ["strict"] and unit["StateDirectory"] == ["edgekit"]
    assert unit["RuntimeDirectory"] == ["edgekit-agent"]  # the socket's directory
    assert "ReadWritePaths" not in unit  # nothing else is writable
    assert (unit["MemoryMax"], unit["CPUQuota"]) == (["128M"], ["100%"])
    assert unit["Restart"] == ["on-failure"] and unit["StartLimitIntervalSec"] == ["0"]
    assert "RestartSteps" not in unit  # systemd 252 does not know it
    assert unit["Type"] == ["notify"] and unit["StandardError"] == ["journal"]
    # The config lives in a temporary directory here: a private /tmp would hide it.
    assert "PrivateTmp" not in unit and str(config).startswith("/tmp")
    etc = AgentConfig.load(config)
    assert unit_lines(systemd.unit_text(etc, "/etc/edgekit/agent.toml", "/usr/bin/edgekit-agent"))["PrivateTmp"] == [
        "yes"
    ]


def test_newer_systemd_gets_restart_back_off_and_flags_override_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    args = ["--exec", AGENT, "--systemd-version", "255", "--user", "pump", "--memory-max", "96M"]
    result = CliRunner().invoke(cli.main, ["service", "write-unit", "--config", str(config), *args])
    unit = unit_lines(result.output)
    assert unit["RestartSteps"] == ["8"] and unit["RestartMaxDelaySec"] == ["5min"]
    assert unit["User"] == ["pump"] and unit["MemoryMax"] == ["96M"]


def test_a_state_dir_outside_var_lib_is_made_writable_explicitly(tmp_path: Path) -> None:
    config = AgentConfig.load(None, {"device_id": "d", "state_dir": "/srv/edgekit", "trust": "/etc/t.json"})
    unit = unit_lines(systemd.unit_text(config, "/etc/edgekit/agent.toml", AGENT, 252))
    assert unit["ReadWritePaths"] == ["/srv/edgekit"] and "StateDirectory" not in unit
    assert unit["ProtectHome"] == ["read-only" if AGENT.startswith(("/root", "/home")) else "yes"]


def test_write_unit_needs_absolute_paths_and_a_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "bare.toml"
    config.write_text('device_id = "d"\n')
    result = CliRunner().invoke(cli.main, ["service", "write-unit", "--config", str(config), "--exec", AGENT])
    assert result.exit_code == 2 and "sets no state_dir" in result.output
    good = write_config(tmp_path)
    result = CliRunner().invoke(cli.main, ["service", "write-unit", "--config", str(good), "--exec", "edgekit-agent"])
    assert result.exit_code == 2 and "must be an absolute path" in result.output


def _systemd_analyze() -> str | None:
    return shutil.which("systemd-analyze")


@pytest.mark.skipif(_systemd_analyze() is None, reason="systemd-analyze cannot be found (.ci/run installs systemd)")
def test_systemd_analyze_verifies_the_written_unit(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[api]\nsocket = "/run/edgekit-agent/agent.sock"\n')
    out = tmp_path / "edgekit-agent.service"
    result = CliRunner().invoke(
        cli.main, ["service", "write-unit", "--config", str(config), "--exec", AGENT, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [_systemd_analyze() or "", "verify", str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # verify exits 0 even on unknown keys; any line it prints about the unit is a defect.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "edgekit-agent.service" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with an unknown key or a missing program is flagged."""
    exe = _systemd_analyze()
    if exe is None:
        pytest.skip("systemd-analyze cannot be found (.ci/run installs systemd)")
    out = tmp_path / "broken.service"
    out.write_text("[Service]\nExecStart=/nonexistent/edgekit-agent\nProtectSystm=strict\n")
    done = subprocess.run([exe, "verify", str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 or "ProtectSystm" in done.stderr


def test_sd_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1")
        assert sock.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")


# ── logs ──────────────────────────────────────────────────────────────────────────────


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        logs.setup("json", "info")
        logging.getLogger("edgekit.agent").info("serving %s", "wine@1")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("edgekit.agent").exception("worker error")
        logging.getLogger("edgekit.agent").debug("not shown at info")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers.clear()
    assert [(e["level"], e["msg"]) for e in lines] == [("info", "serving wine@1"), ("error", "worker error")]
    assert "ValueError: boom" in lines[1]["exc"] and lines[0]["ts"].endswith("Z")


def test_journald_gets_a_priority_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    err = open(tmp_path / "stderr", "w")  # noqa: SIM115 - closed below
    st = os.fstat(err.fileno())
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    try:
        logs.setup("text", "warning")
        logging.getLogger("edgekit.agent").error("disk full")
        logging.getLogger("edgekit.agent").warning("slow")
    finally:
        logging.getLogger().handlers.clear()
        err.close()
    text = (tmp_path / "stderr").read_text().splitlines()
    assert text[0].startswith("<3>") and text[1].startswith("<4>")


def test_log_and_api_settings_are_checked(tmp_path: Path) -> None:
    base = {"device_id": "d1", "state_dir": str(tmp_path), "trust": "/t"}
    for flags, message in (
        ({"log_format": "xml"}, "log.format 'xml'"),
        ({"log_level": "loud"}, "log.level 'loud'"),
        ({"socket": "x" * 120}, "a Unix socket path can have at most 107"),
    ):
        with pytest.raises(ConfigError, match=message):
            cli.load_config(None, {**base, **flags})
    path = tmp_path / "a.toml"
    path.write_text('[api]\nsocket_mode = "rw-rw----"\n')
    with pytest.raises(ConfigError, match="not a file mode"):
        cli.load_config(str(path), base)
    path.write_text("[api]\nmax_batch_rows = 0\n")
    with pytest.raises(ConfigError, match="max_batch_rows must be at least 1"):
        cli.load_config(str(path), base)
    config = cli.load_config(None, {**base, "socket": "/run/ek/a.sock", "log_format": "json"})
    assert (config.socket_path, config.log.format, config.socket_mode) == ("/run/ek/a.sock", "json", 0o660)
    assert cli.load_config(None, {**base, "socket": ""}).socket_path == ""
    assert cli.load_config(None, base).socket_path == os.path.join(str(tmp_path), "agent.sock")


def test_options_before_a_command_are_refused() -> None:
    result = CliRunner().invoke(cli.main, ["--device-id", "d1", "health", "--socket", "/x"])
    assert result.exit_code == 2 and "--device-id belongs to the agent itself" in result.output


def test_health_needs_exactly_one_way_to_reach_the_agent(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["health"])
    assert result.exit_code == 2 and "give one of --config, --socket or --tcp-port" in result.output
    result = CliRunner().invoke(cli.main, ["health", "--socket", str(tmp_path / "none.sock")])
    assert result.exit_code == 3 and "no agent socket at" in result.output


def test_paths_with_spaces_and_percent_signs_stay_one_word(tmp_path: Path) -> None:
    folder = tmp_path / "edge kit 100%"
    folder.mkdir()
    config = folder / "agent.toml"
    config.write_text('device_id = "d"\nstate_dir = "/srv/edge kit"\ntrust = "/etc/t.json"\n')
    text = systemd.unit_text(AgentConfig.load(config), str(config), AGENT, 252)
    quoted = '"' + str(config).replace("%", "%%") + '"'
    assert f"ExecStart={AGENT} --config {quoted} --input none" in text
    assert 'ReadWritePaths="/srv/edge kit"' in text
    exe = shutil.which("systemd-analyze")
    if exe is not None:  # systemd reads it back as the same words
        unit = tmp_path / "edgekit-agent.service"
        unit.write_text(text)
        done = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0 and "edgekit-agent.service" not in done.stderr, done.stderr
