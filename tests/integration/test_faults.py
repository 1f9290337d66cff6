"""Faults against real processes: a broker that dies mid-transfer, an agent killed at every
install step, a full disk, a long time offline, and a flood of junk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from device_agent.protocol import DeviceEvent, DriftMessage, Topics, TransferInfo, dumps
from device_agent.transfer import split
from device_agent.trust import TRANSFER_DOMAIN, seal
from edgekit import keys, workspace
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import BOTH_BROKERS, Broker
from tests.support.watch import Watcher

pytestmark = pytest.mark.broker
T = Topics()


def _key(host: HostSetup):  # type: ignore[no-untyped-def]
    return keys.load_private(workspace.load(host.root), "release")


def _deploy(host: HostSetup, broker: Broker, version: int, device: str) -> None:
    key = _key(host)
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, host.bundles[version].read_bytes(), "wine", version, key)
        publish_desired(conn, T, Target(device=device), info, key)


def _status(broker: Broker, device: str) -> dict:
    return next((d for d in fleet_status(broker.url, T.prefix) if d["device"] == device), {})


def _active(broker: Broker, device: str) -> int | None:
    return (_status(broker, device).get("active") or {}).get("version")


def _state(state_dir: Path) -> dict:
    return json.loads((state_dir / "state.json").read_text())


def _publish_partial(host: HostSetup, broker: Broker, version: int, device: str, first: int, chunk: int) -> list[bytes]:
    """Retain the transfer document and only the first ``first`` chunks; point the device at them."""
    data = host.bundles[version].read_bytes()
    parts = split(data, chunk)
    info = TransferInfo(
        "wine",
        version,
        len(data),
        hashlib.sha256(data).hexdigest(),
        chunk,
        tuple(hashlib.sha256(p).hexdigest() for p in parts),
    )
    key = _key(host)
    with connect(broker.url) as conn:
        items = [(T.bundle_chunk("wine", version, i), p, True) for i, p in enumerate(parts[:first])]
        items.append((T.bundle_manifest("wine", version), seal(key, TRANSFER_DOMAIN, info.to_json()), True))
        publish_all(conn, items)
        publish_desired(conn, T, Target(device=device), info, key)
    return parts


def _publish_chunks(broker: Broker, version: int, parts: list[bytes], indices: range, clear: bool = False) -> None:
    with connect(broker.url) as conn:
        publish_all(conn, [(T.bundle_chunk("wine", version, i), b"" if clear else parts[i], True) for i in indices])


@pytest.mark.tls_variant
@BOTH_BROKERS
def test_broker_killed_mid_transfer_resumes_and_completes(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    agent = AgentProcess("f1", broker.url, tmp_path / "f1" / "state", host.trust)
    try:
        parts = _publish_partial(host, broker, 1, "f1", first=4, chunk=2048)
        assert len(parts) > 6
        wait_until(lambda: (_status(broker, "f1").get("progress") or {}).get("received") == 4, what="4 chunks in")
        time.sleep(1.5)  # let mosquitto's autosave keep the retained messages
        broker.stop(kill=True)
        time.sleep(1.0)
        broker.start()
        _publish_chunks(broker, 1, parts, range(4, len(parts)))
        wait_until(lambda: _active(broker, "f1") == 1, timeout=40, what="transfer resumed and completed")
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
    finally:
        agent.stop()


def test_agent_restart_mid_transfer_asks_only_for_missing_chunks(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "f2" / "state"
    agent = AgentProcess("f2", broker.url, state, host.trust)
    parts = _publish_partial(host, broker, 1, "f2", first=5, chunk=2048)
    wait_until(lambda: (_status(broker, "f2").get("progress") or {}).get("received") == 5, what="5 chunks in")
    agent.stop(kill=True)
    staged = list((state / "staging").iterdir())
    assert len(staged) == 1 and (staged[0] / "bundle.part").stat().st_size == len(host.bundles[1].read_bytes())
    # The first five chunks disappear from the broker: only the staged copies can finish the job.
    _publish_chunks(broker, 1, parts, range(5), clear=True)
    _publish_chunks(broker, 1, parts, range(5, len(parts)))
    agent = AgentProcess("f2", broker.url, state, host.trust)
    try:
        wait_until(lambda: _active(broker, "f2") == 1, timeout=30, what="completed from staging + broker")
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        assert list((state / "staging").iterdir()) == [], "staging is cleaned after the install"
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "point", ["during_load", "during_health_check", "after_store", "after_trial_start", "before_commit", "after_commit"]
)
def test_sigkill_at_each_install_step_leaves_old_or_new_never_neither(
    point: str, host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "k" / "state"
    agent = AgentProcess("k2", broker.url, state, host.trust)
    _deploy(host, broker, 1, "k2")
    wait_until(lambda: _active(broker, "k2") == 1, what="v1 active")
    agent.stop()
    agent = AgentProcess("k2", broker.url, state, host.trust, env={"EDGEKIT_AGENT_CRASH_AT": point})
    _deploy(host, broker, 2, "k2")
    wait_until(lambda: agent.proc.poll() is not None, what=f"the agent to die at {point}")
    assert agent.stop() == -9
    on_disk = _state(state)["active"]
    expected = 2 if point == "after_commit" else 1
    assert on_disk["version"] == expected, f"killed at {point}: state.json names v{on_disk['version']}"
    assert (state / "bundles" / f"{on_disk['sha256']}.ekb").is_file()
    agent = AgentProcess("k2", broker.url, state, host.trust)
    try:
        first = agent.ask(host.rows[0], timeout=20)
        assert first["bundle"] in ("wine@1", "wine@2")  # something serves at once, from disk
        # An interrupted trial is retried (once); a committed one simply stays.
        wait_until(lambda: _active(broker, "k2") == 2, timeout=30, what="v2 active in the end")
        assert agent.ask(host.rows[0])["bundle"] == "wine@2"
    finally:
        agent.stop()


def test_a_bundle_failing_its_health_check_is_not_kept(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    """The install stores a verified bundle before loading it: one that then fails to load or
    to reproduce its health samples is removed again, and the old model keeps serving."""
    from tests.unit.bundle_factory import HEALTH, default_files, health_doc, make_bundle

    state = tmp_path / "h1" / "state"
    agent = AgentProcess("h1", broker.url, state, host.trust)
    try:
        _deploy(host, broker, 1, "h1")
        wait_until(lambda: _active(broker, "h1") == 1, what="v1 active")
        doc = health_doc()
        doc["labels"] = [f"{label}-not" for label in doc["labels"]]  # signed and hashed, but wrong
        bad = make_bundle(name="wine", version=3, signer=_key(host), files={**default_files(), HEALTH: dumps(doc)})
        key = _key(host)
        with connect(broker.url) as conn:
            info, _ = publish_bundle(conn, T, bad.data, "wine", 3, key)
            publish_desired(conn, T, Target(device="h1"), info, key)
        wait_until(
            lambda: (_status(broker, "h1").get("last_error") or {}).get("code") == "model.health_failed",
            what="the health failure reported",
        )
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        v1 = _state(state)["active"]["sha256"]
        assert sorted(p.name for p in (state / "bundles").iterdir()) == [f"{v1}.ekb"], "nothing else kept"
        assert list((state / "staging").iterdir()) == []
    finally:
        agent.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root (CI runs as root)")
def test_disk_full_during_install_keeps_serving_and_reports(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    agent = None
    try:
        state = mnt / "state"
        watcher = Watcher(broker.url, [T.events("d1")])
        agent = AgentProcess("d1", broker.url, state, host.trust)
        _deploy(host, broker, 1, "d1")
        wait_until(lambda: _active(broker, "d1") == 1, what="v1 active")
        # Fill the disk, leaving less than a bundle's worth.
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 8 * 1024))
        _deploy(host, broker, 2, "d1")
        wait_until(lambda: "storage.failed" in watcher.codes("d1"), timeout=30, what="storage failure reported")
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        assert _state(state)["active"]["version"] == 1
        # Space comes back; a new deploy request succeeds.
        (mnt / "filler").unlink()
        _deploy(host, broker, 2, "d1")
        wait_until(lambda: _active(broker, "d1") == 2, timeout=30, what="v2 active once there is room")
        watcher.close()
    finally:
        if agent is not None:
            agent.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_long_offline_period_loses_no_event_or_drift_window(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    agent = AgentProcess("o1", broker.url, tmp_path / "o1" / "state", host.trust, extra=("--drift-window", "50"))
    try:
        _deploy(host, broker, 1, "o1")
        wait_until(lambda: _active(broker, "o1") == 1, what="v1 active")
        broker.stop(kill=True)
        rows = (host.rows * 4)[:500]
        for i, row in enumerate(rows):
            agent.send(row if i % 50 else [1.0, 2.0])  # every 50th row is bad: a failure event
        answers = [agent.lines.get(timeout=10) for _ in rows]
        assert sum("prediction" in a for a in answers) == 490
        time.sleep(2.0)  # the agent's worker accounts the rows while the broker is away
        broker.start()
        watcher = Watcher(broker.url, [T.events("o1"), T.drift("o1")])
        wait_until(lambda: len(watcher.docs("/o1/drift", DriftMessage)) >= 9, timeout=30, what="every drift window")
        wait_until(lambda: watcher.codes("o1").count("row.wrong_shape") >= 10, timeout=30, what="every event")
        drift = {m.id: m for m in watcher.docs("/o1/drift", DriftMessage)}  # at-least-once: drop repeats by id
        assert sum(m.n or 0 for m in drift.values()) == 490 - (490 % 50)
        events = {m.id: m for m in watcher.docs("/o1/events", DeviceEvent)}
        for kind, seqs in (("drift", [m.seq for m in drift.values()]), ("events", [m.seq for m in events.values()])):
            assert seqs == sorted(seqs), f"{kind} arrived out of order"
        watcher.close()
    finally:
        agent.stop()


def test_flood_of_junk_keeps_memory_disk_and_serving_bounded(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "j1" / "state"
    agent = AgentProcess("j1", broker.url, state, host.trust)
    try:
        _deploy(host, broker, 1, "j1")
        wait_until(lambda: _active(broker, "j1") == 1, what="v1 active")
        rss_before = agent.rss_mib()
        junk = [(T.desired_device("j1"), os.urandom(64), False) for _ in range(2000)]
        junk += [(T.bundle_chunk("wine", 1, i % 7), os.urandom(200_000), False) for i in range(200)]
        junk += [(T.desired_group("nobody"), b"{}", False)] * 100
        junk += [(T.desired_device("j1"), b"x" * (6 << 20), False)] * 3  # above the size the agent announced
        with connect(broker.url) as conn:
            publish_all(conn, junk, timeout=120)
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        wait_until(
            lambda: _status(broker, "j1").get("failures", {}).get("protocol.bad_message", 0) >= 2000,
            timeout=30,
            what="junk counted",
        )
        s = _status(broker, "j1")
        assert (s["outbox"] or {}).get("queued", 0) < 100, "events are rate-limited, not queued by the thousand"
        assert agent.rss_mib() < rss_before + 60
        disk = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
        assert disk < 5 * 1024 * 1024
    finally:
        agent.stop()
