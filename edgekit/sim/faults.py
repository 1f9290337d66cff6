"""Which simulated devices misbehave, and how: decided by the seed alone.

Each fault picks ``round(fraction × devices)`` devices: those whose hash of (seed, fault,
device id) ranks lowest. The choice is therefore exact (a test of 30 devices with 0.2 gets
6, not "about 6"), the same on every run with the same seed, and independent between
faults (a device can be slow and drifting). A fault can be limited to bundles (``only``,
``NAME@VERSION`` or ``NAME``): the device then misbehaves only while it installs or runs one
of them, which is how a bad release is simulated next to a good one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from device_agent.protocol import BundleRef

KINDS = ("install", "trial", "errors", "drift", "slow")


@dataclass(frozen=True)
class Faults:
    """Fractions of the fleet (0..1) per fault, and how strong each is."""

    install: float = 0.0  # the bundle's health check fails at install: failed, the old model keeps serving
    trial: float = 0.0  # the new model fails on a live row during its trial: reverted to the old one
    errors: float = 0.0  # a share of the device's rows are not finite: rejected and reported
    drift: float = 0.0  # the device's inputs are shifted: its drift windows say so
    slow: float = 0.0  # the device handles each message late and reports a higher latency
    error_rate: float = 0.2  # share of rows that are bad on an 'errors' device
    drift_sigma: float = 2.0  # shift of the first features, in reference standard deviations
    slow_s: float = 0.2  # delay before a slow device handles a message (installs take 10×)
    slow_latency: float = 5.0  # factor on a slow device's reported latency
    only: tuple[str, ...] = ()  # NAME or NAME@VERSION: faults apply only to these bundles
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in KINDS:
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the {kind} fraction is {value}; give a share of the fleet between 0 and 1")

    def applies(self, bundle: BundleRef | None) -> bool:
        """Whether faults bite for ``bundle`` (the one being installed or serving)."""
        if not self.only:
            return True
        if bundle is None:
            return False
        return bundle.name in self.only or f"{bundle.name}@{bundle.version}" in self.only


@dataclass(frozen=True)
class Assignment:
    """The faults one device has (a subset of :data:`KINDS`)."""

    kinds: frozenset[str] = field(default_factory=frozenset)

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds


def _rank(seed: int, kind: str, device: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{kind}\0{device}".encode()).digest()


def assign(faults: Faults, devices: Sequence[str]) -> dict[str, Assignment]:
    """Every device's faults: for each kind, the ``round(fraction × n)`` lowest-ranked devices."""
    chosen: dict[str, set[str]] = {d: set() for d in devices}
    for kind in KINDS:
        count = round(getattr(faults, kind) * len(devices))
        if count <= 0:
            continue
        for device in sorted(devices, key=lambda d: _rank(faults.seed, kind, d))[:count]:
            chosen[device].add(kind)
    return {d: Assignment(frozenset(k)) for d, k in chosen.items()}


def count(assignments: Iterable[Assignment]) -> dict[str, int]:
    """How many devices have each fault."""
    out = dict.fromkeys(KINDS, 0)
    for a in assignments:
        for kind in a.kinds:
            out[kind] += 1
    return out
