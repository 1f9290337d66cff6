"""What the agent process uses of its device: memory, CPU, and the disk under the state dir.

Read on the worker's tick from the standard library only (``/proc/self/statm`` where there
is one, ``os.times``, ``shutil.disk_usage``): a few microseconds, no extra dependency. The
heartbeat carries the result so the host can warn before the state dir's disk is full.
"""

from __future__ import annotations

import collections
import os
import resource
import shutil
import time

from .protocol import Resources

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory now (Linux); elsewhere the peak, which is what the OS offers."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


class ResourceMeter:
    """CPU share over a sliding window (about one heartbeat interval) and the rest as they are."""

    def __init__(self, state_dir: str, window_s: float) -> None:
        self.state_dir = state_dir
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    def read(self) -> Resources | None:
        now = time.monotonic()
        times = os.times()
        cpu = times.user + times.system
        self._samples.append((now, cpu))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        start, cpu0 = self._samples[0]
        pct = 100.0 * (cpu - cpu0) / (now - start) if now > start else 0.0
        try:
            disk = shutil.disk_usage(self.state_dir)
        except OSError:
            return None
        return Resources(
            rss_bytes=rss_bytes(),
            cpu_s=round(cpu, 3),
            cpu_pct=round(pct, 1),
            disk_free_bytes=int(disk.free),
            disk_total_bytes=int(disk.total),
        )
