"""An in-process local API server for unit tests: a real engine on the real test model, a real socket."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from device_agent.api_server import Handler, LocalApi
from device_agent.config import ApiSettings, EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.events import Event
from device_agent.local_api import Health
from device_agent.runtime import LoadedModel


def fake_health() -> Health:
    return Health(True, "d1", "0", "demo@1", False, "active", True, None, None, 0, 0, 0, 0, 0.0)


class Server:
    """An engine serving the test model behind a LocalApi on a socket in a temp dir."""

    def __init__(self, folder: Path, model: LoadedModel | None, **settings: Any) -> None:
        self.events: list[Event] = []
        self.engine = InferenceEngine(self.events.append, EngineSettings(drift_window_rows=1000))
        if model is not None:
            self.engine.activate(model)
        self.settings = ApiSettings(**settings)
        self.path = str(folder / "agent.sock")
        self.handler = Handler(self.engine, self.settings, fake_health)
        self.api = LocalApi(self.handler, self.settings, self.path, 0o660)
        self.api.bind()
        self.api.start()

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(self.path)
        return sock

    def stop(self) -> None:
        self.api.stop()
