"""Models cannot take the device down, on real agents: a model that loops for ever or wants
gigabytes is stopped and refused while the old model serves and the agent keeps reporting; a
model that rejects the rows the device is fed is reverted after its trial; an agent killed
during a load again and again stops trying that bundle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.unit.bundle_factory import default_files, make_bundle
from tests.unit.hostile_models import endless_loop, files_with, huge_allocation

pytestmark = pytest.mark.broker
T = Topics()


def _key(host: HostSetup):  # type: ignore[no-untyped-def]
    return keys.load_private(workspace.load(host.root), "release")


def _deploy(host: HostSetup, broker: Broker, data: bytes, version: int, device: str) -> None:
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, data, "wine", version, _key(host))
        publish_desired(conn, T, Target(device=device), info, _key(host))


def _status(broker: Broker, device: str) -> dict:
    return next((d for d in fleet_status(broker.url, T.prefix) if d["device"] == device), {})


def _error(broker: Broker, device: str) -> str | None:
    return (_status(broker, device).get("last_error") or {}).get("code")


def _on_v1(
    host: HostSetup, broker: Broker, tmp_path: Path, device: str, env: dict[str, str] | None = None
) -> AgentProcess:
    config = tmp_path / f"{device}.toml"
    config.write_text("[engine]\nload_timeout_s = 8.0\nload_cpu_s = 8.0\nload_memory_bytes = 536870912\n")
    agent = AgentProcess(
        device, broker.url, tmp_path / device / "state", host.trust, extra=("--config", str(config)), env=env
    )
    _deploy(host, broker, host.bundles[1].read_bytes(), 1, device)
    wait_until(lambda: (_status(broker, device).get("active") or {}).get("version") == 1, timeout=60, what="v1 active")
    return agent


@pytest.mark.parametrize(
    ("model", "code"), [(endless_loop(), "model.timeout"), (huge_allocation(), "model.resources")], ids=["loop", "3gb"]
)
def test_a_runaway_model_is_stopped_and_the_old_one_serves(
    model: bytes, code: str, host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    agent = _on_v1(host, broker, tmp_path, "m1")
    try:
        hostile = make_bundle(name="wine", version=5, signer=_key(host), files=files_with(model))
        _deploy(host, broker, hostile.data, 5, "m1")
        wait_until(lambda: _error(broker, "m1") == code, timeout=60, what=code)
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        beat = _status(broker, "m1").get("last_seen")
        wait_until(lambda: _status(broker, "m1").get("last_seen") != beat, what="heartbeats go on")
        _deploy(host, broker, host.bundles[2].read_bytes(), 2, "m1")  # a later deploy still works
        wait_until(lambda: (_status(broker, "m1").get("active") or {}).get("version") == 2, timeout=60, what="v2")
    finally:
        agent.stop()


def test_a_model_that_rejects_the_rows_the_device_is_fed_is_reverted(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    """A 3-feature model sent to a device fed 13-feature rows: every row is rejected on trial."""
    agent = _on_v1(host, broker, tmp_path, "m2")
    try:
        for row in host.rows[:60]:  # the old model's baseline: it answers these
            assert "prediction" in agent.ask(row)
        narrow = make_bundle(name="wine", version=6, signer=_key(host), files=default_files())
        _deploy(host, broker, narrow.data, 6, "m2")
        deadline = time.monotonic() + 60
        while _error(broker, "m2") != "trial.regressed" and time.monotonic() < deadline:
            for row in host.rows[:20]:
                agent.ask(row)
        assert _error(broker, "m2") == "trial.regressed"
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        assert (_status(broker, "m2").get("active") or {}).get("version") == 1
    finally:
        agent.stop()


def test_an_agent_killed_during_every_load_stops_trying_that_bundle(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "m3" / "state"
    agent = _on_v1(host, broker, tmp_path, "m3")
    agent.stop()
    crash = {"EDGEKIT_AGENT_CRASH_AT": "during_health_check"}
    _deploy(host, broker, host.bundles[2].read_bytes(), 2, "m3")
    for attempt in range(2):  # max_trial_crashes
        dying = AgentProcess("m3", broker.url, state, host.trust, env=crash)
        wait_until(lambda: dying.proc.poll() is not None, timeout=60, what=f"death {attempt + 1} in the health check")  # noqa: B023
        dying.stop()
    agent = AgentProcess("m3", broker.url, state, host.trust, env=crash)
    try:
        wait_until(lambda: _error(broker, "m3") == "trial.crashed", timeout=60, what="the bundle refused")
        assert agent.proc.poll() is None, "not tried a third time"
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
    finally:
        agent.stop()
