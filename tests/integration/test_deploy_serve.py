"""The core promise against real processes: deploy over MQTT, verify, activate, serve, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import BOTH_BROKERS, Broker
from tests.support.watch import Watcher

pytestmark = pytest.mark.broker
P = "edgekit/v1"
LIFECYCLE = {"lifecycle.activated", "lifecycle.trial"}


def _deploy(host: HostSetup, broker: Broker, bundle: Path, target: Target) -> None:
    """Deploy without the host's pre-flight check, as an attacker on the broker could."""
    ws = workspace.load(host.root)
    key = keys.load_private(ws, "release")
    data = bundle.read_bytes()
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, Topics(P), data, "wine", int(bundle.stem.rsplit("-v", 1)[1]), key)
        publish_desired(conn, Topics(P), target, info, key)


def _status(broker: Broker) -> dict[str, dict]:
    return {d["device"]: d for d in fleet_status(broker.url, P)}


def _active_version(broker: Broker, device: str) -> int | None:
    active = (_status(broker).get(device) or {}).get("active") or {}
    return active.get("version")


@BOTH_BROKERS
def test_group_deploy_activates_on_both_and_serves(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    watcher = Watcher(broker.url, [f"{P}/dev/+/events", f"{P}/dev/+/drift"])
    agents = [AgentProcess(d, broker.url, tmp_path / d / "state", host.trust, ("plant",)) for d in ("a1", "a2")]
    try:
        wait_until(
            lambda: all(s["status"] == "online" for s in _status(broker).values()) and len(_status(broker)) == 2,
            what="both agents online",
        )
        before = agents[0].ask(host.rows[0])
        assert before["error"] == "row.no_model"

        _deploy(host, broker, host.bundles[1], Target(group="plant"))
        for a in agents:
            wait_until(lambda a=a: _active_version(broker, a.device) == 1, what=f"{a.device} active on v1")
        for a in agents:
            out = a.ask(host.rows[0])
            assert out["bundle"] == "wine@1"
            assert out["prediction"] == 0 and out["confidence"] > 0.5
            assert a.ask(host.rows[-1])["prediction"] == 2
        huge = agents[0].ask([1e300, *host.rows[0][1:]])  # beyond float32: the row's fault, said once
        assert huge["error"] == "row.out_of_range"
        wait_until(
            lambda: "lifecycle.activated" in watcher.codes("a1") and "lifecycle.activated" in watcher.codes("a2"),
            what="activation events",
        )
        status = wait_until(lambda: (s := _status(broker)) and s["a1"]["served"] >= 2 and s, what="served counted")
        assert status["a1"]["phase"] == "active" and status["a1"]["latency"]["p50_us"] > 0
        # A plain subscriber sees readable JSON on the device topics.
        assert all(isinstance(e["code"], str) for e in watcher.json("/events"))
    finally:
        for a in agents:
            a.stop()
        watcher.close()
    assert "RuntimeWarning" not in agents[0].stderr(), "numpy's overflow warning leaked to the device's log"


def test_bad_inputs_are_reported_and_the_model_keeps_serving(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    watcher = Watcher(broker.url, [f"{P}/dev/+/events"])
    agent = AgentProcess("b1", broker.url, tmp_path / "b1" / "state", host.trust)
    try:
        _deploy(host, broker, host.bundles[1], Target(device="b1"))
        wait_until(lambda: _active_version(broker, "b1") == 1, what="active on v1")
        assert agent.ask([1.0, 2.0])["error"] == "row.wrong_shape"
        assert agent.ask("not json")["error"] == "row.bad_value"
        nan_row = json.dumps(host.rows[0]).replace(str(host.rows[0][0]), "NaN", 1)
        assert agent.ask(nan_row)["error"] == "row.not_finite"
        null_row = [None, *host.rows[0][1:]]
        assert agent.ask(null_row)["error"] == "row.bad_value"
        # Garbage on a subscribed topic: a failure event, nothing else changes.
        watcher.publish(Topics(P).desired_device("b1"), b"\x00\xffnot json at all")
        # A tampered bundle: one flipped byte in the model, re-deployed as v2.
        data = bytearray(host.bundles[2].read_bytes())
        idx = data.find(b"probabilities") + 3
        data[idx] ^= 0x01
        tampered = tmp_path / "tampered-v2.ekb"
        tampered.write_bytes(bytes(data))
        _deploy(host, broker, tampered, Target(device="b1"))
        wait_until(
            lambda: (
                {"row.wrong_shape", "row.bad_value", "row.not_finite", "protocol.bad_message"}
                <= set(watcher.codes("b1"))
            ),
            what="row and protocol failure events",
        )
        wait_until(
            lambda: any(c.startswith("bundle.") and c not in LIFECYCLE for c in watcher.codes("b1")),
            what="tampered bundle rejected",
        )
        rejected = [c for c in watcher.codes("b1") if c.startswith("bundle.") and c not in LIFECYCLE]
        assert rejected[0] in ("bundle.hash_mismatch", "bundle.bad_signature")
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        s = wait_until(lambda: (st := _status(broker)["b1"])["phase"] == "failed" and st, what="phase failed")
        assert s["active"]["version"] == 1
        assert s["last_error"]["code"] == rejected[0]
        # The real v2 still installs afterwards.
        _deploy(host, broker, host.bundles[2], Target(device="b1"))
        wait_until(lambda: _active_version(broker, "b1") == 2, what="active on v2")
        assert agent.ask(host.rows[0])["bundle"] == "wine@2"
    finally:
        agent.stop()
        watcher.close()


def test_rollback_to_lower_version_is_refused(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    watcher = Watcher(broker.url, [f"{P}/dev/+/events"])
    agent = AgentProcess("r1", broker.url, tmp_path / "r1" / "state", host.trust)
    try:
        _deploy(host, broker, host.bundles[2], Target(device="r1"))
        wait_until(lambda: _active_version(broker, "r1") == 2, what="active on v2")
        _deploy(host, broker, host.bundles[1], Target(device="r1"))
        wait_until(lambda: "bundle.version_rollback" in watcher.codes("r1"), what="rollback refused")
        assert agent.ask(host.rows[0])["bundle"] == "wine@2"
    finally:
        agent.stop()
        watcher.close()


def test_restart_keeps_serving_the_active_model(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "k1" / "state"
    agent = AgentProcess("k1", broker.url, state, host.trust)
    _deploy(host, broker, host.bundles[1], Target(device="k1"))
    wait_until(lambda: _active_version(broker, "k1") == 1, what="active on v1")
    agent.stop(kill=True)  # SIGKILL: no goodbye
    broker.stop()  # and the broker goes away too: the model is served from the state dir
    agent = AgentProcess("k1", broker.url, state, host.trust)
    try:
        assert agent.ask(host.rows[0], timeout=20)["bundle"] == "wine@1"
    finally:
        agent.stop()


def test_missing_trust_file_fails_closed(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    watcher = Watcher(broker.url, [f"{P}/dev/+/events"])
    agent = AgentProcess("t1", broker.url, tmp_path / "t1" / "state", tmp_path / "nope.json")
    try:
        wait_until(lambda: "trust.unavailable" in watcher.codes("t1"), what="trust failure event")
        _deploy(host, broker, host.bundles[1], Target(device="t1"))
        wait_until(lambda: watcher.codes("t1").count("trust.unavailable") >= 2, what="desired refused")
        assert agent.ask(host.rows[0])["error"] == "row.no_model"
    finally:
        agent.stop()
        watcher.close()


def test_csv_replay_serves_every_row_once_a_model_is_active(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    agent = AgentProcess(
        "c1", broker.url, tmp_path / "c1" / "state", host.trust, extra=("--input", f"csv:{host.csv}", "--exit-on-eof")
    )
    try:
        _deploy(host, broker, host.bundles[1], Target(device="c1"))
        answers = [agent.lines.get(timeout=30) for _ in host.rows]
        assert all(a["bundle"] == "wine@1" for a in answers)
        labels = [int(line.rsplit(",", 1)[1]) for line in host.csv.read_text().splitlines()[1:]]
        agreement = sum(a["prediction"] == y for a, y in zip(answers, labels, strict=True)) / len(labels)
        assert agreement > 0.95  # the training data itself, through the device
        assert agent.proc.wait(20) == 0, "--exit-on-eof ends the agent after the last row"
    finally:
        agent.stop()
