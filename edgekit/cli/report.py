"""``edgekit report``: the fleet report, one offline HTML page."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .history import open_telemetry, parse_since
from .output import emit, json_option


@click.command("report")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=Path("fleet.html"),
              show_default=True, help="The HTML file to write.")  # fmt: skip
@click.option("--since", default="24h", show_default=True, help="From this long ago (2h, 7d), an ISO time, or 'all'.")
@click.option("--store", default=None, help="Telemetry store URL (default: as edgekit serve uses).")
@json_option
def report_cmd(output: Path, since: str, store: str | None, as_json: bool) -> None:
    """Write the fleet report: status, alerts, drift over time, reference vs live histograms,
    predictions and confidence, latency and resources, deployments — one self-contained HTML
    file that opens offline (needs the report extra: pip install 'edgekit[report]').

    Example: edgekit report -o fleet.html --since 7d
    """
    from ..report import write
    from ..telemetry.postgres import _safe

    s, ws = open_telemetry(store)
    try:
        result = write(s, ws, output, parse_since(since, time.time()), store_label=f"{s.backend} {_safe(s.url)}")
    finally:
        s.close()
    emit(
        result,
        as_json,
        lambda d: (
            f"wrote {d['path']} ({d['bytes'] / 1e6:.1f} MB, {d['charts']} charts, {d['devices']} devices, "
            f"{d['alerts_firing']} alerts firing)"
        ),
        kind="report",
    )


COMMANDS = [report_cmd]
