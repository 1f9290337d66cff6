"""Captured rows on the device: the policy, the engine's choice, the bounded store, the signed
request in the pure core, and the size-bounded answer. No broker."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import BUNDLE_KEY, DEPLOY_KEY, NOW, make_trust, sample_rows, verified

from device_agent.actions import SendSamples
from device_agent.capture import CURRENT, PREVIOUS, CapturePolicy, SampleStore, record, replies
from device_agent.config import AgentConfig, CaptureSettings, CoreSettings
from device_agent.core import AgentCore
from device_agent.engine import InferenceEngine
from device_agent.errors import ConfigError, ProtocolError
from device_agent.events import Connected, Event, Message
from device_agent.protocol import (
    Command,
    DeviceEvent,
    ResendRequest,
    SampleRow,
    SamplesReply,
    SamplesRequest,
    Topics,
    dumps,
)
from device_agent.runtime import LoadedModel
from device_agent.state import Persisted
from device_agent.trust import DESIRED_DOMAIN, SAMPLES_DOMAIN, seal

T = Topics()
DEV = "dev1"


# ── the policy ───────────────────────────────────────────────────────────────────────


def test_capture_is_off_unless_the_bundle_or_the_agent_turns_it_on() -> None:
    off = {"low_confidence": 0.6, "capture": {"enabled": False, "below": 0.8, "uniform": 0.02}}
    on = {"low_confidence": 0.6, "capture": {"enabled": True, "below": 0.8, "uniform": 0.02, "basis": "oof p5"}}
    assert CapturePolicy.resolve({"low_confidence": 0.6}, CaptureSettings(), "classification") is None
    assert CapturePolicy.resolve(off, CaptureSettings(), "classification") is None
    assert CapturePolicy.resolve(on, CaptureSettings(), "classification") == CapturePolicy(0.8, 0.02, "oof p5")
    # The device's owner can refuse what the bundle asks, or capture what it does not.
    assert CapturePolicy.resolve(on, CaptureSettings(mode="off"), "classification") is None
    forced = CapturePolicy.resolve(off, CaptureSettings(mode="on"), "classification")
    assert forced is not None and forced.below == 0.8
    old_bundle = CapturePolicy.resolve({"low_confidence": 0.6}, CaptureSettings(mode="on"), "classification")
    assert old_bundle is not None and old_bundle.below == 0.6 and old_bundle.uniform == 0.0
    mine = CapturePolicy.resolve(on, CaptureSettings(below=0.5, uniform_rate=0.0), "classification")
    assert mine == CapturePolicy(0.5, 0.0, "agent config")
    regressor = CapturePolicy.resolve(on, CaptureSettings(), "regression")
    assert regressor is not None and regressor.below == -math.inf and regressor.uniform == 0.02


def test_capture_settings_are_checked() -> None:
    config = AgentConfig.load(None, {"capture.mode": "on", "capture.below": 0.7, "device_id": "d", "state_dir": "s"})
    assert config.capture.below == 0.7
    with pytest.raises(ConfigError, match=r"capture\.mode"):
        AgentConfig.load(None, {"capture.mode": "yes", "device_id": "d", "state_dir": "s", "trust": "t"}).check()
    with pytest.raises(ConfigError, match="must be a number"):
        AgentConfig.load(None, {"capture.below": "low"})


# ── the engine keeps the rows, the worker writes them ──────────────────────────────────


class _Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


def _model(capture: dict[str, Any] | None) -> LoadedModel:
    policy: dict[str, Any] = {"drift_window": 1000, "low_confidence": 0.6, "allow_missing": False}
    if capture is not None:
        policy["capture"] = capture
    return LoadedModel(verified(manifest_updates={"policy": policy}))


def test_the_engine_captures_every_row_below_the_threshold_and_nothing_when_off() -> None:
    rows = sample_rows(60, seed=3).tolist()
    engine = InferenceEngine(_Sink())
    engine.activate(_model({"enabled": True, "below": 0.7, "uniform": 0.0, "basis": "user"}))
    confs = [engine.serve(r).confidence for r in rows]
    taken = engine.take_captured()
    expected = [r for r, c in zip(rows, confs, strict=True) if c < 0.7]
    assert 0 < len(expected) < len(rows)
    assert [list(t.row) for t in taken] == [[pytest.approx(v) for v in r] for r in expected]
    assert all(t.kind == "low" and t.confidence is not None and t.confidence < 0.7 for t in taken)
    assert {t.bundle for t in taken} == {"demo@1"}
    assert engine.stats().counters["captured"] == len(expected)
    assert engine.take_captured() == []  # taken once

    off = InferenceEngine(_Sink())
    off.activate(_model(None))
    for r in rows:
        off.serve(r)
    assert off.take_captured() == [] and "captured" not in off.stats().counters


def test_the_uniform_sample_and_batches_are_captured_too() -> None:
    rows = sample_rows(200, seed=4)
    engine = InferenceEngine(_Sink())
    engine.activate(_model({"enabled": True, "below": 0.0, "uniform": 0.5, "basis": "user"}))
    engine.serve_many(rows[:100].tolist())
    engine.serve_matrix(rows[100:].astype("float32"))
    taken = engine.take_captured()
    assert all(t.kind == "uniform" for t in taken)
    assert 60 < len(taken) < 140  # half of 200, give or take chance


def test_pending_captured_rows_are_bounded() -> None:
    engine = InferenceEngine(_Sink(), capture=CaptureSettings(max_pending_rows=5))
    engine.activate(_model({"enabled": True, "below": 1.01, "uniform": 0.0}))
    for r in sample_rows(12, seed=5).tolist():
        engine.serve(r)
    assert len(engine.take_captured()) == 5
    assert engine.stats().counters["capture_dropped"] == 7


# ── the store ────────────────────────────────────────────────────────────────────────


def _rows(n: int, start: float = 1000.0) -> list[SampleRow]:
    return [record(start + i, "demo@1", "low", 1, 0.51, [float(i), 2.5, None]) for i in range(n)]


def test_the_store_is_bounded_in_rows_keeps_the_newest_and_survives_a_restart(tmp_path: Path) -> None:
    store = SampleStore(tmp_path, CaptureSettings(max_rows=10))
    store.append(_rows(23))
    kept = [r.ts for r in store.rows()]
    assert len(kept) <= 10 and kept == sorted(kept) and kept[-1] == 1022.0
    store.close()
    again = SampleStore(tmp_path, CaptureSettings(max_rows=10))  # a restart
    assert [r.ts for r in again.rows()] == kept
    again.append(_rows(1, start=2000.0))
    assert [r.ts for r in again.rows()][-1] == 2000.0 and len(again) <= 10
    assert [r.ts for r in again.rows(since=1020.0)] == [t for t in kept if t >= 1020.0] + [2000.0]


def test_the_store_is_bounded_in_bytes_and_skips_a_torn_line(tmp_path: Path) -> None:
    store = SampleStore(tmp_path, CaptureSettings(max_rows=1_000_000, max_bytes=4096))
    store.append(_rows(500))
    store.close()
    size = sum((tmp_path / n).stat().st_size for n in (CURRENT, PREVIOUS))
    assert size <= 4096
    with open(tmp_path / CURRENT, "ab") as fh:
        fh.write(b'{"t": 5, "b": "demo@1", "k": "lo')  # power cut mid-write
    rows = list(SampleStore(tmp_path, CaptureSettings(max_bytes=4096)).rows())
    assert rows and rows[-1].ts == 1499.0


def test_answered_ids_and_bundles_are_remembered(tmp_path: Path) -> None:
    store = SampleStore(tmp_path, CaptureSettings())
    store.mark_answered("r1", 16)
    store.note_bundle("demo@1", {"name": "demo", "version": 1, "features": ["a", "b", "c"]})
    again = SampleStore(tmp_path, CaptureSettings())
    assert again.answered() == ["r1"]
    assert again.bundles()["demo@1"]["features"] == ["a", "b", "c"]


# ── the answer ───────────────────────────────────────────────────────────────────────


def test_replies_are_size_bounded_and_carry_every_row_once() -> None:
    rows = _rows(300)
    bundles = {"demo@1": {"name": "demo", "version": 1, "sha256": "ab" * 32, "features": ["a", "b", "c"]}}
    docs = replies("req-1", DEV, NOW, rows, bundles, 4096, True)
    assert len(docs) > 3
    assert all(len(d.encode()) <= 4096 for d in docs)
    assert [d.part for d in docs] == list(range(1, len(docs) + 1)) and {d.parts for d in docs} == {len(docs)}
    back = [SamplesReply.decode(d.encode()) for d in docs]
    assert [r for d in back for r in d.rows] == rows
    assert back[0].bundles == bundles and back[0].total == 300
    empty = replies("req-2", DEV, NOW, [], bundles, 4096, False)
    assert len(empty) == 1 and empty[0].rows == () and not empty[0].capturing and empty[0].bundles == {}


def test_wire_documents_are_strict() -> None:
    req = SamplesRequest("r-1", DEV, NOW, NOW + 60, since=NOW - 3600, max_rows=100)
    assert SamplesRequest.decode(req.encode()) == req
    with pytest.raises(ProtocolError):
        SamplesRequest.decode(dumps({**req.to_json(), "kind": "resend"}))
    with pytest.raises(ProtocolError):
        SamplesRequest.decode(dumps({**req.to_json(), "device": "a/b"}))
    with pytest.raises(ProtocolError):
        SampleRow.from_json({"t": 1, "b": "x@1", "k": "low", "p": 0, "c": 0.5, "x": [[1]]})
    doc = replies("r-1", DEV, NOW, _rows(2), {}, 10_000, True)[0].to_json()
    with pytest.raises(ProtocolError):
        SamplesReply.from_json({**doc, "part": 3, "parts": 2})


# ── the signed request in the pure core ───────────────────────────────────────────────


def _core(**kw: Any) -> AgentCore:
    core = AgentCore(DEV, trust=make_trust(), persisted=Persisted(), boot_id="b1", settings=CoreSettings(), **kw)
    core.handle(Connected(), NOW)
    return core


def _request(rid: str = "r-1", *, device: str = DEV, expires: float = NOW + 60, key: Any = DEPLOY_KEY) -> bytes:
    body = SamplesRequest(rid, device, NOW, expires, since=NOW - 10).to_json()
    return seal(key, SAMPLES_DOMAIN, body)


def _failures(actions: list[Any]) -> list[str]:
    return [
        DeviceEvent.decode(a.payload).code
        for a in actions
        if getattr(a, "topic", "") == T.events(DEV) and hasattr(a, "boot_id")
    ]


def test_a_signed_request_is_answered_once() -> None:
    core = _core()
    out = core.handle(Message(T.cmd(DEV), _request()), NOW)
    assert [a for a in out if isinstance(a, SendSamples)] == [SendSamples("r-1", NOW - 10, None)]
    again = core.handle(Message(T.cmd(DEV), _request()), NOW + 1)
    assert not [a for a in again if isinstance(a, SendSamples)] and not _failures(again)
    # ... and after a restart, with the ids the worker kept on disk.
    restarted = _core(answered=("r-1",))
    assert not [a for a in restarted.handle(Message(T.cmd(DEV), _request()), NOW) if isinstance(a, SendSamples)]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (lambda: _request(device="dev2"), "samples.rejected"),
        (lambda: _request(expires=NOW - 1), "samples.rejected"),
        (lambda: _request(expires=NOW + 3 * 86_400), "samples.rejected"),
        (lambda: _request(key=BUNDLE_KEY), "bundle.unknown_key"),  # a bundle key may not ask for rows
        (lambda: seal(DEPLOY_KEY, DESIRED_DOMAIN, SamplesRequest("r", DEV, NOW, NOW + 60).to_json()), None),
        (lambda: dumps({"body": dumps(SamplesRequest("r", DEV, NOW, NOW + 60).to_json()).decode(), "sigs": []}), None),
    ],
)
def test_a_request_that_is_not_for_us_or_not_signed_for_this_is_refused(payload: Any, code: str | None) -> None:
    core = _core()
    out = core.handle(Message(T.cmd(DEV), payload()), NOW)
    assert not [a for a in out if isinstance(a, SendSamples)]
    failures = _failures(out)
    assert len(failures) == 1
    if code is not None:
        assert failures == [code]
    else:
        assert failures[0].startswith("bundle.")  # a signature for another purpose, or none


def test_without_a_trust_file_nothing_leaves() -> None:
    core = AgentCore(DEV, trust=None, persisted=Persisted(), boot_id="b1", trust_error="no trust")
    core.handle(Connected(), NOW)
    out = core.handle(Message(T.cmd(DEV), _request()), NOW)
    assert not [a for a in out if isinstance(a, SendSamples)]
    assert "trust.unavailable" in _failures(out)


def test_the_unsigned_resend_command_still_works_beside_it() -> None:
    core = _core()
    cmd = Command("c1", NOW, DEV, ResendRequest("b0", ((1, 3),)))
    out = core.handle(Message(T.cmd(DEV), cmd.encode()), NOW)
    assert any(type(a).__name__ == "Resend" for a in out)
