"""The rollout controller on a real store and a real registry, its MQTT side recorded instead
of published (the integration test, tests/integration/test_rollout.py, runs it against real
agents): cohorts told once, offline devices skipped, widening after the bake, completion,
an abort that rolls back and finishes after the broker was away, pause and resume, and a new
controller (a restarted serve) that continues the same rollout."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from device_agent.phases import Phase
from device_agent.protocol import BundleRef, DeviceState, ErrorRecord, Reported
from edgekit import registry, workspace
from edgekit.errors import FleetError
from edgekit.rollout.config import RolloutConfig
from edgekit.rollout.controller import FleetActions, RolloutController
from edgekit.rollout.record import ABORTED, COMPLETED, PAUSED, RUNNING, Rollout
from edgekit.telemetry import TelemetryStore, open_store
from edgekit.telemetry import rollouts as stored
from tests.conftest import HostSetup
from tests.support.fleetdocs import received

GROUP = "plant-a"
DEVICES = [f"d{i}" for i in range(10)]


class RecordingActions(FleetActions):
    """Everything but the broker: the rollback is really built and registered."""

    def __init__(self, ws: workspace.Workspace) -> None:
        super().__init__(ws, "mqtt://127.0.0.1:1", "edgekit/v1")
        self.told: list[list[str]] = []
        self.settled: list[tuple[BundleRef, list[str]]] = []
        self.broker_down = 0

    def tell(self, r: Rollout, devices: object) -> None:
        self.told.append(sorted(devices))  # type: ignore[call-overload]

    def publish_version(self, r: Rollout, ref: BundleRef) -> int:
        if self.broker_down:
            self.broker_down -= 1
            raise FleetError("cannot reach the MQTT broker at 127.0.0.1:1")
        return 100

    def settle(self, r: Rollout, bundle: BundleRef, size: int) -> None:
        self.settled.append((bundle, sorted(r.targeted)))


@pytest.fixture
def ws(host: HostSetup, tmp_path: Path) -> workspace.Workspace:
    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    w = workspace.load(root)
    registry.record_deployment(w, "wine", 1, f"group:{GROUP}")
    return w


@pytest.fixture
def store(tmp_path: Path) -> TelemetryStore:  # type: ignore[misc]
    s = open_store(f"sqlite:///{tmp_path / 'telemetry.db'}")
    yield s
    s.close()


def ref(ws: workspace.Workspace, version: int) -> BundleRef:
    mv = registry.get(ws, "wine", version)
    return BundleRef("wine", version, mv.sha256)


def fleet(store: TelemetryStore, active: dict[str, BundleRef], offline: set[str] = frozenset(), failed=None) -> None:  # type: ignore[assignment,no-untyped-def]
    """Each device's birth and summary as it would be stored now."""
    now = time.time()
    docs = []
    for d in DEVICES:
        boot = f"boot-{d}"
        docs.append(received(d, DeviceState(d not in offline, 1, boot, (GROUP,), "0.1.0", active[d], now), now))
        err = (failed or {}).get(d)
        phase = Phase.FAILED if err else Phase.ACTIVE
        docs.append(received(d, Reported(now, boot, "0.1.0", phase, active=active[d], last_error=err), now))
    store.write(docs)


def start(ws: workspace.Workspace, store: TelemetryStore, phases: tuple[float, ...] = (0.2, 1.0)) -> Rollout:
    r = Rollout(
        "r1", ref(ws, 2), 100, GROUP, phases, 0.0, RolloutConfig().gates_json(), ref(ws, 1), "release", "release",
        time.time(),
    )  # fmt: skip
    stored.insert(store, r)
    return r


def controller(ws: workspace.Workspace, actions: RecordingActions) -> RolloutController:
    return RolloutController(ws, "mqtt://127.0.0.1:1", "edgekit/v1", actions=actions)


