"""The fleet commands under ``--json``, against a real broker and a real agent: each document
matches its schema in docs/json.md, and the fleet's rules show in them (a lower version is
refused before publishing, nobody answering is explained, devices that left can be forgotten)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from edgekit.errors import ExitCode
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import BOTH_BROKERS, Broker
from tests.support.json_contract import FLEET_KIND, Cli, check

pytestmark = [pytest.mark.broker, pytest.mark.tls_variant]


@BOTH_BROKERS
def test_fleet_commands_print_their_documents(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)  # a workspace of its own: deploys and a rollback change its registry
    cli = Cli(root, env={"EDGEKIT_BROKER": broker.url})
    seen: dict[tuple[str, ...], Any] = {}

    def run(path: tuple[str, ...], *args: str, code: int = 0) -> Any:
        doc = cli(*path, *args, code=code)
        if code == 0:
            assert doc["schema"] == f"edgekit.{FLEET_KIND[path]}/1"
            check(FLEET_KIND[path], doc)
            seen[path] = doc
        else:
            check("error", doc)
        return doc

    agent = AgentProcess("j1", broker.url, tmp_path / "j1" / "state", host.trust, groups=("jg",))
    try:
        wait_until(lambda: run(("fleet", "status"))["devices"], what="the agent's birth")
        done = run(("deploy",), str(host.bundles[2]), "--group", "jg", "--wait", "30")
        assert done["succeeded"] is True and done["outcome"] == {"j1": "active"} and done["note"] is None

        # v1 is lower than what j1 runs: refused before anything is published, exit 2.
        refused = run(("deploy",), str(host.bundles[1]), "--device", "j1", code=ExitCode.USAGE)
        assert refused["code"] == "deploy_refused" and "older than v2" in refused["detail"]
        assert "edgekit rollback" in refused["hint"] or "already restores v1" in refused["hint"]

        # Nobody in the group: the document says why.
        empty = cli("deploy", str(host.bundles[2]), "--group", "nobody", "--wait", "1", code=ExitCode.FLEET)
        assert empty["schema"] == "edgekit.deployment/1" and empty["succeeded"] is False
        assert "no device of group:nobody reported" in empty["note"]
        check("deployment", empty)

        status = run(("fleet", "status"))
        [j1] = status["devices"]
        assert j1["status"] == "online" and j1["active"]["version"] == 2 and j1["last_seen"].endswith("+00:00")
        assert j1["desired"]["target"] == "group:jg" and j1["desired_missing"] is False
        refreshed = {r["target"]: r for r in run(("desired", "refresh"), "--ttl", "60d")["refreshed"]}
        fresh = refreshed["group:jg"]  # and group:nobody, deployed to above
        assert fresh["problem"] is None and fresh["expires"] > j1["desired"]["expires"]
        from edgekit import keys, workspace

        keys.generate(workspace.load(root), "root", ("root",))
        [recovery] = run(("desired", "recover"), "--group", "jg", "--key", "root")["refreshed"]
        assert recovery["target"] == "group:jg" and recovery["seq"] > fresh["seq"]

        run(("bundles", "gc"), "--dry-run")
        caps = run(("broker", "check"), broker.url)
        assert caps["ok"] is True and caps["protocol"] == ("5" if broker.kind == "mosquitto" else "3.1.1")
        pulled = run(("fleet", "samples", "pull"), "--group", "jg", "-o", str(tmp_path / "s.csv"), "--wait", "10")
        assert pulled["devices"] == [
            {"device": "j1", "answered": True, "parts": 1, "rows": 0, "capturing": False, "skipped": 0}
        ]
        online = run(("fleet", "forget"), "j1", code=ExitCode.USAGE)
        assert "online" in online["detail"]
    finally:
        agent.stop()

    # The agent is gone: after its last heartbeat ages, --stale-after hides it, and forget clears it.
    time.sleep(1.2)
    hidden = run(("fleet", "status"), "--stale-after", "1s")
    assert hidden["devices"] == [] and hidden["hidden"] == ["j1"]
    gone = run(("fleet", "forget"), "--stale-after", "1s")
    assert gone["forgotten"] == ["j1"] and gone["topics_cleared"] == 4
    assert run(("fleet", "status"))["devices"] == []
    rolled = run(("rollback",), "wine", "--to", "1", "--key", "release", "-o", str(tmp_path))
    assert rolled["rollback_of"] == 1 and rolled["version"] > 2
    assert set(seen) == set(FLEET_KIND)
