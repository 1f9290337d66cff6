"""AgentConfig is the single source of every setting; the CLI and a TOML file only override it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from device_agent import cli
from device_agent.config import AgentConfig, CoreSettings, EngineSettings, default_of, settings
from device_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'device_id = "pump-7"\nstate_dir = "/s"\ntrust = "/t.json"\ngroups = ["a", "b"]\n'
        '[engine]\ntrial_rows = 100\n[core]\nheartbeat_interval_s = 2\n[mqtt]\nbroker = "mqtt://10.0.0.2:1884"\n',
    )
    config = AgentConfig.load(path, {"engine.trial_rows": 7})
    assert config.engine.trial_rows == 7  # the flag wins over the file
    assert config.core.heartbeat_interval_s == 2.0 and isinstance(config.core.heartbeat_interval_s, float)
    assert config.groups == ("a", "b")
    assert config.broker_host_port == ("10.0.0.2", 1884, False)
    assert config.engine.trial_max_s == EngineSettings().trial_max_s  # untouched: the default
    assert config.core.chunk_window == CoreSettings().chunk_window


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine]\ntrial_rowz = 1\n", "unknown setting 'engine.trial_rowz'"),
        ("[nope]\nx = 1\n", "unknown config section [nope]"),
        ('[engine]\ntrial_rows = "many"\n', "must be an integer"),
        ("[core]\nheartbeat_interval_s = true\n", "must be a number"),
        ("groups = [1]\n", "must be a list of strings"),
        ("device_id = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgentConfig.load(write(tmp_path, text))


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        AgentConfig.load(tmp_path / "absent.toml")


def test_every_setting_has_a_unit_slot_and_help() -> None:
    rows = settings()
    assert len(rows) == len({key for key, *_ in rows})
    for key, _unit, default, help_text in rows:
        assert help_text, key
        assert default_of(key) == default


def test_the_cli_restates_no_default() -> None:
    """Every flag that maps to a setting defaults to None (left out = the config's value), and
    leaving all of them out gives exactly AgentConfig's defaults."""
    params = {p.name: p for p in cli.main.params}
    parsed = cli.main.make_context("edgekit-agent", [], resilient_parsing=True).params
    for name, key in cli.FLAGS.items():
        param = params[name]
        assert parsed[name] in (None, ()), f"--{name} restates a default"
        default = default_of(key)
        if default not in ("", (), None, False) and isinstance(param, click.Option):
            assert f"[default: {default}]" in (param.help or ""), f"--{name} does not show {key}'s default"
    config = cli.load_config(None, {"device_id": "d1", "state_dir": "/s", "trust": "/t"})
    expected = dataclasses.replace(AgentConfig(), device_id="d1", state_dir="/s", trust="/t")
    assert config == expected


def test_no_setting_default_is_written_twice_in_the_agent() -> None:
    """Module-level numeric constants in the agent's modules would be defaults written outside
    AgentConfig; only format and protocol constants may live elsewhere."""
    allowed = {
        ("protocol.py", "FORMAT"),
        ("protocol.py", "MAX_CHUNKS"),
        ("protocol.py", "MAX_RANGES"),
        ("protocol.py", "MAX_SAMPLE_VALUES"),
        ("bundle.py", "FORMAT"),
        ("trust.py", "MAX_TRUST_BYTES"),
        ("trust.py", "MAX_SIGNATURES"),
        ("core.py", "DETAIL_MAX"),
        ("mqtt.py", "PACKET_MARGIN"),
        ("mqtt.py", "ANNOUNCE_MARGIN"),
        ("drift.py", "*"),  # statistics constants of the drift format, shipped in the bundle
    }
    found = []
    for path in sorted((ROOT / "device_agent").glob("*.py")):
        if path.name == "config.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.BinOp)):
                value = node.value
                if isinstance(value, ast.Constant) and not isinstance(value.value, (int, float)):
                    continue
                for target in node.targets:
                    named = isinstance(target, ast.Name) and target.id.isupper()
                    if named and not {(path.name, getattr(target, "id", "")), (path.name, "*")} & allowed:
                        found.append(f"{path.name}: {getattr(target, 'id', '')}")
    assert found == []


def test_a_bad_device_id_leaves_no_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(
        cli.main, ["--device-id", "bad/id", "--state-dir", str(state), "--trust", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 2 and "invalid device id" in result.output
    assert not state.exists()


def test_a_missing_required_setting_names_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["--device-id", "d1", "--trust", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "state-dir is not set" in result.output


def test_a_bad_broker_url_is_a_usage_error(tmp_path: Path) -> None:
    args = ["--device-id", "d1", "--state-dir", str(tmp_path / "s"), "--trust", "t", "--broker", "http://x"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and "unsupported broker URL scheme 'http'" in result.output
    assert not (tmp_path / "s").exists()


def test_config_errors_come_from_the_catalogue() -> None:
    assert ConfigError.code == "config.invalid"
