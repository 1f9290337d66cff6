"""``--on-alert CMD``: run a command per alert change, the alert as JSON on its stdin.

The collector's writer thread only queues (it must never wait for a command); one thread
of this module runs the commands one at a time, each with a timeout. A failing, hanging or
missing command is logged and counted (``edgekit_alert_commands_total{outcome}``), never
retried and never allowed to hold up ingestion. Past ``command_queue`` waiting changes, the
oldest are dropped (and counted): a command slower than the alerts is a problem to see, not
a backlog to grow without bound.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import threading

from .alert import Alert

log = logging.getLogger("edgekit.alerts")
OUTCOMES = ("ok", "failed", "timeout", "dropped")


class CommandRunner:
    def __init__(self, command: str, timeout_s: float = 10.0, queue: int = 1000) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._queue: collections.deque[Alert] = collections.deque()
        self._limit = queue
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="edgekit-on-alert", daemon=True)
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        with self._lock:
            if len(self._queue) >= self._limit:
                self._queue.popleft()
                self.counts["dropped"] += 1
                log.warning("--on-alert is behind: dropped the oldest waiting alert")
            self._queue.append(alert)
            self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """For tests and a clean stop: True once every queued alert has been handed to the command."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self.wait_idle(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                alert = self._queue.popleft() if self._queue else None
                if alert is None:
                    self._idle.set()
                    self._wake.clear()
            if alert is None:
                self._wake.wait(1.0)
                continue
            self._count(self._execute(alert))

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    def _execute(self, alert: Alert) -> str:
        try:
            proc = subprocess.run(
                self.command,
                shell=True,  # the operator's own command line, as written in edgekit.toml or --on-alert
                input=alert.encode(),
                capture_output=True,
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            log.warning("--on-alert command timed out after %.0f s on %s", self.timeout_s, alert.key)
            return "timeout"
        except OSError as exc:
            log.warning("--on-alert command could not start: %s", exc)
            return "failed"
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("--on-alert command exited %d on %s: %s", proc.returncode, alert.key, tail[0][:200])
            return "failed"
        return "ok"
