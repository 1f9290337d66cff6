"""The agent at run time: one worker thread owns the core and executes its actions.

The core decides; this module does what it is told, in order, and reports the outcome as
an event: the durable outbox and its drain, the state directory (state, staging, bundles),
the inference engine (restore, install, trial, commit, revert), and the network through a
:class:`Link` (the paho adapter in :mod:`device_agent.mqtt`, or anything that can publish
and subscribe). Outcomes are queued, never handled in place: handled inside the action list
that asked for them, they would publish a newer 'reported' document before an older one the
same list already planned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
from .bundle import VerifiedBundle, verify
from .capture import SampleStore, replies
from .config import AgentConfig
from .core import AgentCore
from .engine import InferenceEngine
from .errors import AgentError, InstallFailed, Lifecycle, ProtocolError, StorageError, TrustError
from .events import (
    Committed,
    Connected,
    Disconnected,
    Event,
    InstallDone,
    ResendDone,
    Restored,
    Started,
    Stopping,
    Tick,
    TrialDone,
)
from .outbox import Outbox
from .probe import Budget, probe
from .protocol import DeviceEvent, OutboxStats, Stats, Topics
from .resources import ResourceMeter
from .runtime import LoadedModel, device_profile
from .slots import Slots
from .trust import Trust

log = logging.getLogger("edgekit.agent")

_CRASH_AT = os.environ.get("EDGEKIT_AGENT_CRASH_AT", "")


def fault(point: str) -> None:
    """Fault injection for the crash-safety tests: die like a power cut at a named point."""
    if point == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _release(data: bytes | bytearray) -> None:
    """The received bundle is handed over with the Install action: once it is stored, its
    buffer is emptied, so that nothing bundle-sized is left in memory while the model loads."""
    if isinstance(data, bytearray):
        try:
            data.clear()
        except BufferError:  # something still holds a view of it: it is freed with that view
            log.debug("received bundle still referenced; freed later")


class Link(Protocol):
    """What the worker needs of a connection to the broker."""

    oversized: int  # messages dropped because they exceed the broker's packet limit

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Queue a publish; return its message id (QoS 1 acknowledgements come back as
        :class:`Acked`), or None when it could not be queued."""

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def unsubscribe(self, topics: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class Acked:
    """The broker acknowledged the QoS 1 publish with this message id (not a core event)."""

    mid: int


class _Stop:
    pass


Item = Event | Acked | _Stop


def _log_event(payload: bytes) -> None:
    """Failures go to the host, and to the local log too: an operator on the device sees why."""
    try:
        event = DeviceEvent.decode(payload)
    except ProtocolError:
        return
    level = logging.INFO if event.kind == "lifecycle" and event.code != Lifecycle.SUPPRESSED else logging.WARNING
    log.log(level, "%s: %s", event.code, event.detail)


class Worker:
    """Owns the core, the state dir, the outbox and the engine; runs on one thread."""

    def __init__(self, config: AgentConfig, core: AgentCore, slots: Slots, outbox: Outbox, trust: Trust | None):
        self.config = config
        self.core = core
        self.slots = slots
        self.outbox = outbox
        self.trust = trust
        self.queue: queue.Queue[Item] = queue.Queue()
        self.engine = InferenceEngine(self.queue.put, config.engine, config.capture)
        self.samples = SampleStore(Path(config.state_dir) / "samples", config.capture)
        self.link: Link | None = None
        self.connected = False
        self.outbox_errors = 0
        self.meter = ResourceMeter(config.state_dir, config.core.heartbeat_interval_s)
        self._loaded: dict[str, LoadedModel] = {}  # installed, waiting for StartTrial
        self._inflight: dict[int, int] = {}  # message id -> outbox row id
        self._last_sent = 0
        self._thread = threading.Thread(target=self._run, name="edgekit-agent-worker", daemon=True)

    # ── life ────────────────────────────────────────────────────────────────────────

    def start(self, link: Link) -> None:
        """Restore what served before the restart, then run. The restore happens here, before
        the thread (and the caller's input) starts, so the first row finds the model."""
        self.link = link
        self.handle(Started())
        self._thread.start()

    def stop(self, drain_s: float) -> None:
        """Report the last partial drift window, say goodbye, drain what can be drained."""
        self.engine.close()
        self._write_captured()
        self.queue.put(Tick(self.stats()))
        self.queue.put(Stopping())
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self.connected and (len(self.outbox) or not self.queue.empty()):
            time.sleep(0.05)
        self.queue.put(_Stop())
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def stats(self) -> Stats:
        stats = self.engine.stats()
        oversized = self.link.oversized if self.link is not None else 0
        outbox = OutboxStats(len(self.outbox), self.outbox.dropped, self.outbox_errors, oversized)
        return Stats(stats.counters, stats.latency, outbox, self.meter.read(), stats.trial)

    # ── the loop ────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            try:
                item: Item | None = self.queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, _Stop):
                return
            try:
                if isinstance(item, Acked):
                    row = self._inflight.pop(item.mid, None)
                    if row is not None:
                        self.outbox.ack(row)
                elif item is not None:
                    self.handle(item)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.config.tick_interval_s
                    self.engine.tick()
                    self._write_captured()
                    self.handle(Tick(self.stats()))
                self._drain()
            except Exception:  # the worker must survive anything one message can do
                log.exception("agent worker error")

    def handle(self, event: Event) -> None:
        if isinstance(event, Connected):
            self.connected = True
            self._inflight.clear()
            self._last_sent = 0
        elif isinstance(event, Disconnected):
            self.connected = False
        now = time.time()
        try:
            actions = self.core.handle(event, now)
        except AgentError as exc:  # the core refused its own step (an illegal phase change)
            log.error("%s: %s", exc.code, exc.detail)
            actions = self.core.internal_failure(exc, now)
        for action in actions:
            self.execute(action)

    # ── actions ─────────────────────────────────────────────────────────────────────

    def execute(self, action: Action) -> None:
        link = self.link
        if isinstance(action, Send):
            self._send(action)
        elif isinstance(action, Resend):
            self._resend(action)
        elif isinstance(action, SendSamples):
            self._send_samples(action)
        elif isinstance(action, Publish):
            if link is not None and self.connected:
                link.publish(action.topic, action.payload, action.qos, action.retain)
        elif isinstance(action, Subscribe):
            if link is not None and action.topics:
                link.subscribe(action.topics)
        elif isinstance(action, Unsubscribe):
            if link is not None and action.topics:
                link.unsubscribe(action.topics)
        elif isinstance(action, SaveState):
            self._storage(lambda: self.slots.save(action.state))
        elif isinstance(action, Restore):
            self._restore(action)
        elif isinstance(action, Install):
            self._install(action)
        elif isinstance(action, StartTrial):
            self._start_trial(action)
        elif isinstance(action, Commit):
            self._commit(action)
        elif isinstance(action, Revert):
            self.engine.revert(action.sha256)
        elif isinstance(action, StageTransfer):
            self._stage(lambda: self.slots.stage_transfer(action.sha256, action.envelope, action.size))
        elif isinstance(action, StageChunk):
            self._stage(lambda: self.slots.stage_chunk(action.sha256, action.offset, action.data))
        elif isinstance(action, DropStaging):
            self.slots.drop_staging(action.sha256)
        elif isinstance(action, SaveTrust):
            self._storage(lambda: self._save_trust(action.data))

    def _save_trust(self, data: bytes) -> None:
        """The core accepted a newer trust file: it replaces the one on disk, atomically, so a
        restart starts from it."""
        from .slots import atomic_write

        try:
            atomic_write(Path(self.config.trust), data)
        except OSError as exc:
            raise StorageError(f"cannot write the trust file {self.config.trust}: {exc.strerror}") from None
        self.trust = self.core.trust

    def _send(self, action: Send) -> None:
        if action.topic.endswith("/events"):
            _log_event(action.payload)
        try:
            self.outbox.put(action.topic, action.payload, action.boot_id, action.seq)
        except sqlite3.Error as exc:  # a full or broken disk: deliver now, best effort
            self.outbox_errors += 1
            log.error("outbox unavailable (%s); publishing without durability", exc)
            if self.link is not None and self.connected:
                self.link.publish(action.topic, action.payload, 1, False)

    def _resend(self, action: Resend) -> None:
        """Delivered messages the host asked for go back into the queue, from the history."""
        try:
            requeued, queued, missing = self.outbox.requeue(action.boot_id, action.ranges)
        except sqlite3.Error as exc:
            log.error("resend of %s from the outbox history failed: %s", action.command, exc)
            return  # the host asks again
        self.queue.put(ResendDone(action.command, action.boot_id, requeued, queued, missing))

    def _write_captured(self) -> None:
        """Captured rows go to disk on the worker's tick, never on the serving path."""
        rows = self.engine.take_captured()
        if not rows:
            return
        try:
            self.samples.append(rows)
        except OSError as exc:  # a full disk costs the sample, never the serving
            self.samples.errors += 1
            log.warning("captured rows not written: %s", exc)

    def _note_bundle(self, model: LoadedModel) -> None:
        """What the host needs to read captured rows of this bundle: its features, in order."""
        if self.engine.capture is None:
            return
        b = model.bundle
        info = {
            "name": b.name,
            "version": b.version,
            "sha256": b.sha256,
            "features": [f.name for f in model.spec.features],
        }
        try:
            self.samples.note_bundle(f"{b.name}@{b.version}", info)
        except OSError as exc:
            log.warning("captured rows' bundle not noted: %s", exc)

    def _send_samples(self, action: SendSamples) -> None:
        """Answer a verified samples request in size-bounded parts, once."""
        self._write_captured()
        try:
            rows = list(self.samples.rows(action.since))
            if action.max_rows is not None:
                rows = rows[-action.max_rows :]
            docs = replies(
                action.request,
                self.core.device,
                time.time(),
                rows,
                self.samples.bundles(),
                self.config.capture.max_message_bytes,
                self.engine.capture is not None,
            )
            self.samples.mark_answered(action.request, self.config.core.samples_remembered)
        except OSError as exc:
            log.error("samples request %s not answered: %s", action.request, exc)
            return
        log.info("answering samples request %s: %d rows in %d parts", action.request, len(rows), len(docs))
        if self.link is None or not self.connected:
            return  # the host asks again, with a new id
        topic = self.core.topics.samples(self.core.device)
        for doc in docs:
            self.link.publish(topic, doc.encode(), 1, False)

    def _storage(self, write: Callable[[], None]) -> None:
        """A state write that failed is reported; the model that serves keeps serving."""
        try:
            write()
        except AgentError as exc:
            log.error("%s: %s", exc.code, exc.detail)
            for action in self.core.internal_failure(exc, time.time()):
                self.execute(action)

    def _stage(self, write: Callable[[], None]) -> None:
        """Staging is an optimisation (resume after restart): a full disk only costs that."""
        try:
            write()
        except AgentError as exc:
            log.warning("staging skipped: %s", exc.detail)

    def _restore(self, action: Restore) -> None:
        """Serve the bundle that was active before the restart, re-verified from disk."""
        ref = action.bundle
        try:
            # Re-opened as installed: expiry and the trust file guard installing, never the
            # model that already serves (the state file names it by its SHA-256).
            bundle = verify(
                self.slots.read_bundle(ref.sha256),
                self.trust,
                now=time.time(),
                floor=self.core.floor,
                expect_sha256=ref.sha256,
                limits=self.config.limits,
                keep_model=False,
                installed=True,
            )
            model = self._load(bundle)
            model.health_check()
            self.engine.activate(model)
            self._note_bundle(model)
            log.info("serving %s from the state dir", ref.label)
        except AgentError as exc:
            log.error("cannot restore the active bundle %s: %s", ref.label, exc.detail)
            self.queue.put(Restored(ref.sha256, exc))
            return
        self.queue.put(Restored(ref.sha256))

    def _install(self, action: Install) -> None:
        """Store, load and health-check the bundle. Nothing serves it and nothing on disk
        names it as active until the core asks for the trial and then the commit.

        Stored first, so the model loads from the stored file and the received bytes can go
        before onnxruntime builds its graph; a bundle that then fails is removed again."""
        bundle = action.bundle
        try:
            self.slots.store_bundle(bundle.sha256, action.data)
            _release(action.data)
            try:
                model, memory = self._load_checked(bundle)
            except BaseException:
                self._discard(bundle.sha256)
                raise
            fault("after_store")
        except AgentError as exc:
            log.error("install of %s failed: %s", bundle.ref.label, exc.detail)
            self.queue.put(InstallDone(bundle.sha256, exc))
            return
        except Exception as exc:  # anything unexpected still must not take the old model down
            log.exception("install failed")
            self.queue.put(InstallDone(bundle.sha256, InstallFailed(f"{type(exc).__name__}: {exc}")))
            return
        self._loaded = {bundle.sha256: model}
        self.queue.put(InstallDone(bundle.sha256, memory=memory))

    def _load_checked(self, bundle: VerifiedBundle) -> tuple[LoadedModel, int | None]:
        """A new model loads and runs its health samples first in a child process under the
        engine's budget (:mod:`device_agent.probe`); only then is it loaded here. Returns the
        model and the memory its load and health check added in the child."""
        threads = self.config.engine.intra_op_threads
        if bundle.model_span is None:  # the model travelled in memory: nothing to hand a child
            model = self._load(bundle)
            model.health_check()
            return model, None
        engine = self.config.engine
        budget = Budget(engine.load_timeout_s, engine.load_memory_bytes, engine.load_cpu_s)
        with self.slots.member_file(bundle.sha256, bundle.model_span) as path:
            result = probe(bundle, str(path), threads, budget, step=fault)
            log.info(
                "%s passed its load and health check in %.2f s (%.1f MiB, %.3f ms per sample)",
                bundle.ref.label,
                result.seconds,
                result.rss_bytes / 2**20,
                result.latency_s * 1e3,
            )
            return LoadedModel(bundle, threads, model_path=path), result.rss_bytes

    def _load(self, bundle: VerifiedBundle) -> LoadedModel:
        """onnxruntime reads the model from a file the kernel copies out of the stored bundle:
        handed bytes, its Python binding would copy them twice more and keep them."""
        threads = self.config.engine.intra_op_threads
        if bundle.model_span is None:
            return LoadedModel(bundle, threads)
        with self.slots.member_file(bundle.sha256, bundle.model_span) as path:
            return LoadedModel(bundle, threads, model_path=path)

    def _discard(self, sha256: str) -> None:
        """A stored bundle that did not install: removed, unless it is the active or previous one."""
        keep = {r.sha256 for r in (self.core.active, self.core.previous) if r}
        if sha256 not in keep:
            self.slots.prune(keep)

    def _start_trial(self, action: StartTrial) -> None:
        model = self._loaded.pop(action.sha256, None)
        if model is None:
            self.queue.put(TrialDone(action.sha256, InstallFailed("the installed model is no longer loaded")))
            return
        try:
            self.engine.start_trial(model)
        except AgentError as exc:
            self.queue.put(TrialDone(action.sha256, exc))
            return
        self._note_bundle(model)
        fault("after_trial_start")
        log.info("%s is on trial", model.bundle.ref.label)

    def _commit(self, action: Commit) -> None:
        """The switch: one atomic write of state.json names the new bundle as active."""
        try:
            fault("before_commit")
            self.slots.save(action.state)
            fault("after_commit")
            self.engine.commit_trial()
            self.slots.prune({r.sha256 for r in (action.state.active, action.state.previous) if r})
        except AgentError as exc:
            self.queue.put(Committed(action.sha256, exc))
            return
        log.info("committed %s", action.state.active.label if action.state.active else action.sha256[:12])
        self.queue.put(Committed(action.sha256))

    # ── the outbox ──────────────────────────────────────────────────────────────────

    def _drain(self) -> None:
        """Publish queued durable messages in order, a bounded number in flight."""
        link = self.link
        if link is None or not self.connected:
            return
        room = self.config.outbox.batch - len(self._inflight)
        if room <= 0:
            return
        for row_id, topic, payload in self.outbox.peek(room, after=self._last_sent):
            mid = link.publish(topic, payload, 1, False)
            self._last_sent = row_id
            if mid is None:  # it can never be delivered here (too large): counted, not retried forever
                self.outbox.ack(row_id)
                continue
            self._inflight[mid] = row_id


