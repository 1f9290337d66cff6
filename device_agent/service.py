"""The agent as a device service: the agent itself (worker, fleet link, engine) plus the ways
applications on the device reach it — the local API on a Unix socket and, if configured, a
loopback TCP port and a topic on a broker on the device — and its health.

The listeners are bound before anything else starts, so a socket in use stops the agent with a
clear error before it connects to the fleet; they serve once the worker has restored the
active model, so the first request finds it; systemd is told the agent is ready only then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from . import __version__
from .api_mqtt import LocalMqttBridge
from .api_server import Handler, LocalApi
from .config import AgentConfig
from .local_api import Health
from .protocol import ErrorRecord
from .systemd import notify
from .worker import Agent

log = logging.getLogger("edgekit.agent")


def _error(record: ErrorRecord | None) -> dict[str, object] | None:
    if record is None:
        return None
    return {"code": record.code, "detail": record.detail, "ts": record.ts}


class Service:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent = Agent(config)
        self.engine = self.agent.engine
        self.handler = Handler(self.engine, config.api, self.health)
        self.api: LocalApi | None = None
        if config.socket_path or config.api.tcp_port:
            self.api = LocalApi(self.handler, config.api, config.socket_path, config.socket_mode)
        self.bridge: LocalMqttBridge | None = None
        if config.api.mqtt_broker:
            client_id = f"edgekit-{config.device_id}-local-{os.getpid()}"
            self.bridge = LocalMqttBridge(self.handler, config.api.mqtt_broker, config.api.mqtt_topic, client_id)
        self._started = time.monotonic()

    def start(self) -> None:
        if self.api is not None:
            self.api.bind()  # raises ListenFailed before the agent touches the network
        self.agent.start()
        if self.api is not None:
            self.api.start()
            where = [p for p in (self.config.socket_path,) if p]
            if self.api.tcp_address is not None:
                host, port = self.api.tcp_address
                where.append(f"{host}:{port}")
            log.info("local API on %s", ", ".join(where))
        if self.bridge is not None:
            self.bridge.start()
        notify("READY=1")

    def stop(self) -> None:
        notify("STOPPING=1")
        if self.bridge is not None:
            with contextlib.suppress(Exception):
                self.bridge.stop()
        if self.api is not None:
            self.api.stop()
        self.agent.stop()

    def health(self) -> Health:
        """Read from the worker's and the engine's attributes without waiting on either (each
        read is atomic), so a probe answers even while the worker is busy installing."""
        engine = self.engine
        core = self.agent.core
        model = engine.model
        return Health(
            serving=model is not None,
            device=self.config.device_id,
            agent=__version__,
            bundle=f"{model.bundle.name}@{model.bundle.version}" if model is not None else None,
            on_trial=engine.trial_sha() is not None,
            phase=str(core.phase.value),
            connected=self.agent.worker.connected,
            last_error=_error(core.last_error),
            last_row_error=_error(core.last_runtime_error),
            outbox=len(self.agent.worker.outbox),
            served=engine.served,
            rejected=engine.rejected,
            clients=self.api.clients if self.api is not None else 0,
            uptime_s=round(time.monotonic() - self._started, 3),
        )
