"""A real mosquitto on a free loopback port, started (and killable) by the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not start listening on 127.0.0.1:{port}")


class Broker:
    """mosquitto with a temporary config; ``stop``/``start`` keep the same port and store."""

    def __init__(
        self,
        port: int | None = None,
        persistence: bool = False,
        extra: str = "",
        max_queued_messages: int = 100_000,
        listener: list[str] | None = None,
        scheme: str = "mqtt",
        config_file: Path | None = None,
    ) -> None:
        """``listener`` replaces the open listener's lines (a TLS listener, no anonymous access)."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto (make test does this)")
        self.exe = exe
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ek-broker-"))
        os.chmod(self.dir, 0o777)  # mosquitto drops privileges when started as root
        self.scheme = scheme
        lines = [
            *(
                line.format(port=self.port)
                for line in listener or ["listener {port} 127.0.0.1", "allow_anonymous true"]
            ),
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            f"max_queued_messages {max_queued_messages}",  # per client; QoS 1 messages past it are dropped
            f"log_dest file {self.dir}/mosquitto.log",
            extra,
        ]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        if config_file is not None:  # a configuration written elsewhere (edgekit broker config), used as it is
            self.conf = config_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
