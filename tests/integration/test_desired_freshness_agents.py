"""No single desired document freezes the fleet, on a real agent: a sequence ten years ahead is
refused and the next normal deploy works; a cleared retained desired state is reported by the
device and flagged by fleet status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.deploy import Target, desired_message, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
T = Topics()


def _status(broker: Broker, device: str) -> dict:
    return next((d for d in fleet_status(broker.url, T.prefix) if d["device"] == device), {})


def test_a_sequence_far_ahead_is_refused_and_a_cleared_desired_state_is_reported(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    key = keys.load_private(workspace.load(host.root), "release")
    agent = AgentProcess("q1", broker.url, tmp_path / "q1" / "state", host.trust)
    try:
        with connect(broker.url) as conn:
            v1, _ = publish_bundle(conn, T, host.bundles[1].read_bytes(), "wine", 1, key)
            v2, _ = publish_bundle(conn, T, host.bundles[2].read_bytes(), "wine", 2, key)
            ten_years = time.time_ns() + 10 * 365 * 86400 * 10**9
            item, _doc = desired_message(T, Target(device="q1"), v2, key, now_ns=ten_years)
            publish_all(conn, [item])
        wait_until(
            lambda: (_status(broker, "q1").get("last_runtime_error") or {}).get("code") == "desired.rejected",
            what="the far-ahead document refused",
        )
        with connect(broker.url) as conn:
            publish_desired(conn, T, Target(device="q1"), v1, key)
        wait_until(lambda: (_status(broker, "q1").get("active") or {}).get("version") == 1, what="a normal deploy")
        with connect(broker.url) as conn:
            publish_all(conn, [(T.desired_device("q1"), b"", True)])  # someone clears the retained desired state
        wait_until(
            lambda: (_status(broker, "q1").get("last_runtime_error") or {}).get("code") == "desired.missing",
            what="the device reports it",
        )
        status = _status(broker, "q1")
        assert status["desired_missing"] is True and status["desired"] is None
        assert agent.ask(host.rows[0])["bundle"] == "wine@1", "it keeps serving"
    finally:
        agent.stop()