class Agent:
    """One device: state dir, trust, core, worker, engine and an MQTT connection."""

    def __init__(self, config: AgentConfig) -> None:
        from .mqtt import MqttLink  # paho only where a real connection is made
        from .telemetry_sig import load_signer

        self.config = config
        slots = Slots(config.state_dir)
        persisted = slots.load()
        outbox = Outbox(Path(config.state_dir) / "outbox.sqlite", config.outbox.max_rows, config.outbox.history_rows)
        trust: Trust | None
        trust_error = ""
        try:
            trust = Trust.load(config.trust)
        except TrustError as exc:
            trust, trust_error = None, exc.detail
            log.error("%s; every bundle will be refused until the trust file is fixed", exc.detail)
        topics = Topics(config.mqtt.prefix)
        self.core = AgentCore(
            config.device_id,
            trust=trust,
            trust_error=trust_error,
            persisted=persisted,
            staged=slots.load_staging(),
            boot_id=uuid.uuid4().hex[:12],
            groups=config.groups,
            topics=topics,
            settings=config.core,
            limits=config.limits,
            profile=device_profile(config.device_class),
        )
        self.worker = Worker(config, self.core, slots, outbox, trust)
        self.core.answered = self.worker.samples.answered()
        self.engine = self.worker.engine
        # +1 per boot and per connection: a late Will from an older connection never wins.
        self.link = MqttLink(
            f"edgekit-{config.device_id}",
            config,
            post=self.worker.queue.put,
            will=lambda bdseq: (topics.state(config.device_id), self.core.will_payload(bdseq)),
            bdseq=persisted.bdseq + 1,
            sign=load_signer(config.telemetry_key) if config.telemetry_key else None,
        )

    def start(self) -> None:
        self.worker.start(self.link)
        self.link.connect()

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        self.worker.stop(timeout)
        self.link.close(max(0.05, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.worker.outbox.close()
