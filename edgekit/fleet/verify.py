"""Which telemetry the host believes: signed by the enrolled device, or marked.

Once a workspace has enrolled devices (``edgekit devices add``), a document on an enrolled
device's topic counts only if that device's telemetry key signed it
(:mod:`device_agent.telemetry_sig`); anything else — unsigned, forged, signed by another
device, from a revoked device — is set aside and named, never shown as the device's state
and never counted as a deployment's success. A device the registry does not know is shown
but marked ``unenrolled``, and counts for nothing either. A workspace with no enrolled
device is an open fleet (the local try-out): everything is read as before, marked ``open``.

The registry is read again when its file changes, so a long-running collector learns of
devices enrolled after it started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent import telemetry_sig

if TYPE_CHECKING:
    from ..workspace import Workspace

OPEN, VERIFIED, UNVERIFIED, UNENROLLED = "open", "verified", "unverified", "unenrolled"


@dataclass
class TelemetryCheck:
    """Device id → telemetry key; ``secured`` once any device is enrolled."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    secured: bool = False
    revoked: frozenset[str] = frozenset()
    path: Path | None = None  # the registry file, re-read when it changes
    _mtime: float = 0.0

    @classmethod
    def from_workspace(cls, ws: Workspace | None) -> TelemetryCheck:
        """The check of a workspace (an open fleet without one)."""
        if ws is None:
            return cls()
        from .. import devices

        check = cls(path=devices.pki_dir(ws) / "devices.json")
        check.refresh()
        return check

    def refresh(self) -> None:
        if self.path is None:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return
        if mtime == self._mtime:
            return
        from .. import devices

        registry = devices.read_registry(self.path)
        self.keys = {d.device: d.telemetry_key() for d in registry.active()}
        self.revoked = frozenset(d.device for d in registry.devices.values() if d.revoked) - set(self.keys)
        self.secured = bool(registry.devices)
        self._mtime = mtime

    def verdict(self, device: str, topic: str, payload: bytes) -> str:
        """``open``, ``verified``, ``unenrolled``, or ``unverified: <why>``."""
        if not self.secured:
            return OPEN
        key = self.keys.get(device)
        if key is None:
            return f"{UNVERIFIED}: revoked" if device in self.revoked else UNENROLLED
        why = telemetry_sig.verify(key, topic, payload)
        return VERIFIED if why == telemetry_sig.VERIFIED else f"{UNVERIFIED}: {why}"

    @staticmethod
    def believed(verdict: str) -> bool:
        """May this document stand for the device (its state, its deployment's outcome)?"""
        return verdict in (OPEN, VERIFIED, UNENROLLED)

    @staticmethod
    def counts(verdict: str) -> bool:
        """May this document make a deployment succeed?"""
        return verdict in (OPEN, VERIFIED)
