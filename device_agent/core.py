"""The agent's protocol logic as a pure state machine: ``handle(event, now) -> [Action]``.

No sockets, files or threads here. The paho adapter (:mod:`device_agent.mqtt`) turns
callbacks into events and executes the actions; tests and the fleet simulator drive the
same class directly. Deployment phases move along one table::

    idle ─desired─► downloading ─all chunks─► verifying ─ok─► installing ─ok─► trial ─ok─► active
      ▲                  │                        │                  │               │
      └─────────── failed(code) ◄─────────────────┴──────────────────┴───────────────┘
                   (the previous model keeps serving in every failed case)

installing: the model loads, its health samples reproduce, the bundle is stored. trial: the
new model serves its first live rows while the old one waits in memory; only a passed trial
is committed to disk, so a crash during the trial restarts on the old model.

Every phase change is reported on the retained ``reported`` topic and every failure is
an event with a stable code, delivered through the durable outbox.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .bundle import FloorEntry, Limits, VerifiedBundle, verify
from .errors import AgentError, ChunkRejected, DesiredRejected, HashMismatch, ProtocolError, TrustError
from .protocol import Topics, check_id, dumps, req_int, req_obj, req_str
from .transfer import Assembly, TransferInfo
from .trust import DESIRED_DOMAIN, ROLE_BUNDLE, ROLE_DEPLOY, TRANSFER_DOMAIN, Trust, open_envelope

# ── events ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Connected:
    max_packet_size: int | None = None
    bdseq: int | None = None  # birth/death sequence of this connection (the Will carries it too)


@dataclass(frozen=True)
class Disconnected:
    reason: str = ""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool = False


@dataclass(frozen=True)
class Tick:
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowRejected:
    code: str
    detail: str


@dataclass(frozen=True)
class DriftReady:
    bundle: Mapping[str, Any]
    report: Mapping[str, Any]


@dataclass(frozen=True)
class _Outcome:
    sha256: str
    ok: bool
    code: str = ""
    detail: str = ""


@dataclass(frozen=True)
class InstallDone(_Outcome):
    """The adapter's answer to :class:`Install`: model loaded, health checked, bundle stored, trial begun."""


@dataclass(frozen=True)
class TrialDone(_Outcome):
    """The engine's verdict on the new model's first live rows."""


@dataclass(frozen=True)
class Committed(_Outcome):
    """The adapter wrote the switch to disk (or could not)."""


@dataclass(frozen=True)
class Stopping:
    reason: str = "shutdown"


# Failures that say nothing against the bundle itself: retried when the retained desired
# state is redelivered (after a reconnect), not only when a newer document asks again.
TRANSIENT = frozenset({"transfer.timeout", "storage.failed", "install.failed"})
CHUNK_RETRY_S = 5.0  # a chunk that failed its hash is asked for again after this long

Event = (
    Connected
    | Disconnected
    | Message
    | Tick
    | RowRejected
    | DriftReady
    | InstallDone
    | TrialDone
    | Committed
    | Stopping
)

# ── actions ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Publish:
    """Fire now if connected; state that is superseded by newer state (birth, reported, hb)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Send:
    """Must reach the host: goes through the durable outbox, in order, with an id."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Subscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Unsubscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Install:
    """Load the verified bundle, run its health samples, switch slots atomically."""

    bundle: VerifiedBundle
    data: bytes | bytearray = field(repr=False)  # the verified bundle, handed over (not copied)


@dataclass(frozen=True)
class StageTransfer:
    """Keep the signed transfer document on disk, and room for the bundle, so a restart
    resumes the transfer."""

    sha256: str
    envelope: bytes = field(repr=False)
    size: int


@dataclass(frozen=True)
class StageChunk:
    """Write one verified chunk at its place in the staged bundle file."""

    sha256: str
    index: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class DropStaging:
    sha256: str


@dataclass(frozen=True)
class Commit:
    """The trial passed: make the new bundle the active one on disk."""

    active: Mapping[str, Any]
    previous: Mapping[str, Any] | None
    floor: Mapping[str, FloorEntry]


