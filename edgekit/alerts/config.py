"""Every alert rule's settings, their defaults and why: ``[alerts]`` in ``edgekit.toml``.

Each rule is a section of its own (``[alerts.drift]``, ``[alerts.disk]``, …) with an
``enabled`` switch; anything left out keeps its default. A wrong key or value is refused
with one line naming it, before the collector starts. docs/alerts.md explains each rule and
its evidence; the table of settings there is generated from the metadata below
(``python scripts/gen_docs.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkspaceError
from .alert import SEVERITIES


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None, unit: str = "") -> Any:
    return field(default=default, metadata={"help": help, "min": lo, "max": hi, "unit": unit})


@dataclass(frozen=True)
class DriftRule:
    """A feature's drift persisting over k of the last m windows of the active bundle."""

    enabled: bool = _f(True, "raise drift alerts")
    k: int = _f(3, "windows, of the last m, in which the feature must be flagged", 1)
    m: int = _f(5, "windows looked at (the device's windows of its active bundle)", 1, 1000)
    resolve_after: int = _f(3, "consecutive clean windows that resolve a firing alert", 1)
    alpha: float = _f(0.0, "family-wise false-alarm rate per window; 0 = the bundle's own (its reference)", 0, 0.5)
    top: int = _f(3, "features of highest permutation importance whose drift is critical", 0)
    min_importance: float = _f(0.01, "importance share below which the model is taken to ignore a feature", 0, 1)


@dataclass(frozen=True)
class PredictionDriftRule:
    """The model's output distribution moving, k of the last m windows."""

    enabled: bool = _f(True, "raise prediction-drift alerts")
    k: int = _f(3, "windows, of the last m, whose prediction mix drifted", 1)
    m: int = _f(5, "windows looked at", 1, 1000)
    resolve_after: int = _f(3, "consecutive clean windows that resolve a firing alert", 1)


@dataclass(frozen=True)
class SkewRule:
    """Training-serving skew: the first windows after activation, merged, against the reference."""

    enabled: bool = _f(True, "raise skew alerts")
    windows: int = _f(3, "first windows of a bundle on a device that are merged and judged", 1, 100)


@dataclass(frozen=True)
class FleetDriftRule:
    """A share of a group's devices flagging the same feature."""

    enabled: bool = _f(True, "raise fleet-drift alerts")
    share: float = _f(0.5, "share of the group's reporting devices that must flag the feature", 0, 1)
    min_devices: int = _f(2, "and at least this many devices", 1)
    windows: int = _f(2, "a device flags a feature when any of its last this-many windows does", 1, 100)


@dataclass(frozen=True)
class ErrorRateRule:
    """Rows refused (bad input, inference errors) over rows received, per device."""

    enabled: bool = _f(True, "raise error-rate alerts")
    window_s: float = _f(300.0, "period the rate is measured over (heartbeat counters)", 1, unit="s")
    rate: float = _f(0.05, "refused share of rows that fires", 0, 1)
    min_errors: int = _f(5, "and at least this many refused rows in the period", 1)


@dataclass(frozen=True)
class OfflineRule:
    """A device offline (its Will or goodbye) or stale (no heartbeat for three intervals)."""

    enabled: bool = _f(True, "raise offline/stale alerts")
    after_s: float = _f(60.0, "offline or stale for at least this long", 0, unit="s")
    forget_after_s: float = _f(7 * 86400.0, "devices not seen for longer are no longer alerted on", 1, unit="s")


@dataclass(frozen=True)
class LatencyRule:
    """p99 latency of the active bundle against the previous bundle's on the same device."""

    enabled: bool = _f(True, "raise latency alerts")
    ratio: float = _f(1.5, "current p99 over previous p99 that fires", 1)
    min_increase_ms: float = _f(1.0, "and the p99 grew by at least this much", 0, unit="ms")
    window_s: float = _f(600.0, "heartbeats of the active bundle looked at (median of their p99)", 1, unit="s")
    min_heartbeats: int = _f(3, "heartbeats needed on each side", 1)


@dataclass(frozen=True)
class LowConfidenceRule:
    """More low-confidence predictions than the reference's out-of-fold predictions had."""

    enabled: bool = _f(True, "raise low-confidence alerts")
    windows: int = _f(5, "last windows merged", 1, 1000)
    alpha: float = _f(0.01, "significance of the excess over the reference's rate", 0, 0.5)
    margin: float = _f(0.05, "and the rate exceeds the reference's by at least this much", 0, 1)
    rate: float = _f(0.25, "rate that fires when the registry does not know the bundle", 0, 1)


@dataclass(frozen=True)
class DiskRule:
    """Free disk under the agent's state dir: low now, or full soon at the current rate."""

    enabled: bool = _f(True, "raise disk alerts")
    min_free_pct: float = _f(10.0, "free share of the file system below which it fires", 0, 100, "%")
    full_within_h: float = _f(24.0, "fires when the trend fills the disk within this", 0, unit="h")
    trend_window_s: float = _f(3600.0, "heartbeats the trend is fitted to", 60, unit="s")
    min_span_s: float = _f(600.0, "the fitted heartbeats must span at least this long", 1, unit="s")


@dataclass(frozen=True)
class MemoryRule:
    """The agent's resident memory, median over a period."""

    enabled: bool = _f(True, "raise memory alerts")
    max_mib: float = _f(1024.0, "median RSS above this fires", 1, unit="MiB")
    window_s: float = _f(300.0, "period of the median", 1, unit="s")
    min_heartbeats: int = _f(3, "heartbeats needed in the period", 1)


