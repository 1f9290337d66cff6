"""Serving never dies quietly, on real agents: hostile input lines, an expired bundle and a
lost trust file across a restart."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device_agent.bundle import MANIFEST, MANIFEST_DOMAIN, SIGNATURE, pack, read_unverified
from device_agent.protocol import Topics
from device_agent.trust import sign
from edgekit import keys, workspace
from edgekit.fleet.client import connect
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
T = Topics()


def _status(broker: Broker, device: str) -> dict:
    return next((d for d in fleet_status(broker.url, T.prefix) if d["device"] == device), {})


def _deploy(host: HostSetup, broker: Broker, data: bytes, name: str, version: int, device: str) -> None:
    key = keys.load_private(workspace.load(host.root), "release")
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, data, name, version, key)
        publish_desired(conn, T, Target(device=device), info, key)


def _expiring(host: HostSetup, name: str, seconds: float) -> bytes:
    """The host's v1 bundle renamed and re-signed with an expiry ``seconds`` from now."""
    manifest, members = read_unverified(host.bundles[1].read_bytes())
    when = datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest.update(name=name, expires=when)
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    key = keys.load_private(workspace.load(host.root), "release")
    files = {k: v for k, v in members.items() if k not in (MANIFEST, SIGNATURE)}
    return pack(mbytes, [sign(key, MANIFEST_DOMAIN, mbytes)], files)


def test_hostile_input_lines_are_answered_and_serving_goes_on(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    agent = AgentProcess("s1", broker.url, tmp_path / "s1" / "state", host.trust)
    try:
        _deploy(host, broker, host.bundles[1].read_bytes(), "wine", 1, "s1")
        wait_until(lambda: (_status(broker, "s1").get("active") or {}).get("version") == 1, what="v1 active")
        assert agent.proc.stdin is not None
        agent.send("[" * 100_000 + "]" * 100_000)  # deeply nested JSON: Python's parser recurses
        assert agent.lines.get(timeout=10)["error"] == "row.bad_value"
        agent.proc.stdin.flush()
        agent.proc.stdin.buffer.write(bytes(b for b in range(256) if b != 0x0A) + b"\n")  # not text
        agent.proc.stdin.buffer.flush()
        assert agent.lines.get(timeout=10)["error"] == "row.bad_value"
        agent.send("[" + "1," * 700_000 + "1]")  # above input.max_line_bytes
        assert "max_line_bytes" in agent.lines.get(timeout=10)["detail"]
        assert agent.ask(host.rows[0])["bundle"] == "wine@1", "the input loop survived every line"
    finally:
        agent.stop()


def test_an_expired_bundle_and_a_lost_trust_file_keep_serving_after_restarts(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "s2" / "state"
    trust = tmp_path / "trust.json"
    shutil.copy(host.trust, trust)
    agent = AgentProcess("s2", broker.url, state, trust)
    expires_in = 6.0
    started = time.time()
    _deploy(host, broker, _expiring(host, "wexp", expires_in), "wexp", 1, "s2")
    wait_until(lambda: (_status(broker, "s2").get("active") or {}).get("name") == "wexp", what="wexp active")
    agent.stop()
    time.sleep(max(0.0, started + expires_in + 0.5 - time.time()))
    agent = AgentProcess("s2", broker.url, state, trust)  # the bundle has expired meanwhile
    try:
        assert agent.ask(host.rows[0], timeout=20)["bundle"] == "wexp@1"
    finally:
        agent.stop()
    trust.unlink()
    agent = AgentProcess("s2", broker.url, state, trust)  # and now the trust file is gone too
    try:
        assert agent.ask(host.rows[0], timeout=20)["bundle"] == "wexp@1"
        wait_until(
            lambda: (_status(broker, "s2").get("last_runtime_error") or {}).get("code") == "trust.unavailable",
            what="the missing trust file reported",
        )
    finally:
        agent.stop()
