"""The fleet simulator against a real mosquitto: 30 devices on the agent's own core take a
deploy, show up in ``fleet status`` with the right version, and the injected failures show
up as failures there (and in the simulator's own summary)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main
from edgekit.fleet.deploy import Target
from edgekit.sim import Faults, SimConfig, running
from tests.support.agent import wait_until
from tests.support.broker import Broker
from tests.support.deploy import deploy, status
from tests.support.json_contract import check

DEVICES = 30


def test_thirty_simulated_devices_take_a_deploy_and_report_injected_failures(broker: Broker, host) -> None:  # type: ignore[no-untyped-def]
    faults = Faults(install=0.1, trial=0.1, only=("wine@2",), seed=3)
    config = SimConfig(
        broker=broker.url,
        trust=host.trust,
        devices=DEVICES,
        id_prefix="sim-",
        groups=("line",),
        faults=faults,
        rows_csv=host.csv,
        heartbeat_s=1.0,
        trial_rows=10,
    )
    with running(config) as fleet:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(group="line"))

        def versions() -> Counter[int | None]:
            return Counter((d.get("active") or {}).get("version") for d in status(broker.url).values())

        wait_until(lambda: versions()[1] == DEVICES, timeout=90, what="every device active on wine v1")

        # v2: the faults bite only for it; 3 devices fail the install and 3 the trial
        deploy(host.root, broker.url, host.bundles[2], "wine", Target(group="line"))

        def settled() -> dict[str, dict]:  # type: ignore[type-arg]
            fleet_view = status(broker.url)
            done = [d for d in fleet_view.values() if d["phase"] in ("active", "failed")]
            moved = [d for d in done if (d.get("active") or {}).get("version") == 2 or d["phase"] == "failed"]
            return fleet_view if len(moved) == DEVICES else {}

        view = wait_until(settled, timeout=90, what="every device on v2 or failed")
        summary = fleet.summary()
        assigned = fleet.assigned

    failed = {d: v for d, v in view.items() if v["phase"] == "failed"}
    assert len(view) == DEVICES and all(v["status"] == "online" for v in view.values())
    # the install fails first where a device has both faults
    expected = {
        d: "model.health_failed" if "install" in a else "trial.failed"
        for d, a in assigned.items()
        if "install" in a or "trial" in a
    }
    assert {d: v["last_error"]["code"] for d, v in failed.items()} == expected
    for device in failed.values():  # the old model keeps serving
        assert device["active"]["version"] == 1
        assert device["served"] > 0
    healthy = [v for v in view.values() if v["phase"] == "active"]
    assert len(healthy) == DEVICES - len(expected) and all(v["active"]["version"] == 2 for v in healthy)
    assert summary.active == {"wine@1": len(expected), "wine@2": DEVICES - len(expected)}
    assert summary.faults["install"] == 3 and summary.faults["trial"] == 3
    assert summary.telemetry_sent > 0 and not summary.simulator_errors
    assert summary.mbytes_in > 2 * DEVICES * host.bundles[1].stat().st_size / 2**20 * 0.9  # two real downloads each


def test_sim_command_runs_for_a_while_and_prints_its_summary(broker: Broker, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        main,
        [
            "sim",
            "--devices",
            "3",
            "--broker",
            broker.url,
            "--trust",
            str(host.trust),
            "--preinstalled",
            str(host.bundles[1]),
            "--rows",
            str(host.csv),
            "--heartbeat",
            "0.5",
            "--duration",
            "3",
            "--id-prefix",
            "cli-",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    check("sim", doc)
    assert doc["devices"] == 3 and doc["active"] == {"wine@1": 3}
    view = status(broker.url)
    assert sorted(view) == ["cli-0000", "cli-0001", "cli-0002"]
    assert all(v["status"] == "offline" and v["served"] > 0 for v in view.values())  # said goodbye
