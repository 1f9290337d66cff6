"""The broker configuration ``edgekit broker config`` writes, on a real mosquitto: only
enrolled identities get in, each only where its role needs it, and a real agent deploys and
reports through it. Every attack here worked against the open broker (issue: security)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_agent.broker import BrokerEndpoint
from device_agent.broker import endpoint as endpoint_of
from device_agent.config import AgentConfig
from device_agent.protocol import Topics
from edgekit import broker_config, devices, workspace
from edgekit.fleet.client import collect, connect, resolve
from edgekit.fleet.collector import Collector, ServeSettings
from edgekit.fleet.status import DeviceStatus
from edgekit.fleet.verify import TelemetryCheck
from edgekit.pki import FleetCA
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker, free_port
from tests.support.json_contract import Cli
from tests.support.secured import Client, SecuredFleet, secure_variant, secured_fleet

pytestmark = pytest.mark.broker

T = Topics()


def retained(fleet: SecuredFleet, identity: str, topics: list[str]) -> dict[str, bytes]:
    with connect(fleet.role(identity), purpose="check") as conn:
        return {t: p for t, p, r in collect(conn, topics) if r}


def test_a_device_is_confined_to_its_own_topics_and_cannot_be_taken_over(host: HostSetup, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    with secured_fleet(root, {"s1": ("g1",), "s2": ("g2",)}) as fleet:
        agent = AgentProcess(
            "s1", "", tmp_path / "s1-state", host.trust, extra=("--config", str(fleet.provision["s1"] / "agent.toml"))
        )
        cli = Cli(root, env={"EDGEKIT_BROKER": fleet.url})
        deploy = fleet.role_flags("@deploy")
        try:
            # A real agent with its provisioned files deploys (through its group) and reports.
            wait_until(lambda: cli("fleet", "status", *fleet.role_flags("@reader"))["devices"], what="s1's birth")
            done = cli("deploy", str(host.bundles[1]), "--group", "g1", "--wait", "30", *deploy)
            assert done["succeeded"] is True and done["outcome"] == {"s1": "active"}

            # Anonymous (on either listener), and a certificate from another CA: refused at the door.
            for port in (fleet.device_port, fleet.broker.port):
                assert not Client(BrokerEndpoint("127.0.0.1", port, True, ca=str(fleet.ca))).connect()
            # A device's certificate on the host roles' listener (where client ids are free): refused.
            assert not Client(replace(fleet.device("s2"), port=fleet.broker.port), client_id="edgekit-s1").connect()
            stranger = FleetCA.create("not the fleet").issue("s1")
            (tmp_path / "x.pem").write_bytes(stranger.cert_pem)
            (tmp_path / "x.key").write_bytes(stranger.key_pem)
            forged_id = BrokerEndpoint(
                "127.0.0.1",
                fleet.device_port,
                True,
                ca=str(fleet.ca),
                cert=str(tmp_path / "x.pem"),
                key=str(tmp_path / "x.key"),
            )
            assert not Client(forged_id).connect()

            # s2 (a real, enrolled device) tries to write as s1, and where only the host may write.
            before = retained(fleet, "@deploy", [T.state("s1"), T.reported("s1"), T.desired_device("s1")])
            s2 = Client(fleet.device("s2"), client_id="edgekit-s2")
            assert s2.connect()
            forged = (
                b'{"format":1,"online":true,"bdseq":99,"boot_id":"x","agent":"9","active":{"name":"wine","version":99}}'
            )
            for topic in (T.state("s1"), T.reported("s1"), T.hb("s1"), T.desired_device("s1"), T.desired_group("g1")):
                s2.publish(topic, forged)
            s2.publish(T.desired_device("s1"), b"")  # the empty retained desired that left a device idle
            s2.publish(T.bundle_manifest("wine", 99), forged)
            s2.publish(f"{T.prefix}/alerts/fake", forged)
            s2.publish(T.state("s2"), forged)  # its own topic: allowed (and the host checks its signature)
            time.sleep(0.5)
            after = retained(fleet, "@deploy", [T.state("s1"), T.reported("s1"), T.desired_device("s1")])
            assert after == before
            assert T.bundle_manifest("wine", 99) not in retained(fleet, "@deploy", [f"{T.prefix}/bundle/#"])
            assert not retained(fleet, "@serve-main", [f"{T.prefix}/alerts/#"])
            assert retained(fleet, "@reader", [T.state("s2")])[T.state("s2")] == forged

            # s2 cannot read s1's desired state or commands, nor g1's desired state.
            s2.client.subscribe([(T.desired_device("s1"), 1), (T.desired_group("g1"), 1), (T.cmd("s1"), 1)])
            time.sleep(0.5)
            assert s2.messages == []
            s2.close()

            # Taking over s1's session: connecting with its client id, under any other identity,
            # neither kicks the agent off nor fires its Will.
            thief = Client(fleet.device("s2"), client_id="edgekit-s1")
            assert thief.connect()
            time.sleep(1.0)
            thief.close()
            status = cli("fleet", "status", *fleet.role_flags("@reader"))
            [s1] = [d for d in status["devices"] if d["device"] == "s1"]
            assert s1["status"] == "online" and s1["active"]["version"] == 1
            assert "disconnected" not in agent.stderr().lower().replace("reconnect", "")
            assert agent.ask(host.rows[0])["bundle"] == "wine@1"

            # The collector, as @serve-main: its shared subscriptions pass the ACL, and it stores
            # what s1 signed.
            url = f"sqlite:///{tmp_path / 'telemetry.db'}"
            check = TelemetryCheck.from_workspace(workspace.load(root))
            collector = Collector(
                lambda: open_store(url), fleet.role("@serve-main"), ServeSettings(name="main"), check=check
            )
            collector.start()
            try:
                store = open_store(url)
                wait_until(
                    lambda: (store.latest().get("s1") or DeviceStatus("s1")).reported is not None, what="s1 stored"
                )
                assert store.latest()["s1"].reported.active.version == 1  # type: ignore[union-attr]
                store.close()
            finally:
                collector.stop()
        finally:
            agent.stop()


def test_a_revoked_device_is_locked_out(host: HostSetup, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    with secured_fleet(root, {"r1": (), "r2": ()}) as fleet:
        assert Client(fleet.device("r1")).connect()
        devices.revoke(workspace.load(root), "r1")
        fleet.reconfigure()
        assert not Client(fleet.device("r1")).connect()
        assert Client(fleet.device("r2")).connect()


@pytest.mark.tls_variant
def test_the_tls_variant_runs_on_the_secured_broker(broker: Broker) -> None:
    """Under EDGEKIT_TEST_SECURE=1 (make test's second run), the suite's broker is the one
    `edgekit broker config` writes: TLS only, nobody anonymous, the host as @deploy."""
    if not secure_variant():
        pytest.skip("the open broker: make test runs this again with EDGEKIT_TEST_SECURE=1")
    assert broker.url.startswith("mqtts://")
    ca = os.environ["EDGEKIT_BROKER_CA"]
    assert not Client(BrokerEndpoint("127.0.0.1", broker.port, True, ca=ca)).connect()  # anonymous
    host = Client(resolve(broker.url))  # the environment's @deploy identity
    assert host.connect()
    host.close()


def test_password_identities_on_a_real_mosquitto(host: HostSetup, tmp_path: Path) -> None:
    """--password enrolment and --auth password: mosquitto takes the hashes edgekit wrote."""
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    ws = workspace.load(root)
    port, host_port = free_port(), free_port()
    prov = devices.enrol(
        ws,
        "p1",
        password=True,
        broker=f"mqtts://127.0.0.1:{port}",
        out_dir=root / "prov",
        install_dir=str(root / "prov/p1"),
    )
    folder = Path(tempfile.mkdtemp(prefix="ek-secure-"))
    os.chmod(folder, 0o755)
    (folder / "data").mkdir(mode=0o777)
    os.chmod(folder / "data", 0o777)
    files = broker_config.write(
        ws,
        folder / "conf",
        port=port,
        host_port=host_port,
        auth="password",
        persistence_dir=f"{folder}/data/",
        hosts=("127.0.0.1",),
    )
    mosquitto = Broker(port=host_port, config_file=files.config, scheme="mqtts")
    mosquitto.start()
    try:
        config = AgentConfig.load(prov.directory / "agent.toml")
        endpoint = config.broker_endpoint()
        assert endpoint.username == "p1" and endpoint.password
        device = Client(endpoint, client_id="edgekit-p1")
        assert device.connect()
        wrong = replace(endpoint, password="guess")
        assert not Client(wrong).connect()
        creds = files.roles["@deploy"]  # host roles keep certificates, on their own listener
        deployer = endpoint_of(mosquitto.url, ca=str(files.directory / "ca.pem"), cert=creds["cert"], key=creds["key"])
        first, second = Client(deployer), Client(deployer)
        assert first.connect() and second.connect()  # two host commands at once under one role
        time.sleep(0.5)
        assert not first.closed.is_set()
        first.close()
        second.close()
        device.close()
    finally:
        mosquitto.close()
        shutil.rmtree(folder, ignore_errors=True)