@dataclass(frozen=True)
class Revert:
    """Serve the previous model again (the trial or the commit failed)."""

    sha256: str


@dataclass(frozen=True)
class Persist:
    """Write the small persistent state (desired sequence numbers) durably."""

    desired_seq: Mapping[str, int]


Action = (
    Publish
    | Send
    | Subscribe
    | Unsubscribe
    | Install
    | Persist
    | StageTransfer
    | StageChunk
    | DropStaging
    | Commit
    | Revert
)

# ── phases ──────────────────────────────────────────────────────────────────────────

IDLE, DOWNLOADING, VERIFYING, INSTALLING, TRIAL, ACTIVE, FAILED = (
    "idle",
    "downloading",
    "verifying",
    "installing",
    "trial",
    "active",
    "failed",
)
TRANSITIONS: dict[str, frozenset[str]] = {
    IDLE: frozenset({DOWNLOADING, FAILED}),
    DOWNLOADING: frozenset({DOWNLOADING, VERIFYING, FAILED, ACTIVE, IDLE}),
    VERIFYING: frozenset({INSTALLING, FAILED}),
    INSTALLING: frozenset({TRIAL, FAILED}),
    TRIAL: frozenset({ACTIVE, FAILED}),
    ACTIVE: frozenset({DOWNLOADING, FAILED}),
    FAILED: frozenset({DOWNLOADING, FAILED, ACTIVE}),
}
BUSY = frozenset({VERIFYING, INSTALLING, TRIAL})  # a new desired state waits until these finish
MAX_TRIAL_CRASHES = 2  # a bundle whose trial was cut short by crashes this often is not retried
EVENT_BURST = 20  # failure events of one code per EVENT_PERIOD_S; the rest are counted
EVENT_PERIOD_S = 60.0
TRANSFER_RETRY_BASE_S = 10.0  # first automatic retry of a timed-out transfer; doubles, jittered
TRANSFER_RETRY_MAX_S = 600.0


