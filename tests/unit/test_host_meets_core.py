"""The host library and the agent's core, paired in memory: the host publishes what
``edgekit deploy`` publishes, a core pulls it, and the host reads the core's documents back
the way ``fleet status``, ``deploy --wait`` and ``bundles gc`` do. No broker: retained
semantics are emulated here, in the test only (the integration tests use a real mosquitto).
If either side changes a document, this test breaks before a fleet does.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from typing import Any

from bundle_factory import BUNDLE_KEY, DEPLOY_KEY, NOW, Built, flip, make_trust, valid_bundle

from device_agent.actions import Commit, Install, Publish, Send, StartTrial, Subscribe, Unsubscribe
from device_agent.config import CoreSettings
from device_agent.core import AgentCore
from device_agent.events import Committed, Connected, Event, InstallDone, Message, TrialDone
from device_agent.protocol import DeviceEvent, DeviceState, Reported, Topics
from device_agent.state import Persisted
from edgekit.fleet.deploy import Target, bundle_messages, deployment_outcome, desired_message, target_members
from edgekit.fleet.gc import plan_gc
from edgekit.fleet.status import read_devices, status_view

T = Topics("edgekit/v1")
CHUNK = 700  # bytes


class RetainedBroker:
    """Just enough of an MQTT broker: retained messages, exact-topic subscriptions for one core."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.subscribed: set[str] = set()
        self.inbox: deque[Message] = deque()
        self.live: list[tuple[str, bytes]] = []  # non-retained messages the host would see

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        else:
            self.live.append((topic, payload))
        if any(fnmatch.fnmatchcase(topic, s.replace("+", "*")) for s in self.subscribed):
            self.inbox.append(Message(topic, payload, retain))

    def subscribe(self, topics: tuple[str, ...]) -> None:
        for topic in topics:
            self.subscribed.add(topic)
            if topic in self.retained:
                self.inbox.append(Message(topic, self.retained[topic], True))

    def messages(self) -> list[tuple[str, bytes, bool]]:
        """What a host subscriber to everything retained receives."""
        return [(t, p, True) for t, p in self.retained.items()]


