"""One simulated device: the agent's own :class:`AgentCore`, executed in memory.

The core is the one real agents run, unchanged: every desired state, transfer document and
chunk goes through it, so each simulated device checks signatures and hashes, keeps its
version floor, reports phases, failures, heartbeats and drift windows exactly as an agent
does. This module plays the agent's worker (:mod:`device_agent.worker`) for it, with the
disk left out: state snapshots are kept in memory, staging is skipped (a simulated device
does not restart), the outbox is :class:`~edgekit.sim.outbox.MemoryOutbox`. Serving is the
agent's own :class:`InferenceEngine` over a model shared by the fleet
(:class:`~edgekit.sim.models.Models`), fed rows at a steady rate, so trials, counters,
latency and drift windows are real.

Outcomes of actions are queued and handled after the action list that asked for them, as
the worker does: handled in place, a newer 'reported' document would go out before an
older one the same list already planned. Injected faults (:mod:`edgekit.sim.faults`) act
at the worker's level — a health check that fails, a trial whose model fails a live row,
bad rows, shifted rows, late handling — and the core decides what they mean.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from device_agent.actions import (
    Action,
    Commit,
    Install,
    Publish,
    Resend,
    Restore,
    Revert,
    SaveState,
    Send,
    StartTrial,
    Subscribe,
    Unsubscribe,
)
from device_agent.config import CoreSettings, EngineSettings, Limits
from device_agent.core import AgentCore
from device_agent.engine import InferenceEngine
from device_agent.errors import AgentError, HealthCheckFailed, TrialFailed, WrongShape
from device_agent.events import (
    Committed,
    Connected,
    Disconnected,
    Event,
    InstallDone,
    Message,
    ResendDone,
    Restored,
    Started,
    Stopping,
    Tick,
    TrialDone,
)
from device_agent.protocol import BundleRef, Latency, OutboxStats, Stats, Topics
from device_agent.runtime import LoadedModel
from device_agent.state import Persisted
from device_agent.trust import Trust

from .faults import Assignment, Faults
from .models import Models
from .outbox import MemoryOutbox, Row


class Link(Protocol):
    """What a simulated device needs of its MQTT connection."""

    connected: bool
    oversized: int

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None: ...

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def unsubscribe(self, topics: Sequence[str]) -> None: ...


Schedule = Callable[[float, Callable[[], None]], None]  # (delay in seconds, what to do)


@dataclass(frozen=True)
class DeviceSettings:
    core: CoreSettings
    engine: EngineSettings
    limits: Limits
    rows_per_s: float = 10.0  # live rows served per second (a drift window every window/rows_per_s s)
    tick_s: float = 1.0  # the worker's clock: the core's tick (heartbeats, timeouts, retries)
    serve_s: float = 5.0  # rows are served and accounted for drift in batches this far apart
    outbox_batch: int = 100


class SimDevice:
    def __init__(
        self,
        device_id: str,
        *,
        groups: tuple[str, ...],
        trust: Trust | None,
        topics: Topics,
        settings: DeviceSettings,
        models: Models,
        faults: Faults,
        assigned: Assignment,
        schedule: Schedule,
        persisted: Persisted | None = None,
    ) -> None:
        self.id = device_id
        self.settings = settings
        self.models = models
        self.faults = faults
        self.assigned = assigned
        self.schedule = schedule
        self.topics = topics
        self.core = AgentCore(
            device_id,
            trust=trust,
            trust_error="" if trust is not None else "no trust file",
            persisted=persisted or Persisted(),
            boot_id=uuid.uuid4().hex[:12],
            groups=groups,
            topics=topics,
            settings=settings.core,
            limits=settings.limits,
        )
        self._queue: deque[Event] = deque()
        # The engine's verdicts (trials, drift windows, bad rows) are only queued: it notifies
        # while holding its lock, and handling them there could call back into it.
        self.engine = InferenceEngine(self._queue.append, settings.engine)
        self.outbox = MemoryOutbox(batch=settings.outbox_batch)
        self.link: Link | None = None
        self.rng = np.random.default_rng([faults.seed, zlib.crc32(device_id.encode())])
        self._loaded: dict[str, LoadedModel] = {}
        self._busy = False
        self._next_serve = 0.0
        self._last_serve = time.monotonic()
        self._row_credit = 0.0
        self._stats: Stats | None = None  # the engine's, as of the last batch of rows
        self.messages_in = 0
        self.bytes_in = 0
        self.errors: list[str] = []  # the simulator's own troubles (never the device's reports)

    # ── life ────────────────────────────────────────────────────────────────────────

    def start(self, link: Link) -> None:
        self.link = link
        self.post(Started())

    def stop(self) -> None:
        self._serve_rows(time.monotonic())  # the rows due since the last batch
        self.engine.close()
        self.post(Tick(self.stats()))
        self.post(Stopping())

    # ── events in ───────────────────────────────────────────────────────────────────

    def post(self, event: Event) -> None:
        """Queue an event; handle the queue unless a handler further up is already doing so."""
        self._queue.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                self._handle(self._queue.popleft())
            self._drain()
        finally:
            self._busy = False

    def message(self, topic: str, payload: bytes, retained: bool) -> None:
        """A message from the broker; a slow device handles it late."""
        self.messages_in += 1
        self.bytes_in += len(payload)
        event = Message(topic, payload, retained)
        if "slow" in self.assigned and self._faulty(self.core.goal.ref if self.core.goal else self.core.active):
            self.schedule(self.faults.slow_s, lambda: self.post(event))
        else:
            self.post(event)

    def connected(self, max_packet_size: int | None, bdseq: int) -> None:
        self.outbox.reconnected()
        self.post(Connected(max_packet_size=max_packet_size, bdseq=bdseq))

    def disconnected(self, reason: str) -> None:
        self.post(Disconnected(reason))

    def acked(self, mid: int) -> None:
        self.outbox.ack(mid)
        self._drain()

    def tick(self) -> None:
        """The worker's clock. Rows are served, and accounted for drift, in batches (every
        ``serve_s``, and at once when a trial starts): one onnxruntime call and one histogram
        update per batch instead of per tick took most of an idle fleet's time."""
        now = time.monotonic()
        if now >= self._next_serve:
            self._next_serve = now + self.settings.serve_s
            self._serve_rows(now)
            self.engine.tick()
            self._stats = None
        self.post(Tick(self.stats(fresh=False)))

    def _handle(self, event: Event) -> None:
        now = time.time()
        try:
            actions = self.core.handle(event, now)
        except AgentError as exc:  # the core refused its own step
            actions = self.core.internal_failure(exc, now)
        for action in actions:
            try:
                self._execute(action)
            except Exception as exc:
                self.errors.append(f"{type(action).__name__}: {type(exc).__name__}: {exc}")

    # ── actions out ─────────────────────────────────────────────────────────────────

    def _execute(self, action: Action) -> None:
        link = self.link
        if isinstance(action, Publish):
            if link is not None and link.connected:
                link.publish(action.topic, action.payload, action.qos, action.retain)
        elif isinstance(action, Send):
            self.outbox.put(Row(action.topic, action.payload, action.boot_id, action.seq))
        elif isinstance(action, Subscribe):
            if link is not None and action.topics:
                link.subscribe(action.topics)
        elif isinstance(action, Unsubscribe):
            if link is not None and action.topics:
                link.unsubscribe(action.topics)
        elif isinstance(action, Resend):
            requeued, queued, missing = self.outbox.requeue(action.boot_id, action.ranges)
            self._queue.append(ResendDone(action.command, action.boot_id, requeued, queued, missing))
        elif isinstance(action, Restore):
            self._restore(action.bundle)
        elif isinstance(action, Install):
            self._install(action)
        elif isinstance(action, StartTrial):
            self._start_trial(action.sha256)
        elif isinstance(action, Commit):
            self.engine.commit_trial()
            self._queue.append(Committed(action.sha256))
        elif isinstance(action, Revert):
            self.engine.revert(action.sha256)
        elif isinstance(action, SaveState):
            pass  # the core holds the snapshot; a simulated device never restarts from disk
        # StageTransfer, StageChunk, DropStaging: staging serves a restart, which is not simulated

    def _restore(self, ref: BundleRef) -> None:
        model = self.models.get(ref.sha256)
        if model is None:
            self._queue.append(Restored(ref.sha256, HealthCheckFailed("the simulator does not hold this bundle")))
            return
        self.engine.activate(model)
        self._queue.append(Restored(ref.sha256))

    def _install(self, action: Install) -> None:
        bundle = action.bundle
        outcome: InstallDone
        if "install" in self.assigned and self._faulty(bundle.ref):
            injected = HealthCheckFailed("health sample 1 differs (injected by the simulator)")
            outcome = InstallDone(bundle.sha256, injected)
        else:
            try:
                self._loaded = {bundle.sha256: self.models.load(bundle, action.data)}
                outcome = InstallDone(bundle.sha256)
            except AgentError as exc:
                outcome = InstallDone(bundle.sha256, exc)
        if "slow" in self.assigned and self._faulty(bundle.ref):
            self.schedule(10 * self.faults.slow_s, lambda: self.post(outcome))
        else:
            self._queue.append(outcome)

    def _start_trial(self, sha256: str) -> None:
        model = self._loaded.pop(sha256, None)
        if model is None:
            self._queue.append(TrialDone(sha256, TrialFailed("the installed model is no longer loaded")))
            return
        self.engine.start_trial(model)
        # The trial's rows come in one batch, when a device serving rows_per_s would have served them.
        wait = self.settings.engine.trial_rows / max(1e-9, self.settings.rows_per_s)
        self._next_serve = min(self._next_serve, time.monotonic() + wait)
        if "trial" in self.assigned and self._faulty(model.bundle.ref):
            # What the engine does when the model fails a live row: the old model serves again.
            self.engine.revert(sha256)
            self._queue.append(TrialDone(sha256, TrialFailed("on live row 1: inference failed (injected)")))

    def _drain(self) -> None:
        link = self.link
        if link is None or not link.connected:
            return
        self.outbox.drain(lambda topic, payload: link.publish(topic, payload, 1, False))

    # ── serving ─────────────────────────────────────────────────────────────────────

    def _faulty(self, bundle: BundleRef | None) -> bool:
        return self.faults.applies(bundle)

    def _serve_rows(self, now: float) -> None:
        model = self.engine.model
        elapsed, self._last_serve = now - self._last_serve, now
        self._row_credit += self.settings.rows_per_s * elapsed
        n = int(self._row_credit)
        self._row_credit -= n
        if model is None or n <= 0:
            return
        faulty = self._faulty(model.bundle.ref)
        drift = self.faults.drift_sigma if "drift" in self.assigned and faulty else 0.0
        bad = self.faults.error_rate if "errors" in self.assigned and faulty else 0.0
        x = self.models.pool(model).draw(self.rng, n, drift, bad)
        try:
            self.engine.serve_matrix(x)
        except WrongShape:  # categorical or date/time features: rows as lists
            rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in r] for r in x.tolist()]
            self.engine.serve_many(rows)

    def stats(self, fresh: bool = True) -> Stats:
        """The heartbeat's numbers. The engine's (counters, latency percentiles) change only
        when rows are served, so between batches the last ones are reused: recomputed every
        second for every device, the percentiles were a tenth of the simulator's time."""
        if fresh or self._stats is None or self.engine.trial_sha() is not None:
            self._stats = self.engine.stats()
        stats = self._stats
        latency = stats.latency
        model = self.engine.model
        if latency is not None and "slow" in self.assigned and model is not None and self._faulty(model.bundle.ref):
            f = self.faults.slow_latency
            latency = Latency(latency.p50_us * f, latency.p90_us * f, latency.p99_us * f)
        oversized = self.link.oversized if self.link is not None else 0
        outbox = OutboxStats(len(self.outbox), self.outbox.dropped, 0, oversized)
        return replace(stats, latency=latency, outbox=outbox)
