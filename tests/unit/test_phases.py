"""The phase table: the one source of truth, every edge taken by a real path, diagrams in sync."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_core as tc
from bundle_factory import make_bundle

from device_agent import core as core_module
from device_agent.bundle import FloorEntry
from device_agent.errors import HealthCheckFailed, TrialFailed
from device_agent.events import InstallDone, Tick, TrialDone
from device_agent.phases import EDGES, TRANSITIONS, Phase, check_transition
from device_agent.state import Persisted
from scripts import gen_docs

V1, V2, NOW = tc.V1, tc.V2, tc.NOW


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[tuple[Phase, Phase]]]:
    """Every phase change the core makes while the test runs."""
    seen: set[tuple[Phase, Phase]] = set()

    def record(current: Phase, new: Phase) -> None:
        check_transition(current, new)
        if new != current:
            seen.add((current, new))

    monkeypatch.setattr(core_module, "check_transition", record)
    yield seen


def test_every_edge_in_the_table_is_taken_by_some_path(taken: set[tuple[Phase, Phase]]) -> None:
    # idle → downloading → verifying → installing → trial → active
    c = tc.new_core()
    c.handle(tc.Connected(), NOW)
    tc.deploy(c, V1)
    tc.promote(c, V1, NOW)
    # active → downloading → active: the desired state goes back to the active bundle
    tc.desire(c, V2, NOW, seq=2)
    tc.desire(c, V1, NOW, seq=3)
    # active → failed: refused before download (below the version floor)
    c2 = tc.new_core(persisted=Persisted(active=tc.active_ref(V2), floor={"demo": FloorEntry(2, V2.sha256)}))
    c2.handle(tc.Connected(), NOW)
    tc.desire(c2, V1, NOW, seq=1)
    # failed → active: back to the bundle that serves
    tc.desire(c2, V2, NOW, seq=2)
    # failed → downloading, downloading → failed (a timeout)
    tc.desire(c2, make_bundle(version=3), NOW, seq=3)
    c2.handle(Tick(), NOW + tc.TIMEOUT + 1)
    # verifying → failed: a bundle that fails verification after download
    c3 = tc.on_v1()
    tc.deploy(c3, make_bundle(version=2, signer=tc.STRANGER_KEY), seq=2)
    # installing → failed, trial → failed
    c4 = tc.on_v1()
    tc.deploy(c4, V2, seq=2)
    c4.handle(InstallDone(V2.sha256, HealthCheckFailed("differs")), NOW)
    tc.desire(c4, V2, NOW, seq=3)
    tc.pull(c4, V2)
    c4.handle(InstallDone(V2.sha256), NOW)
    c4.handle(TrialDone(V2.sha256, TrialFailed("row 1")), NOW)
    # idle → failed: a first bundle whose trials ended in restarts, asked for again by redelivery
    c5 = tc.new_core(persisted=Persisted(desired_seq={"device": 1}, interrupted={V1.sha256: 9}))
    c5.handle(tc.Connected(), NOW)
    tc.desire(c5, V1, NOW, seq=1)
    assert taken == {(a, b) for a, b, _ in EDGES}


def test_the_table_never_skips_verification_or_the_trial() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert Phase.INSTALLING not in TRANSITIONS[Phase.DOWNLOADING]
    assert Phase.INSTALLING not in TRANSITIONS[Phase.IDLE]
    assert Phase.ACTIVE not in TRANSITIONS[Phase.INSTALLING]
    assert Phase.ACTIVE not in TRANSITIONS[Phase.VERIFYING]
    assert all(Phase.IDLE not in targets for targets in TRANSITIONS.values()), "idle is only where a device starts"


def test_generated_docs_are_current() -> None:
    """docs/errors.md, docs/settings.md and the phase diagrams (core.py, architecture.md)."""
    assert [p.name for p in gen_docs.stale()] == [], "run: python scripts/gen_docs.py"


def test_the_diagram_lists_every_edge_once() -> None:
    text = gen_docs.phases.diagram()
    assert len([line for line in text.splitlines() if "──►" in line]) == len(EDGES)
