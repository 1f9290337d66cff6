"""The rollout gates' settings, their defaults and why: ``[rollout]`` in ``edgekit.toml``.

Each gate is a section (``[rollout.failures]``, ``[rollout.drift]``, …) with an ``enabled``
switch; anything left out keeps its default. ``rollout start`` reads them once and stores
them with the rollout, so a decision is always judged by the settings it started with, also
by a ``serve`` on another machine or after the file changed. Parsing and the one-line
refusals are the alert settings' own (:mod:`edgekit.alerts.config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..alerts.config import _f, _parse
from ..errors import WorkspaceError


@dataclass(frozen=True)
class FailuresGate:
    """Deployment failures, trial reverts and devices that did not finish in time (AWS IoT
    Jobs' abort criteria: failed, rejected, timed out), as a share of the devices deployed to."""

    enabled: bool = _f(True, "abort on failed deployments and trial reverts")
    max_share: float = _f(0.05, "share of the devices deployed to that may fail before the rollout aborts", 0, 1)
    min_failures: int = _f(1, "and at least this many devices failed", 1)
    install_timeout_s: float = _f(600.0, "a device not active on the new version by then counts as failed", 1, unit="s")


@dataclass(frozen=True)
class ErrorRateGate:
    """Rows refused by the new version's devices against the previous version's, same period."""

    enabled: bool = _f(True, "abort when the new version refuses more rows")
    ratio: float = _f(2.0, "new over previous refused share that fails", 1)
    margin: float = _f(0.02, "and the new share exceeds the previous by at least this much", 0, 1)
    min_errors: int = _f(5, "and the new version refused at least this many rows", 1)
    rate: float = _f(0.05, "refused share that fails when no device runs the previous version", 0, 1)


@dataclass(frozen=True)
class LatencyGate:
    """p99 latency of the new version's devices against the previous version's, same period."""

    enabled: bool = _f(True, "abort when the new version is slower")
    ratio: float = _f(1.5, "median p99 of the new over the previous that fails", 1)
    min_increase_ms: float = _f(1.0, "and the p99 grew by at least this much", 0, unit="ms")
    min_heartbeats: int = _f(3, "heartbeats needed on each side", 1)


@dataclass(frozen=True)
class DriftGate:
    """Input drift seen by the new version's devices (against its own reference) that the
    previous version's devices do not see (against theirs): the new model was trained on
    data unlike the field's, where drift both sides see is the field changing."""

    enabled: bool = _f(True, "abort on drift only the new version's devices see")
    alpha: float = _f(0.01, "family-wise false-alarm rate of the merged windows", 0.000001, 0.5)
    min_rows: int = _f(200, "rows needed in the new version's merged windows", 1)
    min_importance: float = _f(0.01, "importance share below which a drifting feature is ignored", 0, 1)
    old_quiet: float = _f(0.5, "a feature counts as quiet on the previous version below this score (1 = boundary)", 0)


@dataclass(frozen=True)
class PredictionShiftGate:
    """The new version's prediction mix against the previous version's, same period and
    (cohorts being random) the same inputs: a two-sample test of the class counts."""

    enabled: bool = _f(True, "abort when the new version predicts another mix of classes")
    alpha: float = _f(0.001, "false-alarm rate of the two-sample test", 0.000001, 0.5)
    min_psi: float = _f(0.1, "and the PSI between the two mixes is at least this", 0)
    min_rows: int = _f(200, "rows needed on each side", 1)


@dataclass(frozen=True)
class LowConfidenceGate:
    """The new version's low-confidence rate against the previous version's, same period."""

    enabled: bool = _f(True, "abort when the new version is unsure more often")
    alpha: float = _f(0.001, "significance of the excess (one-sided exact test)", 0.000001, 0.5)
    margin: float = _f(0.05, "and the new rate exceeds the previous by at least this much", 0, 1)
    min_rows: int = _f(200, "rows needed on each side", 1)


GATE_TYPES: dict[str, type] = {
    "failures": FailuresGate,
    "error_rate": ErrorRateGate,
    "latency": LatencyGate,
    "drift": DriftGate,
    "prediction_shift": PredictionShiftGate,
    "low_confidence": LowConfidenceGate,
}


@dataclass(frozen=True)
class RolloutConfig:
    """``[rollout]``: the default phases and bake time, and each gate's section."""

    phases: str = _f("1%,10%,50%,100%", "default --phases")
    bake_s: float = _f(600.0, "default --bake: how long each phase runs before the gates may widen it", 0, unit="s")
    interval_s: float = _f(2.0, "how often serve's controller looks at running rollouts", 0.1, unit="s")
    failures: FailuresGate = field(default_factory=FailuresGate)
    error_rate: ErrorRateGate = field(default_factory=ErrorRateGate)
    latency: LatencyGate = field(default_factory=LatencyGate)
    drift: DriftGate = field(default_factory=DriftGate)
    prediction_shift: PredictionShiftGate = field(default_factory=PredictionShiftGate)
    low_confidence: LowConfidenceGate = field(default_factory=LowConfidenceGate)

    def gate(self, name: str) -> Any:
        return getattr(self, name)

    @classmethod
    def from_toml(cls, section: Any) -> RolloutConfig:
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise WorkspaceError("[rollout] in edgekit.toml must be a table", "see docs/rollouts.md")
        values = _parse(cls, {k: v for k, v in section.items() if k not in GATE_TYPES}, "rollout", skip=set(GATE_TYPES))
        for name, gate_type in GATE_TYPES.items():
            sub = section.get(name)
            if sub is None:
                continue
            if not isinstance(sub, Mapping):
                raise WorkspaceError(f"[rollout.{name}] in edgekit.toml must be a table", "see docs/rollouts.md")
            values[name] = gate_type(**_parse(gate_type, sub, f"rollout.{name}"))
        return cls(**values)

    def gates_json(self) -> dict[str, dict[str, Any]]:
        """Every gate's settings, as stored with a rollout."""
        return {name: dataclasses.asdict(self.gate(name)) for name in GATE_TYPES}

    @classmethod
    def from_gates_json(cls, doc: Mapping[str, Any]) -> RolloutConfig:
        """The gates a stored rollout started with (unknown keys of a newer edgekit ignored)."""
        values: dict[str, Any] = {}
        for name, gate_type in GATE_TYPES.items():
            raw = doc.get(name)
            if isinstance(raw, Mapping):
                known = {f.name for f in dataclasses.fields(gate_type)}
                values[name] = gate_type(**{k: v for k, v in raw.items() if k in known})
        return cls(**values)


def settings_table() -> str:
    """The Markdown table of every setting (docs/rollouts.md)."""
    lines = ["| section | setting | default | unit | what |", "|---|---|---|---|---|"]

    def rows(cls: type, section: str) -> None:
        for f in dataclasses.fields(cls):
            if f.name in GATE_TYPES:
                continue
            d = f.default
            shown = (
                "`true`" if d is True else "`false`" if d is False else f'`"{d}"`' if isinstance(d, str) else f"`{d!r}`"
            )
            lines.append(
                f"| `[{section}]` | `{f.name}` | {shown} | {f.metadata.get('unit', '')} | {f.metadata['help']} |"
            )

    rows(RolloutConfig, "rollout")
    for name, gate_type in GATE_TYPES.items():
        rows(gate_type, f"rollout.{name}")
    return "\n".join(lines)
