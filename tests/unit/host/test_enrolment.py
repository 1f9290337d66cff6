"""Enrolment and the broker configuration, without a broker: what `devices add` hands a
device, what the registry keeps, what `broker config` writes — each document held to
docs/json.md. (On a real mosquitto: tests/integration/test_secured_broker.py.)"""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_agent.config import AgentConfig
from device_agent.errors import ConfigError
from edgekit import devices, keys, workspace
from edgekit.errors import ExitCode
from tests.support.json_contract import SECURITY_KIND, Cli, check


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    ws = workspace.init(root, broker="mqtts://broker.example:8883")
    keys.generate(ws, "release")
    return root


def test_devices_add_list_revoke_and_broker_config(ws_root: Path, tmp_path: Path) -> None:
    cli = Cli(ws_root)
    seen = set()

    def run(path: tuple[str, ...], *args: str) -> dict:
        doc = cli(*path, *args)
        check(SECURITY_KIND[path], doc)
        seen.add(path)
        return doc

    out = tmp_path / "prov"
    added = run(
        ("devices", "add"), "pump-7", "--group", "plant-a", "-o", str(out), "--install-dir", str(out / "pump-7")
    )
    folder = Path(added["directory"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent.toml",
        "ca.pem",
        "device.key",
        "device.pem",
        "telemetry.key",
        "trust.json",
    ]
    for secret in ("device.key", "telemetry.key"):
        assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(added["archive"]).stat().st_mode) == 0o600

    # The certificate: the device id as its name, for client authentication, from the fleet CA.
    cert = x509.load_pem_x509_certificate((folder / "device.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pump-7"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    cert.verify_directly_issued_by(ca)
    assert f"{cert.serial_number:x}" == added["serial"]

    # The agent's config file is complete and valid as it stands.
    config = AgentConfig.load(folder / "agent.toml")
    assert (config.device_id, config.groups, config.trust) == ("pump-7", ("plant-a",), str(folder / "trust.json"))
    endpoint = config.broker_endpoint()
    assert (endpoint.host, endpoint.port, endpoint.tls, endpoint.cert) == (
        "broker.example",
        8883,
        True,
        str(folder / "device.pem"),
    )

    # Enrolling twice is refused; --force re-issues, and the old certificate is revoked.
    again = cli("devices", "add", "pump-7", "-o", str(out), code=ExitCode.USAGE)
    assert "already enrolled" in again["detail"]
    forced = run(("devices", "add"), "pump-7", "-o", str(out), "--force")
    assert forced["serial"] != added["serial"] and forced["telemetry_keyid"] != added["telemetry_keyid"]
    registry = devices.load(workspace.load(ws_root))
    assert int(added["serial"], 16) in registry.revoked_serials()

    listed = run(("devices", "list"))
    assert [d["device"] for d in listed["devices"] if d["revoked"] is None] == ["pump-7"]

    conf = run(("broker", "config"), "-o", str(tmp_path / "broker"), "--host", "broker.example")
    assert conf["auth"] == "certificate" and set(conf["roles"]) == {"@deploy", "@reader", "@serve-main"}
    acl = Path(conf["acl"]).read_text()
    assert (
        "pattern write edgekit/v1/dev/%u/state" in acl
        and "user pump-7\ntopic read edgekit/v1/group/plant-a/desired" in acl
    )
    text = Path(conf["config"]).read_text()
    assert "allow_anonymous false" in text and "use_username_as_clientid true" in text and "crlfile" in text

    revoked = run(("devices", "revoke"), "pump-7")
    assert revoked["revoked"] is not None
    assert "user pump-7" not in Path(run(("broker", "config"), "-o", str(tmp_path / "broker"))["acl"]).read_text()
    assert seen == set(SECURITY_KIND)


def test_password_enrolment_writes_a_mosquitto_hash(ws_root: Path, tmp_path: Path) -> None:
    cli = Cli(ws_root)
    added = cli("devices", "add", "pump-8", "--password", "-o", str(tmp_path))
    password = (Path(added["directory"]) / "password").read_text().strip()
    entry = devices.load(workspace.load(ws_root)).devices["pump-8"].password_hash
    assert entry is not None
    _, seven, rounds, salt, digest = entry.split("$")
    assert (seven, rounds) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected
    # A certificate broker cannot take a password device: one line saying what to do.
    refused = cli("broker", "config", "-o", str(tmp_path / "b"), code=ExitCode.USAGE)
    assert "enrolled with a password" in refused["detail"]
    conf = cli("broker", "config", "-o", str(tmp_path / "b"), "--auth", "password")
    assert "pump-8:$7$101$" in (tmp_path / "b" / "passwd").read_text()
    assert set(conf["roles"]["@deploy"]) == {"cert", "key"}  # host roles: certificates, on their own listener
    assert conf["host_port"] == conf["port"] + 1


def test_a_certificate_needs_a_tls_broker(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    keys.generate(workspace.init(root), "release")  # mqtt://127.0.0.1:1883
    refused = Cli(root)("devices", "add", "d1", code=ExitCode.USAGE)
    assert "needs a TLS broker" in refused["detail"] and "mqtts://" in refused["hint"]
    with pytest.raises(ConfigError):
        AgentConfig.load(None, {"mqtt.broker": "mqtt://10.0.0.2", "mqtt.cert": "x.pem"}).broker_endpoint()


def test_devices_get_the_device_broker_host_commands_the_host_listener(ws_root: Path, tmp_path: Path) -> None:
    cfg = ws_root / "edgekit.toml"
    cfg.write_text(cfg.read_text().replace("[fleet]\n", '[fleet]\ndevice_broker = "mqtts://broker.example:8883"\n', 1))
    cfg.write_text(cfg.read_text().replace('mqtts://broker.example:8883"   #', 'mqtts://broker.example:8884"   #', 1))
    added = Cli(ws_root)("devices", "add", "pump-9", "-o", str(tmp_path))
    assert added["broker"] == "mqtts://broker.example:8883"
    assert 'broker = "mqtts://broker.example:8883"' in (Path(added["directory"]) / "agent.toml").read_text()
