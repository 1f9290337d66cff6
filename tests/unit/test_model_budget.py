"""Models cannot take the device down: the load and health check run in a child process under a
time and memory budget that really stops a runaway model; every install attempt is persisted
before the risky step, so a crash counts against the bundle; the trial compares the new model
with the one it replaces and reverts a regression."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bundle_factory import default_files, make_bundle, sample_rows, verify_built

from device_agent.actions import Commit, Install, Revert, SaveState, StartTrial
from device_agent.bundle import MODEL, VerifiedBundle
from device_agent.config import CoreSettings, EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.errors import ModelResources, ModelTimeout, WrongShape
from device_agent.events import Connected, InstallDone, TrialDone
from device_agent.probe import Budget, probe
from device_agent.runtime import LoadedModel
from device_agent.trial import TrialReport, judge
from tests.unit.hostile_models import endless_loop, files_with, huge_allocation
from tests.unit.test_core import (
    DOWNLOADING,
    FAILED,
    MAX_TRIAL_CRASHES,
    NOW,
    TRIAL,
    V1,
    V2,
    active_ref,
    codes,
    deploy,
    desire,
    new_core,
    of_type,
    on_v1,
)

BUDGET = Budget(timeout_s=60.0, memory_bytes=512 << 20, cpu_s=60.0)

# ── the probe: a real child process, real onnxruntime ─────────────────────────────────


@pytest.fixture
def model_file() -> Iterator[tuple[VerifiedBundle, Path]]:
    yield from _model(default_files())


def _model(files: dict[str, bytes]) -> Iterator[tuple[VerifiedBundle, Path]]:
    bundle = verify_built(make_bundle(files=files), keep_model=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(files[MODEL])
        yield bundle, path


def test_a_good_model_passes_its_probe_and_says_what_it_costs(model_file: tuple[VerifiedBundle, Path]) -> None:
    bundle, path = model_file
    steps: list[str] = []
    result = probe(bundle, str(path), 1, BUDGET, step=steps.append)
    assert steps == ["during_load", "during_health_check"]
    assert 0 < result.latency_s < 1 and result.rss_bytes >= 0


def test_an_endless_loop_is_stopped_by_the_wall_clock() -> None:
    for bundle, path in _model(files_with(endless_loop())):
        with pytest.raises(ModelTimeout, match="health check took longer than 3 s"):
            probe(bundle, str(path), 1, replace(BUDGET, timeout_s=3.0))


def test_an_endless_loop_is_stopped_by_the_cpu_limit() -> None:
    for bundle, path in _model(files_with(endless_loop())):
        with pytest.raises(ModelTimeout, match="CPU"):
            probe(bundle, str(path), 1, replace(BUDGET, cpu_s=1.0))


def test_three_gigabytes_per_row_is_stopped_by_the_memory_limit() -> None:
    for bundle, path in _model(files_with(huge_allocation())):
        with pytest.raises(ModelResources):
            probe(bundle, str(path), 1, BUDGET)


# ── the core: attempts are persisted before the risky step ───────────────────────────


def test_the_attempt_is_saved_before_the_install_starts() -> None:
    core = on_v1()
    out = deploy(core, V2, seq=2)
    steps = [a for a in out if isinstance(a, (SaveState, Install))]
    assert isinstance(steps[-1], Install)
    assert steps[-2] == SaveState(replace(core.state)) and core.state.interrupted == {V2.sha256: 1}


def test_a_crash_during_the_install_counts_and_after_n_the_bundle_waits_for_a_newer_request() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    for boot in range(MAX_TRIAL_CRASHES - 1):  # the process dies during the load, every time
        core = new_core(persisted=core.state)
        core.handle(Connected(), NOW + boot)
        deploy(core, V2, NOW + boot, seq=2)  # the retained desired state, redelivered
        assert core.state.interrupted == {V2.sha256: boot + 2}
    core = new_core(persisted=core.state)
    core.handle(Connected(), NOW + 50)
    out = desire(core, V2, NOW + 50, seq=2)
    assert codes(out) == ["trial.crashed"] and core.phase == FAILED and not of_type(out, Install)
    assert "install or trial" in core.last_error.detail  # type: ignore[union-attr]
    out = desire(core, V2, NOW + 60, seq=3)  # a newer desired state asks again
    assert core.phase == DOWNLOADING


def test_a_failed_install_is_no_crash() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256, ModelTimeout("took too long")), NOW)
    assert core.state.interrupted == {} and core.phase == FAILED


# ── the trial's verdict ──────────────────────────────────────────────────────────────

SETTINGS = CoreSettings()


def test_judge_compares_rejections_latency_and_memory_with_margins() -> None:
    fine = TrialReport(rows=50, rejected=1, latency_s=30e-6, base_rows=500, base_rejected=5, base_latency_s=25e-6)
    assert judge(fine, SETTINGS, 10 << 20, 8 << 20) is None
    assert "rejected 50 of 50" in str(judge(replace(fine, rejected=50), SETTINGS))
    assert judge(replace(fine, rows=5, rejected=5), SETTINGS) is None  # too few rows to say
    assert judge(replace(fine, base_rows=0, base_rejected=0, rejected=50), SETTINGS) is None  # nothing to compare
    assert "latency" in str(judge(replace(fine, latency_s=0.05), SETTINGS))
    assert judge(replace(fine, latency_s=90e-6), SETTINGS) is None  # 3.6x, but 65 µs: within the slack
    assert "MiB" in str(judge(fine, SETTINGS, 900 << 20, 20 << 20))
    assert judge(fine, SETTINGS, 60 << 20, 10 << 20) is None  # 6x, but 50 MiB: within the slack


def _trial(core: object, report: TrialReport) -> list[object]:
    out: list[object] = list(core.handle(InstallDone(V2.sha256, memory=1 << 20), NOW))  # type: ignore[attr-defined]
    assert of_type(out, StartTrial)
    return out + core.handle(TrialDone(V2.sha256, report=report), NOW + 1)  # type: ignore[attr-defined]


def test_a_model_that_rejects_every_row_the_old_one_served_is_reverted() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    out = _trial(core, TrialReport(rows=50, rejected=50, latency_s=None, base_rows=300, base_rejected=0))
    assert of_type(out, Revert) == [Revert(V2.sha256)] and not of_type(out, Commit)
    assert codes(out) == ["lifecycle.trial", "trial.regressed"] and core.phase == FAILED
    assert core.active == active_ref(V1) and V2.sha256 not in core.state.memory


def test_a_model_as_good_as_the_old_one_is_committed() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    out = _trial(core, TrialReport(rows=50, rejected=0, latency_s=20e-6, base_rows=300, base_rejected=3))
    commits = of_type(out, Commit)
    assert len(commits) == 1 and commits[0].state.memory == {V2.sha256: 1 << 20}


# ── the engine counts what the core compares ─────────────────────────────────────────


def test_rows_the_new_model_rejects_count_in_its_trial() -> None:
    got: list[object] = []
    engine = InferenceEngine(got.append, EngineSettings(trial_rows=30, trial_max_s=60))
    old = LoadedModel(verify_built(make_bundle()))
    engine.activate(old)
    for row in sample_rows(40):
        engine.serve(row.tolist())
    engine.start_trial(LoadedModel(verify_built(make_bundle(version=2))))
    assert engine._trial is not None and engine._trial.base_rows == 40
    for row in sample_rows(30):
        with pytest.raises(WrongShape, match="the model expects 3"):
            engine.serve([*row.tolist(), 1.0])  # one value too many for the new model
    done = [e for e in got if isinstance(e, TrialDone)]
    assert len(done) == 1 and done[0].error is None and done[0].report is not None
    report = done[0].report
    assert (report.rows, report.rejected, report.base_rows, report.base_rejected) == (30, 30, 40, 0)
    assert report.base_latency_s is not None and report.latency_s is None
    assert judge(report, SETTINGS) is not None


def test_trial_phase_is_unchanged_until_the_verdict() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    deploy(core, V1)
    core.handle(InstallDone(V1.sha256), NOW)
    assert core.phase == TRIAL