@dataclass(frozen=True)
class Desired:
    target: str  # "device" or "group:<g>"
    seq: int
    name: str
    version: int
    sha256: str
    size: int

    @property
    def ref(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass
class Persisted:
    """What the adapter loads from the state dir before the core starts."""

    active: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    floor: dict[str, FloorEntry] = field(default_factory=dict)
    desired_seq: dict[str, int] = field(default_factory=dict)
    bdseq: int = 0
    # sha -> (signed transfer document, staged bundle bytes so far: chunks not yet received are zeros)
    staging: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    interrupted: dict[str, int] = field(default_factory=dict)  # sha -> trials cut short by a crash


class AgentCore:
    def __init__(
        self,
        device_id: str,
        *,
        trust: Trust | None,
        persisted: Persisted,
        boot_id: str,
        groups: tuple[str, ...] = (),
        topics: Topics | None = None,
        heartbeat_interval: float = 5.0,
        chunk_window: int = 8,
        transfer_timeout: float = 120.0,
        max_payload: int = 1 << 20,
        max_chunk: int = 4 << 20,
        reported_min_interval: float = 1.0,
        limits: Limits | None = None,
        trust_error: str = "",
    ) -> None:
        self.device = check_id("device id", device_id)
        self.groups = tuple(check_id("group", g) for g in groups)
        self.topics = topics or Topics()
        self.trust = trust
        self.trust_error = trust_error
        self.boot_id = boot_id
        self.bdseq = persisted.bdseq
        self.active = persisted.active
        self.previous = persisted.previous
        self.floor = dict(persisted.floor)
        self.desired_seq = dict(persisted.desired_seq)
        self.heartbeat_interval = heartbeat_interval
        self.chunk_window = max(1, chunk_window)
        self.transfer_timeout = transfer_timeout
        self.max_payload = max_payload
        self.max_chunk = max_chunk
        self.reported_min_interval = reported_min_interval
        self.limits = limits or Limits()

        self.phase = ACTIVE if self.active else IDLE
        self.connected = False
        self.desired: dict[str, Desired] = {}  # by target
        self.goal: Desired | None = None
        self.transfer: Assembly | None = None
        self.inflight: set[int] = set()
        self.spent: list[str] = []  # chunk topics received, unsubscribed with the next refill
        self.retry_at: dict[int, float] = {}  # chunk index -> when a bad chunk may be asked for again
        self.last_progress = 0.0
        self.last_error: dict[str, Any] | None = None  # why the last deployment failed
        self.last_runtime_error: dict[str, Any] | None = None  # the latest bad row, message or trust problem
        self.last_drift: dict[str, Any] | None = None
        self.failures: dict[str, int] = {}
        self.seq = 0
        self.stats: Mapping[str, Any] = {}
        self.staged = dict(persisted.staging)
        self.interrupted = dict(persisted.interrupted)
        self.retry_pursue_at: float | None = None
        self.transfer_attempts = 0
        self._rng = random.Random(boot_id)  # jitter; seeded so a test can replay it
        self._burst: dict[str, tuple[float, int]] = {}  # code -> (period start, events sent)
        self.suppressed: dict[str, int] = {}
        self._last_hb = -1e18
        self._last_reported = -1e18
        self._reported_dirty = True
        self._phase_changed = False

    # ── public surface ──────────────────────────────────────────────────────────────

    def will_payload(self, bdseq: int | None = None, reason: str | None = None) -> bytes:
        """The retained 'offline' state: set as the Will before connecting, and published
        ourselves on a clean shutdown (a clean disconnect does not fire the Will)."""
        doc: dict[str, Any] = {
            "online": False,
            "bdseq": self.bdseq if bdseq is None else bdseq,
            "boot_id": self.boot_id,
            "groups": list(self.groups),
        }
        if reason is not None:
            doc["reason"] = reason
        return dumps(doc)

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, Connected):
            self._on_connected(event, now, out)
        elif isinstance(event, Disconnected):
            self.connected = False
            self.inflight.clear()  # clean session: subscriptions are gone
            self.spent.clear()
        elif isinstance(event, Message):
            self._on_message(event, now, out)
        elif isinstance(event, Tick):
            self._on_tick(event, now, out)
        elif isinstance(event, RowRejected):
            self._fail_event(out, now, event.code, event.detail)
        elif isinstance(event, DriftReady):
            self._on_drift(event, now, out)
        elif isinstance(event, InstallDone):
            self._on_install_done(event, now, out)
        elif isinstance(event, TrialDone):
            self._on_trial_done(event, now, out)
        elif isinstance(event, Committed):
            self._on_committed(event, now, out)
        elif isinstance(event, Stopping):
            self._last_hb = -1e18  # a final heartbeat and summary carry the last counters
            self._on_tick(Tick(self.stats), now, out)
            out.append(self._reported(now))
            out.append(Publish(self.topics.state(self.device), self.will_payload(reason=event.reason), retain=True))
        # Phase changes go out at once; progress and counters at most every reported_min_interval.
        due = self._phase_changed or now - self._last_reported >= self.reported_min_interval
        if self._reported_dirty and self.connected and due:
            out.append(self._reported(now))
        return out

    def summary(self, now: float) -> dict[str, Any]:
        """The retained 'reported' document: what a late subscriber needs to know."""
        progress = None
        if self.transfer is not None:
            progress = {"received": self.transfer.received, "total": self.transfer.total}
        return {
            "ts": now,
            "boot_id": self.boot_id,
            "agent": __version__,
            "phase": self.phase,
            "active": self.active,
            "previous": self.previous,
            "desired": self.goal.ref if self.goal else None,
            "progress": progress,
            "last_error": self.last_error,
            "last_runtime_error": self.last_runtime_error,
            "last_drift": self.last_drift,
            "failures": dict(self.failures),
            "suppressed": dict(self.suppressed),
            "counters": dict(self.stats.get("counters", {})),
        }

    # ── connection ──────────────────────────────────────────────────────────────────

    def _on_connected(self, event: Connected, now: float, out: list[Action]) -> None:
        self.connected = True
        if event.bdseq is not None:
            self.bdseq = event.bdseq
        out.append(
            Publish(
                self.topics.state(self.device),
                dumps(
                    {
                        "online": True,
                        "bdseq": self.bdseq,
                        "boot_id": self.boot_id,
                        "agent": __version__,
                        "active": self.active,
                        "groups": list(self.groups),
                        "ts": now,
                    }
                ),
                retain=True,
            )
        )
        subs = [self.topics.desired_device(self.device)]
        subs += [self.topics.desired_group(g) for g in self.groups]
        out.append(Subscribe(tuple(subs)))
        if self.trust is None:
            self._fail_event(out, now, TrustError.code, self.trust_error or "no trust file")
        if self.goal is not None and self.phase == DOWNLOADING:
            self.inflight.clear()
            self.last_progress = now  # time offline does not count against the transfer
            if self.transfer is None:
                out.append(Subscribe((self.topics.bundle_manifest(self.goal.name, self.goal.version),)))
            else:
                self._request_chunks(out, now)
        self._reported_dirty = True

    # ── messages ────────────────────────────────────────────────────────────────────

    def _on_message(self, msg: Message, now: float, out: list[Action]) -> None:
        topic = msg.topic
        try:
            if len(msg.payload) > max(self.max_payload, self.max_chunk):
                raise ProtocolError(f"message of {len(msg.payload)} bytes is above the limit")
            if topic == self.topics.desired_device(self.device):
                self._on_desired("device", msg.payload, now, out)
                return
            for g in self.groups:
                if topic == self.topics.desired_group(g):
                    self._on_desired(f"group:{g}", msg.payload, now, out)
                    return
            goal = self.goal
            if goal is not None and topic == self.topics.bundle_manifest(goal.name, goal.version):
                self._on_transfer_doc(msg.payload, now, out)
                return
            chunk = self.topics.parse_chunk_topic(topic)
            if chunk is not None:
                self._on_chunk(chunk, msg.payload, now, out)
        except AgentError as exc:
            self._fail_event(out, now, exc.code, f"{topic}: {exc.detail}")

    def _on_desired(self, target: str, payload: bytes, now: float, out: list[Action]) -> None:
        if not payload:  # retained document cleared by the host: fall back to what remains
            if self.desired.pop(target, None) is not None:
                self._pursue(now, out, retry=False)
            return
        if self.trust is None:
            raise TrustError(self.trust_error or "no trust file: desired state cannot be verified")
        body, _ = open_envelope(self.trust, ROLE_DEPLOY, DESIRED_DOMAIN, payload, "desired state", self.max_payload)
        what = "desired state"
        seq = req_int(body, "seq", what, 1)
        aimed = req_str(body, "target", what)
        if aimed != (f"device:{self.device}" if target == "device" else target):
            raise DesiredRejected(f"document is addressed to {aimed!r}, not to this topic's {target!r}")
        expires = body.get("expires")
        if expires is not None and (not isinstance(expires, (int, float)) or isinstance(expires, bool)):
            raise DesiredRejected("desired state 'expires' must be a Unix time in seconds")
        if expires is not None and expires <= now:
            raise DesiredRejected(f"desired state seq {seq} expired")
        known = self.desired_seq.get(target, 0)
        if seq < known:
            raise DesiredRejected(f"desired state seq {seq} is older than seq {known}, already accepted")
        bundle = req_obj(body, "bundle", what)
        desired = Desired(
            target=target,
            seq=seq,
            name=check_id("bundle name", req_str(bundle, "name", what)),
            version=req_int(bundle, "version", what, 1),
            sha256=req_str(bundle, "sha256", what),
            size=req_int(bundle, "size", what, 1),
        )
        fresh = seq > known
        if fresh:
            self.desired_seq[target] = seq
            out.append(Persist(dict(self.desired_seq)))
        self.desired[target] = desired
        self._pursue(now, out, retry=fresh)

    def _effective(self) -> Desired | None:
        if "device" in self.desired:
            return self.desired["device"]
        groups = [d for t, d in self.desired.items() if t.startswith("group:")]
        return max(groups, key=lambda d: d.seq) if groups else None

    def _pursue(self, now: float, out: list[Action], retry: bool) -> None:
        """Move toward the effective desired bundle. A failed bundle is retried only when a
        newer desired document asks again (``retry``), never on a retained redelivery."""
        goal = self._effective()
        if goal is None:
            return
        if self.phase in BUSY:
            return  # the install under way finishes first, then the newest goal is pursued
        if self.active is not None and self.active.get("sha256") == goal.sha256:
            if self.goal is not None and self.goal != goal:
                self._abandon(out)
            self.goal = goal
            if self.phase != ACTIVE:
                self._phase(ACTIVE)
            return
        if self.goal is not None and self.goal.sha256 == goal.sha256:
            self.goal = goal
            if self.phase in (DOWNLOADING, VERIFYING, INSTALLING):
                return  # already on its way
            err = self.last_error or {}
            failed_here = err.get("sha256") == goal.sha256 and err.get("code") not in TRANSIENT
            if self.phase == FAILED and failed_here and not retry:
                return  # this exact bundle already failed; wait for a new desired state
        crashes = self.interrupted.get(goal.sha256, 0)
        if crashes >= MAX_TRIAL_CRASHES and not retry:
            self._abandon(out)
            self.goal = goal
            self._fail(
                out,
                now,
                "trial.crashed",
                f"{goal.name} v{goal.version} was not retried: its trial ended in a restart {crashes} times",
                goal.sha256,
            )
            return
        held = self.floor.get(goal.name)
        if held is not None and goal.version < held.version:
            self._abandon(out)
            self.goal = goal
            self._fail(
                out,
                now,
                "bundle.version_rollback",
                f"desired {goal.name} v{goal.version} is older than v{held.version}, already accepted",
                goal.sha256,
            )
            return
        if self.goal is None or self.goal.sha256 != goal.sha256:
            self.transfer_attempts = 0
        self._abandon(out)
        self.goal = goal
        self.last_progress = now
        self.retry_pursue_at = None
        self._phase(DOWNLOADING)
        for sha in [s for s in self.staged if s != goal.sha256]:
            del self.staged[sha]
            out.append(DropStaging(sha))
        staged = self.staged.get(goal.sha256)
        if staged is not None and self.trust is not None:
            self._start_transfer(staged[0], now, out, resumed=staged[1])
            if self.transfer is not None:
                return
        out.append(Subscribe((self.topics.bundle_manifest(goal.name, goal.version),)))

    def _abandon(self, out: list[Action]) -> None:
        if self.goal is None:
            return
        topics = [self.topics.bundle_manifest(self.goal.name, self.goal.version)]
        topics += [self.topics.bundle_chunk(self.goal.name, self.goal.version, i) for i in sorted(self.inflight)]
        out.append(Unsubscribe(tuple(topics + self.spent)))
        self.spent.clear()
        self.transfer = None
        self.inflight.clear()
        self.retry_at.clear()

    def _on_transfer_doc(self, payload: bytes, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or self.phase != DOWNLOADING or self.transfer is not None:
            return
        if self.trust is None:
            raise TrustError(self.trust_error or "no trust file: bundles cannot be verified")
        out.append(Unsubscribe((self.topics.bundle_manifest(goal.name, goal.version),)))
        self._start_transfer(payload, now, out, resumed=None)

    def _start_transfer(self, envelope: bytes, now: float, out: list[Action], resumed: bytes | None) -> None:
        """Open the signed transfer document and start (or resume) pulling chunks."""
        goal = self.goal
        assert goal is not None and self.trust is not None
        try:
            body, _ = open_envelope(
                self.trust, ROLE_BUNDLE, TRANSFER_DOMAIN, envelope, "transfer document", self.max_payload
            )
            info = TransferInfo.from_json(body, self.max_chunk)
        except AgentError as exc:
            if resumed is not None:  # a stale or damaged staging area: start over from the broker
                self.staged.pop(goal.sha256, None)
                out.append(DropStaging(goal.sha256))
                return
            self._fail(out, now, exc.code, f"transfer document: {exc.detail}", goal.sha256)
            return
        if (info.name, info.version, info.sha256, info.size) != (goal.name, goal.version, goal.sha256, goal.size):
            self._fail(
                out, now, "transfer.mismatch", "transfer document does not describe the desired bundle", goal.sha256
            )
            return
        if info.size > self.limits.max_bundle_bytes:
            self._fail(
                out, now, "bundle.too_large", f"bundle is {info.size} bytes, above this device's limit", goal.sha256
            )
            return
        self.transfer = Assembly(info)
        if resumed is None:
            self.staged[goal.sha256] = (envelope, b"")
            out.append(StageTransfer(goal.sha256, envelope, info.size))
        else:
            # The hashes are the bitmap: a region that matches its chunk's signed hash was
            # received; zeros (never written) or a torn write simply do not, and are fetched.
            for index in range(len(info.chunks)):
                start = index * info.chunk_size
                with contextlib.suppress(ChunkRejected):
                    self.transfer.accept(index, resumed[start : start + info.chunk_length(index)])
        self.last_progress = now
        self._reported_dirty = True
        if self.transfer.complete:
            self._finish_transfer(now, out)
        else:
            self._request_chunks(out, now)

    def _request_chunks(self, out: list[Action], now: float) -> None:
        assert self.transfer is not None and self.goal is not None
        room = self.chunk_window - len(self.inflight)
        # Refilled half a window at a time: one SUBSCRIBE and one UNSUBSCRIBE packet for several
        # chunks, not one of each per chunk (each packet is a round of work for the agent's
        # MQTT thread and for the broker).
        if room <= 0 or (self.inflight and room < max(1, self.chunk_window // 2)):
            return
        waiting = {i for i, t in self.retry_at.items() if t > now}
        wanted = self.transfer.missing(room, exclude=self.inflight | waiting)
        self._unsubscribe_spent(out)
        if wanted:
            self.inflight.update(wanted)
            out.append(Subscribe(tuple(self.topics.bundle_chunk(self.goal.name, self.goal.version, i) for i in wanted)))

    def _unsubscribe_spent(self, out: list[Action]) -> None:
        if self.spent:
            out.append(Unsubscribe(tuple(self.spent)))
            self.spent.clear()

    def _on_chunk(self, where: tuple[str, int, int], payload: bytes, now: float, out: list[Action]) -> None:
        name, version, index = where
        goal, transfer = self.goal, self.transfer
        if goal is None or transfer is None or (name, version) != (goal.name, goal.version):
            return  # a chunk of another transfer, e.g. delivered just before an unsubscribe
        if index not in self.inflight:
            return
        self.inflight.discard(index)
        self.spent.append(self.topics.bundle_chunk(name, version, index))
        try:
            if transfer.accept(index, payload):
                self.last_progress = now
                self._reported_dirty = True
                out.append(StageChunk(transfer.info.sha256, index, index * transfer.info.chunk_size, payload))
        except ChunkRejected as exc:
            # Counted and reported; asked for again after a pause, so a bad retained copy
            # cannot make the device loop (the transfer timeout bounds the whole attempt).
            self.retry_at[index] = now + CHUNK_RETRY_S
            self._fail_event(out, now, exc.code, exc.detail)
            self._unsubscribe_spent(out)
        if transfer.complete:
            self._finish_transfer(now, out)
        else:
            self._request_chunks(out, now)

    def _finish_transfer(self, now: float, out: list[Action]) -> None:
        assert self.transfer is not None and self.goal is not None
        goal = self.goal
        data = self.transfer.assemble()
        self._unsubscribe_spent(out)
        self.transfer = None
        self.inflight.clear()
        self.retry_at.clear()
        self._phase(VERIFYING)
        try:
            if self.trust is None:
                raise TrustError(self.trust_error or "no trust file: bundles cannot be verified")
            bundle = verify(
                data,
                self.trust,
                now=now,
                floor=self.floor,
                expect_name=goal.name,
                expect_sha256=goal.sha256,
                limits=self.limits,
                keep_model=False,  # the install loads it from the stored file
            )
            if bundle.version != goal.version:
                raise HashMismatch(f"bundle says v{bundle.version}, desired state says v{goal.version}")
        except AgentError as exc:
            self._fail(out, now, exc.code, exc.detail, goal.sha256)
            return
        self._phase(INSTALLING)
        self.staged.pop(goal.sha256, None)
        out.append(Install(bundle, data))  # the install adopts the staged file and clears staging

    # ── installation results ────────────────────────────────────────────────────────

    def _on_install_done(self, event: InstallDone, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or event.sha256 != goal.sha256 or self.phase != INSTALLING:
            return
        if not event.ok:
            out.append(DropStaging(goal.sha256))
            self._fail(out, now, event.code, event.detail, goal.sha256)
            self._pursue_newer(goal, now, out)
            return
        self._phase(TRIAL)
        self._event(out, now, "bundle.trial", f"{goal.name} v{goal.version} is on trial", goal.ref)

    def _on_trial_done(self, event: TrialDone, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or event.sha256 != goal.sha256 or self.phase != TRIAL:
            return
        if not event.ok:
            out.append(Revert(goal.sha256))
            self._fail(out, now, event.code or "trial.failed", event.detail, goal.sha256)
            self._pursue_newer(goal, now, out)
            return
        floor = dict(self.floor)
        held = floor.get(goal.name)
        if held is None or goal.version >= held.version:
            floor[goal.name] = FloorEntry(goal.version, goal.sha256)
        previous = self.active if self.active and self.active.get("sha256") != goal.sha256 else self.previous
        out.append(Commit(goal.ref, previous, floor))

    def _on_committed(self, event: Committed, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or event.sha256 != goal.sha256 or self.phase != TRIAL:
            return
        if not event.ok:
            out.append(Revert(goal.sha256))
            self._fail(out, now, event.code or "storage.failed", event.detail, goal.sha256)
            return
        ref = goal.ref
        if self.active is not None and self.active.get("sha256") != goal.sha256:
            self.previous = self.active
        self.active = ref
        held = self.floor.get(goal.name)
        if held is None or goal.version >= held.version:
            self.floor[goal.name] = FloorEntry(goal.version, goal.sha256)
        self.interrupted.pop(goal.sha256, None)
        self.last_error = None
        self.transfer_attempts = 0
        self._phase(ACTIVE)
        self._event(out, now, "bundle.activated", f"{goal.name} v{goal.version} is active", ref)
        self._pursue(now, out, retry=False)

    def _pursue_newer(self, failed: Desired, now: float, out: list[Action]) -> None:
        newest = self._effective()
        if newest is not None and newest.sha256 != failed.sha256:
            self._pursue(now, out, retry=False)  # a newer desired state arrived meanwhile

    # ── periodic work ───────────────────────────────────────────────────────────────

    def _on_tick(self, event: Tick, now: float, out: list[Action]) -> None:
        self.stats = event.stats
        if self.connected and self.phase == DOWNLOADING and self.transfer is not None and self.retry_at:
            self._request_chunks(out, now)
        if (
            self.connected
            and self.phase == DOWNLOADING
            and self.goal is not None
            and now - self.last_progress > self.transfer_timeout
        ):
            goal = self.goal
            self._abandon(out)
            self.staged.pop(goal.sha256, None)
            out.append(DropStaging(goal.sha256))
            self.goal = goal
            self._fail(out, now, "transfer.timeout", f"no progress for {self.transfer_timeout:.0f} s", goal.sha256)
            delay = min(TRANSFER_RETRY_MAX_S, TRANSFER_RETRY_BASE_S * 2**self.transfer_attempts)
            self.retry_pursue_at = now + delay * (0.5 + self._rng.random())
            self.transfer_attempts += 1
        if self.retry_pursue_at is not None and now >= self.retry_pursue_at and self.phase == FAILED:
            self.retry_pursue_at = None
            if self.connected:
                self._pursue(now, out, retry=True)
        if self.connected and now - self._last_hb >= self.heartbeat_interval:
            self._last_hb = now
            hb = {
                "ts": now,
                "interval": self.heartbeat_interval,
                "boot_id": self.boot_id,
                "bdseq": self.bdseq,
                "phase": self.phase,
                "active": self.active,
            }
            hb.update(self.stats)
            # Retained so `edgekit fleet status` sees counters and last-seen without waiting.
            out.append(Publish(self.topics.hb(self.device), dumps(hb), qos=0, retain=True))

    def _on_drift(self, event: DriftReady, now: float, out: list[Action]) -> None:
        report = dict(event.report)
        self.last_drift = {
            "ts": now,
            "bundle": dict(event.bundle),
            "verdict": report.get("verdict"),
            "drifted": report.get("drifted", []),
            "n": report.get("n"),
        }
        self._reported_dirty = True
        self.seq += 1
        msg = {
            "id": f"{self.boot_id}-{self.seq}",
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": now,
            "device": self.device,
            "bundle": dict(event.bundle),
            "window": report,
        }
        out.append(Send(self.topics.drift(self.device), dumps(msg)))

    # ── helpers ─────────────────────────────────────────────────────────────────────

    def _phase(self, phase: str) -> None:
        if phase != self.phase and phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"illegal phase change {self.phase} -> {phase}")
        if phase != self.phase:
            self._phase_changed = True
        self.phase = phase
        self._reported_dirty = True

    def _fail(self, out: list[Action], now: float, code: str, detail: str, sha256: str) -> None:
        """A deployment failed: the previous model keeps serving; report it and wait."""
        self.transfer = None
        self.inflight.clear()
        self._phase(FAILED)
        self._fail_event(out, now, code, detail, sha256=sha256)

    def _fail_event(self, out: list[Action], now: float, code: str, detail: str, *, sha256: str = "") -> None:
        """Count and report a failure; the deployment phase is the caller's business.

        A flood of one kind (junk on a topic, a broken input feed) is bounded: at most
        EVENT_BURST events per code per period; the rest are counted and summarised.
        """
        self.failures[code] = self.failures.get(code, 0) + 1
        bundle = self.goal.ref if (self.goal is not None and sha256) else None
        record = {"ts": now, "code": code, "detail": detail[:500], "sha256": sha256 or None, "bundle": bundle}
        # A deployment's failure (it names a bundle) and the latest bad row or message are kept
        # apart, so a stream of bad rows never hides why a deployment failed.
        if sha256:
            self.last_error = record
        else:
            self.last_runtime_error = record
        self._reported_dirty = True
        start, sent = self._burst.get(code, (now, 0))
        if now - start >= EVENT_PERIOD_S:
            skipped = self.suppressed.pop(code, 0)
            if skipped:
                self._event(out, now, "events.suppressed", f"{skipped} more '{code}' events in the last period")
            start, sent = now, 0
        if sent >= EVENT_BURST and not sha256:
            self.suppressed[code] = self.suppressed.get(code, 0) + 1
            return
        self._burst[code] = (start, sent + 1)
        self._event(out, now, code, detail, bundle)

    def _event(self, out: list[Action], now: float, code: str, detail: str, bundle: Any = None) -> None:
        self.seq += 1
        msg = {
            "id": f"{self.boot_id}-{self.seq}",
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": now,
            "device": self.device,
            "code": code,
            "detail": detail[:500],
            "bundle": bundle,
        }
        out.append(Send(self.topics.events(self.device), dumps(msg)))

    def _reported(self, now: float) -> Publish:
        self._last_reported = now
        self._reported_dirty = False
        self._phase_changed = False
        return Publish(self.topics.reported(self.device), dumps(self.summary(now)), retain=True)
