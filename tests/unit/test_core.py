"""AgentCore driven with events, asserting the actions it returns: no broker, no I/O.

The broker is played by the tests: whatever the core subscribes to is delivered as a
retained message, so the chunk window and re-requests are exercised the way mosquitto
would exercise them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from bundle_factory import (
    BUNDLE_KEY,
    DEPLOY_KEY,
    NOW,
    STRANGER_KEY,
    Built,
    desired_payload,
    flip,
    make_bundle,
    make_trust,
    transfer_payload,
    valid_bundle,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.actions import (
    Action,
    Commit,
    DropStaging,
    Install,
    Publish,
    Resend,
    Restore,
    Revert,
    SaveState,
    Send,
    StageChunk,
    StageTransfer,
    StartTrial,
    Subscribe,
    Unsubscribe,
)
from device_agent.bundle import MODEL, FloorEntry
from device_agent.config import CoreSettings
from device_agent.core import AgentCore
from device_agent.errors import (
    BadValue,
    HealthCheckFailed,
    IllegalTransition,
    NotFinite,
    StorageError,
    TrialFailed,
)
from device_agent.events import (
    Committed,
    Connected,
    Disconnected,
    InstallDone,
    Message,
    ResendDone,
    Restored,
    RowRejected,
    Started,
    Stopping,
    Tick,
    TrialDone,
)
from device_agent.phases import Phase
from device_agent.protocol import (
    BundleRef,
    Command,
    DeviceEvent,
    DeviceState,
    Heartbeat,
    Reported,
    ResendReply,
    ResendRequest,
    Stats,
    Topics,
)
from device_agent.state import Persisted
from device_agent.trust import DESIRED_DOMAIN, Trust, seal

IDLE, DOWNLOADING, VERIFYING, INSTALLING, TRIAL, ACTIVE, FAILED = (
    Phase.IDLE,
    Phase.DOWNLOADING,
    Phase.VERIFYING,
    Phase.INSTALLING,
    Phase.TRIAL,
    Phase.ACTIVE,
    Phase.FAILED,
)
DEFAULTS = CoreSettings()
CHUNK_RETRY_S = DEFAULTS.chunk_retry_s
EVENT_BURST = DEFAULTS.event_burst
MAX_TRIAL_CRASHES = DEFAULTS.max_trial_crashes

DEV = "dev1"
GROUP = "g1"
T = Topics()
CHUNK = 512  # bytes: a ~5 KB bundle becomes ~11 chunks
WINDOW = 4
TIMEOUT = 60.0
HB = 5.0

V1 = valid_bundle("demo", 1)
V2 = valid_bundle("demo", 2)


def new_core(
    *,
    trust: Trust | None = None,
    untrusted: bool = False,
    persisted: Persisted | None = None,
    staged: dict[str, tuple[bytes, bytes]] | None = None,
    **settings: Any,
) -> AgentCore:
    return AgentCore(
        DEV,
        trust=None if untrusted else (trust or make_trust()),
        persisted=persisted or Persisted(),
        staged=staged,
        boot_id="boot-1",
        groups=(GROUP,),
        settings=CoreSettings(
            heartbeat_interval_s=HB,
            chunk_window=WINDOW,
            transfer_timeout_s=TIMEOUT,
            reported_min_interval_s=0.0,
            **settings,
        ),
        trust_error="trust file missing" if untrusted else "",
    )


def active_ref(built: Built) -> BundleRef:
    return BundleRef(built.name, built.version, built.sha256)


def on_v1(**kw: Any) -> AgentCore:
    """A connected core that already serves V1 (persisted), floor at V1."""
    core = new_core(
        persisted=Persisted(active=active_ref(V1), floor={"demo": FloorEntry(1, V1.sha256)}, desired_seq={}),
        **kw,
    )
    core.handle(Connected(), NOW)
    return core


# ── reading actions ──────────────────────────────────────────────────────────────────


def of_type(actions: Iterable[Action], cls: type | tuple[type, ...]) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def subscribed(actions: Iterable[Action]) -> list[str]:
    return [t for a in of_type(actions, Subscribe) for t in a.topics]


def unsubscribed(actions: Iterable[Action]) -> list[str]:
    return [t for a in of_type(actions, Unsubscribe) for t in a.topics]


def events(actions: Iterable[Action]) -> list[DeviceEvent]:
    sends = [a for a in of_type(actions, Send) if a.topic == T.events(DEV)]
    return [DeviceEvent.decode(a.payload) for a in sends]


def codes(actions: Iterable[Action]) -> list[str]:
    return [e.code for e in events(actions)]


def reported(actions: Iterable[Action]) -> Reported:
    """The last 'reported' document among the actions."""
    return Reported.decode(published(actions, T.reported(DEV))[-1].payload)


def published(actions: Iterable[Action], topic: str) -> list[Publish]:
    return [a for a in of_type(actions, Publish) if a.topic == topic]


def chunk_indices(topics: Sequence[str]) -> list[int]:
    out = []
    for t in topics:
        parsed = T.parse_chunk_topic(t)
        if parsed is not None:
            out.append(parsed[2])
    return out


# ── driving ──────────────────────────────────────────────────────────────────────────


def desire(core: AgentCore, built: Built, now: float = NOW, *, topic: str | None = None, **kw: Any) -> list[Action]:
    return core.handle(Message(topic or T.desired_device(DEV), desired_payload(built, **kw), True), now)


def send_transfer_doc(core: AgentCore, built: Built, now: float = NOW, **kw: Any) -> tuple[list[Action], list[bytes]]:
    doc, parts = transfer_payload(built, CHUNK, **kw)
    return core.handle(Message(T.bundle_manifest(built.name, built.version), doc, True), now), parts


def pull(
    core: AgentCore,
    built: Built,
    now: float = NOW,
    *,
    tamper_once: set[int] | None = None,
    max_inflight: list[int] | None = None,
) -> list[Action]:
    """Play the broker: deliver the transfer doc, then every chunk topic the core subscribes to,
    until it stops asking. ``tamper_once``: indices whose first delivery is corrupted."""
    first, parts = send_transfer_doc(core, built, now)
    actions = list(first)
    pending = deque(chunk_indices(subscribed(first)))
    inflight = set(pending)
    spoiled = set(tamper_once or ())
    peak = len(inflight)
    while pending:
        i = pending.popleft()
        payload = parts[i]
        if i in spoiled:
            spoiled.discard(i)
            payload = flip(payload, 0)
        acts = core.handle(Message(T.bundle_chunk(built.name, built.version, i), payload, True), now)
        actions += acts
        inflight -= set(chunk_indices(unsubscribed(acts)))
        new = chunk_indices(subscribed(acts))
        inflight |= set(new)
        peak = max(peak, len(inflight))
        pending.extend(new)
        if not pending and core.phase == DOWNLOADING and core.transfer is not None:
            now += CHUNK_RETRY_S + 0.1  # bad chunks are asked for again after a pause
            acts = core.handle(Tick(), now)
            actions += acts
            new = chunk_indices(subscribed(acts))
            inflight |= set(new)
            pending.extend(new)
    if max_inflight is not None:
        max_inflight.append(peak)
    return actions


def deploy(core: AgentCore, built: Built, now: float = NOW, **kw: Any) -> list[Action]:
    """Desired → transfer → all chunks; returns every action (ends with Install if all is well)."""
    return desire(core, built, now, **kw) + pull(core, built, now)


# ── connection ───────────────────────────────────────────────────────────────────────


def test_connected_publishes_birth_and_subscribes_to_desired() -> None:
    core = new_core()
    out = core.handle(Connected(), NOW)
    births = published(out, T.state(DEV))
    assert len(births) == 1
    birth = births[0]
    assert birth.retain is True and birth.qos == 1
    doc = DeviceState.decode(birth.payload)
    assert doc.online is True
    assert doc.boot_id == "boot-1"
    assert doc.groups == (GROUP,)
    assert doc.active is None
    assert set(subscribed(out)) == {T.desired_device(DEV), T.cmd(DEV), T.desired_group(GROUP), T.trust()}
    assert events(out) == []
    assert published(out, T.reported(DEV))[-1].retain and reported(out).phase == IDLE


def test_will_payload_says_offline() -> None:
    doc = DeviceState.decode(new_core().will_payload())
    assert doc.online is False and doc.boot_id == "boot-1"


def test_stopping_publishes_offline_state_retained() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = core.handle(Stopping("test"), NOW + 1)
    states = published(out, T.state(DEV))
    assert len(states) == 1 and states[0].retain is True
    doc = DeviceState.decode(states[0].payload)
    assert doc.online is False and doc.reason == "test"
    assert published(out, T.hb(DEV)), "a final heartbeat carries the last counters"


def test_heartbeat_on_tick_at_the_interval() -> None:
    core = new_core()
    assert published(core.handle(Tick(Stats({"served": 1})), NOW), T.hb(DEV)) == []  # not connected
    core.handle(Connected(), NOW)
    first = published(core.handle(Tick(Stats({"served": 2})), NOW), T.hb(DEV))
    assert len(first) == 1
    assert first[0].qos == 0 and first[0].retain is True
    hb = Heartbeat.decode(first[0].payload)
    assert hb.stats.counters == {"served": 2} and hb.interval == HB and hb.phase == IDLE
    assert published(core.handle(Tick(), NOW + HB - 0.1), T.hb(DEV)) == []
    assert len(published(core.handle(Tick(), NOW + HB), T.hb(DEV))) == 1
    assert published(core.handle(Tick(), NOW + HB + 1), T.hb(DEV)) == []


def test_no_trust_reports_on_connect_and_refuses_desired() -> None:
    core = new_core(untrusted=True)
    out = core.handle(Connected(), NOW)
    assert codes(out) == ["trust.unavailable"]
    out = desire(core, V1)
    assert codes(out) == ["trust.unavailable"]
    assert subscribed(out) == []
    assert core.goal is None and core.phase == IDLE


# ── the happy path ───────────────────────────────────────────────────────────────────


def test_signed_desired_starts_download() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = desire(core, V1, seq=7)
    assert subscribed(out) == [T.bundle_manifest("demo", 1)]
    assert core.phase == DOWNLOADING
    assert of_type(out, SaveState) == [SaveState(Persisted(desired_seq={"device": 7}))]
    assert events(out) == []
    assert reported(out).phase == DOWNLOADING and reported(out).desired == active_ref(V1)


def test_transfer_doc_subscribes_to_a_bounded_window_of_chunks() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    desire(core, V1)
    out, parts = send_transfer_doc(core, V1)
    assert len(parts) > WINDOW
    assert unsubscribed(out) == [T.bundle_manifest("demo", 1)]
    assert chunk_indices(subscribed(out)) == list(range(WINDOW))
    assert core.transfer is not None and core.transfer.total == len(parts)


def test_chunks_unsubscribe_and_advance_the_window() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    desire(core, V1)
    _, parts = send_transfer_doc(core, V1)
    out = core.handle(Message(T.bundle_chunk("demo", 1, 0), parts[0], True), NOW + 1)
    # Refilled half a window at a time: one packet each way for several chunks.
    assert of_type(out, (Subscribe, Unsubscribe)) == []
    assert core.transfer is not None and core.transfer.received == 1
    progress = reported(out).progress
    assert progress is not None and (progress.received, progress.total) == (1, len(parts))
    out = core.handle(Message(T.bundle_chunk("demo", 1, 1), parts[1], True), NOW + 1)
    assert [chunk_indices(u.topics) for u in of_type(out, Unsubscribe)] == [[0, 1]]
    assert [chunk_indices(s.topics) for s in of_type(out, Subscribe)] == [[WINDOW, WINDOW + 1]]


def test_full_transfer_yields_install_and_never_exceeds_the_window() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    desire(core, V1)
    peak: list[int] = []
    out = pull(core, V1, max_inflight=peak)
    installs = of_type(out, Install)
    assert len(installs) == 1
    assert installs[0].bundle.sha256 == V1.sha256
    # The model is checked but not copied out: the install loads it from where it lies.
    assert installs[0].bundle.files == {k: v for k, v in V1.files.items() if k != MODEL}
    assert installs[0].data == V1.data
    span = installs[0].bundle.model_span
    assert span is not None and installs[0].data[span[0] : span[1]] == V1.files[MODEL]
    assert core.phase == INSTALLING
    assert 0 < peak[0] <= WINDOW
    assert events(out) == []


def promote(core: AgentCore, built: Built, now: float = NOW) -> list[Action]:
    """Install succeeded → trial passed → commit written: the happy path after an Install."""
    out = core.handle(InstallDone(built.sha256), now)
    out += core.handle(TrialDone(built.sha256), now)
    commits = of_type(out, Commit)
    assert len(commits) == 1
    return out + core.handle(Committed(built.sha256), now)


def test_install_done_starts_a_trial_and_only_a_commit_activates() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    installing = deploy(core, V1)
    seqs = {"device": 1}
    # The attempt is counted on disk before the install starts (a crash during the load,
    # health check or trial counts against the bundle) ...
    steps = [a for a in installing if isinstance(a, (SaveState, Install))][-2:]
    assert steps[0] == SaveState(Persisted(desired_seq=seqs, interrupted={V1.sha256: 1}))
    assert isinstance(steps[1], Install)
    out = core.handle(InstallDone(V1.sha256), NOW + 1)
    assert core.phase == TRIAL
    assert codes(out) == ["lifecycle.trial"]
    # ... and the trial starts only because the core asks for it.
    assert [a for a in out if isinstance(a, (SaveState, StartTrial))] == [StartTrial(V1.sha256)]
    assert core.active is None and core.floor == {}, "nothing is active or floored before the commit"
    out = core.handle(TrialDone(V1.sha256), NOW + 2)
    assert of_type(out, Commit) == [
        Commit(Persisted(active=active_ref(V1), floor={"demo": FloorEntry(1, V1.sha256)}, desired_seq=seqs), V1.sha256)
    ]
    assert core.phase == TRIAL
    out = core.handle(Committed(V1.sha256), NOW + 2)
    assert core.phase == ACTIVE
    assert core.active == active_ref(V1)
    assert core.floor == {"demo": FloorEntry(1, V1.sha256)}
    evs = events(out)
    assert [e.code for e in evs] == ["lifecycle.activated"]
    assert evs[0].bundle == active_ref(V1) and evs[0].device == DEV and evs[0].kind == "lifecycle"
    assert reported(out).phase == ACTIVE and reported(out).active == active_ref(V1)


def run_worker(core: AgentCore, first: list[Action], now: float, early: list[Any] = ()) -> list[Action]:  # type: ignore[assignment]
    """Play a worker and an engine that do exactly what they are asked, in order: Install →
    InstallDone, StartTrial → TrialDone, Commit → Committed. ``early``: events that arrive
    before the first one is handled (what a racing thread could deliver)."""
    pending: deque[Any] = deque(early)
    actions = list(first)
    seen: list[Action] = []
    while actions or pending:
        for action in actions:
            seen.append(action)
            if isinstance(action, Install):
                pending.append(InstallDone(action.bundle.sha256))
            elif isinstance(action, StartTrial):
                pending.append(TrialDone(action.sha256))
            elif isinstance(action, Commit):
                pending.append(Committed(action.sha256))
        actions = core.handle(pending.popleft(), now) if pending else []
    return seen


def test_a_trial_verdict_can_only_follow_the_cores_request() -> None:
    """The race the old adapter had: it started the trial itself before queueing InstallDone,
    so a quick TrialDone could reach a core still 'installing', be dropped, and leave it in
    'trial' for good. Now the trial starts only on the core's StartTrial; a verdict for a
    trial the core never asked for changes nothing, and the deployment completes."""
    core = new_core()
    core.handle(Connected(), NOW)
    installs = of_type(deploy(core, V1), Install)
    assert core.phase == INSTALLING
    seen = run_worker(core, installs, NOW + 1, early=[TrialDone(V1.sha256)])
    assert [type(a).__name__ for a in seen if isinstance(a, (Install, StartTrial, Commit))] == [
        "Install",
        "StartTrial",
        "Commit",
    ]
    assert core.phase == ACTIVE and core.active == active_ref(V1)
    # ... and the next deployment is not held up by a trial that never ends.
    assert subscribed(desire(core, V2, NOW + 2, seq=2)) == [T.bundle_manifest("demo", 2)]


def test_upgrade_keeps_the_previous_bundle() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    promote(core, V2, NOW + 1)
    assert core.active == active_ref(V2)
    assert core.previous == active_ref(V1)
    assert core.floor["demo"] == FloorEntry(2, V2.sha256)


def test_install_done_failed_keeps_the_previous_model() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    out = core.handle(InstallDone(V2.sha256, HealthCheckFailed("sample 0 differs")), NOW + 1)
    assert core.phase == FAILED
    assert core.active == active_ref(V1)
    assert core.floor == {"demo": FloorEntry(1, V1.sha256)}
    assert codes(out) == ["model.health_failed"]
    assert core.last_error is not None and core.last_error.sha256 == V2.sha256


def test_failed_bundle_is_not_retried_on_redelivery_but_is_on_a_new_seq() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256, HealthCheckFailed("x")), NOW + 1)
    assert subscribed(desire(core, V2, NOW + 2, seq=2)) == []
    assert core.phase == FAILED
    assert subscribed(desire(core, V2, NOW + 3, seq=3)) == [T.bundle_manifest("demo", 2)]
    assert core.phase == DOWNLOADING


def test_install_done_for_another_bundle_is_ignored() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    deploy(core, V1)
    out = core.handle(InstallDone(V2.sha256), NOW + 1)
    assert of_type(out, (Send, Install, Subscribe)) == []
    assert core.phase == INSTALLING and core.active is None and core.floor == {}


def test_desired_for_the_active_bundle_downloads_nothing() -> None:
    core = on_v1()
    out = desire(core, V1)
    assert subscribed(out) == []
    assert core.phase == ACTIVE


# ── desired-state documents ──────────────────────────────────────────────────────────


def test_retained_redelivery_of_the_same_desired_is_a_no_op() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    desire(core, V1, seq=3)
    again = desire(core, V1, NOW + 1, seq=3)
    assert subscribed(again) == []
    assert of_type(again, SaveState) == []
    assert events(again) == []
    assert core.phase == DOWNLOADING


def test_device_level_desired_overrides_group_level() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = desire(core, V2, topic=T.desired_group(GROUP), target=f"group:{GROUP}", seq=10)
    assert subscribed(out) == [T.bundle_manifest("demo", 2)]
    out = desire(core, V1, NOW + 1, seq=1)
    assert T.bundle_manifest("demo", 2) in unsubscribed(out)
    assert subscribed(out) == [T.bundle_manifest("demo", 1)]
    assert core.goal is not None and core.goal.bundle.version == 1
    # a newer group document does not displace the device-level one
    out = desire(core, V2, NOW + 2, topic=T.desired_group(GROUP), target=f"group:{GROUP}", seq=11)
    assert subscribed(out) == []
    assert core.goal.bundle.version == 1


def test_desired_signed_by_an_untrusted_key() -> None:
    core = on_v1()
    out = desire(core, V2, key=STRANGER_KEY, seq=5)
    assert codes(out) == ["bundle.unknown_key"]
    assert subscribed(out) == []
    assert core.active == active_ref(V1) and core.floor == {"demo": FloorEntry(1, V1.sha256)}
    assert core.state.desired_seq == {}


def test_desired_signed_by_a_bundle_key_is_refused() -> None:
    core = on_v1()
    out = desire(core, V2, key=BUNDLE_KEY)
    assert codes(out) == ["bundle.unknown_key"]
    assert subscribed(out) == []


def test_desired_with_tampered_body() -> None:
    core = on_v1()
    payload = desired_payload(V2, seq=4).replace(b'\\"seq\\":4', b'\\"seq\\":9')
    assert b'\\"seq\\":9' in payload
    out = core.handle(Message(T.desired_device(DEV), payload, True), NOW)
    assert codes(out) == ["bundle.bad_signature"]
    assert subscribed(out) == [] and core.state.desired_seq == {}


def test_desired_with_lower_seq_than_accepted() -> None:
    core = on_v1()
    desire(core, V2, seq=5)
    out = desire(core, V1, NOW + 1, seq=4)
    assert codes(out) == ["desired.rejected"]
    assert subscribed(out) == []
    assert core.goal is not None and core.goal.bundle.version == 2
    assert core.state.desired_seq == {"device": 5}


def test_desired_with_lower_seq_than_persisted() -> None:
    core = new_core(persisted=Persisted(desired_seq={"device": 100}))
    core.handle(Connected(), NOW)
    out = desire(core, V1, seq=99)
    assert codes(out) == ["desired.rejected"]
    assert core.goal is None and core.phase == IDLE


def test_desired_addressed_to_another_device() -> None:
    core = on_v1()
    out = desire(core, V2, target="device:dev2", seq=5)
    assert codes(out) == ["desired.rejected"]
    assert subscribed(out) == [] and core.state.desired_seq == {}


def test_group_document_replayed_on_the_device_topic() -> None:
    core = on_v1()
    out = desire(core, V2, target=f"group:{GROUP}")
    assert codes(out) == ["desired.rejected"]


def test_expired_desired() -> None:
    core = on_v1()
    out = desire(core, V2, NOW, expires=NOW - 1)
    assert codes(out) == ["desired.rejected"]
    assert subscribed(out) == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "protocol.bad_message"),
        (b"[]", "protocol.bad_message"),
        (b'{"body": 1}', "protocol.bad_message"),
        (b"\xff\xfe", "protocol.bad_message"),
        (b'{"body": "{}", "sigs": []}', "bundle.missing_signature"),
    ],
    ids=["garbage", "array", "body-not-string", "not-utf8", "unsigned"],
)
def test_garbage_on_the_desired_topic(payload: bytes, code: str) -> None:
    core = on_v1()
    out = core.handle(Message(T.desired_device(DEV), payload, True), NOW)
    assert codes(out) == [code]
    assert subscribed(out) == [] and core.active == active_ref(V1)


@pytest.mark.parametrize(
    "body",
    [
        {"seq": 0, "target": "device:dev1", "bundle": {}},
        {"seq": 1, "target": "device:dev1"},
        {"seq": 1, "target": "device:dev1", "bundle": {"name": "a/b", "version": 1, "sha256": "x", "size": 1}},
        {"seq": 1, "target": "device:dev1", "bundle": {"name": "a", "version": "1", "sha256": "x", "size": 1}},
        {"seq": True, "target": "device:dev1", "bundle": {}},
    ],
    ids=["seq-0", "no-bundle", "bad-name", "version-string", "seq-bool"],
)
def test_signed_but_malformed_desired(body: dict[str, Any]) -> None:
    core = on_v1()
    out = core.handle(Message(T.desired_device(DEV), seal(DEPLOY_KEY, DESIRED_DOMAIN, body), True), NOW)
    assert codes(out) == ["protocol.bad_message"]
    assert subscribed(out) == [] and core.state.desired_seq == {}


def test_oversized_message_is_refused_unread() -> None:
    core = new_core(max_payload_bytes=1000, max_chunk_bytes=1000)
    core.handle(Connected(), NOW)
    out = core.handle(Message(T.desired_device(DEV), b"x" * 1001, True), NOW)
    assert codes(out) == ["protocol.bad_message"]


def test_cleared_desired_is_forgotten_and_reported() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    desire(core, V1)
    out = core.handle(Message(T.desired_device(DEV), b"", True), NOW)
    assert codes(out) == ["desired.missing"]  # it used to pass in silence
    assert "device" not in core.desired


@given(payload=st.binary(max_size=400))
@settings(max_examples=150, deadline=None, derandomize=True)
def test_random_bytes_on_the_desired_topic_only_produce_failure_events(payload: bytes) -> None:
    core = on_v1()
    out = core.handle(Message(T.desired_device(DEV), payload, True), NOW)
    assert subscribed(out) == []
    assert core.active == active_ref(V1) and core.goal is None
    for code in codes(out):
        assert code.startswith(("protocol.", "bundle.", "desired."))


# ── bundle-level refusals ────────────────────────────────────────────────────────────


def test_desired_version_below_the_floor() -> None:
    core = new_core(
        persisted=Persisted(active=active_ref(V2), floor={"demo": FloorEntry(2, V2.sha256)}),
    )
    core.handle(Connected(), NOW)
    out = desire(core, V1, seq=9)
    assert codes(out) == ["bundle.version_rollback"]
    assert subscribed(out) == []
    assert core.active == active_ref(V2)
    assert core.floor == {"demo": FloorEntry(2, V2.sha256)}
    assert core.phase == FAILED  # the deployment failed; the active model keeps serving


def test_same_version_as_the_floor_with_other_content_fails_verification() -> None:
    other_v1 = make_bundle(manifest_updates={"lineage": {"run_id": "run-other"}})
    assert other_v1.sha256 != V1.sha256
    core = on_v1()
    out = deploy(core, other_v1, seq=2)
    assert codes(out) == ["bundle.version_conflict"]
    assert of_type(out, Install) == []
    assert core.phase == FAILED
    assert core.active == active_ref(V1) and core.floor == {"demo": FloorEntry(1, V1.sha256)}


def test_bundle_signed_by_an_unknown_key_fails_after_download() -> None:
    rogue = make_bundle(version=2, signer=STRANGER_KEY)
    core = on_v1()
    out = deploy(core, rogue, seq=2)
    assert codes(out) == ["bundle.unknown_key"]
    assert of_type(out, Install) == [] and core.phase == FAILED
    assert core.active == active_ref(V1)


def test_transfer_doc_that_does_not_match_the_desired_bundle() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    impostor = make_bundle(version=2, manifest_updates={"lineage": {"run_id": "impostor-run-with-longer-id"}})
    out, _ = send_transfer_doc(core, impostor)
    assert codes(out) == ["transfer.mismatch"]
    assert chunk_indices(subscribed(out)) == []
    assert core.phase == FAILED and core.active == active_ref(V1)
    assert core.floor == {"demo": FloorEntry(1, V1.sha256)}


def test_transfer_doc_signed_with_a_deploy_key() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    out, _ = send_transfer_doc(core, V2, key=DEPLOY_KEY)
    assert codes(out) == ["bundle.unknown_key"]
    assert chunk_indices(subscribed(out)) == [] and core.phase == FAILED


def test_transfer_doc_with_chunks_that_are_too_big() -> None:
    core = new_core(max_chunk_bytes=256)
    core.handle(Connected(), NOW)
    desire(core, V1)
    out, _ = send_transfer_doc(core, V1)
    assert codes(out) == ["protocol.bad_message"]
    assert core.phase == FAILED


def test_signed_transfer_doc_whose_chunks_are_another_bundle() -> None:
    """The transfer doc matches the desired bundle's hash, but its chunk hashes describe a
    different bundle of the same size: the assembled bytes must be refused."""
    same_size = make_bundle(version=2, manifest_updates={"lineage": {"run_id": "run-tesX"}})
    assert len(same_size.data) == len(V2.data) and same_size.sha256 != V2.sha256
    core = on_v1()
    desire(core, V2, seq=2)
    doc, parts = transfer_payload(same_size, CHUNK, sha256=V2.sha256)
    out = core.handle(Message(T.bundle_manifest("demo", 2), doc, True), NOW)
    pending = deque(chunk_indices(subscribed(out)))
    while pending:
        i = pending.popleft()
        acts = core.handle(Message(T.bundle_chunk("demo", 2, i), parts[i], True), NOW)
        out += acts
        pending.extend(chunk_indices(subscribed(acts)))
    assert codes(out) == ["bundle.hash_mismatch"]
    assert of_type(out, Install) == [] and core.phase == FAILED
    assert core.active == active_ref(V1)


# ── chunks ───────────────────────────────────────────────────────────────────────────


def test_tampered_chunk_is_reported_and_not_requested_in_a_loop() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    _, parts = send_transfer_doc(core, V2)
    bad = core.handle(Message(T.bundle_chunk("demo", 2, 0), flip(parts[0], 5), True), NOW)
    assert codes(bad) == ["transfer.bad_chunk"]
    assert 0 in chunk_indices(unsubscribed(bad))
    assert 0 not in chunk_indices(subscribed(bad)), "not at once: a bad retained copy must not make a loop"
    assert 0 not in chunk_indices(subscribed(core.handle(Tick(), NOW + 1)))
    assert core.active == active_ref(V1) and core.floor == {"demo": FloorEntry(1, V1.sha256)}
    assert core.phase == DOWNLOADING
    assert core.transfer is not None and core.transfer.received == 0


def test_short_chunk_is_rejected() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    _, parts = send_transfer_doc(core, V2)
    out = core.handle(Message(T.bundle_chunk("demo", 2, 1), parts[1][:-1], True), NOW)
    assert codes(out) == ["transfer.bad_chunk"]


def test_transfer_completes_after_a_tampered_chunk() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    out = pull(core, V2, tamper_once={0, 3})
    assert codes(out) == ["transfer.bad_chunk", "transfer.bad_chunk"]
    assert len(of_type(out, Install)) == 1
    assert of_type(out, Install)[0].data == V2.data


def test_chunk_for_another_bundle_is_ignored() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    _, parts = send_transfer_doc(core, V2)
    for topic in (T.bundle_chunk("other", 2, 0), T.bundle_chunk("demo", 1, 0), T.bundle_chunk("demo", 2, 10_000)):
        out = core.handle(Message(topic, parts[0], True), NOW)
        assert of_type(out, (Send, Subscribe, Unsubscribe, Install)) == []
    assert core.transfer is not None and core.transfer.received == 0


def test_chunk_not_requested_is_ignored() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    _, parts = send_transfer_doc(core, V2)
    out = core.handle(Message(T.bundle_chunk("demo", 2, WINDOW + 1), parts[WINDOW + 1], True), NOW)
    assert of_type(out, (Send, Subscribe, Unsubscribe)) == []
    assert core.transfer is not None and core.transfer.received == 0


def test_chunk_before_any_transfer_is_ignored() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = core.handle(Message(T.bundle_chunk("demo", 1, 0), b"x", True), NOW)
    assert of_type(out, (Send, Subscribe, Unsubscribe)) == []


def test_transfer_timeout_on_tick() -> None:
    core = on_v1()
    desire(core, V2, NOW, seq=2)
    assert codes(core.handle(Tick(), NOW + TIMEOUT)) == []
    out = core.handle(Tick(), NOW + TIMEOUT + 1)
    assert codes(out) == ["transfer.timeout"]
    assert T.bundle_manifest("demo", 2) in unsubscribed(out)
    assert core.phase == FAILED
    assert core.active == active_ref(V1) and core.floor == {"demo": FloorEntry(1, V1.sha256)}


def test_progress_postpones_the_timeout() -> None:
    core = on_v1()
    desire(core, V2, NOW, seq=2)
    _, parts = send_transfer_doc(core, V2, NOW + TIMEOUT - 1)
    assert codes(core.handle(Tick(), NOW + TIMEOUT + 1)) == []
    assert core.phase == DOWNLOADING
    core.handle(Message(T.bundle_chunk("demo", 2, 0), parts[0], True), NOW + 2 * TIMEOUT - 2)
    assert codes(core.handle(Tick(), NOW + 2 * TIMEOUT)) == []
    assert codes(core.handle(Tick(), NOW + 3 * TIMEOUT)) == ["transfer.timeout"]


def test_reconnect_during_transfer_resubscribes_to_missing_chunks() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    _, parts = send_transfer_doc(core, V2)
    core.handle(Message(T.bundle_chunk("demo", 2, 0), parts[0], True), NOW)
    core.handle(Disconnected("test"), NOW + 1)
    out = core.handle(Connected(), NOW + 2)
    assert chunk_indices(subscribed(out)) == [1, 2, 3, 4]


def test_row_rejected_becomes_a_failure_event() -> None:
    core = on_v1()
    out = core.handle(RowRejected(NotFinite("feature 'f0' is nan")), NOW)
    assert codes(out) == ["row.not_finite"]
    assert core.failures["row.not_finite"] == 1
    assert core.phase == ACTIVE


def test_event_ids_are_unique_and_sequenced() -> None:
    core = on_v1()
    out: list[Action] = []
    for _ in range(3):
        out += core.handle(RowRejected(BadValue("x")), NOW)
    evs = events(out)
    assert [e.seq for e in evs] == [1, 2, 3]
    assert len({e.id for e in evs}) == 3


# ── the phase table ──────────────────────────────────────────────────────────────────


def test_transitions_reject_an_illegal_phase_change() -> None:
    core = new_core()
    assert core.phase == IDLE
    with pytest.raises(IllegalTransition, match="illegal phase change idle -> installing"):
        core._phase(INSTALLING)
    assert core.phase == IDLE
    core._phase(DOWNLOADING)
    with pytest.raises(IllegalTransition):
        core._phase(INSTALLING)
    assert core.phase == DOWNLOADING


# ── races and outages ─────────────────────────────────────────────────────────────────────────────


def test_a_new_desired_state_while_installing_waits_for_the_install() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    installs = of_type(deploy(core, V1), Install)
    assert core.phase == INSTALLING
    out = desire(core, V2, NOW + 1, seq=2)
    assert core.phase == INSTALLING and subscribed(out) == [] and of_type(out, Unsubscribe) == []
    assert core.goal is not None and core.goal.bundle.version == 1
    seen = run_worker(core, installs, NOW + 2)
    # V1 finishes its install, trial and commit; then the newer desired state is pursued.
    assert core.active == active_ref(V1)
    assert T.bundle_manifest("demo", 2) in [t for a in of_type(seen, Subscribe) for t in a.topics]
    assert core.phase == DOWNLOADING and core.goal.bundle.version == 2


def test_outage_longer_than_the_timeout_resumes_after_reconnect() -> None:
    core = on_v1()
    desire(core, V2, NOW, seq=2)
    _, parts = send_transfer_doc(core, V2, NOW)
    core.handle(Message(T.bundle_chunk("demo", 2, 0), parts[0], True), NOW)
    core.handle(Disconnected("network down"), NOW + 1)
    for k in range(1, 5):  # the adapter keeps ticking while offline
        core.handle(Tick(), NOW + k * TIMEOUT)
    out = core.handle(Connected(), NOW + 5 * TIMEOUT)
    out += desire(core, V2, NOW + 5 * TIMEOUT, seq=2)  # the broker redelivers the retained desired
    assert core.phase == DOWNLOADING
    assert codes(out) == []
    assert chunk_indices(subscribed(out)) == [1, 2, 3, 4]  # the missing chunks, a window's worth
    assert T.bundle_manifest("demo", 2) not in subscribed(out)


# ── trial, commit, revert ────────────────────────────────────────────────────────────


def test_failed_trial_reverts_and_keeps_the_previous_model() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW + 1)
    out = core.handle(TrialDone(V2.sha256, TrialFailed("on live row 3: inference failed")), NOW + 2)
    assert [a.sha256 for a in of_type(out, Revert)] == [V2.sha256]
    assert not of_type(out, Commit)
    assert core.phase == FAILED and codes(out) == ["trial.failed"]
    assert core.active == active_ref(V1) and core.floor == {"demo": FloorEntry(1, V1.sha256)}


def test_a_commit_that_cannot_be_written_reverts() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW + 1)
    core.handle(TrialDone(V2.sha256), NOW + 1)
    out = core.handle(Committed(V2.sha256, StorageError("No space left on device")), NOW + 1)
    assert of_type(out, Revert) and codes(out) == ["storage.failed"]
    assert core.phase == FAILED and core.active == active_ref(V1)


def test_a_bundle_whose_trials_crashed_is_not_retried_without_a_new_request() -> None:
    persisted = Persisted(
        active=active_ref(V1),
        floor={"demo": FloorEntry(1, V1.sha256)},
        desired_seq={"device": 2},  # the retained request that led to the crashes
        interrupted={V2.sha256: MAX_TRIAL_CRASHES},
    )
    core = new_core(persisted=persisted)
    core.handle(Connected(), NOW)
    out = desire(core, V2, seq=2)
    assert codes(out) == ["trial.crashed"]
    assert T.bundle_manifest("demo", 2) not in subscribed(out)
    out = desire(core, V2, NOW + 1, seq=3)  # the operator asks again, deliberately
    assert T.bundle_manifest("demo", 2) in subscribed(out)


# ── resumable transfer ───────────────────────────────────────────────────────────────


def test_transfer_is_staged_and_resumes_with_only_the_missing_chunks() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    first, parts = send_transfer_doc(core, V2)
    staged_doc = of_type(first, StageTransfer)
    assert len(staged_doc) == 1 and staged_doc[0].sha256 == V2.sha256
    part = bytearray(len(V2.data))  # the staged file: sparse until chunks are written at their offsets
    got: list[int] = []
    for i in chunk_indices(subscribed(first))[:3]:
        acts = core.handle(Message(T.bundle_chunk("demo", 2, i), parts[i], True), NOW)
        for a in of_type(acts, StageChunk):
            part[a.offset : a.offset + len(a.data)] = a.data
            got.append(a.index)
    assert got == chunk_indices(subscribed(first))[:3]
    assert of_type(first, StageTransfer)[0].size == len(V2.data)

    # The agent restarts: a new core is built from what the slots kept on disk.
    persisted = Persisted(
        active=active_ref(V1),
        floor={"demo": FloorEntry(1, V1.sha256)},
        desired_seq={"device": 2},
    )
    core2 = new_core(persisted=persisted, staged={V2.sha256: (staged_doc[0].envelope, bytes(part))})
    core2.handle(Connected(), NOW + 10)
    out = desire(core2, V2, NOW + 10, seq=2)
    assert T.bundle_manifest("demo", 2) not in subscribed(out), "the staged transfer document is reused"
    asked = chunk_indices(subscribed(out))
    assert asked and not set(asked) & set(got), "chunks already on disk are not asked for again"
    assert core2.transfer is not None and core2.transfer.received == 3


def test_a_stale_staging_area_is_dropped() -> None:
    persisted = Persisted(active=active_ref(V1), floor={"demo": FloorEntry(1, V1.sha256)})
    core = new_core(persisted=persisted, staged={"ab" * 32: (b"{}", b"")})
    core.handle(Connected(), NOW)
    out = desire(core, V2, seq=2)
    assert [a.sha256 for a in of_type(out, DropStaging)] == ["ab" * 32]


def test_timed_out_transfer_is_retried_later_with_jitter() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    send_transfer_doc(core, V2)
    out = core.handle(Tick(), NOW + TIMEOUT + 1)
    assert codes(out) == ["transfer.timeout"] and core.phase == FAILED
    assert core.retry_pursue_at is not None
    delay = core.retry_pursue_at - (NOW + TIMEOUT + 1)
    assert 5.0 <= delay <= 15.0  # 10 s base, jittered by ±50 %
    assert not subscribed(core.handle(Tick(), NOW + TIMEOUT + 2))
    out = core.handle(Tick(), core.retry_pursue_at + 0.01)
    assert T.bundle_manifest("demo", 2) in subscribed(out) and core.phase == DOWNLOADING


# ── floods ───────────────────────────────────────────────────────────────────────────


def test_a_flood_of_junk_is_bounded_and_summarised() -> None:
    core = on_v1()
    sent = []
    for k in range(500):
        sent += codes(core.handle(Message(T.desired_device(DEV), b"junk %d" % k, False), NOW + k * 0.01))
    assert sent.count("protocol.bad_message") == EVENT_BURST
    assert core.failures["protocol.bad_message"] == 500
    assert core.suppressed["protocol.bad_message"] == 500 - EVENT_BURST
    later = codes(core.handle(Message(T.desired_device(DEV), b"junk", False), NOW + 120))
    assert later == ["lifecycle.suppressed", "protocol.bad_message"]


# ── start, stop and the durable state ────────────────────────────────────────────────


def test_start_restores_the_persisted_active_bundle() -> None:
    assert new_core().handle(Started(), NOW) == []
    core = new_core(persisted=Persisted(active=active_ref(V1), floor={"demo": FloorEntry(1, V1.sha256)}))
    assert core.handle(Started(), NOW) == [Restore(active_ref(V1))]
    assert core.phase == ACTIVE


def test_a_failed_restore_is_reported_when_connected() -> None:
    core = new_core(persisted=Persisted(active=active_ref(V1)))
    core.handle(Started(), NOW)
    out = core.handle(Restored(V1.sha256, StorageError("active bundle is missing")), NOW)
    assert codes(out) == ["storage.failed"]
    assert core.last_runtime_error is not None and core.last_runtime_error.code == "storage.failed"
    out = core.handle(Connected(), NOW + 1)
    assert reported(out).last_runtime_error == core.last_runtime_error


def test_a_clean_stop_during_a_trial_does_not_count_against_the_bundle() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW)
    assert core.state.interrupted == {V2.sha256: 1}
    out = core.handle(Stopping("shutdown"), NOW + 1)
    assert of_type(out, SaveState) == [SaveState(replace(core.state, interrupted={}))]
    assert core.state.interrupted == {}


def test_a_crash_during_a_trial_is_counted_by_the_next_start() -> None:
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW)
    saved = core.state  # what the last SaveState wrote
    # the process dies here; the next boot loads what was saved
    again = new_core(persisted=saved)
    again.handle(Connected(), NOW + 10)
    desire(again, V2, NOW + 10, seq=2)
    assert again.phase == DOWNLOADING and again.state.interrupted == {V2.sha256: 1}


def test_a_state_save_between_commit_and_committed_writes_the_commit() -> None:
    """A snapshot emitted while the commit is under way must not name the old bundle."""
    core = on_v1()
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW)
    commit = of_type(core.handle(TrialDone(V2.sha256), NOW), Commit)[0]
    saves = of_type(core.handle(Connected(bdseq=9), NOW), SaveState)  # a reconnect saves the new bdseq
    assert [s.state.active for s in saves] == [commit.state.active] == [active_ref(V2)]
    core.handle(Committed(V2.sha256), NOW)
    assert core.state == replace(commit.state, bdseq=9)


def test_a_commit_that_cannot_be_written_puts_the_old_state_back() -> None:
    core = on_v1()
    before = core.state
    deploy(core, V2, seq=2)
    core.handle(InstallDone(V2.sha256), NOW)
    core.handle(TrialDone(V2.sha256), NOW)
    out = core.handle(Committed(V2.sha256, StorageError("No space left on device")), NOW)
    assert of_type(out, Revert) == [Revert(V2.sha256)]
    assert of_type(out, SaveState) == [SaveState(replace(before, desired_seq={"device": 2}))]
    assert core.active == active_ref(V1) and core.phase == FAILED


# ── resend commands from the host ────────────────────────────────────────────────────


def command(ranges: tuple[tuple[int, int], ...], device: str = DEV, boot: str = "boot-1", cid: str = "c1") -> Message:
    return Message(T.cmd(DEV), Command(cid, NOW, device, ResendRequest(boot, ranges)).encode())


def test_sends_carry_boot_and_sequence_and_the_heartbeat_announces_the_last() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = core.handle(RowRejected(NotFinite("nan")), NOW)
    sent = of_type(out, Send)
    assert [(s.boot_id, s.seq) for s in sent] == [("boot-1", 1)]
    assert DeviceEvent.decode(sent[0].payload).seq == 1
    hb = Heartbeat.decode(published(core.handle(Tick(), NOW + HB), T.hb(DEV))[0].payload)
    assert hb.seq == 1 and hb.boot_id == "boot-1"


def test_a_resend_command_asks_the_worker_and_its_outcome_is_answered() -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = core.handle(command(((3, 5), (9, 9))), NOW)
    assert of_type(out, Resend) == [Resend("c1", "boot-1", ((3, 5), (9, 9)))]
    out = core.handle(ResendDone("c1", "boot-1", requeued=((3, 4),), missing=((5, 5), (9, 9))), NOW)
    reply = ResendReply.decode(published(out, T.resent(DEV))[0].payload)
    assert (reply.command, reply.device, reply.boot_id) == ("c1", DEV, "boot-1")
    assert (reply.requeued, reply.queued, reply.missing) == (((3, 4),), (), ((5, 5), (9, 9)))


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (command(((1, 1),), device="dev2"), "addressed to 'dev2'"),
        (command(((1, DEFAULTS.resend_max_messages + 1),)), "asks for"),
        (Message(T.cmd(DEV), b'{"format": 1, "kind": "reboot"}'), "unknown to this agent"),
    ],
)
def test_commands_that_do_not_fit_are_refused_and_reported(msg: Message, why: str) -> None:
    core = new_core()
    core.handle(Connected(), NOW)
    out = core.handle(msg, NOW)
    assert of_type(out, Resend) == []
    assert events(out)[0].code in ("command.rejected", "protocol.bad_message") and why in events(out)[0].detail


def test_resend_commands_are_rate_limited_per_period() -> None:
    core = new_core(resend_burst=2, event_period_s=60.0)
    core.handle(Connected(), NOW)
    asked = [of_type(core.handle(command(((1, 1),), cid=f"c{i}"), NOW + i), Resend) for i in range(3)]
    assert [len(a) for a in asked] == [1, 1, 0]
    assert of_type(core.handle(command(((1, 1),), cid="later"), NOW + 61), Resend)  # a new period
