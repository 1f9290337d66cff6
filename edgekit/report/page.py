"""The fleet report as one self-contained HTML page: tables in HTML, charts drawn by plotly.

Why plotly: it writes a chart as a JSON figure plus its JavaScript library, which can be
inlined once in the page (``include_plotlyjs=False`` per chart, the library itself in one
``<script>``), so the file opens offline, from a mail attachment or a USB stick, and the
charts stay interactive (hover a window to read its score, zoom into a day). Nothing is
fetched: no CDN, no web fonts, no MathJax. The price is the library's ~4.8 MB, once.

Every chart sits in ``<div class="chart" data-chart=KIND>`` so a browser test can check
that each one was drawn (plotly adds its SVG only when the script runs).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from ..alerts.alert import iso
from .data import Histogram, ReportData, Series

THRESHOLD_COLOUR = "#c0392b"
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2430;
       background: #f6f7f9; }
header { background: #1d2430; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c8cfdb; }
main { padding: 8px 28px 40px; }
section { background: #fff; border-radius: 8px; padding: 14px 18px; margin: 16px 0; box-shadow: 0 1px 2px #0002; }
h2 { font-size: 17px; margin: 4px 0 10px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e5e8ee; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
.status-online { color: #1e8449; font-weight: 600; } .status-stale { color: #b9770e; font-weight: 600; }
.status-offline, .status-unknown { color: #922b21; font-weight: 600; }
.sev-critical { background: #fadbd8; } .sev-warning { background: #fdebd0; } .sev-info { background: #eaf2f8; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.critical { background: #c0392b; color: #fff; } .badge.warning { background: #e67e22; color: #fff; }
.badge.info { background: #5d8aa8; color: #fff; } .badge.ok { background: #27ae60; color: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.chart { min-height: 320px; }
.note { color: #5b6473; font-size: 13px; }
.empty { color: #5b6473; font-style: italic; }
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _time(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dt(values: list[float]) -> list[str]:
    return [datetime.fromtimestamp(t, UTC).isoformat() for t in values]


class Page:
    def __init__(self) -> None:
        import plotly.graph_objects as go

        self.go = go
        self.count = 0

    def chart(self, fig: Any, kind: str, **attrs: str) -> str:
        self.count += 1
        fig.update_layout(
            margin={"l": 55, "r": 20, "t": 48, "b": 45},
            template="plotly_white",
            font={"family": "system-ui, sans-serif", "size": 12},
            legend={"orientation": "h", "y": -0.2},
        )
        body = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            include_mathjax=False,
            div_id=f"chart-{self.count}",
            config={"displaylogo": False, "responsive": True},
        )
        extra = "".join(f' data-{k}="{html.escape(v)}"' for k, v in attrs.items())
        return f'<div class="chart" data-chart="{kind}"{extra}>{body}</div>'

    # ── charts ────────────────────────────────────────────────────────────────────

    def drift(self, s: Series) -> str:
        go = self.go
        fig = go.Figure()
        x = _dt(s.ts)
        for name, values in s.values.items():
            fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=name, connectgaps=False))
        fig.add_hline(y=1.0, line={"color": THRESHOLD_COLOUR, "dash": "dash"}, annotation_text="threshold (1.0)")
        fig.update_layout(
            title=f"{s.device}: drift score per window", yaxis_title="score (1 = decision boundary)", height=340
        )
        return self.chart(fig, "drift", device=s.device)

    def histogram(self, h: Histogram, kind: str) -> str:
        go = self.go
        fig = go.Figure()
        if h.reference is not None:
            fig.add_trace(go.Bar(x=h.labels, y=h.reference, name="reference (training)", marker_color="#95a5a6"))
        fig.add_trace(go.Bar(x=h.labels, y=h.live, name=f"live ({h.rows} rows)", marker_color="#2e86c1"))
        title = h.title
        if h.psi is not None and h.limit is not None:
            title += f"<br><sub>PSI {h.psi:.3f}, limit {h.limit:.3f} for {h.rows} rows</sub>"
        fig.update_layout(title=title, barmode="group", yaxis_title="share", height=330, yaxis_tickformat=".0%")
        attrs = {"device": h.device or "", "feature": h.feature or ""}
        return self.chart(fig, kind, **attrs)

    def lines(self, series: list[Series], key: str, title: str, unit: str, kind: str, dash: str | None = None) -> str:
        go = self.go
        fig = go.Figure()
        for s in series:
            fig.add_trace(go.Scatter(x=_dt(s.ts), y=s.values[key], mode="lines", name=s.device))
        if dash is not None:
            for s in series:
                fig.add_trace(
                    go.Scatter(
                        x=_dt(s.ts), y=s.values[dash], mode="lines", name=f"{s.device} ({dash.split('_')[0]})",
                        line={"dash": "dot"},
                    )
                )  # fmt: skip
        fig.update_layout(title=title, yaxis_title=unit, height=320)
        return self.chart(fig, kind)


def render(data: ReportData) -> str:
    from plotly.offline import get_plotlyjs

    page = Page()
    parts = [_header(data), _fleet_table(data), _alerts_table(data)]

    drift = [page.drift(s) for s in data.drift if s.values]
    parts.append(_section("Drift over time", "drift", _grid(drift) or _empty("no drift windows in this range"),
                          "Each point is one window's score for a feature: its largest test statistic over its limit, "
                          "so the dashed line at 1.0 is where the device calls drift."))  # fmt: skip
    hist = [page.histogram(h, "histogram") for h in data.histograms]
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    parts.append(_section("Reference vs live: drifting features", "histograms",
                          (_grid(hist) or _empty("no feature drifted in two windows or more")) + notes))  # fmt: skip
    outputs = [page.histogram(h, "prediction") for h in data.predictions]
    outputs += [page.histogram(h, "confidence") for h in data.confidences]
    parts.append(_section("Predictions and confidence", "outputs", _grid(outputs) or _empty("no windows")))
    serving = []
    if data.latency:
        serving.append(
            page.lines(data.latency, "p99_ms", "Latency per row: p99 (dotted: p50)", "ms", "latency", "p50_ms")
        )
    if data.resources:
        serving.append(page.lines(data.resources, "rss_mib", "Agent memory (RSS)", "MiB", "memory"))
        serving.append(page.lines(data.resources, "cpu_pct", "Agent CPU (% of one core)", "%", "cpu"))
        serving.append(page.lines(data.resources, "disk_free_gib", "Free disk under the state dir", "GiB", "disk"))
    parts.append(_section("Latency and resources", "serving", _grid(serving) or _empty("no heartbeats in this range")))
    parts.append(_deployments(data))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>edgekit fleet report · {_e(_time(data.generated))}</title>"
        f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head>"
        f"<body><header><h1>Fleet report</h1><p>{_e(_subtitle(data))}</p></header><main>"
        + "".join(parts)
        + "</main></body></html>\n"
    )


def _subtitle(data: ReportData) -> str:
    span = "everything stored" if data.since is None else f"since {_time(data.since)}"
    return f"generated {_time(data.generated)} · {span} · store: {data.store}"


def _header(data: ReportData) -> str:
    by: dict[str, int] = {}
    for d in data.devices:
        by[d["status"]] = by.get(d["status"], 0) + 1
    firing = [a for a in data.alerts if a.firing]
    cells = "".join(f"<td><b>{n}</b> {html.escape(k)}</td>" for k, n in sorted(by.items()))
    return (
        '<section id="summary"><h2>Summary</h2><table><tr>'
        f"<td><b>{len(data.devices)}</b> devices</td>{cells}"
        f'<td><b data-firing="{len(firing)}">{len(firing)}</b> alerts firing</td>'
        f"<td><b>{len(data.alerts) - len(firing)}</b> resolved in range</td></tr></table></section>"
    )


def _fleet_table(data: ReportData) -> str:
    rows = []
    for d in data.devices:
        active = d.get("active") or {}
        sev = d.get("alert_severity")
        badge = (
            f'<span class="badge {sev}">{d["alerts_firing"]} {sev}</span>'
            if sev
            else '<span class="badge ok">ok</span>'
        )
        failure = d.get("last_failure") or {}
        rows.append(
            f'<tr data-device="{_e(d["device"])}"><td>{_e(d["device"])}</td>'
            f'<td class="status-{_e(d["status"])}">{_e(d["status"])}</td>'
            f"<td>{_e(d.get('last_seen'))}</td>"
            f"<td>{_e(active.get('name'))} v{_e(active.get('version'))}</td><td>{_e(d.get('phase'))}</td>"
            f"<td>{_e(d['served'])}</td><td>{_e(d['errors'])}</td><td>{badge}</td>"
            f"<td>{_e(failure.get('code'))}</td></tr>"
        )
    head = "<tr><th>device</th><th>status</th><th>last seen</th><th>version</th><th>deployment</th>" \
        "<th>served</th><th>errors</th><th>alerts</th><th>last failure</th></tr>"  # fmt: skip
    body = f'<table id="fleet-table">{head}{"".join(rows)}</table>' if rows else _empty("no devices in the store")
    return _section("Fleet", "fleet", body)


def _alerts_table(data: ReportData) -> str:
    rows = []
    for a in data.alerts:
        subject = a.device or (f"group {a.group}" if a.group else "-")
        rows.append(
            f'<tr class="sev-{a.severity}" data-alert="{_e(a.key)}" data-state="{a.state}">'
            f'<td><span class="badge {a.severity}">{a.severity}</span></td><td>{a.state}</td><td>{_e(a.rule)}</td>'
            f"<td>{_e(subject)}</td><td>{_e(a.feature)}</td><td>{_e(iso(a.started))}</td>"
            f"<td>{_e(iso(a.resolved))}</td><td>{_e(a.summary)}</td></tr>"
        )
    head = "<tr><th>severity</th><th>state</th><th>rule</th><th>subject</th><th>feature</th><th>started</th>" \
        "<th>resolved</th><th>summary</th></tr>"  # fmt: skip
    body = f'<table id="alerts-table">{head}{"".join(rows)}</table>' if rows else _empty("no alerts in this range")
    return _section("Open and recent alerts", "alerts", body)


def _deployments(data: ReportData) -> str:
    rows = [
        f"<tr><td>{_e(d['at'])}</td><td>{_e(d['how'])}</td><td>{_e(d['what'])}</td><td>{_e(d['where'])}</td>"
        f"<td>{_e(d['who'])}</td></tr>"
        for d in data.deployments
    ]
    head = "<tr><th>when</th><th>what happened</th><th>bundle</th><th>where</th><th>by</th></tr>"
    body = f'<table id="deployments-table">{head}{"".join(rows)}</table>' if rows else _empty("no deployments recorded")
    return _section("Deployment history", "deployments", body)


def _section(title: str, ident: str, body: str, note: str | None = None) -> str:
    lead = f'<p class="note">{_e(note)}</p>' if note else ""
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{lead}{body}</section>'


def _grid(charts: list[str]) -> str:
    return f'<div class="grid">{"".join(charts)}</div>' if charts else ""


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'
