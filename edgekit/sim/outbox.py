"""The simulated device's outbox: the agent's durable queue, in memory.

Same contract as :class:`device_agent.outbox.Outbox` as far as the host can tell: in order,
a bounded number in flight, what was in flight when the connection dropped goes again, a
history of delivered messages answers resend commands. What it leaves out is the disk: a
simulated device does not survive a restart of the simulator, so there is nothing to keep.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from device_agent.protocol import to_ranges

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Row:
    topic: str
    payload: bytes
    boot_id: str | None
    seq: int | None


class MemoryOutbox:
    def __init__(self, max_rows: int = 10_000, history_rows: int = 50, batch: int = 100) -> None:
        self.pending: deque[Row] = deque()
        self.inflight: dict[int, Row] = {}  # paho message id -> row
        self.history: deque[Row] = deque(maxlen=history_rows)
        self.max_rows = max_rows
        self.batch = batch
        self.dropped = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self.pending) + len(self.inflight)

    def put(self, row: Row) -> None:
        self.pending.append(row)
        while len(self.pending) > self.max_rows:  # the oldest telemetry goes first, counted
            self.pending.popleft()
            self.dropped += 1

    def drain(self, publish: Callable[[str, bytes], int | None]) -> None:
        """Publish queued rows in order while fewer than ``batch`` are in flight."""
        while self.pending and len(self.inflight) < self.batch:
            row = self.pending.popleft()
            mid = publish(row.topic, row.payload)
            if mid is None:  # can never go (above the broker's packet limit): counted, not retried
                self.dropped += 1
                continue
            self.inflight[mid] = row

    def ack(self, mid: int) -> None:
        row = self.inflight.pop(mid, None)
        if row is not None:
            self.sent += 1
            if row.seq is not None:
                self.history.append(row)

    def reconnected(self) -> None:
        """What was in flight goes again, first and in order (the host is idempotent)."""
        if self.inflight:
            self.pending.extendleft(reversed([self.inflight[m] for m in sorted(self.inflight)]))
            self.inflight.clear()

    def requeue(self, boot_id: str, ranges: Iterable[tuple[int, int]]) -> tuple[Ranges, Ranges, Ranges]:
        """Delivered messages of ``boot_id`` with these numbers back at the end of the queue:
        (requeued, still queued, missing), as :meth:`device_agent.outbox.Outbox.requeue`."""
        asked = {s for first, last in ranges for s in range(first, last + 1)}
        waiting = {
            r.seq for r in (*self.pending, *self.inflight.values()) if r.boot_id == boot_id and r.seq is not None
        }
        queued = asked & waiting
        requeued: set[int] = set()
        for row in list(self.history):
            if row.boot_id == boot_id and row.seq in asked and row.seq not in waiting and row.seq not in requeued:
                requeued.add(row.seq)
                self.put(row)
        return to_ranges(requeued), to_ranges(queued), to_ranges(asked - requeued - queued)
