"""A real ``edgekit-agent`` process: rows go in on stdin, predictions come out on stdout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AgentProcess:
    def __init__(
        self,
        device: str,
        broker_url: str,
        state_dir: Path,
        trust: Path,
        groups: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        """``wrap`` turns the command into another that runs it (under limits, say)."""
        args = [
            python,
            "-m",
            "device_agent.cli",
            "--device-id",
            device,
            *(["--broker", broker_url] if broker_url else []),  # '': the broker of --config's file
            "--state-dir",
            str(state_dir),
            "--trust",
            str(trust),
            "--heartbeat",
            "0.5",
            "--trial-seconds",
            "1",
            "-v",
        ]
        for g in groups:
            args += ["--group", g]
        from . import secured

        if secured.ACTIVE is not None and broker_url == secured.ACTIVE.url:  # the TLS + ACL variant
            args += secured.ACTIVE.agent_flags(device, tuple(groups))
        args += list(extra)
        self.device = device
        self.stderr_path = state_dir.parent / f"{device}.stderr.log"
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            wrap(args) if wrap is not None else args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.put(json.loads(line))

    def send(self, row: Any) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.device} has exited ({self.proc.returncode}): {self.stderr()[-2000:]}")
        self.proc.stdin.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        self.proc.stdin.flush()

    def ask(self, row: Any, timeout: float = 10.0) -> dict[str, Any]:
        self.send(row)
        return self.lines.get(timeout=timeout)

    def rss_mib(self) -> float:
        """Resident memory of the agent process, from /proc."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, kill: bool = False) -> int:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stderr.close()
        return int(self.proc.returncode)


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
