"""Captured rows end to end on a real broker and a real agent: the agent keeps every row below
the bundle's threshold, survives a restart with them, answers a signed request once, and
``edgekit fleet samples pull`` writes them as a CSV ready for labels."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from device_agent.bundle import read_unverified
from edgekit import keys, workspace
from edgekit.field.samples import META, pull, request
from edgekit.fleet.deploy import Target
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.deploy import PREFIX, active_version, deploy, status
from tests.support.watch import Watcher

pytestmark = pytest.mark.broker


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _shifted(rows: list[list[float]]) -> list[list[float]]:
    """Rows between the classes: the wine model is unsure of many of them."""
    return [[(a + b) / 2 for a, b in zip(rows[i], rows[-1 - i], strict=True)] for i in range(40)]


def test_captured_rows_come_back_as_a_csv_once_per_request(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    ws = workspace.load(host.root)
    key = keys.pick_key(ws, "deploy", "release")
    manifest, _ = read_unverified(host.bundles[1].read_bytes())
    below = manifest["policy"]["capture"]["below"]
    assert 0.3 < below < 1.0  # the out-of-fold p5 of the wine run
    state = tmp_path / "c1" / "state"
    agent = AgentProcess("c1", broker.url, state, host.trust, ("field",), extra=("--capture", "on"))
    watcher = Watcher(broker.url, [f"{PREFIX}/dev/c1/samples"])
    try:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="c1"))
        wait_until(lambda: active_version(broker.url, "c1") == 1, what="c1 active on v1")
        rows = host.rows[:60] + _shifted(host.rows)
        answers = [agent.ask(r) for r in rows]
        low = [(r, a) for r, a in zip(rows, answers, strict=True) if a["confidence"] < below]
        assert len(low) >= 5, "the shifted rows should be below the threshold"
        wait_until(lambda: (status(broker.url)["c1"]["captured"] or 0) >= len(low), what="captured")

        out = tmp_path / "field.csv"
        pulled = pull(broker.url, PREFIX, Target(group="field"), key, out, wait=20)
        assert [d.to_dict()["answered"] for d in pulled.devices] == [True]
        header, got = _rows(out)
        assert header == [*host.feature_names, *META, "label"]
        got_low = [g for g in got if g["kind"] == "low"]
        assert len(got_low) == len(low)
        for g, (row, answer) in zip(got_low, low, strict=True):
            assert [float(g[n]) for n in host.feature_names] == pytest.approx(row)
            assert int(g["prediction"]) == answer["prediction"]
            assert float(g["confidence"]) == pytest.approx(answer["confidence"], abs=1e-6)
            assert (g["device"], g["bundle"], g["label"]) == ("c1", "wine@1", "")
            assert g["time"].endswith("Z")
        assert all(float(g["confidence"]) >= below for g in got if g["kind"] == "uniform")

        # One request, answered once: the same signed payload published again gets no answer.
        rid, payload = request("c1", key, None, 10, time.time())
        watcher.publish(f"{PREFIX}/dev/c1/cmd", payload)
        wait_until(lambda: any(d["request"] == rid for d in watcher.json("/samples")), what="the answer")
        watcher.publish(f"{PREFIX}/dev/c1/cmd", payload)
        time.sleep(1.5)
        assert sum(d["request"] == rid and d["part"] == 1 for d in watcher.json("/samples")) == 1

        # The rows survive a restart, and --since leaves older ones out.
        agent.stop()
        agent = AgentProcess("c1", broker.url, state, host.trust, ("field",), extra=("--capture", "on"))
        wait_until(lambda: status(broker.url)["c1"]["status"] == "online", what="c1 back")
        again = pull(broker.url, PREFIX, Target(device="c1"), key, tmp_path / "again.csv", wait=20)
        assert again.rows == len(got)
        later = pull(broker.url, PREFIX, Target(device="c1"), key, tmp_path / "none.csv", since=time.time(), wait=20)
        assert later.rows == 0 and later.devices[0].complete
    finally:
        agent.stop()
        watcher.close()


def test_a_device_that_does_not_capture_says_so(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    ws = workspace.load(host.root)
    agent = AgentProcess("c2", broker.url, tmp_path / "c2" / "state", host.trust)
    try:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="c2"))
        wait_until(lambda: active_version(broker.url, "c2") == 1, what="c2 active on v1")
        for r in _shifted(host.rows)[:10]:
            agent.ask(r)
        got = pull(broker.url, PREFIX, Target(device="c2"), keys.pick_key(ws, "deploy", "release"), tmp_path / "x.csv")
        assert got.rows == 0 and got.devices[0].to_dict()["capturing"] is False
    finally:
        agent.stop()
