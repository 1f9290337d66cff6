"""Serving never dies quietly: an installed model outlives its bundle's expiry and a lost trust
file; one input line cannot stop a feed, and a failed source is reported and restarted; a
clock behind the signed time is reported and not believed; bundles a device cannot run are
refused by their ``compat`` before anything is installed."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import NOW, Built, make_bundle, sample_rows, verify_built

from device_agent.bundle import DeviceProfile
from device_agent.config import AgentConfig
from device_agent.core import AgentCore
from device_agent.errors import Incompatible, ManifestInvalid
from device_agent.events import SourceFailed, Started, Tick
from device_agent.inputs import supervise
from device_agent.outbox import Outbox
from device_agent.protocol import BundleRef
from device_agent.slots import Slots
from device_agent.sources import bounded_lines, serve_lines
from device_agent.state import Persisted
from device_agent.worker import Worker
from tests.unit.test_core import DEV, FAILED, T, codes, deploy, desire, new_core, on_v1, published, reported

# ── the installed model serves after a restart ──────────────────────────────────────


def _restarted(tmp_path: Path, built: Built, trust: Any) -> Worker:
    """A worker restarted over a state dir that holds ``built`` as the committed bundle."""
    slots = Slots(tmp_path / "state")
    slots.store_bundle(built.sha256, built.data)
    ref = BundleRef(built.name, built.version, built.sha256)
    slots.save(Persisted(active=ref))
    config = AgentConfig(device_id=DEV, state_dir=str(tmp_path / "state"), trust="unused")
    core = AgentCore(DEV, trust=trust, persisted=slots.load(), boot_id="b", trust_error="trust file missing")
    worker = Worker(config, core, slots, Outbox(tmp_path / "outbox.sqlite", 100, 0), trust)
    worker.handle(Started())
    return worker


def _serves(worker: Worker) -> bool:
    pred = worker.engine.serve(sample_rows(1)[0].tolist())
    return pred.label is not None


def test_an_expired_installed_bundle_still_serves_after_a_restart(tmp_path: Path) -> None:
    from bundle_factory import make_trust

    expired = make_bundle(manifest_updates={"expires": "2001-01-01T00:00:00Z"})
    worker = _restarted(tmp_path, expired, make_trust())
    assert worker.engine.model is not None, "expiry guards installing, not the model that serves"
    assert _serves(worker)


def test_a_missing_trust_file_does_not_stop_the_installed_model(tmp_path: Path) -> None:
    worker = _restarted(tmp_path, make_bundle(), None)
    assert worker.engine.model is not None and _serves(worker)
    out = worker.core.handle(Started(), NOW)  # the core still reports the missing trust when connected
    assert out


def test_an_installed_bundle_changed_on_disk_is_still_refused(tmp_path: Path) -> None:
    """Re-opening skips expiry and the signature, never the content: the state names its SHA-256."""
    from bundle_factory import make_trust

    built = make_bundle()
    slots = Slots(tmp_path / "state")
    slots.store_bundle(built.sha256, built.data[:-1] + bytes([built.data[-1] ^ 1]))
    slots.save(Persisted(active=BundleRef(built.name, built.version, built.sha256)))
    config = AgentConfig(device_id=DEV, state_dir=str(tmp_path / "state"), trust="unused")
    core = AgentCore(DEV, trust=make_trust(), persisted=slots.load(), boot_id="b")
    worker = Worker(config, core, slots, Outbox(tmp_path / "outbox.sqlite", 100, 0), make_trust())
    worker.handle(Started())
    assert worker.engine.model is None


# ── the input loop ─────────────────────────────────────────────────────────────────


class _Engine:
    """Just enough of the engine for answers that never reach a model."""

    model = None

    def __init__(self) -> None:
        self.rejected: list[str] = []

    def reject(self, err: Any) -> None:
        self.rejected.append(err.code)


def test_any_line_is_answered_and_the_feed_goes_on() -> None:
    nested = b"[" * 200_000 + b"]" * 200_000
    huge = b"[" + b"1," * 600_000 + b"1]"
    binary = bytes(b for b in range(256) if b != 0x0A) * 4  # no newline: one line
    stream = io.BytesIO(b"\n".join([nested, huge, binary, b'{"id": [[[]]], "features": "x"}', b"[1]"]) + b"\n")
    out = io.StringIO()
    engine: Any = _Engine()
    served = serve_lines(engine, bounded_lines(stream, 1 << 20), out)
    answers = out.getvalue().splitlines()
    assert served == len(answers) == 5
    assert engine.rejected[:3] == ["row.bad_value"] * 3
    assert "above input.max_line_bytes" in answers[1]


def test_a_long_line_is_never_held_whole() -> None:
    stream = io.BytesIO(b"x" * 5000 + b"\n[1]\n")
    lines = list(bounded_lines(stream, 100))
    assert len(lines) == 2 and not isinstance(lines[0], bytes) and lines[1] == b"[1]\n"


def test_a_failed_source_is_reported_and_restarted() -> None:
    runs: list[int] = []
    reports: list[tuple[str, str]] = []

    def source() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise OSError("read error")

    failures = supervise("stdin", source, lambda n, w: reports.append((n, w)), threading.Event(), 0.0)
    assert failures == 2 and len(runs) == 3
    assert reports == [("stdin", "OSError: read error")] * 2


def test_a_stop_ends_the_restarts() -> None:
    stop = threading.Event()

    def source() -> None:
        stop.set()
        raise OSError("gone")

    started = time.monotonic()
    assert supervise("csv", source, lambda n, w: None, stop, 30.0) == 1
    assert time.monotonic() - started < 5


def test_the_core_reports_a_failed_source() -> None:
    core = on_v1()
    out = core.handle(SourceFailed("stdin", "OSError: read error"), NOW)
    assert codes(out) == ["source.failed"]
    assert reported(out).last_runtime_error is not None


# ── the clock ──────────────────────────────────────────────────────────────────────


def test_a_clock_behind_the_newest_signed_time_is_reported_and_not_believed() -> None:
    from bundle_factory import valid_bundle

    core = on_v1()
    v2 = valid_bundle("demo", 2)
    desire(core, v2, seq=2, issued=NOW)
    assert core.state.signed_time == NOW and not core.clock_untrusted
    # The device's clock jumps back a year (a dead RTC battery): reported once, not believed.
    earlier = NOW - 365 * 86400
    out = core.handle(Tick(), earlier)
    assert codes(out) == ["clock.untrusted"] and core.clock_untrusted
    assert reported(out).clock_untrusted is True
    assert codes(core.handle(Tick(), earlier + 1)) == []
    # A desired state that expired before the signed time is refused whatever the clock says.
    v3 = valid_bundle("demo", 3)
    out = desire(core, v3, earlier + 2, seq=3, issued=earlier, expires=NOW - 10)
    assert codes(out) == ["desired.rejected"]
    # The clock catches up: trusted again.
    out = core.handle(Tick(), NOW + 1)
    assert not core.clock_untrusted and reported(out).clock_untrusted is False


def test_the_signed_time_survives_a_restart(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.save(Persisted(signed_time=NOW))
    assert slots.load().signed_time == NOW


# ── compatibility ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("compat", "device", "why"),
    [
        ({"device_classes": ["rpi4"]}, DeviceProfile(device_class="jetson"), "device classes rpi4"),
        ({"device_classes": ["rpi4"]}, DeviceProfile(), "unset"),
        ({"min_runtime": "99.0"}, DeviceProfile(runtime="1.32.0"), "onnxruntime 99.0"),
        ({"opset": 99}, DeviceProfile(max_opset=lambda: 21), "opset 99"),
    ],
)
def test_a_bundle_this_device_cannot_run_is_refused(compat: dict[str, Any], device: DeviceProfile, why: str) -> None:
    built = make_bundle(manifest_updates={"compat": compat})
    from bundle_factory import make_trust

    from device_agent.bundle import verify

    with pytest.raises(Incompatible, match=why):
        verify(built.data, make_trust(), now=NOW, device=device)
    verify_built(built)  # the host's check (no device) does not judge the device's compat


def test_a_matching_device_accepts_and_a_malformed_compat_is_refused() -> None:
    from bundle_factory import make_trust

    from device_agent.bundle import verify

    ok = make_bundle(manifest_updates={"compat": {"device_classes": ["rpi4", "jetson"], "opset": 13}})
    device = DeviceProfile(device_class="jetson", runtime="1.32.0", max_opset=lambda: 21)
    assert verify(ok.data, make_trust(), now=NOW, device=device).version == 1
    bad = make_bundle(manifest_updates={"compat": {"device_classes": "rpi4"}})
    with pytest.raises(ManifestInvalid):
        verify(bad.data, make_trust(), now=NOW, device=device)


def test_the_core_refuses_an_incompatible_bundle_before_installing() -> None:
    core = new_core()
    core.profile = DeviceProfile(device_class="jetson")
    from device_agent.events import Connected

    core.handle(Connected(), NOW)
    built = make_bundle(version=2, manifest_updates={"compat": {"device_classes": ["rpi4"]}})
    out = deploy(core, built)
    assert codes(out) == ["bundle.incompatible"] and core.phase == FAILED
    assert published(out, T.reported(DEV))
