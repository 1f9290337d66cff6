"""Real brokers on free loopback ports, started (and killable) by the tests: mosquitto, and
aedes — a second, independent MQTT 3.1.1 broker — for the cases that run against both."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


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
    raise RuntimeError(f"the broker did not start listening on 127.0.0.1:{port}")


class _BrokerProcess:
    """What every test broker does with its process: stop it (gently, or by ``kill``), and
    remove its temporary directory on close."""

    proc: subprocess.Popen[bytes] | None
    dir: Path

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


class Broker(_BrokerProcess):
    """mosquitto with a temporary config; ``stop``/``start`` keep the same port and store."""

    kind = "mosquitto"

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


AEDES_DIR = Path(os.environ.get("EDGEKIT_AEDES_DIR", Path.home() / ".cache" / "edgekit" / "aedes"))
AEDES_SERVER = Path(__file__).resolve().parent / "aedes" / "server.mjs"


class AedesBroker(_BrokerProcess):
    """aedes (MQTT 3.1.1 only, no shared subscriptions) with its sessions, subscriptions and
    retained messages in LevelDB under a temporary directory: ``stop``/``start`` keep the same
    port and store, like :class:`Broker` with persistence. Installed by scripts/ensure-aedes.sh."""

    kind = "aedes"

    def __init__(self, port: int | None = None) -> None:
        node = shutil.which("node")
        if node is None or not (AEDES_DIR / "node_modules" / "aedes").is_dir():
            raise RuntimeError(
                f"aedes is not installed in {AEDES_DIR}: run bash scripts/ensure-aedes.sh (make test does)"
            )
        self.exe = node
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ek-aedes-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "aedes.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "EDGEKIT_AEDES_MODULES": str(AEDES_DIR / "node_modules")}
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, str(AEDES_SERVER), str(self.port), str(self.dir / "db")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        _wait_port(self.port)


def make_broker(kind: str = "mosquitto") -> Broker | AedesBroker:
    """A started broker of ``kind`` with persistence on: what the ``broker`` fixture yields."""
    b: Broker | AedesBroker = AedesBroker() if kind == "aedes" else Broker(persistence=True)
    b.start()
    return b


# Run a test against mosquitto and against aedes: put ``@BOTH_BROKERS`` on a test that takes
# the ``broker`` fixture. Kept to the core cases (deploy, resume after a broker restart, fleet
# status, the collector) so `make test` stays short.
BOTH_BROKERS = pytest.mark.parametrize("broker", ["mosquitto", "aedes"], indirect=True)
