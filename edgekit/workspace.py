"""The workspace: ``edgekit.toml`` plus a ``.edgekit/`` folder holding keys, runs and bundles.

Found by walking up from the current directory (like git), or named with ``--workspace``
or ``EDGEKIT_WORKSPACE``, so every command works from anywhere inside a project.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.protocol import DEFAULT_PREFIX

from .errors import WorkspaceError

CONFIG = "edgekit.toml"
STATE = ".edgekit"

_TEMPLATE = """# edgekit workspace
[fleet]
broker = "{broker}"   # the broker the CLI talks to; a secured fleet: mqtts://HOST:8884 (host listener)
prefix = "{prefix}"        # topic prefix: one prefix per fleet
# ca = ".edgekit/pki/ca.pem"            # mqtts://: the fleet CA the broker's certificate is checked against
# cert = ".edgekit/pki/hosts/deploy.pem" # this host's client certificate on the broker (edgekit broker config)
# key = ".edgekit/pki/hosts/deploy.key"
# username = "deploy"                    # or a password: password_file = "…", or EDGEKIT_MQTT_PASSWORD
# device_broker = "mqtts://broker.example:8883"   # the URL devices get at enrolment (edgekit broker config:
#                                                  # devices on 8883, host roles on 8884)

[train]
seed = 0
test_size = 0.25
max_categories = 30         # categories kept per categorical column; the rest become "other"

[policy]
drift_window = 200          # rows per drift window reported by devices
low_confidence = 0.6        # predictions below this confidence are counted
capture = false             # devices keep low-confidence rows for labelling (edgekit bundle --capture)
capture_below = "p5"        # ... below this: pN of the out-of-fold confidence, or a number
capture_uniform = 0.01      # ... plus this share of the other rows, for calibration

[serve]                     # edgekit serve, the telemetry collector
# store = "postgresql://edgekit@db-host/telemetry"   # default: SQLite in .edgekit/telemetry.db
# metrics_port = 9310
# session_expiry_s = 86400  # how long the broker queues for a stopped collector

[alerts]                    # rules edgekit serve evaluates; every one and its default: docs/alerts.md
# on_alert = "/usr/local/bin/page-me"   # run per alert fired or resolved, the alert as JSON on stdin
# [alerts.drift]
# k = 3                     # a feature must drift in k of the last m windows
# m = 5
"""


@dataclass(frozen=True)
class Workspace:
    root: Path
    config: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def keys_dir(self) -> Path:
        return self.state / "keys"

    @property
    def runs_dir(self) -> Path:
        return self.state / "runs"

    @property
    def bundles_dir(self) -> Path:
        return self.state / "bundles"

    def setting(self, section: str, key: str, default: Any) -> Any:
        value = self.config.get(section, {}).get(key, default)
        return default if value is None else value

    @property
    def broker(self) -> str:
        return str(os.environ.get("EDGEKIT_BROKER") or self.setting("fleet", "broker", "mqtt://127.0.0.1:1883"))

    def broker_files(self) -> dict[str, str]:
        """[fleet] ca, cert, key, username, password_file; relative paths are the workspace's."""
        out: dict[str, str] = {}
        for key in ("ca", "cert", "key", "username", "password_file"):
            value = self.setting("fleet", key, "")
            if not isinstance(value, str):
                raise WorkspaceError(f"[fleet] {key} in edgekit.toml must be a string, got {value!r}")
            if value and key != "username":
                value = str(self.root / value)
            out[key] = value
        return out

    @property
    def prefix(self) -> str:
        return str(self.setting("fleet", "prefix", DEFAULT_PREFIX))


def init(root: Path, broker: str = "mqtt://127.0.0.1:1883", prefix: str = DEFAULT_PREFIX) -> Workspace:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / CONFIG
    if not cfg.exists():
        cfg.write_text(_TEMPLATE.format(broker=broker, prefix=prefix))
    for sub in ("keys", "runs", "bundles"):
        (root / STATE / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / STATE / "keys", 0o700)
    return load(root)


def load(root: Path) -> Workspace:
    path = root / CONFIG
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise WorkspaceError(f"no {CONFIG} in {root}", "run 'edgekit init' there first") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkspaceError(f"{path} is not valid TOML: {exc}", "fix or delete the file") from None
    return Workspace(root, config)


def find(start: Path | None = None) -> Workspace:
    env = os.environ.get("EDGEKIT_WORKSPACE")
    if env:
        return load(Path(env).resolve())
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG).is_file():
            return load(folder)
    raise WorkspaceError(f"no edgekit workspace in {here} or above", "run 'edgekit init' to create one")
