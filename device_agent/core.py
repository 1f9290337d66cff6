"""The agent's protocol logic as a pure state machine: ``handle(event, now) -> [Action]``.

No sockets, files or threads here. The worker (:mod:`device_agent.worker`) executes the
actions and feeds their outcomes back as events; the paho adapter (:mod:`device_agent.mqtt`)
turns callbacks into events; tests and the fleet simulator drive the same class directly.
Every decision is made here: which bundle to pursue, what a failure means, when a trial
starts, what the persisted state becomes (whole snapshots, in ``SaveState`` and ``Commit``).

Deployment phases move along one table, :data:`device_agent.phases.TRANSITIONS`:

.. phase-diagram:start

::

    idle         ──► downloading  desired state
                 ──► failed       refused before download
    downloading  ──► verifying    all chunks in
                 ──► active       desired is the active bundle again
                 ──► failed       bad transfer, timeout
    verifying    ──► installing   verified
                 ──► failed       refused
    installing   ──► trial        model loaded, health samples pass
                 ──► failed       load or health check failed
    trial        ──► active       trial passed, committed
                 ──► failed       trial failed, or commit could not be written
    active       ──► downloading  desired state
                 ──► failed       refused before download
    failed       ──► downloading  newer desired state, or a retry
                 ──► active       desired is the active bundle again

.. phase-diagram:end

The previous model keeps serving in every failed case. installing: the model loads, its
health samples reproduce, the bundle is stored; only then does the core ask for the trial
(``StartTrial``), so the trial's verdict can never arrive before the core knows it began.
trial: the new model serves its first live rows while the old one waits in memory; only a
passed trial is committed to disk, so a crash during the trial restarts on the old model,
and the crash is counted against the bundle (``interrupted`` in the persisted state).

Every phase change is reported on the retained ``reported`` topic and every failure is an
event with a code from :mod:`device_agent.errors`, delivered through the durable outbox.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

from . import __version__
from .actions import (
    Action,
    Commit,
    DropStaging,
    Install,
    Publish,
    Resend,
    Restore,
    Revert,
    SaveState,
    SaveTrust,
    Send,
    SendSamples,
    StageChunk,
    StageTransfer,
    StartTrial,
    Subscribe,
    Unsubscribe,
)
from .bundle import DeviceProfile, FloorEntry, verify
from .config import CoreSettings, Limits
from .errors import (
    AgentError,
    BundleTooLarge,
    ChunkRejected,
    ClockUntrusted,
    CommandRejected,
    DesiredMissing,
    DesiredRejected,
    HashMismatch,
    InputSourceFailed,
    Lifecycle,
    ProtocolError,
    SamplesRejected,
    TransferMismatch,
    TransferTimeout,
    TrialCrashed,
    TrialRegressed,
    TrustError,
    TrustRejected,
    VersionRollback,
    by_code,
)
from .events import (
    Committed,
    Connected,
    Disconnected,
    DriftReady,
    Event,
    InstallDone,
    Message,
    ResendDone,
    Restored,
    RowRejected,
    SourceFailed,
    Started,
    Stopping,
    Tick,
    TrialDone,
)
from .phases import BUSY, Phase, check_transition
from .protocol import (
    BundleRef,
    Command,
    DesiredBundle,
    DesiredState,
    DeviceEvent,
    DeviceState,
    DriftMessage,
    DriftSummary,
    ErrorRecord,
    Heartbeat,
    Progress,
    Reported,
    ResendReply,
    SamplesRequest,
    Stats,
    Topics,
    TransferInfo,
    check_id,
    loads_object,
    range_count,
)
from .state import Persisted
from .transfer import Assembly
from .trial import judge
from .trust import (
    DESIRED_DOMAIN,
    ROLE_BUNDLE,
    ROLE_DEPLOY,
    ROLE_ROOT,
    SAMPLES_DOMAIN,
    TRANSFER_DOMAIN,
    Trust,
    open_envelope,
    read_envelope_unverified,
)

DETAIL_MAX = 500  # characters of a failure's detail sent to the host


@dataclass(frozen=True)
class Goal:
    """A verified desired state: where it came from (``device`` or ``group:<g>``) and what it asks."""

    source: str
    seq: int
    bundle: DesiredBundle

    @property
    def ref(self) -> BundleRef:
        return self.bundle.ref

    @property
    def sha256(self) -> str:
        return self.bundle.sha256


class AgentCore:
    def __init__(
        self,
        device_id: str,
        *,
        trust: Trust | None,
        persisted: Persisted,
        boot_id: str,
        staged: Mapping[str, tuple[bytes, bytes]] | None = None,
        groups: tuple[str, ...] = (),
        topics: Topics | None = None,
        settings: CoreSettings | None = None,
        limits: Limits | None = None,
        trust_error: str = "",
        profile: DeviceProfile | None = None,
        answered: tuple[str, ...] = (),
    ) -> None:
        self.device = check_id("device id", device_id)
        self.groups = tuple(check_id("group", g) for g in groups)
        self.topics = topics or Topics()
        self.trust = trust
        self.trust_error = trust_error
        self.boot_id = boot_id
        self.settings = settings or CoreSettings()
        self.limits = limits or Limits()
        self.state = persisted  # the durable state as the last SaveState/Commit wrote it
        self._trust_bytes = b""  # the last trust file accepted over the air
        self.profile = profile or DeviceProfile()  # what bundles' compat is checked against
        self.clock_untrusted = False  # the clock is behind the newest signed time seen
        self._desired_due: float | None = None  # when a missing desired state is reported

        self.phase = Phase.ACTIVE if persisted.active else Phase.IDLE
        self.connected = False
        self.desired: dict[str, Goal] = {}  # by source
        self.goal: Goal | None = None
        self.transfer: Assembly | None = None
        self.inflight: set[int] = set()
        self.spent: list[str] = []  # chunk topics received, unsubscribed with the next refill
        self.retry_at: dict[int, float] = {}  # chunk index -> when a bad chunk may be asked for again
        self.last_progress = 0.0
        self.last_error: ErrorRecord | None = None  # why the last deployment failed
        self.last_runtime_error: ErrorRecord | None = None  # the latest bad row, message or trust problem
        self.last_drift: DriftSummary | None = None
        self.failures: dict[str, int] = {}
        self.seq = 0
        self.stats = Stats()
        self.staged = dict(staged or {})
        self.retry_pursue_at: float | None = None
        self.transfer_attempts = 0
        self._committing: Persisted | None = None  # the state before a Commit, until Committed
        self._rng = random.Random(boot_id)  # jitter; seeded so a test can replay it
        self._burst: dict[str, tuple[float, int]] = {}  # code -> (period start, events sent)
        self._commands: tuple[float, int] = (-1e18, 0)  # (period start, resend commands handled)
        self.suppressed: dict[str, int] = {}
        self._last_hb = -1e18
        self._last_reported = -1e18
        self._reported_dirty = True
        self._phase_changed = False
        self.answered: list[str] = list(answered)[-self.settings.samples_remembered :]  # samples requests, oldest first

    # ── views of the durable state ──────────────────────────────────────────────────

    @property
    def active(self) -> BundleRef | None:
        return self.state.active

    @property
    def previous(self) -> BundleRef | None:
        return self.state.previous

    @property
    def floor(self) -> Mapping[str, FloorEntry]:
        return self.state.floor

    @property
    def bdseq(self) -> int:
        return self.state.bdseq

    # ── public surface ──────────────────────────────────────────────────────────────

    def will_payload(self, bdseq: int | None = None, reason: str | None = None) -> bytes:
        """The retained 'offline' state: set as the Will before connecting, and published
        ourselves on a clean shutdown (a clean disconnect does not fire the Will)."""
        return DeviceState(
            online=False,
            bdseq=self.bdseq if bdseq is None else bdseq,
            boot_id=self.boot_id,
            groups=self.groups,
            reason=reason,
        ).encode()

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, Started):
            if self.state.active is not None:
                out.append(Restore(self.state.active))
        elif isinstance(event, Connected):
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
            self._fail_event(out, now, event.error)
        elif isinstance(event, DriftReady):
            self._on_drift(event, now, out)
        elif isinstance(event, Restored):
            if event.error is not None:
                self._fail_event(out, now, event.error)
        elif isinstance(event, InstallDone):
            self._on_install_done(event, now, out)
        elif isinstance(event, TrialDone):
            self._on_trial_done(event, now, out)
        elif isinstance(event, Committed):
            self._on_committed(event, now, out)
        elif isinstance(event, ResendDone):
            self._on_resend_done(event, now, out)
        elif isinstance(event, SourceFailed):
            failure = InputSourceFailed(f"input {event.source} failed ({event.detail}); it is restarted")
            self._fail_event(out, now, failure)
        elif isinstance(event, Stopping):
            self._on_stopping(event, now, out)
        # Phase changes go out at once; progress and counters at most every reported_min_interval_s.
        due = self._phase_changed or _elapsed(self._last_reported, now, self.settings.reported_min_interval_s)
        if self._reported_dirty and self.connected and due:
            out.append(self._reported(now))
        return out

    def internal_failure(self, error: AgentError, now: float) -> list[Action]:
        """Report a failure of the agent's own making (the worker caught it around ``handle``)."""
        out: list[Action] = []
        self._fail_event(out, now, error)
        return out

    def summary(self, now: float) -> Reported:
        """The retained 'reported' document: what a late subscriber needs to know."""
        progress = None
        if self.transfer is not None:
            progress = Progress(self.transfer.received, self.transfer.total)
        return Reported(
            ts=now,
            boot_id=self.boot_id,
            agent=__version__,
            phase=self.phase,
            active=self.active,
            previous=self.previous,
            desired=self.goal.ref if self.goal else None,
            progress=progress,
            trial=self.stats.trial if self.phase == Phase.TRIAL else None,
            last_error=self.last_error,
            last_runtime_error=self.last_runtime_error,
            last_drift=self.last_drift,
            failures=dict(self.failures),
            suppressed=dict(self.suppressed),
            counters=dict(self.stats.counters),
            clock_untrusted=self.clock_untrusted,
        )

    # ── connection ──────────────────────────────────────────────────────────────────

    def _on_connected(self, event: Connected, now: float, out: list[Action]) -> None:
        self.connected = True
        if event.bdseq is not None and event.bdseq != self.state.bdseq:
            self._save(out, replace(self.state, bdseq=event.bdseq))
        birth = DeviceState(
            online=True,
            bdseq=self.bdseq,
            boot_id=self.boot_id,
            groups=self.groups,
            agent=__version__,
            active=self.active,
            ts=now,
        )
        out.append(Publish(self.topics.state(self.device), birth.encode(), retain=True))
        subs = [self.topics.desired_device(self.device), self.topics.cmd(self.device)]
        subs += [self.topics.desired_group(g) for g in self.groups]
        subs.append(self.topics.trust())
        out.append(Subscribe(tuple(subs)))
        self._desired_due = now + self.settings.desired_wait_s
        if self.trust is None:
            self._fail_event(out, now, TrustError(self.trust_error or "no trust file"))
        if self.goal is not None and self.phase == Phase.DOWNLOADING:
            self.inflight.clear()
            self.last_progress = now  # time offline does not count against the transfer
            if self.transfer is None:
                out.append(Subscribe((self.topics.bundle_manifest(self.goal.bundle.name, self.goal.bundle.version),)))
            else:
                self._request_chunks(out, now)
        self._reported_dirty = True

    def _on_stopping(self, event: Stopping, now: float, out: list[Action]) -> None:
        if self.phase in (Phase.INSTALLING, Phase.TRIAL) and self.goal is not None:
            # A clean stop during an install or trial is no crash: it does not count against the bundle.
            self._save(out, replace(self.state, interrupted=self._interrupted(self.goal.sha256, -1)))
        self._last_hb = -1e18  # a final heartbeat and summary carry the last counters
        self._on_tick(Tick(self.stats), now, out)
        out.append(self._reported(now))
        out.append(Publish(self.topics.state(self.device), self.will_payload(reason=event.reason), retain=True))

    # ── messages ────────────────────────────────────────────────────────────────────

    def _on_message(self, msg: Message, now: float, out: list[Action]) -> None:
        topic = msg.topic
        try:
            if len(msg.payload) > max(self.settings.max_payload_bytes, self.settings.max_chunk_bytes):
                raise ProtocolError(f"message of {len(msg.payload)} bytes is above the limit")
            if topic == self.topics.desired_device(self.device):
                self._on_desired("device", msg.payload, now, out)
                return
            if topic == self.topics.cmd(self.device):
                self._on_command(msg.payload, now, out)
                return
            if topic == self.topics.trust():
                self._on_trust(msg.payload, now, out)
                return
            for g in self.groups:
                if topic == self.topics.desired_group(g):
                    self._on_desired(f"group:{g}", msg.payload, now, out)
                    return
            goal = self.goal
            if goal is not None and topic == self.topics.bundle_manifest(goal.bundle.name, goal.bundle.version):
                self._on_transfer_doc(msg.payload, now, out)
                return
            chunk = self.topics.parse_chunk_topic(topic)
            if chunk is not None:
                self._on_chunk(chunk, msg.payload, now, out)
        except AgentError as exc:
            exc.detail = f"{topic}: {exc.detail}"
            self._fail_event(out, now, exc)

    def _on_desired(self, source: str, payload: bytes, now: float, out: list[Action]) -> None:
        self._desired_due = None  # something arrived: nothing to report as missing
        if not payload:  # retained document cleared: fall back to what remains, and say so
            if self.desired.pop(source, None) is not None:
                self._pursue(now, out, retry=False)
            serving = self.active.label if self.active is not None else "nothing"
            remaining = self._effective()
            left = f"following {remaining.source}" if remaining is not None else "no desired state left"
            raise DesiredMissing(f"the retained desired state was cleared; serving {serving}, {left}")
        if self.trust is None:
            raise TrustError(self.trust_error or "no trust file: desired state cannot be verified")
        # A recovery document resets the sequence, so it needs a stronger key than a deploy:
        # the role is chosen from what the document claims, then that role's signature checked.
        claimed = read_envelope_unverified(payload, "desired state", self.settings.max_payload_bytes)
        role = ROLE_ROOT if claimed.get("recover") is True else ROLE_DEPLOY
        body, _ = open_envelope(
            self.trust, role, DESIRED_DOMAIN, payload, "desired state", self.settings.max_payload_bytes
        )
        doc = DesiredState.from_json(body)
        if doc.target != (f"device:{self.device}" if source == "device" else source):
            raise DesiredRejected(f"document is addressed to {doc.target!r}, not to this topic's {source!r}")
        clock = self.clock(now)
        if doc.expires is not None and doc.expires <= clock:
            raise DesiredRejected(f"desired state seq {doc.seq} expired")
        ahead = doc.seq / 1e6 - clock  # edgekit deploy numbers them by the microsecond
        if now >= self.settings.clock_valid_after and ahead > self.settings.max_seq_ahead_s:
            raise DesiredRejected(
                f"desired state seq {doc.seq} is {ahead / 86400:.0f} days ahead of this device's clock; "
                "a sequence that far ahead would freeze every later deploy"
            )
        known = self.state.desired_seq.get(source, 0)
        if doc.recover and doc.seq != known:
            known = 0  # a root-signed recovery: the sequence starts again from this document
        if doc.seq < known:
            raise DesiredRejected(f"desired state seq {doc.seq} is older than seq {known}, already accepted")
        fresh = doc.seq > known
        signed = max(self.state.signed_time, doc.issued or 0.0)
        if fresh or signed > self.state.signed_time:
            seqs = {**self.state.desired_seq, source: doc.seq}
            self._save(out, replace(self.state, desired_seq=seqs, signed_time=signed))
            self._check_clock(now, out)
        self.desired[source] = Goal(source, doc.seq, doc.bundle)
        self._pursue(now, out, retry=fresh)

    def _on_trust(self, payload: bytes, now: float, out: list[Action]) -> None:
        """A newer trust file signed by the current root: keys added, revoked, rotated."""
        if not payload:
            return
        if self.trust is None:
            raise TrustRejected("no trust file: a new one cannot be checked against a root key")
        if payload == self._trust_bytes:
            return  # the retained copy, delivered again
        try:
            new = self.trust.accept_update(payload)
        except TrustRejected:
            raise
        except AgentError as exc:
            raise TrustRejected(f"trust file refused: {exc.detail}") from None
        if new.version == self.trust.version:
            return
        self.trust, self._trust_bytes = new, payload
        out.append(SaveTrust(payload))
        names = ", ".join(sorted(k.name or k.keyid for k in new.keys.values()))
        self._event(out, now, Lifecycle.TRUST_UPDATED, f"trust file version {new.version}: {names}")

    def _on_command(self, payload: bytes, now: float, out: list[Action]) -> None:
        """A resend request only makes the device publish again what it already published;
        still, it must be for this device, bounded, and not too frequent. A signed envelope
        on the same topic is a samples request."""
        obj = loads_object(payload, self.settings.max_payload_bytes, Command.WHAT)
        if "body" in obj and "sigs" in obj:
            self._on_samples_request(payload, now, out)
            return
        cmd = Command.from_json(obj)
        if cmd.device != self.device:
            raise CommandRejected(f"command {cmd.id!r} is addressed to {cmd.device!r}")
        asked = range_count(cmd.resend.ranges)
        if asked > self.settings.resend_max_messages:
            raise CommandRejected(
                f"command {cmd.id!r} asks for {asked} messages, above {self.settings.resend_max_messages}"
            )
        start, handled = self._commands
        if _elapsed(start, now, self.settings.event_period_s):
            start, handled = now, 0
        if handled >= self.settings.resend_burst:
            limit = self.settings.resend_burst
            raise CommandRejected(f"command {cmd.id!r} is above the limit of {limit} resend commands per period")
        self._commands = (start, handled + 1)
        out.append(Resend(cmd.id, cmd.resend.boot_id, cmd.resend.ranges))

    def _on_samples_request(self, payload: bytes, now: float, out: list[Action]) -> None:
        """Captured rows leave the device only for a request signed with a deploy key, for
        this device, not expired nor expiring far ahead; a request id is answered once."""
        if self.trust is None:
            raise TrustError(self.trust_error or "no trust file: a samples request cannot be verified")
        body, _ = open_envelope(
            self.trust, ROLE_DEPLOY, SAMPLES_DOMAIN, payload, SamplesRequest.WHAT, self.settings.max_payload_bytes
        )
        req = SamplesRequest.from_json(body)
        if req.device != self.device:
            raise SamplesRejected(f"samples request {req.id!r} is addressed to {req.device!r}")
        if req.expires <= now:
            raise SamplesRejected(f"samples request {req.id!r} expired")
        if req.expires - now > self.settings.samples_max_expiry_s:
            limit = self.settings.samples_max_expiry_s
            raise SamplesRejected(f"samples request {req.id!r} expires more than {limit:.0f} s ahead")
        if req.id in self.answered:
            return  # a repeated request (a redelivery, or a replay): answered once
        self.answered = [*self.answered, req.id][-self.settings.samples_remembered :]
        out.append(SendSamples(req.id, req.since, req.max_rows))

    def _on_resend_done(self, event: ResendDone, now: float, out: list[Action]) -> None:
        if not self.connected:
            return  # the host asks again
        reply = ResendReply(
            command=event.command,
            ts=now,
            device=self.device,
            boot_id=event.boot_id,
            requeued=event.requeued,
            queued=event.queued,
            missing=event.missing,
        )
        out.append(Publish(self.topics.resent(self.device), reply.encode()))

    def _effective(self) -> Goal | None:
        if "device" in self.desired:
            return self.desired["device"]
        groups = [d for t, d in self.desired.items() if t.startswith("group:")]
        return max(groups, key=lambda d: d.seq) if groups else None

    def _pursue(self, now: float, out: list[Action], retry: bool) -> None:
        """Move toward the effective desired bundle. A failed bundle is retried only when a
        newer desired document asks again (``retry``), never on a retained redelivery —
        unless its failure said nothing against the bundle (a transient error)."""
        goal = self._effective()
        if goal is None:
            return
        if self.phase in BUSY:
            return  # the install under way finishes first, then the newest goal is pursued
        if self.active is not None and self.active.sha256 == goal.sha256:
            if self.goal is not None and self.goal != goal:
                self._abandon(out)
            self.goal = goal
            if self.phase != Phase.ACTIVE:
                self._phase(Phase.ACTIVE)
            return
        if self.goal is not None and self.goal.sha256 == goal.sha256:
            self.goal = goal
            if self.phase == Phase.DOWNLOADING:
                return  # already on its way
            err = self.last_error
            failed_here = err is not None and err.sha256 == goal.sha256 and not _transient(err.code)
            if self.phase == Phase.FAILED and failed_here and not retry:
                return  # this exact bundle already failed; wait for a new desired state
        crashes = self.state.interrupted.get(goal.sha256, 0)
        if crashes >= self.settings.max_trial_crashes and not retry:
            self._refuse(
                goal,
                now,
                out,
                TrialCrashed(
                    f"{goal.ref.label} was not retried: its install or trial ended in a restart {crashes} times"
                ),
            )
            return
        held = self.floor.get(goal.bundle.name)
        if held is not None and goal.bundle.version < held.version:
            self._refuse(
                goal,
                now,
                out,
                VersionRollback(f"desired {goal.ref.label} is older than v{held.version}, already accepted"),
            )
            return
        if self.goal is None or self.goal.sha256 != goal.sha256:
            self.transfer_attempts = 0
        self._abandon(out)
        self.goal = goal
        self.last_progress = now
        self.retry_pursue_at = None
        self._phase(Phase.DOWNLOADING)
        for sha in [s for s in self.staged if s != goal.sha256]:
            del self.staged[sha]
            out.append(DropStaging(sha))
        staged = self.staged.get(goal.sha256)
        if staged is not None and self.trust is not None:
            self._start_transfer(staged[0], now, out, resumed=staged[1])
            if self.transfer is not None:
                return
        out.append(Subscribe((self.topics.bundle_manifest(goal.bundle.name, goal.bundle.version),)))

    def _refuse(self, goal: Goal, now: float, out: list[Action], error: AgentError) -> None:
        """Refuse ``goal`` before downloading anything."""
        self._abandon(out)
        self.goal = goal
        self._fail(out, now, error, goal.sha256)

    def _abandon(self, out: list[Action]) -> None:
        if self.goal is None:
            return
        name, version = self.goal.bundle.name, self.goal.bundle.version
        topics = [self.topics.bundle_manifest(name, version)]
        topics += [self.topics.bundle_chunk(name, version, i) for i in sorted(self.inflight)]
        out.append(Unsubscribe(tuple(topics + self.spent)))
        self.spent.clear()
        self.transfer = None
        self.inflight.clear()
        self.retry_at.clear()

    # ── the transfer ────────────────────────────────────────────────────────────────

    def _on_transfer_doc(self, payload: bytes, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or self.phase != Phase.DOWNLOADING or self.transfer is not None:
            return
        if self.trust is None:
            raise TrustError(self.trust_error or "no trust file: bundles cannot be verified")
        out.append(Unsubscribe((self.topics.bundle_manifest(goal.bundle.name, goal.bundle.version),)))
        self._start_transfer(payload, now, out, resumed=None)

    def _start_transfer(self, envelope: bytes, now: float, out: list[Action], resumed: bytes | None) -> None:
        """Open the signed transfer document and start (or resume) pulling chunks."""
        goal = self.goal
        assert goal is not None and self.trust is not None
        try:
            body, _ = open_envelope(
                self.trust, ROLE_BUNDLE, TRANSFER_DOMAIN, envelope, "transfer document", self.settings.max_payload_bytes
            )
            info = TransferInfo.from_json(body, self.settings.max_chunk_bytes)
        except AgentError as exc:
            if resumed is not None:  # a stale or damaged staging area: start over from the broker
                self.staged.pop(goal.sha256, None)
                out.append(DropStaging(goal.sha256))
                return
            exc.detail = f"transfer document: {exc.detail}"
            self._fail(out, now, exc, goal.sha256)
            return
        b = goal.bundle
        if (info.name, info.version, info.sha256, info.size) != (b.name, b.version, b.sha256, b.size):
            self._fail(out, now, TransferMismatch("transfer document does not describe the desired bundle"), b.sha256)
            return
        if info.size > self.limits.max_bundle_bytes:
            self._fail(out, now, BundleTooLarge(f"bundle is {info.size} bytes, above this device's limit"), b.sha256)
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
        room = self.settings.chunk_window - len(self.inflight)
        # Refilled half a window at a time: one SUBSCRIBE and one UNSUBSCRIBE packet for several
        # chunks, not one of each per chunk (each packet is a round of work for the agent's
        # MQTT thread and for the broker).
        if room <= 0 or (self.inflight and room < max(1, self.settings.chunk_window // 2)):
            return
        waiting = {i for i, t in self.retry_at.items() if t > now}
        wanted = self.transfer.missing(room, exclude=self.inflight | waiting)
        self._unsubscribe_spent(out)
        if wanted:
            self.inflight.update(wanted)
            name, version = self.goal.bundle.name, self.goal.bundle.version
            out.append(Subscribe(tuple(self.topics.bundle_chunk(name, version, i) for i in wanted)))

    def _unsubscribe_spent(self, out: list[Action]) -> None:
        if self.spent:
            out.append(Unsubscribe(tuple(self.spent)))
            self.spent.clear()

    def _on_chunk(self, where: tuple[str, int, int], payload: bytes, now: float, out: list[Action]) -> None:
        name, version, index = where
        goal, transfer = self.goal, self.transfer
        if goal is None or transfer is None or (name, version) != (goal.bundle.name, goal.bundle.version):
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
            self.retry_at[index] = now + self.settings.chunk_retry_s
            self._fail_event(out, now, exc)
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
        self._phase(Phase.VERIFYING)
        try:
            if self.trust is None:
                raise TrustError(self.trust_error or "no trust file: bundles cannot be verified")
            bundle = verify(
                data,
                self.trust,
                now=self.clock(now),
                device=self.profile,
                floor=self.floor,
                expect_name=goal.bundle.name,
                expect_sha256=goal.sha256,
                limits=self.limits,
                keep_model=False,  # the install loads it from the stored file
            )
            if bundle.version != goal.bundle.version:
                raise HashMismatch(f"bundle says v{bundle.version}, desired state says v{goal.bundle.version}")
        except AgentError as exc:
            self._fail(out, now, exc, goal.sha256)
            return
        self._phase(Phase.INSTALLING)
        self.staged.pop(goal.sha256, None)
        # Counted before the load: if the model takes the process down during its load, health
        # check or trial, the next start knows, and after max_trial_crashes stops trying it.
        self._save(out, replace(self.state, interrupted=self._interrupted(goal.sha256, +1)))
        out.append(Install(bundle, data))  # the install adopts the staged file and clears staging

    # ── installation, trial, commit ─────────────────────────────────────────────────

    def _on_install_done(self, event: InstallDone, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or event.sha256 != goal.sha256 or self.phase != Phase.INSTALLING:
            return
        if event.error is not None:
            out.append(DropStaging(goal.sha256))
            # A failure the install reported is no crash: the bundle waits for a new desired state.
            self._save(out, replace(self.state, interrupted=self._interrupted(goal.sha256, None)))
            self._fail(out, now, event.error, goal.sha256)
            self._pursue_newer(goal, now, out)
            return
        self._phase(Phase.TRIAL)
        if event.memory is not None:
            self._save(out, replace(self.state, memory={**self.state.memory, goal.sha256: event.memory}))
        out.append(StartTrial(goal.sha256))
        self._event(out, now, Lifecycle.TRIAL, f"{goal.ref.label} is on trial", goal.ref)

    def _on_trial_done(self, event: TrialDone, now: float, out: list[Action]) -> None:
        goal = self.goal
        if goal is None or event.sha256 != goal.sha256 or self.phase != Phase.TRIAL or self._committing:
            return
        error = event.error
        if error is None and event.report is not None:
            old = self.active.sha256 if self.active is not None else ""
            why = judge(event.report, self.settings, self.state.memory.get(goal.sha256), self.state.memory.get(old))
            if why is not None:
                error = TrialRegressed(f"{goal.ref.label} regressed on trial: {why}")
        if error is not None:
            out.append(Revert(goal.sha256))
            memory = {k: v for k, v in self.state.memory.items() if k != goal.sha256}
            self._save(out, replace(self.state, interrupted=self._interrupted(goal.sha256, None), memory=memory))
            self._fail(out, now, error, goal.sha256)
            self._pursue_newer(goal, now, out)
            return
        floor = dict(self.floor)
        held = floor.get(goal.bundle.name)
        if held is None or goal.bundle.version >= held.version:
            floor[goal.bundle.name] = FloorEntry(goal.bundle.version, goal.sha256)
        previous = self.active if self.active is not None and self.active.sha256 != goal.sha256 else self.previous
        kept = {r.sha256 for r in (goal.ref, previous) if r is not None}
        committed = replace(
            self.state,
            active=goal.ref,
            previous=previous,
            floor=floor,
            interrupted=self._interrupted(goal.sha256, None),
            memory={k: v for k, v in self.state.memory.items() if k in kept},
        )
        # The commit is the state from now on: a SaveState emitted before Committed arrives
        # must not write the old active bundle back over it.
        self._committing = self.state
        self.state = committed
        out.append(Commit(committed, goal.sha256))

    def _on_committed(self, event: Committed, now: float, out: list[Action]) -> None:
        goal, before = self.goal, self._committing
        if goal is None or event.sha256 != goal.sha256 or self.phase != Phase.TRIAL or before is None:
            return
        self._committing = None
        if event.error is not None:
            out.append(Revert(goal.sha256))
            state = self.state
            self._save(
                out, replace(before, desired_seq=state.desired_seq, bdseq=state.bdseq, interrupted=state.interrupted)
            )
            self._fail(out, now, event.error, goal.sha256)
            return
        self.last_error = None
        self.transfer_attempts = 0
        self._phase(Phase.ACTIVE)
        self._event(out, now, Lifecycle.ACTIVATED, f"{goal.ref.label} is active", goal.ref)
        self._pursue(now, out, retry=False)

    def _pursue_newer(self, failed: Goal, now: float, out: list[Action]) -> None:
        newest = self._effective()
        if newest is not None and newest.sha256 != failed.sha256:
            self._pursue(now, out, retry=False)  # a newer desired state arrived meanwhile

    # ── periodic work ───────────────────────────────────────────────────────────────

    def _on_tick(self, event: Tick, now: float, out: list[Action]) -> None:
        self._check_clock(now, out)
        if self._desired_due is not None and now >= self._desired_due and self.connected:
            self._desired_due = None
            if self.active is not None and not self.desired:
                self._fail_event(
                    out,
                    now,
                    DesiredMissing(
                        f"no desired state is retained for this device or its groups; serving {self.active.label}"
                    ),
                )
        if self.phase == Phase.TRIAL and event.stats.trial != self.stats.trial:
            self._reported_dirty = True  # a deploy that waits shows the trial's rows
        self.stats = event.stats
        downloading = self.connected and self.phase == Phase.DOWNLOADING
        if downloading and self.transfer is not None and self.retry_at:
            self._request_chunks(out, now)
        if downloading and self.goal is not None and now - self.last_progress > self.settings.transfer_timeout_s:
            goal = self.goal
            self._abandon(out)
            self.staged.pop(goal.sha256, None)
            out.append(DropStaging(goal.sha256))
            timeout = TransferTimeout(f"no progress for {self.settings.transfer_timeout_s:.0f} s")
            self._fail(out, now, timeout, goal.sha256)
            delay = min(
                self.settings.transfer_retry_max_s, self.settings.transfer_retry_base_s * 2**self.transfer_attempts
            )
            self.retry_pursue_at = now + delay * (0.5 + self._rng.random())
            self.transfer_attempts += 1
        if self.retry_pursue_at is not None and now >= self.retry_pursue_at and self.phase == Phase.FAILED:
            self.retry_pursue_at = None
            if self.connected:
                self._pursue(now, out, retry=True)
        if self.connected and _elapsed(self._last_hb, now, self.settings.heartbeat_interval_s):
            self._last_hb = now
            hb = Heartbeat(
                ts=now,
                interval=self.settings.heartbeat_interval_s,
                boot_id=self.boot_id,
                bdseq=self.bdseq,
                phase=self.phase,
                active=self.active,
                stats=self.stats,
                seq=self.seq,
            )
            # Retained so `edgekit fleet status` sees counters and last-seen without waiting.
            out.append(Publish(self.topics.hb(self.device), hb.encode(), qos=0, retain=True))

    def clock(self, now: float) -> float:
        """The time expiry is judged by: the device's clock, but never earlier than the newest
        signed time already seen (a clock reset to 1970 must not make old documents valid)."""
        return max(now, self.state.signed_time)

    def _check_clock(self, now: float, out: list[Action]) -> None:
        behind = self.state.signed_time - now
        untrusted = behind > self.settings.clock_tolerance_s
        if untrusted == self.clock_untrusted:
            return
        self.clock_untrusted = untrusted
        self._reported_dirty = True
        self._phase_changed = True  # reported at once, like a phase change
        if untrusted:
            self._fail_event(
                out,
                now,
                ClockUntrusted(
                    f"the clock is {behind:.0f} s behind the newest signed time seen; "
                    "expiry is judged by that signed time until the clock catches up"
                ),
            )

    def _on_drift(self, event: DriftReady, now: float, out: list[Action]) -> None:
        self.seq += 1
        msg = DriftMessage(
            id=f"{self.boot_id}-{self.seq}",
            boot_id=self.boot_id,
            seq=self.seq,
            ts=now,
            device=self.device,
            bundle=event.bundle,
            window=dict(event.report),
        )
        self.last_drift = msg.summary()
        self._reported_dirty = True
        out.append(Send(self.topics.drift(self.device), msg.encode(), self.boot_id, self.seq))

    # ── helpers ─────────────────────────────────────────────────────────────────────

    def _phase(self, phase: Phase) -> None:
        check_transition(self.phase, phase)
        if phase != self.phase:
            self._phase_changed = True
        self.phase = phase
        self._reported_dirty = True

    def _save(self, out: list[Action], state: Persisted) -> None:
        self.state = state
        out.append(SaveState(state))

    def _interrupted(self, sha256: str, change: int | None) -> dict[str, int]:
        """The interrupted-trial counts with ``sha256``'s moved by ``change`` (None: forgotten)."""
        counts = dict(self.state.interrupted)
        left = 0 if change is None else counts.get(sha256, 0) + change
        if left > 0:
            counts[sha256] = left
        else:
            counts.pop(sha256, None)
        return counts

    def _fail(self, out: list[Action], now: float, error: AgentError, sha256: str) -> None:
        """A deployment failed: the previous model keeps serving; report it and wait."""
        self.transfer = None
        self.inflight.clear()
        self._phase(Phase.FAILED)
        self._fail_event(out, now, error, sha256=sha256)

    def _fail_event(self, out: list[Action], now: float, error: AgentError, *, sha256: str = "") -> None:
        """Count and report a failure; the deployment phase is the caller's business.

        A flood of one kind (junk on a topic, a broken input feed) is bounded: at most
        ``event_burst`` events per code per period; the rest are counted and summarised.
        """
        code, detail = error.code, error.detail[:DETAIL_MAX]
        self.failures[code] = self.failures.get(code, 0) + 1
        bundle = self.goal.ref if (self.goal is not None and sha256) else None
        record = ErrorRecord(now, code, detail, sha256 or None, bundle)
        # A deployment's failure (it names a bundle) and the latest bad row or message are kept
        # apart, so a stream of bad rows never hides why a deployment failed.
        if sha256:
            self.last_error = record
        else:
            self.last_runtime_error = record
        self._reported_dirty = True
        start, sent = self._burst.get(code, (now, 0))
        if _elapsed(start, now, self.settings.event_period_s):
            skipped = self.suppressed.pop(code, 0)
            if skipped:
                self._event(out, now, Lifecycle.SUPPRESSED, f"{skipped} more '{code}' events in the last period")
            start, sent = now, 0
        if sent >= self.settings.event_burst and not sha256:
            self.suppressed[code] = self.suppressed.get(code, 0) + 1
            return
        self._burst[code] = (start, sent + 1)
        self._send_event(out, now, "failure", code, detail, bundle)

    def _event(
        self, out: list[Action], now: float, code: Lifecycle, detail: str, bundle: BundleRef | None = None
    ) -> None:
        self._send_event(out, now, "lifecycle", str(code), detail, bundle)

    def _send_event(
        self, out: list[Action], now: float, kind: str, code: str, detail: str, bundle: BundleRef | None
    ) -> None:
        self.seq += 1
        msg = DeviceEvent(
            id=f"{self.boot_id}-{self.seq}",
            boot_id=self.boot_id,
            seq=self.seq,
            ts=now,
            device=self.device,
            kind=kind,
            code=code,
            detail=detail[:DETAIL_MAX],
            bundle=bundle,
        )
        out.append(Send(self.topics.events(self.device), msg.encode(), self.boot_id, self.seq))

    def _reported(self, now: float) -> Publish:
        self._last_reported = now
        self._reported_dirty = False
        self._phase_changed = False
        return Publish(self.topics.reported(self.device), self.summary(now).encode(), retain=True)


def _elapsed(since: float, now: float, period: float) -> bool:
    """``period`` has passed since ``since`` — or the clock went back past it: a clock set
    back must not silence heartbeats, reports and events until it catches up again."""
    return now - since >= period or now < since


def _transient(code: str) -> bool:
    """Failures that say nothing against the bundle itself are retried on redelivery."""
    cls = by_code(code)
    return cls is not None and cls.transient
