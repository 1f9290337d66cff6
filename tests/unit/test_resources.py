"""The heartbeat's resource figures are the process's and the state dir's own."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from device_agent.resources import ResourceMeter, rss_bytes


def test_rss_is_this_process_resident_memory() -> None:
    before = rss_bytes()
    block = bytearray(64 << 20)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert rss_bytes() - before >= 48 << 20
    del block


def test_cpu_share_and_disk_of_the_state_dir(tmp_path: Path) -> None:
    meter = ResourceMeter(str(tmp_path), window_s=0.2)
    first = meter.read()
    assert first is not None and first.cpu_pct == 0.0
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of this process's CPU, however loaded the machine is
        pass
    busy = meter.read()
    assert busy is not None and busy.cpu_s - first.cpu_s >= 0.25 and busy.cpu_pct > 0.0
    disk = shutil.disk_usage(tmp_path)
    assert busy.disk_total_bytes == disk.total
    assert abs(busy.disk_free_bytes - disk.free) < 64 << 20
    time.sleep(0.3)
    idle = meter.read()
    assert idle is not None and idle.cpu_pct < busy.cpu_pct  # the window slides


def test_a_missing_state_dir_gives_no_figures(tmp_path: Path) -> None:
    assert ResourceMeter(os.fspath(tmp_path / "gone"), 1.0).read() is None
