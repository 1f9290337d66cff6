"""What happens to an agent, as values: the inputs of :meth:`AgentCore.handle`.

The paho adapter, the worker (outcomes of the actions it executed) and the inference engine
(rows, trials, drift windows) each produce some of these; the core alone decides what they
mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import AgentError, RowError
from .protocol import BundleRef, Stats
from .trial import TrialReport


@dataclass(frozen=True)
class Started:
    """The agent process started; the persisted state is loaded."""


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
    stats: Stats = field(default_factory=Stats)


@dataclass(frozen=True)
class RowRejected:
    error: RowError


@dataclass(frozen=True)
class DriftReady:
    bundle: BundleRef
    report: Mapping[str, Any]


@dataclass(frozen=True)
class _Outcome:
    sha256: str
    error: AgentError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Restored(_Outcome):
    """The worker's answer to ``Restore``: the persisted active bundle serves again (or not)."""


@dataclass(frozen=True)
class InstallDone(_Outcome):
    """The worker's answer to ``Install``: model loaded, health checked, bundle stored;
    ``memory``: bytes its load and health check added (measured in the probe's child)."""

    memory: int | None = None


@dataclass(frozen=True)
class TrialDone(_Outcome):
    """The engine's verdict on the new model's first live rows (a failure the model caused),
    and what it counted for the core to compare with the model it replaces."""

    report: TrialReport | None = None


@dataclass(frozen=True)
class Committed(_Outcome):
    """The worker wrote the commit to disk (or could not)."""


@dataclass(frozen=True)
class ResendDone:
    """The worker's answer to ``Resend``: of the sequence numbers asked for, which went back
    into the outbox, which were still waiting there, and which are gone."""

    command: str
    boot_id: str
    requeued: tuple[tuple[int, int], ...] = ()
    queued: tuple[tuple[int, int], ...] = ()
    missing: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class SourceFailed:
    """An input source (stdin, a CSV replay) stopped with an error; it is being restarted."""

    source: str
    detail: str


@dataclass(frozen=True)
class Stopping:
    reason: str = "shutdown"


Event = (
    Started
    | Connected
    | Disconnected
    | Message
    | Tick
    | RowRejected
    | DriftReady
    | Restored
    | InstallDone
    | TrialDone
    | Committed
    | ResendDone
    | SourceFailed
    | Stopping
)