class Device:
    """A core plus a worker that does exactly what it is asked (install, trial, commit succeed)."""

    def __init__(self, broker: RetainedBroker, name: str, groups: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.core = AgentCore(
            name,
            trust=make_trust(),
            persisted=Persisted(),
            boot_id=f"boot-{name}",
            groups=groups,
            topics=T,
            settings=CoreSettings(reported_min_interval_s=0.0),
        )
        self.outcomes: deque[Event] = deque()

    def run(self, first: Event, now: float = NOW) -> None:
        events: deque[Event] = deque([first])
        while events or self.broker.inbox or self.outcomes:
            event = (
                events.popleft()
                if events
                else self.broker.inbox.popleft()
                if self.broker.inbox
                else self.outcomes.popleft()
            )
            for action in self.core.handle(event, now):
                self.execute(action)

    def execute(self, action: Any) -> None:
        if isinstance(action, Publish):
            self.broker.publish(action.topic, action.payload, action.retain)
        elif isinstance(action, Send):
            self.broker.publish(action.topic, action.payload, False)
        elif isinstance(action, Subscribe):
            self.broker.subscribe(action.topics)
        elif isinstance(action, Unsubscribe):
            self.broker.subscribed -= set(action.topics)
        elif isinstance(action, Install):
            self.outcomes.append(InstallDone(action.bundle.sha256))
        elif isinstance(action, StartTrial):
            self.outcomes.append(TrialDone(action.sha256))
        elif isinstance(action, Commit):
            self.outcomes.append(Committed(action.sha256))


def host_deploys(broker: RetainedBroker, built: Built, target: Target, data: bytes | None = None, step: int = 0) -> str:
    """What `edgekit deploy` publishes, built by the host library; returns the bundle's sha."""
    have = {t: p for t, p, _ in broker.messages() if t.startswith(f"{T.prefix}/bundle/{built.name}/{built.version}/")}
    info, items = bundle_messages(T, data or built.data, built.name, built.version, BUNDLE_KEY, CHUNK, have)
    for topic, payload, retain in items:
        broker.publish(topic, payload, retain)
    (topic, payload, retain), _ = desired_message(T, target, info, DEPLOY_KEY, now_ns=int((NOW + step) * 1e9))
    broker.publish(topic, payload, retain)
    return info.sha256


def reported(broker: RetainedBroker) -> dict[str, Reported]:
    return {d: s.reported for d, s in read_devices(broker.messages(), T).items() if s.reported is not None}


def test_a_deploy_the_host_publishes_is_pulled_installed_and_read_back() -> None:
    broker = RetainedBroker()
    v1 = valid_bundle("demo", 1)
    sha = host_deploys(broker, v1, Target(device="d1"))
    device = Device(broker, "d1")
    device.run(Connected(bdseq=1))

    view = status_view(broker.messages(), T, NOW + 1)
    assert [(d["device"], d["status"], d["phase"], d["active"]) for d in view] == [
        ("d1", "online", "active", {"name": "demo", "version": 1, "sha256": sha})
    ]
    assert view[0]["unreadable"] == {}
    assert deployment_outcome({"d1"}, reported(broker), sha) == {"d1": "active"}
    events = [DeviceEvent.decode(p) for t, p in broker.live if t == T.events("d1")]
    assert [(e.kind, e.code) for e in events] == [
        ("lifecycle", "lifecycle.trial"),
        ("lifecycle", "lifecycle.activated"),
    ]


def test_a_group_deploy_reaches_the_members_the_host_counts() -> None:
    broker = RetainedBroker()
    devices = [Device(broker, f"g{i}", groups=("plant",)) for i in range(3)]
    for d in devices:
        d.run(Connected(bdseq=1))
    states = {d: s.state for d, s in read_devices(broker.messages(), T).items() if s.state is not None}
    assert target_members(Target(group="plant"), states) == {"g0", "g1", "g2"}
    sha = host_deploys(broker, valid_bundle("demo", 1), Target(group="plant"))
    for d in devices:  # each pulls through its own subscriptions
        broker.subscribed = set()
        d.run(Connected(bdseq=2))
    assert deployment_outcome({"g0", "g1", "g2"}, reported(broker), sha) == {
        "g0": "active",
        "g1": "active",
        "g2": "active",
    }


def test_a_tampered_bundle_is_refused_and_the_host_reads_why() -> None:
    broker = RetainedBroker()
    v1 = valid_bundle("demo", 1)
    host_deploys(broker, v1, Target(device="d1"))
    device = Device(broker, "d1")
    device.run(Connected(bdseq=1))
    v2 = valid_bundle("demo", 2)
    bad = flip(v2.data, len(v2.data) // 2)
    sha = host_deploys(broker, v2, Target(device="d1"), data=bad, step=1)
    device.run(Connected(bdseq=2))  # redelivery of the retained desired state on a reconnect
    outcome = deployment_outcome({"d1"}, reported(broker), sha)
    assert outcome["d1"].startswith("failed: bundle.")
    view = status_view(broker.messages(), T, NOW + 1)[0]
    assert view["phase"] == "failed" and view["active"]["version"] == 1
    assert view["last_failure"]["code"] == outcome["d1"].split(": ")[1]


def test_gc_keeps_what_devices_run_and_clears_the_rest() -> None:
    broker = RetainedBroker()
    device = Device(broker, "d1")
    host_deploys(broker, valid_bundle("demo", 1), Target(device="d1"))
    device.run(Connected(bdseq=1))
    host_deploys(broker, valid_bundle("demo", 2), Target(device="d1"), step=1)
    device.run(Connected(bdseq=2))
    v3 = valid_bundle("demo", 3)  # published, never pointed at: garbage
    _, items = bundle_messages(T, v3.data, "demo", 3, BUNDLE_KEY, CHUNK, {})
    for topic, payload, retain in items:
        broker.publish(topic, payload, retain)
    report, clear = plan_gc(broker.messages(), T)
    why = {k["version"]: k["why"] for k in report.kept}
    assert why == {1: "previous on d1", 2: why[2]} and why[2] in ("active on d1", "desired by device:d1")
    assert [(r["name"], r["version"]) for r in report.removed] == [("demo", 3)]
    assert {t for t, _, _ in clear} == {t for t, _, _ in items}
    assert all(p == b"" and r for _, p, r in clear)


def test_a_garbled_retained_document_is_reported_not_hidden() -> None:
    broker = RetainedBroker()
    Device(broker, "d1").run(Connected(bdseq=1))
    broker.publish(T.hb("d1"), b'{"format": 1, "ts": "soon"}', True)
    broker.publish(T.state("ghost"), b"\xff", True)
    view = {d["device"]: d for d in status_view(broker.messages(), T, NOW)}
    assert "heartbeat" in view["d1"]["unreadable"]["hb"] and view["d1"]["status"] == "online"
    assert view["ghost"]["status"] == "unknown" and "state" in view["ghost"]["unreadable"]
    assert DeviceState.decode(broker.retained[T.state("d1")]).online is True
