"""Phases and cohorts: deterministic, fair, at least one device per phase, offline devices
skipped and named (never waited for), and a phase computed twice adds nothing twice."""

from __future__ import annotations

import pytest

from edgekit.errors import UsageError
from edgekit.rollout.plan import format_phases, next_cohort, ordered, parse_phases, phase_size

PHASES = (0.01, 0.1, 0.5, 1.0)


def run_all(rollout_id: str, members: list[str], phases: tuple[float, ...], offline: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    targeted: dict[str, int] = {}
    skipped: dict[str, int] = {}
    cohorts = []
    for k in range(len(phases)):
        c = next_cohort(rollout_id, k, phases, members, targeted, skipped, lambda d: d not in offline)
        targeted.update({d: k for d in c.devices})
        skipped.update({d: k for d in c.skipped})
        cohorts.append(c)
    return cohorts, targeted, skipped


def test_phases_parse_and_refuse_with_one_line() -> None:
    assert parse_phases("1%,10%,50%,100%") == PHASES
    assert parse_phases(" 34% , 100% ") == (0.34, 1.0)
    assert format_phases(PHASES) == "1%,10%,50%,100%"
    for bad, what in [
        ("", "names no phase"),
        ("10%,5%,100%", "does not widen"),
        ("10%,50%", "last phase must be 100%"),
        ("0%,100%", "between 0% and 100%"),
        ("10,100%", "between 0% and 100%"),
        ("x%,100%", "between 0% and 100%"),
        ("150%", "between 0% and 100%"),
    ]:
        with pytest.raises(UsageError, match=what):
            parse_phases(bad)


def test_phase_sizes_round_up_and_always_add_a_device() -> None:
    assert [phase_size(s, 1000, 0) for s in PHASES] == [10, 100, 500, 1000]
    assert phase_size(0.01, 20, 0) == 1
    assert phase_size(0.1, 20, 1) == 2
    assert phase_size(0.5, 3, 2) == 3
    assert phase_size(1.0, 0, 0) == 0


def test_cohorts_are_deterministic_cumulative_and_cover_the_group() -> None:
    members = [f"pump-{i}" for i in range(200)]
    cohorts, targeted, skipped = run_all("r1", members, PHASES)
    assert [len(c.devices) for c in cohorts] == [2, 18, 80, 100]
    assert sorted(targeted) == sorted(members) and not skipped
    again, _, _ = run_all("r1", list(reversed(members)), PHASES)
    assert again == cohorts
    other, _, _ = run_all("r2", members, PHASES)
    assert set(other[0].devices) != set(cohorts[0].devices)
    assert ordered("r1", members)[:2] == list(cohorts[0].devices)


def test_at_least_one_device_per_phase_on_a_small_group() -> None:
    cohorts, targeted, _ = run_all("r", ["a", "b", "c"], PHASES)
    assert [len(c.devices) for c in cohorts] == [1, 1, 1, 0]
    assert sorted(targeted) == ["a", "b", "c"]


def test_offline_devices_are_skipped_named_and_replaced() -> None:
    members = [f"d{i}" for i in range(10)]
    order = ordered("r", members)
    down = frozenset(order[:2])  # the first two in the order are offline when phase 0 comes
    cohorts, targeted, skipped = run_all("r", members, (0.1, 0.5, 1.0), down)
    assert cohorts[0].skipped == tuple(order[:2]) and cohorts[0].devices == (order[2],)
    assert set(skipped) == set(down) and not set(targeted) & down  # skipped once, never waited for
    assert len(targeted) == 8


def test_a_phase_computed_again_adds_nothing_and_a_newcomer_moves_nobody() -> None:
    members = [f"d{i}" for i in range(50)]
    first = next_cohort("r", 0, PHASES, members, {}, {}, lambda _d: True)
    done = dict.fromkeys(first.devices, 0)
    assert next_cohort("r", 0, PHASES, members, done, {}, lambda _d: True).devices == ()
    later = next_cohort("r", 1, PHASES, [*members, "late-joiner"], done, {}, lambda _d: True)
    assert not set(later.devices) & set(first.devices)
    assert len(done) + len(later.devices) == later.size == 6
