"""A simulated fleet: N devices, one process, one network thread, one summary.

``Fleet(config).run(duration)`` connects every device (a few hundred a second, so the broker
is not hit by a thousand handshakes at once), runs until the duration passes or
:meth:`Fleet.stop` is called (Ctrl-C in the CLI), says goodbye like an agent does (a last
heartbeat and summary, a retained 'offline'), and returns a :class:`Summary`. ``running``
does the same on a background thread, for tests and benchmarks that drive the host side
meanwhile.

To simulate more devices than one process carries (one process uses one core: the
simulator is bound by Python), start several with distinct ``--id-prefix`` values on the same
broker; the host cannot tell them from one fleet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.bundle import FloorEntry
from device_agent.config import CoreSettings, EngineSettings, Limits
from device_agent.protocol import Topics, check_id
from device_agent.state import Persisted
from device_agent.trust import Trust

from ..fleet.client import parse_broker
from .device import DeviceSettings, SimDevice
from .faults import Faults, assign, count
from .models import Models
from .net import Connection, Loop

CONNECT_BATCH = 50  # connections opened per CONNECT_PAUSE_S
CONNECT_PAUSE_S = 0.05


@dataclass(frozen=True)
class SimConfig:
    broker: str
    trust: Path | None
    devices: int = 100
    id_prefix: str = "sim-"
    groups: tuple[str, ...] = ("sim",)
    prefix: str = "edgekit/v1"
    faults: Faults = field(default_factory=Faults)
    rows_csv: Path | None = None
    rows_per_s: float = 10.0
    drift_window_rows: int = 100  # with rows_per_s 10: a drift window every 10 s
    heartbeat_s: float = 5.0
    trial_rows: int = 50
    tick_s: float = 1.0  # the core's clock
    serve_s: float = 5.0  # rows are served and accounted in batches this far apart
    keepalive_s: int = 60
    preinstalled: Path | None = None  # a bundle every device already runs at the start

    def device_ids(self) -> list[str]:
        width = max(4, len(str(self.devices - 1)))
        return [check_id("device id", f"{self.id_prefix}{i:0{width}d}") for i in range(self.devices)]


@dataclass
class Summary:
    devices: int
    connected: int
    phases: dict[str, int]
    active: dict[str, int]  # NAME@VERSION (or "none") -> devices
    failures: dict[str, int]  # failure code -> devices reporting it at least once
    faults: dict[str, int]  # fault -> devices it was assigned to
    messages_in: int
    mbytes_in: float
    telemetry_sent: int  # events and drift windows acknowledged by the broker
    outbox_queued: int
    elapsed_s: float
    cpu_s: float
    simulator_errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        active = ", ".join(f"{k} {v}" for k, v in sorted(self.active.items()))
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items()))
        return (
            f"{self.connected}/{self.devices} connected; {phases}; active: {active or '-'}; "
            f"{self.telemetry_sent} messages sent; {self.elapsed_s:.0f} s, CPU {self.cpu_s:.0f} s"
        )


class Fleet:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.loop = Loop()
        self.topics = Topics(config.prefix)
        self.trust = Trust.load(config.trust) if config.trust is not None else None
        self.models = Models(config.rows_csv, config.faults.seed)
        ids = config.device_ids()
        self.assigned = assign(config.faults, ids)
        settings = DeviceSettings(
            core=CoreSettings(heartbeat_interval_s=config.heartbeat_s),
            engine=EngineSettings(drift_window_rows=config.drift_window_rows, trial_rows=config.trial_rows),
            limits=Limits(),
            rows_per_s=config.rows_per_s,
            tick_s=config.tick_s,
            serve_s=config.serve_s,
        )
        persisted = self._preinstalled()
        host, port = parse_broker(config.broker)
        self.devices: list[SimDevice] = []
        self.links: list[Connection] = []
        for device_id in ids:
            device = SimDevice(
                device_id,
                groups=config.groups,
                trust=self.trust,
                topics=self.topics,
                settings=settings,
                models=self.models,
                faults=config.faults,
                assigned=self.assigned[device_id],
                schedule=self.loop.call_later,
                persisted=persisted,
            )
            link = Connection(
                self.loop,
                f"edgekit-{device_id}",
                host,
                port,
                keepalive=config.keepalive_s,
                announce=max(settings.core.max_payload_bytes, settings.core.max_chunk_bytes),
                will=self._will(device),
                bdseq=1,
                on_connected=device.connected,
                on_disconnected=device.disconnected,
                on_message=device.message,
                on_acked=device.acked,
            )
            self.devices.append(device)
            self.links.append(link)
        self._started = 0.0
        self._cpu0 = 0.0
        self._closing = False
        self.stopped = threading.Event()

    def _will(self, device: SimDevice) -> Callable[[int], tuple[str, bytes]]:
        return lambda bdseq: (self.topics.state(device.id), device.core.will_payload(bdseq))

    def _preinstalled(self) -> Persisted | None:
        path = self.config.preinstalled
        if path is None:
            return None
        if self.trust is None:
            raise ValueError("a preinstalled bundle needs a trust file")
        bundle = self.models.preload(path.read_bytes(), self.trust, time.time())
        return Persisted(active=bundle.ref, floor={bundle.name: FloorEntry(bundle.version, bundle.sha256)})

    # ── running ─────────────────────────────────────────────────────────────────────

    def run(
        self,
        duration: float | None = None,
        progress: Callable[[Summary], None] | None = None,
        progress_s: float = 5.0,
        goodbye_s: float = 5.0,
    ) -> Summary:
        """Connect, run for ``duration`` seconds (None: until :meth:`stop`), say goodbye."""
        self._started = time.monotonic()
        self._cpu0 = _cpu()
        for i, (device, link) in enumerate(zip(self.devices, self.links, strict=True)):
            device.start(link)
            self.loop.call_later((i // CONNECT_BATCH) * CONNECT_PAUSE_S, link.connect)
            # Ticks spread over the tick period, so the fleet's work is even, not in bursts.
            self.loop.call_later(self.config.tick_s * (i / max(1, len(self.devices))), self._ticker(device))
        if progress is not None:
            self._every(progress_s, lambda: progress(self.summary()))
        if duration is not None:
            self.loop.call_later(duration, self.loop.stop)
        try:
            self.loop.run()
        finally:
            self._goodbye(goodbye_s)
            self.stopped.set()
        return self.summary()

    def stop(self) -> None:
        """End :meth:`run` (thread-safe; also from a signal handler)."""
        self.loop.stop()

    def _ticker(self, device: SimDevice) -> Callable[[], None]:
        def tick() -> None:
            if self._closing:
                return
            device.tick()
            self.loop.call_later(self.config.tick_s, tick)

        return tick

    def _every(self, period: float, fn: Callable[[], None]) -> None:
        def again() -> None:
            fn()
            self.loop.call_later(period, again)

        self.loop.call_later(period, again)

    def _goodbye(self, timeout: float) -> None:
        """Each device's last heartbeat, summary and retained 'offline', then disconnect."""
        self._closing = True
        for device in self.devices:
            if device.link is not None and device.link.connected:
                device.stop()
        self.loop.flush(timeout)
        for link in self.links:
            link.close()
        self.loop.flush(1.0)

    # ── what the fleet looks like ───────────────────────────────────────────────────

    def summary(self) -> Summary:
        phases: Counter[str] = Counter()
        active: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        for d in self.devices:
            core = d.core
            phases[str(core.phase)] += 1
            active[f"{core.active.name}@{core.active.version}" if core.active else "none"] += 1
            failures.update(list(core.failures))
        errors = [f"{d.id}: {e}" for d in self.devices for e in d.errors[:1]][:10]
        return Summary(
            devices=len(self.devices),
            connected=sum(1 for link in self.links if link.connected),
            phases=dict(phases),
            active=dict(active),
            failures=dict(failures),
            faults=count(self.assigned.values()),
            messages_in=sum(d.messages_in for d in self.devices),
            mbytes_in=round(sum(d.bytes_in for d in self.devices) / 2**20, 1),
            telemetry_sent=sum(d.outbox.sent for d in self.devices),
            outbox_queued=sum(len(d.outbox) for d in self.devices),
            elapsed_s=round(time.monotonic() - self._started, 1) if self._started else 0.0,
            cpu_s=round(_cpu() - self._cpu0, 1),
            simulator_errors=errors,
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def running(config: SimConfig, ready_timeout: float = 60.0) -> Iterator[Fleet]:
    """The fleet on a background thread, connected, until the block ends."""
    fleet = Fleet(config)
    result: list[BaseException] = []

    def main() -> None:
        try:
            fleet.run()
        except BaseException as exc:
            result.append(exc)
            fleet.stopped.set()

    thread = threading.Thread(target=main, name="edgekit-sim", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and not fleet.stopped.is_set():
        if all(link.connected for link in fleet.links):
            break
        time.sleep(0.05)
    try:
        if result:
            raise result[0]
        yield fleet
    finally:
        fleet.stop()
        thread.join(30)
