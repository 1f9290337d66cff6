"""``edgekit report``: the fleet on one self-contained, offline HTML page (see :mod:`.page`)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..telemetry import TelemetryStore
from ..workspace import Workspace


def write(
    store: TelemetryStore, ws: Workspace | None, out: Path, since: float | None, store_label: str = ""
) -> dict[str, Any]:
    """Collect, render and write the report atomically; what was written, for ``--json``."""
    from .data import collect
    from .page import render

    started = time.perf_counter()
    data = collect(store, ws, since, store_label=store_label)
    text = render(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    charts = (
        len([s for s in data.drift if s.values])
        + len(data.histograms)
        + len(data.predictions)
        + len(data.confidences)
        + (1 if data.latency else 0)
        + (3 if data.resources else 0)
    )
    return {
        "path": str(out.resolve()),
        "bytes": out.stat().st_size,
        "devices": len(data.devices),
        "alerts_firing": sum(1 for a in data.alerts if a.firing),
        "alerts": len(data.alerts),
        "charts": charts,
        "seconds": round(time.perf_counter() - started, 3),
    }
