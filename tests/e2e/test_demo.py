"""The README's demo, run as a user runs it, and its story asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.broker
@pytest.mark.timeout(480)
def test_demo_story(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--json", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    fleet = {d["device"]: d for d in summary["fleet"]}

    # Conversion was checked and quantization was real (an MLP shrinks).
    assert summary["parity"]["ok"] and summary["parity"]["max_abs_dp"] < 1e-4
    assert (
        summary["quantization"]["applied"]
        and summary["quantization"]["size_after"] < summary["quantization"]["size_before"]
    )
    # The bundle is active on both devices, which served every row.
    for name in ("edge-1", "edge-2"):
        assert fleet[name]["active"]["name"] == "cancer" and fleet[name]["active"]["version"] == 1
        assert fleet[name]["status"] == "online"
        assert fleet[name]["served"] >= 600
    # Drift is flagged on the shifted device only, on the shifted feature.
    assert fleet["edge-2"]["drift"]["verdict"] == "drift"
    assert "mean radius" in fleet["edge-2"]["drift"]["drifted"]
    assert fleet["edge-1"]["drift"]["verdict"] == "ok"
    # The tampered bundle: refused by the host, then by the device, which kept serving v1.
    assert summary["host_refused_tampered"]
    assert fleet["edge-1"]["last_error"]["code"] == "bundle.hash_mismatch"
    assert fleet["edge-1"]["phase"] == "failed"
    assert summary["served_after_tamper"]["bundle"] == "cancer@1"
    assert fleet["edge-2"]["errors"] == 0
    # The collector raised a persisting-drift alert on the shifted feature of edge-2, none on edge-1's features.
    alerts = {a["key"]: a for a in summary["alerts"]}
    drift = alerts["drift:edge-2:mean radius"]
    assert drift["state"] == "firing" and drift["evidence"]["hits"] >= drift["evidence"]["k"]
    assert not [k for k in alerts if k.startswith("drift:edge-1:")]
    # And wrote the report.
    assert summary["report"]["bytes"] > 1_000_000 and Path(summary["report"]["path"]).name == "fleet.html"
