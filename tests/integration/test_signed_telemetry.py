"""Telemetry the host can believe, on an open broker where anyone may write anything: what an
enrolled device did not sign is set aside and named by `fleet status`, never counted by
`deploy --wait`, and never stored by the collector. Each forgery here fooled the host before."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.protocol import Topics
from device_agent.telemetry_sig import Signer, load_signer
from edgekit import devices, workspace
from edgekit.cli import main
from edgekit.errors import ExitCode
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.collector import Collector, ServeSettings
from edgekit.fleet.verify import TelemetryCheck
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support import fleetdocs
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.json_contract import Cli, check

pytestmark = pytest.mark.broker
T = Topics()


def _enrol(root: Path, *names: str) -> dict[str, Path]:
    ws = workspace.load(root)
    return {
        n: devices.enrol(ws, n, broker="mqtts://127.0.0.1:8883", out_dir=root / "prov").directory / "telemetry.key"
        for n in names
    }


def test_forged_telemetry_fools_neither_status_nor_deploy(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    key = _enrol(root, "s1", "s2")
    cli = Cli(root, env={"EDGEKIT_BROKER": broker.url})
    agent = AgentProcess("s1", broker.url, tmp_path / "s1", host.trust, extra=("--telemetry-key", str(key["s1"])))
    try:
        wait_until(lambda: [d["trust"] for d in cli("fleet", "status")["devices"]] == ["verified"], what="s1 signed")
        assert cli("deploy", str(host.bundles[2]), "--device", "s1", "--wait", "30")["succeeded"] is True

        # s1's genuine, signed documents replayed on s2's topics (s2 is enrolled, its agent dead),
        # the same without signatures, and a device nobody enrolled.
        with connect(broker.url) as conn:
            real = {leaf: payload for topic, payload, _ in _retained(conn, "s1") for leaf in [topic.rsplit("/", 1)[1]]}
            unsigned = {leaf: _strip(p) for leaf, p in real.items()}
            publish_all(
                conn,
                [
                    (T.state("s2"), real["state"], True),
                    (T.reported("s2"), unsigned["reported"], True),
                    (T.state("ghost"), unsigned["state"], True),
                ],
            )
        status = cli("fleet", "status")
        check("fleet", status)
        by = {d["device"]: d for d in status["devices"]}
        assert by["s1"]["trust"] == "verified" and by["s1"]["status"] == "online"
        assert by["s2"]["trust"] == "unverified" and by["s2"]["status"] == "unknown" and by["s2"]["active"] is None
        assert by["s2"]["unverified"] == {"state": "signed by another key", "reported": "unsigned"}
        assert by["ghost"]["trust"] == "unenrolled"
        text = CliRunner().invoke(main, ["fleet", "status"], env=cli.env).stdout
        assert "UNVERIFIED (reported: unsigned, state: signed by another key)" in text

        # The forged 'reported' says s2 runs v2: deploy --wait must not call that a success.
        done = cli("deploy", str(host.bundles[2]), "--device", "s2", "--wait", "3", code=ExitCode.FLEET)
        check("deployment", done)
        assert done["succeeded"] is False and done["outcome"] == {"s2": "unverified: unsigned"}
        assert "did not sign" in done["note"]

        # A live device made to look dead: an unsigned Will on s1's state topic is set aside.
        will = json.loads(unsigned["state"])
        will.update(online=False, bdseq=will["bdseq"] + 1)
        with connect(broker.url) as conn:
            publish_all(conn, [(T.state("s1"), json.dumps(will).encode(), True)])
        s1 = {d["device"]: d for d in cli("fleet", "status")["devices"]}["s1"]
        assert s1["status"] != "offline" and s1["unverified"] == {"state": "unsigned"}
    finally:
        agent.stop()


def _retained(conn: object, device: str) -> list[tuple[str, bytes, bool]]:
    from edgekit.fleet.client import collect

    return [m for m in collect(conn, [T.state(device), T.reported(device)]) if m[2]]  # type: ignore[arg-type]


def _strip(payload: bytes) -> bytes:
    doc = json.loads(payload)
    doc.pop("sig", None)
    return json.dumps(doc).encode()


def test_the_collector_stores_only_what_enrolled_devices_signed(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    workspace.init(root)
    from edgekit import keys

    keys.generate(workspace.load(root), "release")
    signer = load_signer(str(_enrol(root, "a1")["a1"]))
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    settings = replace(ServeSettings(), name="signed", scan_interval_s=0.2, refresh_s=0.2)
    collector = Collector(
        lambda: open_store(url), broker.url, settings, check=TelemetryCheck.from_workspace(workspace.load(root))
    )
    collector.start()
    try:
        event = lambda s: fleetdocs.event("a1", "b", s).encode()  # noqa: E731
        with connect(broker.url) as conn:
            publish_all(
                conn,
                [
                    (T.events("a1"), signer(T.events("a1"), event(1)), False),  # the device's own
                    (T.events("a1"), event(2), False),  # unsigned
                    (T.events("a1"), Signer(Ed25519PrivateKey.generate())(T.events("a1"), event(3)), False),
                ],
            )
        wait_until(lambda: collector.metrics.unverified.labels("events")._value.get() == 2, what="two refused")
        store = open_store(url)
        wait_until(lambda: store.sequences() == [("a1", "b", 1)], what="only the signed event stored")
        store.close()
    finally:
        collector.stop()
