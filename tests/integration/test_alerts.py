"""Alerts end to end: real agents, a real mosquitto, ``edgekit serve`` as a user runs it.

Stationary rows raise nothing; a shifted feature raises a persisting-drift alert that is
stored, published retained on the alerts topic, handed to ``--on-alert`` as JSON on stdin,
counted in the metrics and printed by ``edgekit fleet alerts``; an agent that dies is
reported offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.alerts.alert import Alert
from edgekit.fleet.client import collect, connect
from edgekit.fleet.status import fleet_status
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker, free_port
from tests.support.json_contract import Cli, check

pytestmark = pytest.mark.broker
P = "edgekit/v1"
WINDOW = 100

FAST = "[alerts]\ninterval_s = 0.5\n"  # replaces the template's [alerts] line
OFFLINE = "\n[alerts.offline]\nafter_s = 3.0\n"


def _metric(port: int, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_drift_alerts_are_stored_published_handed_to_the_command_and_printed(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    config = (root / "edgekit.toml").read_text()
    assert "\n[alerts]" in config  # edgekit init writes the section, with every rule at its default
    (root / "edgekit.toml").write_text(config.replace("\n[alerts]", "\n" + FAST, 1) + OFFLINE)
    store_url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    received = tmp_path / "on-alert.jsonl"
    port = free_port()
    exe = str(Path(sys.executable).parent / "edgekit")
    serve_log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [exe, "serve", "--store", store_url, "--broker", broker.url, "--name", "alerts", "--metrics-port", str(port),
         "--on-alert", f"cat >> {received}; echo >> {received}"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=serve_log,
    )  # fmt: skip
    agent = AgentProcess(
        "a1", broker.url, tmp_path / "a1" / "state", host.trust, ("line",), extra=("--drift-window", str(WINDOW))
    )
    cli = Cli(root, env={"EDGEKIT_BROKER": broker.url})
    try:
        wait_until(lambda: fleet_status(broker.url, P, settle=0.2), timeout=20, what="the agent's birth")
        cli("deploy", str(host.bundles[1]), "--group", "line", "--wait", "30")

        rng = np.random.default_rng(3)
        rows = np.asarray(host.rows)
        col = host.feature_names.index("alcohol")

        def feed(n: int, shift: float = 0.0) -> None:
            chosen = rows[rng.integers(0, len(rows), n)].copy()
            chosen[:, col] += shift * rows[:, col].std()
            for r in chosen:
                agent.send(r.tolist())
            for _ in range(n):
                agent.lines.get(timeout=30)

        store = open_store(store_url)
        try:
            feed(4 * WINDOW)  # as in training: no persisting drift
            wait_until(lambda: len(store.drift_windows("a1")) >= 4, timeout=30, what="four calm windows stored")
            assert not [a for a in store.alerts() if a.rule == "drift"]

            feed(4 * WINDOW, shift=3.0)

            def drift_alert() -> Alert | None:
                found = [a for a in store.alerts(state="firing") if a.rule == "drift" and a.feature == "alcohol"]
                return found[0] if found else None

            alert = wait_until(drift_alert, timeout=40, what="a drift alert on alcohol")
        finally:
            store.close()
        assert alert.device == "a1" and alert.bundle is not None and alert.bundle.version == 1
        ev = alert.evidence
        assert ev["hits"] >= ev["k"] == 3 and ev["judged_by"] == "reference" and ev["importance"]["known"]
        assert ev["merged"]["drifted"] and ev["merged"]["score"] > 1

        # Retained on the alerts topic, for anyone subscribing later.
        with connect(broker.url) as conn:
            retained = collect(conn, [f"{P}/alerts/#"], settle=0.5)
        docs = [Alert.decode(payload) for _, payload, _ in retained if payload]
        assert alert.id in {d.id for d in docs if d.state == "firing"}

        # Handed to --on-alert as JSON on stdin.
        def handed() -> list[dict[str, Any]]:
            text = received.read_text() if received.exists() else ""
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        wait_until(lambda: any(d["id"] == alert.id for d in handed()), timeout=15, what="the command's stdin")
        assert all(d["schema"] == "edgekit.alert/1" for d in handed())
        assert _metric(port, "edgekit_alerts", 'rule="drift"') >= 1
        assert _metric(port, "edgekit_alert_commands_total", 'outcome="ok"') >= 1

        # Printed by edgekit fleet alerts, as its documented document.
        shown = cli("fleet", "alerts", "--store", store_url, "--state", "firing")
        check("alerts", shown)
        assert alert.id in [a["id"] for a in shown["alerts"]]
        drift = cli("fleet", "drift", "--store", store_url, "--device", "a1", "--feature", "alcohol")
        check("drift", drift)
        [rng_] = drift["ranges"]
        assert rng_["merged"]["verdict"] == "drift" and list(rng_["merged"]["features"]) == ["alcohol"]

        # The agent dies: offline, critical (it lost its connection, it did not say goodbye).
        agent.stop(kill=True)
        store = open_store(store_url)
        try:
            [offline] = wait_until(
                lambda: [a for a in store.alerts(state="firing") if a.key == "offline:a1" and a.severity == "critical"],
                timeout=30,
                what="a critical offline alert",
            )
            assert offline.evidence["status"] == "offline" and not offline.evidence["goodbye"]
        finally:
            store.close()
    finally:
        agent.stop()
        serve.terminate()
        serve.wait(20)
        serve_log.close()
    log = (tmp_path / "serve.log").read_text()
    assert "alert fired" in log and "Traceback" not in log, log[-3000:]