def test_phases_widen_after_the_bake_skip_offline_devices_and_complete(
    ws: workspace.Workspace, store: TelemetryStore
) -> None:
    v1, v2 = ref(ws, 1), ref(ws, 2)
    fleet(store, dict.fromkeys(DEVICES, v1), offline={"d9"})
    start(ws, store)
    actions = RecordingActions(ws)
    ctl = controller(ws, actions)
    [r] = ctl.step(store)
    assert r.state == RUNNING and r.phase == 0 and len(actions.told) == 1 and len(actions.told[0]) == 2
    cohort = actions.told[0]
    [r] = ctl.step(store)  # the cohort has not installed yet: nothing more is told, no bake
    assert len(actions.told) == 1 and r.baked_from is None and r.decisions[-1].verdict == "wait"

    # a restarted serve continues with the same cohort
    again = RecordingActions(ws)
    fleet(store, {d: v2 if d in cohort else v1 for d in DEVICES}, offline={"d9"})
    [r] = controller(ws, again).step(store)  # done, baked (bake 0 s), every gate passed or had no data
    assert again.told == [] and r.phase == 1 and r.phase_started is None
    assert r.decisions[0].verdict == "widen" and {g.gate for g in r.decisions[0].gates} >= {"failures", "error_rate"}
    [r] = controller(ws, again).step(store)
    assert len(again.told) == 1 and not set(again.told[0]) & set(cohort) and "d9" not in again.told[0]
    assert r.skipped == {"d9": 1} and len(r.targeted) == 9

    fleet(store, {d: v1 if d == "d9" else v2 for d in DEVICES}, offline={"d9"})
    [r] = controller(ws, again).step(store)
    assert r.state == COMPLETED and again.settled == [(v2, sorted(r.targeted))]
    assert registry.production(ws, "wine").version == 2  # type: ignore[union-attr]
    assert stored.get(store, "r1").state == COMPLETED and controller(ws, again).step(store) == []


def test_a_failed_install_aborts_and_the_abort_finishes_after_the_broker_was_away(
    ws: workspace.Workspace, store: TelemetryStore
) -> None:
    v1, v2 = ref(ws, 1), ref(ws, 2)
    fleet(store, dict.fromkeys(DEVICES, v1))
    start(ws, store)
    actions = RecordingActions(ws)
    ctl = controller(ws, actions)
    [r] = ctl.step(store)
    bad, good = actions.told[0]
    err = ErrorRecord(time.time(), "install.failed", "health samples differ", v2.sha256, v2)
    fleet(store, {d: v2 if d == good else v1 for d in DEVICES}, failed={bad: err})
    actions.broker_down = 1
    [r] = ctl.step(store)  # the gate fails; the rollback is built, publishing it fails
    assert r.state == RUNNING and r.rollback is not None and actions.settled == []
    back = r.rollback
    assert registry.get(ws, "wine", back.version).rollback_of == 1
    [r] = ctl.step(store)  # the same abort finishes: no second rollback version
    assert r.state == ABORTED and r.rollback == back and actions.settled == [(back, sorted([bad, good]))]
    assert registry.production(ws, "wine").version == back.version  # type: ignore[union-attr]
    assert registry.versions(ws, "wine")[-1].version == back.version  # type: ignore[attr-defined]
    gate = next(g for g in r.decisions[0].gates if g.gate == "failures")
    assert gate.verdict == "fail" and gate.evidence["failed"][0]["code"] == "install.failed"


def test_pause_holds_resume_bakes_again_and_abort_rolls_back(ws: workspace.Workspace, store: TelemetryStore) -> None:
    v1 = ref(ws, 1)
    fleet(store, dict.fromkeys(DEVICES, v1))
    start(ws, store)
    actions = RecordingActions(ws)
    ctl = controller(ws, actions)
    ctl.step(store)
    stored.request(store, "r1", "pause", "ops", time.time())
    [r] = ctl.step(store)
    assert r.state == PAUSED and stored.requested(store, "r1") is None
    ctl.step(store)
    assert len(actions.told) == 1
    stored.request(store, "r1", "resume", "ops", time.time())
    [r] = ctl.step(store)
    assert r.state == RUNNING and r.baked_from is None
    stored.request(store, "r1", "abort", "ops", time.time())
    [r] = ctl.step(store)
    assert r.state == ABORTED and r.rollback is not None and "aborted by ops" in r.note
    assert stored.requested(store, "r1") is None and len(actions.settled) == 1
    assert [t for _, t in r.log][-1].startswith("aborted by ops; group plant-a rolled back to v1 as v")
