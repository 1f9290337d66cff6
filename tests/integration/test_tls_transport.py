"""mqtts:// and credentials end to end, on a real mosquitto with a TLS listener and no
anonymous access: the host commands and a real agent connect with a client certificate from
the fleet CA or a username and password; without them they are refused, with one clear line."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.broker import PASSWORD_ENV
from edgekit.errors import ExitCode
from edgekit.pki import FleetCA
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.json_contract import Cli
from tests.support.tls import TlsKit, make_kit, tls_broker

pytestmark = pytest.mark.broker


@pytest.fixture
def kit() -> Iterator[TlsKit]:
    made = make_kit()
    yield made
    shutil.rmtree(made.folder, ignore_errors=True)


def test_host_and_agent_talk_over_tls_with_certificates(host: HostSetup, kit: TlsKit, tmp_path: Path) -> None:
    broker = tls_broker(kit)
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    deployer = kit.client("deploy")
    cli = Cli(root, env={"EDGEKIT_BROKER": broker.url})
    tls = ["--broker-ca", str(kit.ca_path), "--broker-cert", str(deployer.cert), "--broker-key", str(deployer.key)]
    device = kit.client("t1")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[mqtt]\nbroker = "{broker.url}"\nca = "{kit.ca_path}"\ncert = "{device.cert}"\nkey = "{device.key}"\n'
    )
    # Broker, CA and certificate all come from the agent's TOML file.
    agent = AgentProcess("t1", "", tmp_path / "t1" / "state", host.trust, extra=("--config", str(config)))
    try:
        wait_until(lambda: cli("fleet", "status", *tls)["devices"], what="the agent's birth over TLS")
        done = cli("deploy", str(host.bundles[1]), "--device", "t1", "--wait", "30", *tls)
        assert done["succeeded"] is True and done["outcome"] == {"t1": "active"}
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"

        # No client certificate: the broker refuses the host; one line, exit 6.
        refused = cli("fleet", "status", "--broker-ca", str(kit.ca_path), code=ExitCode.FLEET)
        assert "refused" in refused["detail"] and "--broker-cert" in refused["hint"]
        # A certificate from another CA: refused too.
        stranger = kit.client("deploy-x", ca=FleetCA.create("not the fleet"))
        other = [
            "--broker-ca",
            str(kit.ca_path),
            "--broker-cert",
            str(stranger.cert),
            "--broker-key",
            str(stranger.key),
        ]
        cli("fleet", "status", *other, code=ExitCode.FLEET)
        # A broker this host cannot verify (its CA is not the one given): TLS fails, nothing is sent.
        wrong_ca = tmp_path / "wrong-ca.pem"
        wrong_ca.write_bytes(FleetCA.create("elsewhere").cert_pem)
        bad = cli("fleet", "status", "--broker-ca", str(wrong_ca), *tls[2:], code=ExitCode.FLEET)
        assert "TLS" in bad["detail"] and "certificate verify failed" in bad["detail"]
        # Plain MQTT to a TLS-only port: not silently accepted.
        cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{broker.port}", code=ExitCode.FLEET)
    finally:
        agent.stop()
        broker.close()


def test_username_and_password_from_a_file_the_environment_or_the_url(kit: TlsKit, tmp_path: Path) -> None:
    passwd = kit.password_file({"reader": "s3cret-pw"})
    broker = tls_broker(kit, certificates=False, password_file=passwd)
    plain = Broker(listener=["listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {passwd}"])
    plain.start()
    root = tmp_path / "ws"
    (root / ".edgekit").mkdir(parents=True)
    (root / "edgekit.toml").write_text(f'[fleet]\nbroker = "{broker.url}"\nca = "{kit.ca_path}"\n')
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    try:
        by_file = Cli(root)("fleet", "status", "--broker-username", "reader", "--broker-password-file", str(secret))
        assert by_file["devices"] == []
        by_env = Cli(root, env={PASSWORD_ENV: "s3cret-pw"})("fleet", "status", "--broker-username", "reader")
        assert by_env["devices"] == []
        wrong = Cli(root, env={PASSWORD_ENV: "nope"})
        refused = wrong("fleet", "status", "--broker-username", "reader", code=ExitCode.FLEET)
        assert "refused" in refused["detail"]
        # mqtt://user:pw@host used to lose its credentials on the way: now they are sent.
        url = Cli(root)("fleet", "status", "--broker", f"mqtt://reader:s3cret-pw@127.0.0.1:{plain.port}")
        assert url["devices"] == []
    finally:
        broker.close()
        plain.close()
