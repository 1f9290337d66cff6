"""The deployment phases and the one table of the changes between them.

:data:`TRANSITIONS` is the only source of truth: the core refuses any change it does not
list (:class:`~device_agent.errors.IllegalTransition`), and the diagrams in ``core.py``'s
docstring and in ``docs/architecture.md`` are rendered from it by :func:`diagram`
(``tests/unit/test_phases.py`` fails when they disagree). Every edge here is taken by at
least one test of the core; an edge no code path takes does not belong in the table.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import IllegalTransition


class Phase(StrEnum):
    IDLE = "idle"  # no bundle has ever been active, none is wanted
    DOWNLOADING = "downloading"  # pulling the desired bundle's chunks
    VERIFYING = "verifying"  # checking the assembled bundle (signature, hashes, version)
    INSTALLING = "installing"  # loading the model and running its health samples
    TRIAL = "trial"  # the new model serves live rows; the old one waits in memory
    ACTIVE = "active"  # the desired bundle (or the last good one) serves; nothing to do
    FAILED = "failed"  # the last deployment failed; the previous model keeps serving


# What each phase may change into, and why (the reason is printed in the diagrams).
EDGES: tuple[tuple[Phase, Phase, str], ...] = (
    (Phase.IDLE, Phase.DOWNLOADING, "desired state"),
    (Phase.IDLE, Phase.FAILED, "refused before download"),
    (Phase.DOWNLOADING, Phase.VERIFYING, "all chunks in"),
    (Phase.DOWNLOADING, Phase.ACTIVE, "desired is the active bundle again"),
    (Phase.DOWNLOADING, Phase.FAILED, "bad transfer, timeout"),
    (Phase.VERIFYING, Phase.INSTALLING, "verified"),
    (Phase.VERIFYING, Phase.FAILED, "refused"),
    (Phase.INSTALLING, Phase.TRIAL, "model loaded, health samples pass"),
    (Phase.INSTALLING, Phase.FAILED, "load or health check failed"),
    (Phase.TRIAL, Phase.ACTIVE, "trial passed, committed"),
    (Phase.TRIAL, Phase.FAILED, "trial failed, or commit could not be written"),
    (Phase.ACTIVE, Phase.DOWNLOADING, "desired state"),
    (Phase.ACTIVE, Phase.FAILED, "refused before download"),
    (Phase.FAILED, Phase.DOWNLOADING, "newer desired state, or a retry"),
    (Phase.FAILED, Phase.ACTIVE, "desired is the active bundle again"),
)

TRANSITIONS: dict[Phase, frozenset[Phase]] = {phase: frozenset(b for a, b, _ in EDGES if a == phase) for phase in Phase}

# A new desired state waits while one of these finishes (the newest is pursued afterwards).
BUSY = frozenset({Phase.VERIFYING, Phase.INSTALLING, Phase.TRIAL})


def check_transition(current: Phase, new: Phase) -> None:
    """Raise :class:`IllegalTransition` for a change the table does not list (staying in a
    phase is not a change: a newer desired state while downloading stays downloading)."""
    if new != current and new not in TRANSITIONS[current]:
        raise IllegalTransition(f"illegal phase change {current} -> {new}")


def diagram() -> str:
    """The table as text: one line per phase, its successors and why."""
    width = max(len(p) for p in Phase)
    lines = []
    for phase in Phase:
        targets = [(b, why) for a, b, why in EDGES if a == phase]
        first = True
        for target, why in targets:
            head = f"{phase:<{width}}" if first else " " * width
            lines.append(f"{head}  ──► {target:<{width}}  {why}")
            first = False
    return "\n".join(lines)


def mermaid() -> str:
    """The table as a Mermaid state diagram, for the architecture notes."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.IDLE}", f"    [*] --> {Phase.ACTIVE}: restart with a bundle"]
    lines += [f"    {a} --> {b}: {why}" for a, b, why in EDGES]
    return "\n".join(lines)
