"""Which devices get the new version, and when: phases and deterministic cohorts.

A rollout widens through phases (``1%,10%,50%,100%``): each is the share of the group that
runs the new version once the phase is deployed. The order in which a group's devices come
is fixed by a hash of the rollout id and the device id, so it is random across devices (a
cohort is a fair sample of the group, which is what lets the gates compare it with the
devices left on the previous version) and the same every time it is computed: a restarted
controller, or a resumed rollout, picks exactly the devices it picked before. A device that
joins the group mid-rollout takes its place in the same order without moving anyone else.

A phase deploys to at least one device more than the phase before (``1%`` of 20 devices is
one device, not zero). A device offline when its turn comes is skipped — recorded and
reported, never waited for — and the next device in the order takes its place, so each
phase still gives the gates the evidence of its share of the group. Skipped devices get the
new version at the end, with the group's own desired state, when they come back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import UsageError

MAX_PHASES = 20


def parse_phases(text: str) -> tuple[float, ...]:
    """``"1%,10%,50%,100%"`` → ``(0.01, 0.1, 0.5, 1.0)``: rising shares, the last 100 %."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    hint = "e.g. --phases 1%,10%,50%,100%"
    if not parts:
        raise UsageError("--phases names no phase", hint)
    if len(parts) > MAX_PHASES:
        raise UsageError(f"--phases names {len(parts)} phases; at most {MAX_PHASES}", hint)
    shares: list[float] = []
    for p in parts:
        number = p[:-1] if p.endswith("%") else None
        try:
            value = float(number) / 100.0 if number is not None else float("nan")
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise UsageError(f"phase {p!r} is not a share of the group between 0% and 100%", hint)
        if shares and value <= shares[-1]:
            raise UsageError(f"phase {p!r} does not widen the phase before it ({shares[-1]:.0%})", hint)
        shares.append(value)
    if shares[-1] != 1.0:
        raise UsageError("the last phase must be 100%", hint)
    return tuple(shares)


def format_phases(shares: Iterable[float]) -> str:
    return ",".join(f"{s * 100:g}%" for s in shares)


def order_key(rollout_id: str, device: str) -> str:
    """The device's place in the rollout's order (hex SHA-256: compared as a string)."""
    return hashlib.sha256(f"{rollout_id}\x00{device}".encode()).hexdigest()


def ordered(rollout_id: str, devices: Iterable[str]) -> list[str]:
    return sorted(set(devices), key=lambda d: (order_key(rollout_id, d), d))


def phase_size(share: float, members: int, before: int) -> int:
    """Devices that run the new version once a phase of ``share`` is deployed: the share of
    the group, rounded up, and at least one more than ``before`` (while devices remain)."""
    if members <= 0:
        return 0
    return min(members, max(math.ceil(share * members - 1e-9), before + 1))


@dataclass(frozen=True)
class Cohort:
    """What one phase adds: devices to deploy to now, and devices skipped (offline at their turn)."""

    phase: int
    size: int  # devices meant to run the new version once this phase is deployed (targeted + new)
    devices: tuple[str, ...]
    skipped: tuple[str, ...]


def next_cohort(
    rollout_id: str,
    phase: int,
    shares: tuple[float, ...],
    members: Iterable[str],
    targeted: Mapping[str, int] | Iterable[str],
    skipped: Mapping[str, int] | Iterable[str],
    online: Callable[[str], bool],
) -> Cohort:
    """The devices phase ``phase`` adds to those already targeted, in the rollout's order,
    skipping (and naming) devices that are offline at their turn. Devices already targeted
    or skipped are never chosen again, so a phase computed twice adds nothing twice."""
    group = ordered(rollout_id, members)
    done = set(targeted)
    passed = set(skipped)
    have = len(done & set(group))
    size = 0
    for share in shares[: phase + 1]:  # each phase at least one more than the phase before
        size = phase_size(share, len(group), size)
    chosen: list[str] = []
    skip: list[str] = []
    for device in group:
        if have + len(chosen) >= size:
            break
        if device in done or device in passed:
            continue
        if online(device):
            chosen.append(device)
        else:
            skip.append(device)
    return Cohort(phase, size, tuple(chosen), tuple(skip))
