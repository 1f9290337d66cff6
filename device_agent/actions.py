"""What the core asks for, as values: the outputs of :meth:`AgentCore.handle`.

The worker executes them in order (:mod:`device_agent.worker`); tests read them directly.
Each one is I/O the core may not do itself: the network, the disk, the inference engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle import VerifiedBundle
from .protocol import BundleRef
from .state import Persisted


@dataclass(frozen=True)
class Publish:
    """Fire now if connected; state that is superseded by newer state (birth, reported, hb)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Send:
    """Must reach the host: goes through the durable outbox, in order, with an id. The boot
    and sequence number let the outbox find it again when the host asks for a resend."""

    topic: str
    payload: bytes
    boot_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Resend:
    """Put the delivered messages of boot ``boot_id`` with these sequence numbers back in the
    outbox, from its history; answer with ``ResendDone`` (what was requeued, queued, gone)."""

    command: str
    boot_id: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SendSamples:
    """Answer the verified samples request ``request``: the captured rows (at or after
    ``since``, the newest ``max_rows``), in size-bounded parts on the device's samples topic;
    remember the request as answered."""

    request: str
    since: float | None = None
    max_rows: int | None = None


@dataclass(frozen=True)
class Subscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Unsubscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True)
class SaveState:
    """Write this snapshot as ``state.json``, atomically."""

    state: Persisted


@dataclass(frozen=True)
class Restore:
    """Serve the persisted active bundle again after a restart; answer with ``Restored``."""

    bundle: BundleRef


@dataclass(frozen=True)
class Install:
    """Load the verified bundle, run its health samples and store it; answer ``InstallDone``.
    Nothing serves it yet."""

    bundle: VerifiedBundle
    data: bytes | bytearray = field(repr=False)  # the verified bundle, handed over (not copied)


@dataclass(frozen=True)
class StartTrial:
    """Let the installed bundle serve live rows on trial, the previous model kept in memory;
    the engine answers with ``TrialDone``."""

    sha256: str


@dataclass(frozen=True)
class Commit:
    """The trial passed: write ``state`` (naming the new bundle as active) atomically, keep
    the new model serving, and delete bundles the state no longer names; answer ``Committed``."""

    state: Persisted
    sha256: str


@dataclass(frozen=True)
class Revert:
    """Serve the model that was active before the trial of ``sha256`` again."""

    sha256: str


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
class SaveTrust:
    """Replace the trust file on disk with these bytes (already verified), atomically."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class DropStaging:
    sha256: str


Action = (
    Publish
    | Send
    | Resend
    | SendSamples
    | Subscribe
    | Unsubscribe
    | SaveState
    | Restore
    | Install
    | StartTrial
    | Commit
    | Revert
    | StageTransfer
    | StageChunk
    | DropStaging
    | SaveTrust
)
