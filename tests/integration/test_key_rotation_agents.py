"""Keys that can change, end to end on a real agent: the workspace's root signs the trust file;
the release key is rotated and revoked, the new trust file published; the agent takes it, then
refuses anything the old key signs and installs what the new key signs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from device_agent.bundle import MANIFEST, MANIFEST_DOMAIN, SIGNATURE, pack, read_unverified
from device_agent.protocol import Topics
from device_agent.trust import sign
from edgekit import keys, workspace
from edgekit.fleet.client import connect, publish_all
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from edgekit.fleet.status import fleet_status
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.watch import Watcher

pytestmark = pytest.mark.broker
T = Topics()


def _status(broker: Broker, device: str) -> dict:
    return next((d for d in fleet_status(broker.url, T.prefix) if d["device"] == device), {})


def _resigned(data: bytes, key, version: int) -> bytes:  # type: ignore[no-untyped-def]
    manifest, members = read_unverified(data)
    manifest["version"] = version
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    files = {k: v for k, v in members.items() if k not in (MANIFEST, SIGNATURE)}
    return pack(mbytes, [sign(key, MANIFEST_DOMAIN, mbytes)], files)


def _deploy(broker: Broker, data: bytes, version: int, bundle_key, deploy_key) -> None:  # type: ignore[no-untyped-def]
    with connect(broker.url) as conn:
        info, _ = publish_bundle(conn, T, data, "wine", version, bundle_key)
        publish_desired(conn, T, Target(device="r1"), info, deploy_key)


def test_rotate_revoke_and_the_old_key_is_refused(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    ws = workspace.load(root)
    keys.generate(ws, "root", ("root",), passphrase=b"correct horse")
    trust_path = tmp_path / "trust.json"
    import os

    os.environ["EDGEKIT_KEY_PASSPHRASE"] = "correct horse"  # the root key is encrypted at rest
    try:
        trust_path.write_bytes(keys.signed_trust(ws, ("root",)))
    finally:
        del os.environ["EDGEKIT_KEY_PASSPHRASE"]
    old = keys.load_private(ws, "release")
    watcher = Watcher(broker.url, [T.events("r1")])
    agent = AgentProcess("r1", broker.url, tmp_path / "r1" / "state", trust_path)
    try:
        _deploy(broker, host.bundles[1].read_bytes(), 1, old, old)
        wait_until(lambda: (_status(broker, "r1").get("active") or {}).get("version") == 1, what="v1 with the old key")

        keys.rotate(ws, "release", "release-2")
        new = keys.load_private(ws, "release-2")
        os.environ["EDGEKIT_KEY_PASSPHRASE"] = "correct horse"
        try:
            update = keys.signed_trust(ws, ("root",))
        finally:
            del os.environ["EDGEKIT_KEY_PASSPHRASE"]
        with connect(broker.url) as conn:
            publish_all(conn, [(T.trust(), update, True)])
        wait_until(lambda: "lifecycle.trust_updated" in watcher.codes("r1"), what="the new trust file taken")
        assert trust_path.read_bytes() == update, "written over the old one: a restart keeps it"

        # The revoked key signs a bundle (v2) and a desired state: both refused.
        _deploy(broker, _resigned(host.bundles[2].read_bytes(), old, 2), 2, new, old)
        wait_until(lambda: "bundle.unknown_key" in watcher.codes("r1"), what="the old deploy key refused")
        _deploy(broker, _resigned(host.bundles[2].read_bytes(), old, 2), 2, new, new)
        wait_until(
            lambda: (_status(broker, "r1").get("last_error") or {}).get("code") == "bundle.unknown_key",
            what="the bundle signed by the old key refused",
        )
        assert agent.ask(host.rows[0])["bundle"] == "wine@1"
        # The new key's bundle installs.
        _deploy(broker, _resigned(host.bundles[2].read_bytes(), new, 3), 3, new, new)
        wait_until(lambda: (_status(broker, "r1").get("active") or {}).get("version") == 3, what="v3, the new key")
    finally:
        agent.stop()
        watcher.close()
    # A restart starts from the new trust file: the old key stays refused.
    agent = AgentProcess("r1", broker.url, tmp_path / "r1" / "state", trust_path)
    try:
        assert agent.ask(host.rows[0], timeout=20)["bundle"] == "wine@3"
    finally:
        agent.stop()
