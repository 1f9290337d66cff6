"""Every limit and interval of the agent, with its unit, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle import Limits
from .protocol import DEFAULT_PREFIX


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    state_dir: str
    trust_path: str
    groups: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    keepalive_s: int = 30
    heartbeat_interval_s: float = 5.0
    tick_interval_s: float = 0.5
    drift_window_rows: int | None = None  # rows per drift window; None = the bundle's policy
    drift_flush_s: float = 60.0  # a partial window is reported after this long
    drift_min_rows: int = 30  # below this a window's verdict is "insufficient"
    chunk_window: int = 8  # chunk topics subscribed at once while pulling
    transfer_timeout_s: float = 120.0  # abandon a transfer that makes no progress for this long
    max_payload_bytes: int = 1 << 20  # bytes; larger control messages are refused unread
    max_chunk_bytes: int = 4 << 20  # bytes
    outbox_max_rows: int = 100_000  # oldest telemetry is dropped (and counted) beyond this
    outbox_batch: int = 100  # messages published per drain step
    reported_min_interval_s: float = 1.0  # rate limit for the retained 'reported' summary
    trial_rows: int = 50  # live rows a new model must serve without failure before it is committed
    trial_max_s: float = 10.0  # without that many rows, a trial with no failure passes after this long
    intra_op_threads: int = 1
    limits: Limits = field(default_factory=Limits)
