"""What a quantize run reports: what ships, next to the float model's figures, and every
strategy tried with its own figures and verdict, so a refused or useless strategy stays
visible instead of silently dropped. Figures are JSON-ready (no NaN or numpy scalars): reports
end up in JSON records and one-line CLI messages."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Candidate:
    """One strategy tried: what it produced, its figures, and the verdict."""

    strategy: str
    verdict: str  # "chosen" | "passed" | "no gain" | "refused" | "failed" | "not applicable"
    reason: str
    steps: list[str] = field(default_factory=list)
    size: int | None = None
    size_zlib: int | None = None  # informational: bundles are stored uncompressed
    latency_p50_us: float | None = None
    accuracy: float | None = None  # R² for regression
    mae: float | None = None  # regression only
    label_agreement: float | None = None
    label_changes: int | None = None
    max_abs_diff: float | None = None  # largest |Δ| of probabilities (or predictions) vs float
    quantized_nodes: int = 0
    data: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items() if k != "data"}


@dataclass
class QuantizeReport:
    """``*_after`` and ``quantized_nodes`` describe what ships: the chosen candidate if
    ``applied``, else the float model (then they repeat ``*_before``). ``model`` is the
    shipped bytes. ``candidates`` holds every strategy tried, with its own figures.
    For regression, ``accuracy_*`` hold R² (``metric`` says which)."""

    applied: bool
    method: str  # the chosen strategy, or "none"
    quantized_nodes: int
    size_before: int
    size_after: int
    accuracy_before: float
    accuracy_after: float
    label_agreement: float  # shipped model vs float model, on the same rows
    max_accuracy_loss: float
    reason: str
    model: bytes = field(repr=False)
    task: str = "classification"
    metric: str = "accuracy"  # or "r2"
    mae_before: float | None = None
    mae_after: float | None = None
    latency_p50_us_before: float | None = None
    latency_p50_us_after: float | None = None
    size_zlib_before: int | None = None
    size_zlib_after: int | None = None
    label_changes: int = 0
    max_label_changes: int | None = None  # as given
    label_change_limit: int | None = None  # as applied: 0 for tree ensembles unless given
    rows: int = 0
    calibration_rows: int = 0
    family: str = "other"
    strategies: list[str] | None = None  # as restricted by the caller; None = all that fit the family
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a regressor's figures under their own names (``r2_before``, ``r2``, no
        label fields), so a script never reads an R² as an accuracy."""
        d = {k: _json_number(v) for k, v in asdict(self).items() if k != "model"}
        if self.task == "regression":
            d = regression_names(d)
            d["candidates"] = [regression_names(c) for c in d["candidates"]]
        return d


# Fields that mean something else, or nothing, for a regressor: renamed, or left out (None).
_REGRESSION_NAMES: dict[str, str | None] = {
    "accuracy": "r2",
    "accuracy_before": "r2_before",
    "accuracy_after": "r2_after",
    "max_accuracy_loss": "max_r2_loss",
    "label_agreement": None,
    "label_changes": None,
    "max_label_changes": None,
    "label_change_limit": None,
}


def regression_names(d: dict[str, Any]) -> dict[str, Any]:
    """A quantization report or candidate of a regressor, with regression names."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = _REGRESSION_NAMES.get(key, key)
        if name is not None:
            out[name] = value
    return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_number(value.item())
    return value


def _describe(exc: Exception) -> str:
    """One line: reports and errors end up in one-line CLI messages and JSON records."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
