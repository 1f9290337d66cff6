"""The capture policy a bundle ships (``policy.capture`` of its manifest).

Which rows a device keeps for labelling (:mod:`device_agent.capture`): those below a
confidence threshold, plus a small uniform sample. The threshold defaults to the 5th
percentile of the training data's out-of-fold confidence, so about one row in twenty of data
like the training data is captured, and far more of data the model has not seen the like of;
a number given by the user is taken as it is. Capture is off unless turned on (``edgekit
bundle --capture`` or ``[policy] capture = true``): rows may be sensitive.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError
from ..workspace import Workspace

DEFAULT_BELOW = "p5"
DEFAULT_UNIFORM = 0.01
_PERCENTILE = re.compile(r"^p(\d{1,2}|100)$")


def capture_section(
    ws: Workspace,
    record: dict[str, Any] | None,
    enabled: bool | None = None,
    below: str | None = None,
) -> dict[str, Any] | None:
    """The manifest's ``policy.capture``, or None when no threshold can be set (a regressor
    gets the uniform sample only). ``enabled``/``below`` override edgekit.toml's
    ``[policy] capture`` / ``capture_below`` ("p5": a percentile of the out-of-fold
    confidence; "0.7": that confidence)."""
    on = bool(ws.setting("policy", "capture", False)) if enabled is None else enabled
    spec = str(ws.setting("policy", "capture_below", DEFAULT_BELOW) if below is None else below).strip().lower()
    uniform = float(ws.setting("policy", "capture_uniform", DEFAULT_UNIFORM))
    if not 0.0 <= uniform <= 1.0:
        raise UsageError(f"[policy] capture_uniform is {uniform}", "give a fraction between 0 and 1, e.g. 0.01")
    task = (record or {}).get("task", "classification")
    section: dict[str, Any] = {"enabled": on, "uniform": uniform}
    if task != "classification":
        return {**section, "below": None, "basis": "regression: uniform sample only"}
    match = _PERCENTILE.match(spec)
    if match:
        percentiles = ((record or {}).get("confidence") or {}).get("oof_percentiles")
        if not percentiles:
            if not on:
                return None
            raise UsageError(
                f"capture below the out-of-fold {spec} needs the run's out-of-fold confidence, which it did not keep",
                "train the run again, or give a confidence: --capture-below 0.7",
            )
        return {**section, "below": float(percentiles[int(match.group(1))]), "basis": f"out-of-fold {spec}"}
    try:
        value = float(spec)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"capture threshold {spec!r} is neither pN nor a confidence", "e.g. --capture-below p5 or 0.7")
    return {**section, "below": value, "basis": "user"}