@dataclass(frozen=True)
class CpuRule:
    """The agent's CPU use (share of one core), median over a period."""

    enabled: bool = _f(True, "raise CPU alerts")
    max_pct: float = _f(90.0, "median CPU above this fires", 0, unit="%")
    window_s: float = _f(300.0, "period of the median", 1, unit="s")
    min_heartbeats: int = _f(3, "heartbeats needed in the period", 1)


RULE_TYPES: dict[str, type] = {
    "drift": DriftRule,
    "prediction_drift": PredictionDriftRule,
    "skew": SkewRule,
    "fleet_drift": FleetDriftRule,
    "error_rate": ErrorRateRule,
    "offline": OfflineRule,
    "latency": LatencyRule,
    "low_confidence": LowConfidenceRule,
    "disk": DiskRule,
    "memory": MemoryRule,
    "cpu": CpuRule,
}


@dataclass(frozen=True)
class AlertConfig:
    """``[alerts]``: how often rules run, who is told, and each rule's section."""

    enabled: bool = _f(True, "evaluate alert rules in edgekit serve")
    interval_s: float = _f(2.0, "how often the rules run over what arrived", 0.1, unit="s")
    on_alert: str = _f("", "shell command run per alert change, the alert as JSON on stdin (or --on-alert)")
    notify: str = _f("warning", "least severity that runs the command: info, warning or critical")
    command_timeout_s: float = _f(10.0, "the command is killed after this long", 0.1, unit="s")
    command_queue: int = _f(1000, "alert changes waiting for the command; older ones are dropped past it", 1)
    retain_resolved_s: float = _f(86400.0, "resolved alerts stay retained on the alerts topic this long", 0, unit="s")
    drift: DriftRule = field(default_factory=DriftRule)
    prediction_drift: PredictionDriftRule = field(default_factory=PredictionDriftRule)
    skew: SkewRule = field(default_factory=SkewRule)
    fleet_drift: FleetDriftRule = field(default_factory=FleetDriftRule)
    error_rate: ErrorRateRule = field(default_factory=ErrorRateRule)
    offline: OfflineRule = field(default_factory=OfflineRule)
    latency: LatencyRule = field(default_factory=LatencyRule)
    low_confidence: LowConfidenceRule = field(default_factory=LowConfidenceRule)
    disk: DiskRule = field(default_factory=DiskRule)
    memory: MemoryRule = field(default_factory=MemoryRule)
    cpu: CpuRule = field(default_factory=CpuRule)

    def rule(self, name: str) -> Any:
        return getattr(self, name)

    def enabled_rules(self) -> list[str]:
        return [r for r in RULE_TYPES if self.enabled and self.rule(r).enabled]

    @classmethod
    def from_toml(cls, section: Any) -> AlertConfig:
        """``[alerts]`` of edgekit.toml (a table; missing = every default)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise WorkspaceError("[alerts] in edgekit.toml must be a table", "see docs/alerts.md")
        top = {k: v for k, v in section.items() if k not in RULE_TYPES}
        values = _parse(cls, top, "alerts", skip=set(RULE_TYPES))
        if values.get("notify", "warning") not in SEVERITIES:
            raise WorkspaceError(
                f"[alerts] notify in edgekit.toml must be one of {', '.join(SEVERITIES)}, got {values['notify']!r}"
            )
        for name, rule_type in RULE_TYPES.items():
            sub = section.get(name)
            if sub is None:
                continue
            if not isinstance(sub, Mapping):
                raise WorkspaceError(f"[alerts.{name}] in edgekit.toml must be a table", "see docs/alerts.md")
            values[name] = rule_type(**_parse(rule_type, sub, f"alerts.{name}"))
        config = cls(**values)
        for name in ("drift", "prediction_drift"):
            r = config.rule(name)
            if r.k > r.m:
                raise WorkspaceError(f"[alerts.{name}] k ({r.k}) must not exceed m ({r.m}) in edgekit.toml")
        return config


def _parse(cls: type, raw: Mapping[str, Any], where: str, skip: set[str] | None = None) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in (skip or set())}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        f = fields.get(key)
        if f is None:
            known = ", ".join(sorted(fields) + sorted(skip or ()))
            raise WorkspaceError(f"[{where}] in edgekit.toml has no setting {key!r}", f"known: {known}")
        default = f.default
        what = f"[{where}] {key} in edgekit.toml"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise WorkspaceError(f"{what} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise WorkspaceError(f"{what} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise WorkspaceError(f"{what} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise WorkspaceError(f"{what} must be a string, got {value!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise WorkspaceError(f"{what} must be {bounds}, got {value!r}")
        out[key] = value
    return out


def settings_table() -> str:
    """The Markdown table of every setting (docs/alerts.md, generated)."""
    lines = ["| section | setting | default | unit | what |", "|---|---|---|---|---|"]

    def rows(cls: type, section: str) -> None:
        for f in dataclasses.fields(cls):
            if f.name in RULE_TYPES:
                continue
            default = f.default
            shown = "`true`" if default is True else "`false`" if default is False else f"`{default!r}`"
            if isinstance(default, str):
                shown = f'`"{default}"`'
            lines.append(
                f"| `[{section}]` | `{f.name}` | {shown} | {f.metadata.get('unit', '')} | {f.metadata['help']} |"
            )

    rows(AlertConfig, "alerts")
    for name, rule_type in RULE_TYPES.items():
        rows(rule_type, f"alerts.{name}")
    return "\n".join(lines)
