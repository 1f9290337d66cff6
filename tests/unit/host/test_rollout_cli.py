"""``edgekit rollout status|pause|resume|abort`` and the store's rollout records: documents
match docs/json.md, a request waits in the store for serve, a second open rollout of a group
is refused, and a record survives the round trip (what a restarted serve reads back)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent.protocol import BundleRef
from edgekit.cli import main
from edgekit.rollout.config import RolloutConfig
from edgekit.rollout.gates import ABORT, FAIL, Decision, GateResult
from edgekit.rollout.record import PAUSED, Rollout
from edgekit.telemetry import StoreError, open_store
from edgekit.telemetry import rollouts as stored
from tests.conftest import HostSetup
from tests.support.json_contract import ROLLOUT_KIND, Cli, check

NEW = BundleRef("wine", 2, "bb" * 32)
OLD = BundleRef("wine", 1, "aa" * 32)


def record(rid: str, group: str = "plant-a", **changes: object) -> Rollout:
    r = Rollout(
        rid, NEW, 1234, group, (0.34, 1.0), 30.0, RolloutConfig().gates_json(), OLD, "release", "release", 1000.0
    )
    r = replace(r, targeted={"d1": (0, 1001.0)}, skipped={"d9": 0}, phase_started=1001.0)
    gate = GateResult("error_rate", FAIL, "refused 9 of 90 rows", {"new": {"rejected": 9}})
    return replace(
        r.said(1001.0, "phase 1 (34%): told 1 device(s)").decided(Decision(ABORT, 1002.0, 0, "x", (gate,))), **changes
    )  # type: ignore[arg-type]


@pytest.fixture
def cli(host: HostSetup, tmp_path: Path) -> Cli:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    return Cli(root)


def store_of(cli: Cli):  # type: ignore[no-untyped-def]
    return open_store(f"sqlite:///{cli.root / '.edgekit' / 'telemetry.db'}")


def run(cli: Cli, *args: str, code: int = 0) -> dict[str, object]:
    doc = cli(*args, code=code)
    if code == 0:
        check(ROLLOUT_KIND[args[:2]], doc)
    return doc  # type: ignore[no-any-return]


def test_a_record_round_trips_and_a_group_has_one_open_rollout(cli: Cli) -> None:
    s = store_of(cli)
    try:
        r = record("r1")
        stored.insert(s, r)
        assert stored.get(s, "r1") == r and stored.get(s, None) == r
        assert Rollout.decode(r.encode()) == r
        with pytest.raises(StoreError, match="already has an open rollout, r1"):
            stored.insert(s, record("r2"))
        stored.insert(s, record("r3", group="plant-b"))
        stored.save(s, replace(r, state="aborted"))
        stored.insert(s, record("r2"))  # the group's earlier rollout has ended
        assert {x.id for x in stored.load(s, open_only=True)} == {"r2", "r3"}
    finally:
        s.close()


def test_status_and_requests_print_the_record_and_wait_for_serve(cli: Cli) -> None:
    s = store_of(cli)
    stored.insert(s, record("abc123"))
    stored.insert(s, record("def456", group="plant-b", state=PAUSED))
    s.close()
    doc = run(cli, "rollout", "status", "abc")
    assert doc["id"] == "abc123" and doc["requested"] is None and doc["summary"]["told"] == 1  # type: ignore[index]
    assert doc["decisions"][0]["gates"][0]["verdict"] == "fail"  # type: ignore[index]
    paused = run(cli, "rollout", "pause", "abc123")
    assert paused["requested"] == {"action": "pause", "by": "ci"}
    again = run(cli, "rollout", "resume", "def")
    assert again["requested"]["action"] == "resume"  # type: ignore[index]
    err = cli("rollout", "resume", "abc123", code=2)
    assert err["schema"] == "edgekit.error/1" and "not paused" in err["detail"]
    aborted = run(cli, "rollout", "abort", "abc123")
    assert aborted["requested"]["action"] == "abort"  # type: ignore[index]
    s = store_of(cli)
    try:
        assert stored.requested(s, "abc123")[0] == "abort"  # type: ignore[index]
        stored.clear_request(s, "abc123", "pause")  # applied late: a newer request stays
        assert stored.requested(s, "abc123")[0] == "abort"  # type: ignore[index]
        stored.save(s, replace(stored.get(s, "abc123"), state="aborted"))
    finally:
        s.close()
    done = cli("rollout", "abort", "abc123", code=2)
    assert "is aborted" in done["detail"]
    missing = cli("rollout", "status", "zzz", code=2)
    assert "no rollout 'zzz'" in missing["detail"]
    text = CliRunner().invoke(main, ["rollout", "status", "abc123"], env=cli.env)
    assert text.exit_code == 0 and "error_rate" in text.output and "skipped (offline at their turn): d9" in text.output
