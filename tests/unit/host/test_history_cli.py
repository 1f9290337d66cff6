"""``edgekit fleet alerts|events|drift|history`` and ``edgekit report`` read the telemetry
store: their documents match docs/json.md, their filters filter, and merging a range of
windows finds what the windows found one by one."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgekit import workspace
from edgekit.cli import main
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support.fleetstory import SHIFT_FROM, WINDOWS, populate
from tests.support.json_contract import STORE_KIND, Cli, check


@pytest.fixture(scope="module")
def story(host: HostSetup, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    root = tmp_path_factory.mktemp("story") / "ws"
    shutil.copytree(host.root, root)
    store = open_store(f"sqlite:///{root / '.edgekit' / 'telemetry.db'}")  # the workspace's default store
    try:
        populate(store, workspace.load(root), host.bundles[1], host.rows, time.time())
    finally:
        store.close()
    return Cli(root)


def run(cli: Cli, *args: str) -> Any:
    """The command's document, checked against its schema in docs/json.md."""
    doc = cli(*args)
    path = args[:2] if args[0] == "fleet" else args[:1]
    check(STORE_KIND[path], doc)
    return doc


def test_alerts_most_urgent_first_and_filtered(story: Cli) -> None:
    doc = run(story, "fleet", "alerts")
    keys = [a["key"] for a in doc["alerts"]]
    assert {"drift:edge-2:alcohol", "offline:edge-3", "disk:edge-1"} <= set(keys)
    assert doc["alerts"][0]["severity"] == "critical"
    only = run(story, "fleet", "alerts", "--device", "edge-2", "--feature", "alcohol")
    assert [a["key"] for a in only["alerts"]] == ["drift:edge-2:alcohol"]
    assert run(story, "fleet", "alerts", "--group", "plant")["alerts"]  # members of the group
    assert run(story, "fleet", "alerts", "--state", "resolved")["alerts"] == []
    text = CliRunner().invoke(main, ["fleet", "alerts"], env=story.env)
    assert text.exit_code == 0 and "FIRING" in text.output and "alcohol" in text.output


def test_drift_merges_the_range_and_judges_it(story: Cli) -> None:
    doc = run(story, "fleet", "drift", "--device", "edge-2", "--feature", "alcohol", "--since", "all")
    [r] = doc["ranges"]
    assert len(r["windows"]) == WINDOWS and r["flagged"] == WINDOWS - SHIFT_FROM
    assert r["judged_by"] == "reference" and r["merged"]["verdict"] == "drift"
    assert r["merged"]["drifted"] == ["alcohol"] and r["merged"]["n"] == sum(w["n"] for w in r["windows"])
    calm = run(story, "fleet", "drift", "--device", "edge-1", "--since", "all")["ranges"][0]
    assert "alcohol" not in calm["merged"]["drifted"]
    assert len(calm["merged"]["features"]) == 13  # every feature without --feature


def test_events_history_and_the_report(story: Cli, tmp_path: Path) -> None:
    events = run(story, "fleet", "events", "--kind", "failure")["events"]
    assert [(e["device"], e["code"]) for e in events] == [("edge-2", "row.not_finite")]
    history = run(story, "fleet", "history", "--device", "edge-3", "--since", "all")["entries"]
    kinds = [e["kind"] for e in history]
    assert kinds[0] == "online" and "offline" in kinds and "alert" in kinds and "lifecycle" in kinds
    assert [e["ts"] for e in history] == sorted(e["ts"] for e in history)
    report = run(story, "report", "-o", str(tmp_path / "fleet.html"), "--since", "all")
    assert report["bytes"] > 1_000_000 and report["devices"] == 3 and report["charts"] >= 10


def test_bad_since_and_no_workspace_are_one_line_errors(
    story: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = story("fleet", "events", "--since", "yesterday-ish", code=2)
    assert bad["code"] == "usage" and "neither a duration nor a time" in bad["detail"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["fleet", "alerts"], env={"EDGEKIT_WORKSPACE": ""})
    assert result.exit_code == 2 and "no edgekit workspace" in result.output
