"""The fleet report in a real browser: Debian's chromium, headless, driven through playwright
(which brings no browser of its own). The page must open from a file with nothing fetched,
show the key parts, and every chart must have been drawn by its script (plotly adds its SVG
only when it runs: present in the source is not enough)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from edgekit import workspace
from edgekit.report import write
from edgekit.telemetry import open_store
from tests.conftest import HostSetup
from tests.support.fleetstory import populate

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.timeout(120)
def test_the_report_opens_offline_and_every_chart_draws(host: HostSetup, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/ensure-chromium.sh installs it (make test runs it)")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "ws"
    shutil.copytree(host.root, root)
    ws = workspace.load(root)
    store = open_store(f"sqlite:///{tmp_path / 'telemetry.db'}")
    try:
        populate(store, ws, host.bundles[1], host.rows, time.time())
        out = tmp_path / "fleet.html"
        result = write(store, ws, out, since=None)
    finally:
        store.close()
    source = out.read_text()
    assert result["bytes"] == out.stat().st_size and result["alerts_firing"] >= 3
    assert "cdn." not in source.split("<script>", 1)[0]  # no stylesheet or script from elsewhere

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            charts = page.locator("div.chart")
            n = charts.count()
            assert n == result["charts"] >= 10
            page.wait_for_function(
                f"document.querySelectorAll('div.chart .js-plotly-plot .main-svg').length >= {n}", timeout=30_000
            )
            # Every chart drew its data: traces in its plot area, not an empty frame.
            for i in range(n):
                chart = charts.nth(i)
                kind = chart.get_attribute("data-chart")
                drawn = chart.locator(".scatterlayer .trace, .barlayer .trace").count()
                assert drawn >= 1, f"chart {i} ({kind}) drew no trace"
            kinds = [charts.nth(i).get_attribute("data-chart") for i in range(n)]
            for kind in ("drift", "histogram", "prediction", "confidence", "latency", "memory", "cpu", "disk"):
                assert kind in kinds, kind
            drift_2 = page.locator('div.chart[data-chart="drift"][data-device="edge-2"]')
            assert drift_2.locator(".shapelayer path").count() >= 1  # the threshold line
            hist = page.locator('div.chart[data-chart="histogram"][data-feature="alcohol"]')
            assert hist.locator(".barlayer .trace").count() == 2  # reference and live
            # The key elements: the fleet table with each device's status, and the alerts.
            rows = page.locator("#fleet-table tr[data-device]")
            assert rows.count() == 3
            assert page.locator('#fleet-table tr[data-device="edge-3"] .status-offline').count() == 1
            firing = page.locator('#alerts-table tr[data-state="firing"]')
            keys = {firing.nth(i).get_attribute("data-alert") for i in range(firing.count())}
            assert {"drift:edge-2:alcohol", "offline:edge-3", "disk:edge-1"} <= keys
            assert page.locator("#deployments-table tr").count() >= 4  # header + the registry's and activations
            page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "fleet.png").stat().st_size > 50_000
    assert errors == [], errors
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
