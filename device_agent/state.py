"""The small durable state a device keeps across restarts (``state.json``), as one value.

The core owns it: every change makes a new :class:`Persisted` and a ``SaveState`` (or
``Commit``) action carrying the whole of it, so the file on disk is always one snapshot the
core decided on, never a merge of fields written by different hands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .bundle import FloorEntry
from .protocol import BundleRef


@dataclass(frozen=True)
class Persisted:
    active: BundleRef | None = None  # the bundle that serves after a restart
    previous: BundleRef | None = None  # the one before it (kept on disk for a rollback)
    floor: Mapping[str, FloorEntry] = field(default_factory=dict)  # name -> highest accepted version
    desired_seq: Mapping[str, int] = field(default_factory=dict)  # target -> highest accepted sequence
    bdseq: int = 0  # birth/death sequence of the latest connection
    interrupted: Mapping[str, int] = field(default_factory=dict)  # sha -> installs or trials cut short by a restart
    memory: Mapping[str, int] = field(default_factory=dict)  # sha -> bytes its load and health check added
    signed_time: float = 0.0  # the newest issue time of an accepted signed document (Unix s)
