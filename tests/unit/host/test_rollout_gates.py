"""The rollout gates on real drift windows and heartbeats (no broker, no database): each gate
fails on the fault it is for, passes a good version, and says ``no_data`` rather than guess."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rollout_factory import NEW, OLD, biased, good, info, side, unsure

from edgekit.alerts.rules import merged
from edgekit.errors import WorkspaceError
from edgekit.rollout.config import RolloutConfig
from edgekit.rollout.gates import (
    ABORT,
    ACTIVE,
    FAIL,
    FAILED,
    NO_DATA,
    OFFLINE,
    PASS,
    PENDING,
    WAIT,
    WIDEN,
    Decision,
    GateFacts,
    Outcome,
    Side,
    decide,
    drift,
    error_rate,
    failures,
    latency,
    low_confidence,
    prediction_shift,
)

CFG = RolloutConfig()
NEW_DEVICES = ["n1", "n2", "n3"]
OLD_DEVICES = ["o1", "o2", "o3", "o4", "o5", "o6"]


@pytest.fixture(scope="module")
def ref_good():  # type: ignore[no-untyped-def]
    return info(good)


def facts(new: Side, old: Side, outcomes: dict[str, Outcome] | None = None, reverts=None) -> GateFacts:  # type: ignore[no-untyped-def]
    if outcomes is None:
        outcomes = {d: Outcome(d, ACTIVE, 1000.0) for d in new.devices}
    return GateFacts(2000.0, 1000.0, outcomes, reverts or {}, new, old)


def test_failures_fail_above_the_share_not_at_it() -> None:
    empty = Side(NEW)
    outcomes = {f"d{i}": Outcome(f"d{i}", ACTIVE, 1000.0) for i in range(20)}
    assert failures(facts(empty, Side(OLD), outcomes), CFG.failures).verdict == PASS
    one = {**outcomes, "d0": Outcome("d0", FAILED, 1000.0, "install.failed", "health samples differ")}
    at_limit = failures(facts(empty, Side(OLD), one), CFG.failures)  # 1 of 20: exactly 5 %
    assert at_limit.verdict == PASS and at_limit.evidence["share"] == pytest.approx(0.05)
    two = {**one, "d1": Outcome("d1", FAILED, 1000.0, "install.failed", "health samples differ")}
    above = failures(facts(empty, Side(OLD), two), CFG.failures)
    assert above.verdict == FAIL and "install.failed" in above.summary


def test_failures_share_is_above_the_limit_only() -> None:
    empty = Side(NEW)
    outcomes = {f"d{i}": Outcome(f"d{i}", ACTIVE, 1000.0) for i in range(40)}
    one = {**outcomes, "d0": Outcome("d0", FAILED, 1000.0, "install.failed", "x")}
    r = failures(facts(empty, Side(OLD), one), CFG.failures)
    assert r.verdict == PASS and r.evidence["failed"][0]["code"] == "install.failed"
    two = {**one, "d1": Outcome("d1", ACTIVE, 1000.0)}
    r = failures(facts(empty, Side(OLD), two, {"d1": ["trial.failed"], "d2": ["trial.failed"]}), CFG.failures)
    assert r.verdict == FAIL and {f["why"] for f in r.evidence["failed"]} == {"failed", "reverted"}
    # a device that never finished counts once its install timeout has passed
    slow = {**outcomes, **{d: Outcome(d, PENDING, 0.0) for d in ("d0", "d1", "d2")}}
    r = failures(facts(empty, Side(OLD), slow), CFG.failures)
    assert r.verdict == FAIL and {f["why"] for f in r.evidence["failed"]} == {"timed_out"}
    # offline devices are reported, not counted
    gone = {**outcomes, **{d: Outcome(d, OFFLINE, 0.0) for d in ("d0", "d1", "d2")}}
    r = failures(facts(empty, Side(OLD), gone), CFG.failures)
    assert r.verdict == PASS and r.evidence["offline"] == ["d0", "d1", "d2"] and r.evidence["deployed"] == 37


def test_a_single_device_phase_aborts_on_its_failure() -> None:
    r = failures(
        facts(Side(NEW), Side(OLD), {"d0": Outcome("d0", FAILED, 1.0, "trial.failed", "inference")}), CFG.failures
    )
    assert r.verdict == FAIL and "trial.failed" in r.summary


def test_error_rate_against_the_previous_version_over_the_same_period(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good, rejected_per=1)  # 1 % refused
    same = error_rate(facts(side(NEW, NEW_DEVICES, ref_good, rejected_per=1), old), CFG.error_rate)
    assert same.verdict == PASS
    worse = error_rate(facts(side(NEW, NEW_DEVICES, ref_good, rejected_per=20), old), CFG.error_rate)
    assert worse.verdict == FAIL and worse.evidence["new"]["rate"] > worse.evidence["limit"]
    assert worse.evidence["old"]["rate"] == pytest.approx(1 / 101, rel=1e-3)
    # the field got worse for everyone: not the version's fault
    bad_field = side(OLD, OLD_DEVICES, ref_good, rejected_per=20)
    assert (
        error_rate(facts(side(NEW, NEW_DEVICES, ref_good, rejected_per=20), bad_field), CFG.error_rate).verdict == PASS
    )
    # nothing on the previous version: the fixed rate
    alone = error_rate(facts(side(NEW, NEW_DEVICES, ref_good, rejected_per=20), Side(OLD)), CFG.error_rate)
    assert alone.verdict == FAIL and "note" in alone.evidence
    assert error_rate(facts(Side(NEW), old), CFG.error_rate).verdict == NO_DATA


def test_latency_against_the_previous_version(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good, p99_us=800.0)
    assert latency(facts(side(NEW, NEW_DEVICES, ref_good, p99_us=900.0), old), CFG.latency).verdict == PASS
    slow = latency(facts(side(NEW, NEW_DEVICES, ref_good, p99_us=4000.0), old), CFG.latency)
    assert slow.verdict == FAIL and slow.evidence["new"]["p99_us"] == 4000.0
    assert latency(facts(side(NEW, NEW_DEVICES, ref_good), Side(OLD)), CFG.latency).verdict == NO_DATA


def test_drift_only_the_new_version_sees_fails_drift_both_see_does_not(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good)
    assert drift(facts(side(NEW, NEW_DEVICES, ref_good, seed=2), old), CFG.drift).verdict == PASS
    # the new version was trained on data unlike the field's: its reference has x0 one σ off
    skewed = info(good, shift=1.0)
    r = drift(facts(side(NEW, NEW_DEVICES, skewed, seed=2), old), CFG.drift)
    assert r.verdict == FAIL and r.evidence["only_new"] == ["x0"]
    # the field moved for everyone: both sides see it
    moved_old = side(OLD, OLD_DEVICES, ref_good, shift=1.0)
    r = drift(facts(side(NEW, NEW_DEVICES, ref_good, seed=2, shift=1.0), moved_old), CFG.drift)
    assert r.verdict == PASS and "x0" in r.evidence["old"]["drifted"]
    # no registry entry: no reference, no judgement
    assert drift(facts(side(NEW, NEW_DEVICES, None, seed=2), old), CFG.drift).verdict == NO_DATA


def test_drift_both_sides_see_is_not_blamed_on_the_new_version_with_fewer_old_rows(ref_good) -> None:  # type: ignore[no-untyped-def]
    # one window left on the previous version, twelve on the new: the same small field shift,
    # which 2,400 merged rows see and 200 do not
    old = side(OLD, ["o1"], ref_good, per_device=1, shift=0.15)
    new = side(NEW, NEW_DEVICES, ref_good, seed=2, per_device=4, shift=0.15)
    assert "x0" in merged(ref_good.reference, new.windows, 0.01)["drifted"]  # type: ignore[index]
    assert "x0" not in merged(ref_good.reference, old.windows, 0.01)["drifted"]  # type: ignore[index]
    r = drift(facts(new, old), CFG.drift)
    assert r.verdict == PASS and r.evidence["new"]["windows"] == r.evidence["old"]["windows"] == 1
    # too few rows on the previous version to compare: no verdict yet
    few = side(OLD, ["o1"], ref_good, per_device=0)
    assert drift(facts(side(NEW, NEW_DEVICES, ref_good, seed=2), few), CFG.drift).verdict == NO_DATA


def test_prediction_shift_against_the_previous_versions_mix(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good)
    r = prediction_shift(facts(side(NEW, NEW_DEVICES, ref_good, seed=2), old), CFG.prediction_shift)
    assert r.verdict == PASS and r.evidence["df"] == 1
    r = prediction_shift(facts(side(NEW, NEW_DEVICES, info(biased), model=biased, seed=2), old), CFG.prediction_shift)
    assert r.verdict == FAIL and r.evidence["chi2"] > r.evidence["chi2_limit"] and r.evidence["psi"] >= 0.1
    few = side(NEW, NEW_DEVICES[:1], ref_good, per_device=0)
    assert prediction_shift(facts(few, old), CFG.prediction_shift).verdict == NO_DATA


def test_low_confidence_against_the_previous_version(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good)
    assert low_confidence(facts(side(NEW, NEW_DEVICES, ref_good, seed=2), old), CFG.low_confidence).verdict == PASS
    r = low_confidence(facts(side(NEW, NEW_DEVICES, info(unsure), model=unsure, seed=2), old), CFG.low_confidence)
    assert (
        r.verdict == FAIL and r.evidence["new"]["rate"] > r.evidence["old"]["rate"] + 0.05 and r.evidence["p"] < 0.001
    )


def test_decide_aborts_at_once_waits_for_installs_and_the_bake_then_widens(ref_good) -> None:  # type: ignore[no-untyped-def]
    old = side(OLD, OLD_DEVICES, ref_good)
    new = side(NEW, NEW_DEVICES, ref_good, seed=2)
    assert decide(facts(new, old), CFG, 0, baked=False).verdict == WAIT
    widen = decide(facts(new, old), CFG, 0, baked=True)
    assert widen.verdict == WIDEN and {g.verdict for g in widen.gates} == {PASS}
    installing = {**{d: Outcome(d, ACTIVE, 1000.0) for d in NEW_DEVICES}, "n9": Outcome("n9", PENDING, 1990.0)}
    assert decide(facts(new, old, installing), CFG, 0, baked=True).verdict == WAIT
    bad = decide(facts(side(NEW, NEW_DEVICES, ref_good, seed=2, rejected_per=30), old), CFG, 1, baked=False)
    assert bad.verdict == ABORT and [g.gate for g in bad.failed] == ["error_rate"] and bad.phase == 1
    again = Decision.from_json(bad.to_json())
    assert again == bad
    # a gate switched off is not evaluated
    off = replace(CFG, error_rate=replace(CFG.error_rate, enabled=False))
    assert decide(facts(side(NEW, NEW_DEVICES, ref_good, seed=2, rejected_per=30), old), off, 1, True).verdict == WIDEN


def test_settings_come_from_edgekit_toml_and_travel_with_the_rollout() -> None:
    cfg = RolloutConfig.from_toml({"bake_s": 30, "failures": {"max_share": 0.0}, "drift": {"enabled": False}})
    assert cfg.bake_s == 30.0 and cfg.failures.max_share == 0.0 and not cfg.drift.enabled
    back = RolloutConfig.from_gates_json(cfg.gates_json())
    assert back.failures == cfg.failures and back.drift == cfg.drift
    with pytest.raises(WorkspaceError, match=r"\[rollout.failures\] in edgekit.toml has no setting 'max'"):
        RolloutConfig.from_toml({"failures": {"max": 1}})
    with pytest.raises(WorkspaceError, match="between 0 and 1"):
        RolloutConfig.from_toml({"error_rate": {"rate": 2}})
