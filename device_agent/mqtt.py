"""The paho adapter: callbacks become core events, core actions become MQTT operations.

It does no thinking. paho's network thread only enqueues events (never blocks in a
callback); one worker thread owns the core, the outbox and the slots, and executes
actions in order. Durable messages (events, drift windows) go to the outbox first and
leave it only when the broker has acknowledged them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .bundle import VerifiedBundle, verify
from .config import AgentConfig
from .core import (
    Action,
    AgentCore,
    Commit,
    Committed,
    Connected,
    Disconnected,
    DropStaging,
    Event,
    Install,
    InstallDone,
    Message,
    Persist,
    Persisted,
    Publish,
    Revert,
    Send,
    StageChunk,
    StageTransfer,
    Stopping,
    Subscribe,
    Tick,
    Unsubscribe,
)
from .engine import InferenceEngine
from .errors import AgentError, TrustError
from .outbox import Outbox
from .protocol import Topics
from .runtime import LoadedModel
from .slots import Slots
from .trust import Trust

log = logging.getLogger("edgekit.agent")

_CRASH_AT = os.environ.get("EDGEKIT_AGENT_CRASH_AT", "")


def _log_event(payload: bytes) -> None:
    """Failures go to the host, and to the local log too: an operator on the device sees why."""
    try:
        event = json.loads(payload)
    except ValueError:
        return
    code = str(event.get("code", ""))
    level = logging.INFO if code in ("bundle.activated", "bundle.trial") else logging.WARNING
    log.log(level, "%s: %s", code, event.get("detail", ""))


def _fault(point: str) -> None:
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


class _Acked:
    """paho confirmed a QoS 1 publish (internal to the adapter, not a core event)."""

    def __init__(self, mid: int) -> None:
        self.mid = mid


class _Stop:
    pass


class Agent:
    """One device: state dir, trust, core, engine and an MQTT connection."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.events: queue.Queue[Event | _Acked | _Stop] = queue.Queue()
        self.slots = Slots(config.state_dir)
        self.persisted = self.slots.load()
        self.persisted.bdseq += 1
        self._bdseq = self.persisted.bdseq  # +1 per boot and per connection: a late Will never wins
        self.slots.save(self.persisted)
        self.outbox = Outbox(Path(config.state_dir) / "outbox.sqlite", config.outbox_max_rows)
        trust: Trust | None
        trust_error = ""
        try:
            trust = Trust.load(config.trust_path)
        except TrustError as exc:
            trust, trust_error = None, exc.detail
            log.error("%s; every bundle will be refused until the trust file is fixed", exc.detail)
        self.trust = trust
        self.engine = InferenceEngine(
            self.events.put,
            window_rows=config.drift_window_rows,
            min_rows=config.drift_min_rows,
            flush_s=config.drift_flush_s,
        )
        self.core = AgentCore(
            config.device_id,
            trust=trust,
            trust_error=trust_error,
            persisted=self.persisted,
            boot_id=uuid.uuid4().hex[:12],
            groups=config.groups,
            topics=Topics(config.prefix),
            heartbeat_interval=config.heartbeat_interval_s,
            chunk_window=config.chunk_window,
            transfer_timeout=config.transfer_timeout_s,
            max_payload=config.max_payload_bytes,
            max_chunk=config.max_chunk_bytes,
            reported_min_interval=config.reported_min_interval_s,
            limits=config.limits,
        )
        self._restore_active()
        self.client = self._make_client()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self.outbox_errors = 0
        self.oversized = 0  # messages dropped because they exceed the broker's packet limit
        self._max_packet: int | None = None
        self._recent: list[paho.MQTTMessageInfo] = []  # last publishes, awaited at shutdown
        self._last_sent = 0
        self._connected = False
        self._worker = threading.Thread(target=self._run, name="edgekit-agent-worker", daemon=True)
        self._stopped = threading.Event()

    # ── start-up ────────────────────────────────────────────────────────────────────

    def _restore_active(self) -> None:
        """Serve the bundle that was active before the restart, re-verified from disk."""
        active = self.core.active
        if active is None:
            return
        try:
            if self.trust is None:
                raise TrustError(self.core.trust_error)
            sha = str(active["sha256"])
            bundle = verify(
                self.slots.read_bundle(sha),
                self.trust,
                now=time.time(),
                floor=self.core.floor,
                expect_sha256=sha,
                limits=self.config.limits,
                keep_model=False,
            )
            model = self._load(bundle)
            model.health_check()
            self.engine.activate(model)
            log.info("serving %s v%s from the state dir", bundle.name, bundle.version)
        except AgentError as exc:
            log.error("cannot restore the active bundle: %s", exc.detail)
            self.core.last_error = {"ts": time.time(), "code": exc.code, "detail": exc.detail, "sha256": None}

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgekit-{self.config.device_id}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._state_topic = Topics(self.config.prefix).state(self.config.device_id)
        client.will_set(self._state_topic, self.core.will_payload(self._bdseq), 1, True)
        # paho backs off exponentially but without jitter: a random first delay spreads a fleet
        # that lost its broker at the same moment over the reconnect window.
        client.reconnect_delay_set(min_delay=1 + int(random.random() * 3), max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_connect_fail = lambda *_: log.warning(
            "cannot reach the broker at %s:%d; retrying", self.config.broker_host, self.config.broker_port
        )
        return client

    def start(self) -> None:
        self._worker.start()
        # Announce our Maximum Packet Size: the broker then never sends us a message larger
        # than we accept, instead of our reading 100 MB only to refuse it.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = max(self.config.max_payload_bytes, self.config.max_chunk_bytes) + 64 * 1024
        self.client.connect_async(
            self.config.broker_host,
            self.config.broker_port,
            keepalive=self.config.keepalive_s,
            clean_start=True,
            properties=props,
        )
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Report the last partial drift window, say goodbye, drain what can be drained."""
        self.engine.close()
        self.events.put(Tick(self._stats()))
        self.events.put(Stopping())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._connected and (len(self.outbox) or not self.events.empty()):
            time.sleep(0.05)
        self.events.put(_Stop())
        self._worker.join(timeout=max(0.1, deadline - time.monotonic()))
        trial = self.engine.trial_sha()
        if trial is not None and not self._worker.is_alive():
            # A clean stop during a trial is not a crash: do not count it against the bundle.
            left = self.persisted.interrupted.get(trial, 1) - 1
            if left > 0:
                self.persisted.interrupted[trial] = left
            else:
                self.persisted.interrupted.pop(trial, None)
            with contextlib.suppress(AgentError):
                self.slots.save(self.persisted)
        for info in list(self._recent):
            with contextlib.suppress(Exception):
                info.wait_for_publish(max(0.05, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()
        self.outbox.close()

    # ── paho callbacks (network thread): enqueue only ───────────────────────────────

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        with contextlib.suppress(OSError, AttributeError):
            sock = client.socket()
            if isinstance(sock, socket.socket):  # Nagle delays every subscribe round trip by ~40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self.events.put(Connected(max_packet_size=max_packet, bdseq=self._bdseq))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        # The next connection gets a higher birth/death sequence; its Will must carry it.
        self._bdseq += 1
        with contextlib.suppress(Exception):
            client.will_set(self._state_topic, self.core.will_payload(self._bdseq), 1, True)
        self.events.put(Disconnected(str(reason)))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.events.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.events.put(_Acked(mid))

    # ── the worker ──────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            now_m = time.monotonic()
            try:
                item = self.events.get(timeout=max(0.0, next_tick - now_m))
            except queue.Empty:
                item = None
            if isinstance(item, _Stop):
                return
            try:
                if isinstance(item, _Acked):
                    row = self._inflight.pop(item.mid, None)
                    if row is not None:
                        self.outbox.ack(row)
                elif item is not None:
                    self._handle(item)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.config.tick_interval_s
                    self.engine.tick()
                    self._handle(Tick(self._stats()))
                self._drain()
            except Exception:  # the worker must survive anything one message can do
                log.exception("agent worker error")

    def _stats(self) -> dict[str, Any]:
        stats = self.engine.stats()
        stats["outbox"] = {
            "queued": len(self.outbox),
            "dropped": self.outbox.dropped,
            "errors": self.outbox_errors,
            "oversized": self.oversized,
        }
        return stats

    def _handle(self, event: Event) -> None:
        if isinstance(event, Connected):
            self._connected = True
            self._max_packet = event.max_packet_size
            self._inflight.clear()
            self._last_sent = 0
            self._save()  # persist this connection's bdseq
        elif isinstance(event, Disconnected):
            self._connected = False
        for action in self.core.handle(event, time.time()):
            self._execute(action)

    def _execute(self, action: Action) -> None:
        if isinstance(action, Send):
            if action.topic.endswith("/events"):
                _log_event(action.payload)
            try:
                self.outbox.put(action.topic, action.payload)
            except sqlite3.Error as exc:  # a full or broken disk: deliver now, best effort
                self.outbox_errors += 1
                log.error("outbox unavailable (%s); publishing without durability", exc)
                if self._fits(action.topic, action.payload):
                    self.client.publish(action.topic, action.payload, qos=1)
        elif isinstance(action, Publish):
            if not self._fits(action.topic, action.payload):
                return
            info = self.client.publish(action.topic, action.payload, qos=action.qos, retain=action.retain)
            self._recent.append(info)
            del self._recent[:-16]
        elif isinstance(action, Subscribe):
            if action.topics:
                self.client.subscribe([(t, 1) for t in action.topics])
        elif isinstance(action, Unsubscribe):
            if action.topics:
                self.client.unsubscribe(list(action.topics))
        elif isinstance(action, Persist):
            self.persisted.desired_seq = dict(action.desired_seq)
            self._save()
        elif isinstance(action, Install):
            self._install(action)
        elif isinstance(action, Commit):
            self._commit(action)
        elif isinstance(action, Revert):
            self._revert(action)
        elif isinstance(action, StageTransfer):
            self._stage(lambda: self.slots.stage_transfer(action.sha256, action.envelope, action.size))
        elif isinstance(action, StageChunk):
            self._stage(lambda: self.slots.stage_chunk(action.sha256, action.offset, action.data))
        elif isinstance(action, DropStaging):
            self.slots.drop_staging(action.sha256)

    def _stage(self, write: Callable[[], None]) -> None:
        """Staging is an optimisation (resume after restart): a full disk only costs that."""
        try:
            write()
        except AgentError as exc:
            log.warning("staging skipped: %s", exc.detail)

    def _save(self) -> None:
        self.persisted.active = self.core.active
        self.persisted.previous = self.core.previous
        self.persisted.floor = dict(self.core.floor)
        self.persisted.desired_seq = dict(self.core.desired_seq)
        self.persisted.bdseq = self._bdseq
        self.slots.save(self.persisted)

    def _install(self, action: Install) -> None:
        """Load, health-check and store the bundle, then let it serve on trial. Nothing on
        disk names it as active until the trial has passed (see ``_commit``).

        The outcome is queued, not handled in place: handled here, it would publish a newer
        'reported' document before the older one already planned in the current action list.
        """
        bundle = action.bundle
        try:
            # Stored first, so the model loads from the stored file and the received bytes can
            # go before onnxruntime builds its graph (a failed install removes the file again).
            self.slots.store_bundle(bundle.sha256, action.data)
            _release(action.data)
            try:
                model = self._load(bundle)
                model.health_check()
            except BaseException:
                self._discard(bundle.sha256)
                raise
            _fault("after_store")
            # Mark the trial on disk: if the process dies before the commit, the next start
            # serves the old model and counts this bundle's interrupted trials.
            self.persisted.interrupted[bundle.sha256] = self.persisted.interrupted.get(bundle.sha256, 0) + 1
            self._save()
            self.engine.start_trial(model, self.config.trial_rows, self.config.trial_max_s)
            _fault("after_trial_start")
        except AgentError as exc:
            log.error("install of %s v%s failed: %s", bundle.name, bundle.version, exc.detail)
            self.events.put(InstallDone(bundle.sha256, False, exc.code, exc.detail))
            return
        except Exception as exc:  # anything unexpected still must not take the old model down
            log.exception("install failed")
            self.events.put(InstallDone(bundle.sha256, False, "install.failed", str(exc)))
            return
        log.info("%s v%s is on trial", bundle.name, bundle.version)
        self.events.put(InstallDone(bundle.sha256, True))

    def _load(self, bundle: VerifiedBundle) -> LoadedModel:
        if bundle.model_span is None:
            return LoadedModel(bundle, self.config.intra_op_threads)
        with self.slots.member_file(bundle.sha256, bundle.model_span) as path:
            return LoadedModel(bundle, self.config.intra_op_threads, model_path=path)

    def _discard(self, sha256: str) -> None:
        """A stored bundle that did not install: removed, unless it is the active or previous one."""
        keep = {str(r["sha256"]) for r in (self.core.active, self.core.previous) if r}
        if sha256 not in keep:
            self.slots.prune(keep | {s for s in (self.engine.trial_sha(),) if s})

    def _commit(self, action: Commit) -> None:
        """The switch: one atomic write of state.json names the new bundle as active."""
        sha = str(action.active["sha256"])
        try:
            _fault("before_commit")
            saved = Persisted(
                active=dict(action.active),
                previous=dict(action.previous) if action.previous else None,
                floor=dict(action.floor),
                desired_seq=dict(self.core.desired_seq),
                bdseq=self.persisted.bdseq,
                interrupted={k: v for k, v in self.persisted.interrupted.items() if k != sha},
            )
            self.slots.save(saved)
            self.persisted = saved
            _fault("after_commit")
            self.engine.commit_trial()
            self.slots.prune({str(r["sha256"]) for r in (saved.active, saved.previous) if r})
        except AgentError as exc:
            self.events.put(Committed(sha, False, exc.code, exc.detail))
            return
        log.info("committed %s v%s", action.active.get("name"), action.active.get("version"))
        self.events.put(Committed(sha, True))

    def _revert(self, action: Revert) -> None:
        self.engine.revert(action.sha256)
        if self.persisted.interrupted.pop(action.sha256, None) is not None:
            self._save()

    def _fits(self, topic: str, payload: bytes) -> bool:
        """paho ignores the broker's Maximum Packet Size, and an oversized QoS 1 publish makes
        it reconnect in a loop: such a message is dropped here and counted instead."""
        limit = self._max_packet
        if limit is None or len(payload) + len(topic) + 64 <= limit:
            return True
        self.oversized += 1
        log.error(
            "dropped a %d-byte message on %s: above the broker's %d-byte packet limit", len(payload), topic, limit
        )
        return False

    def _drain(self) -> None:
        """Publish queued durable messages in order, a bounded number in flight."""
        if not self._connected:
            return
        room = self.config.outbox_batch - len(self._inflight)
        if room <= 0:
            return
        for row_id, topic, payload in self.outbox.peek(room, after=self._last_sent):
            if not self._fits(topic, payload):
                self.outbox.ack(row_id)  # it can never be delivered here: counted, not retried forever
                self._last_sent = row_id
                continue
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                break
            self._inflight[info.mid] = row_id
            self._last_sent = row_id
