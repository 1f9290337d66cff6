"""Every setting of the agent — limit, interval, default — with its unit, in one place.

:class:`AgentConfig` is the single source: the core, the engine, the worker and the MQTT
link each take their own section of it, ``edgekit-agent`` reads its defaults from it
(flags override a TOML file, which overrides these defaults), and ``docs/settings.md`` is
generated from the field metadata here (``unit`` and ``help``). A number written anywhere
else is a bug that ``tests/unit/test_config.py`` looks for.

The TOML file mirrors the sections::

    device_id = "pump-7"
    state_dir = "/var/lib/edgekit"
    trust = "/etc/edgekit/trust.json"
    groups = ["plant-a"]

    [mqtt]
    broker = "mqtts://10.0.0.2:8883"
    ca = "/etc/edgekit/ca.pem"
    cert = "/etc/edgekit/device.pem"
    key = "/etc/edgekit/device.key"

    [engine]
    trial_rows = 100

Importing this module is cheap (standard library only): ``edgekit-agent --help`` must not
wait for numpy or onnxruntime.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

from .broker import BrokerEndpoint, endpoint, parse_url
from .errors import ConfigError
from .protocol import DEFAULT_PREFIX


def _setting(default: Any, unit: str, help: str) -> Any:
    return field(default=default, metadata={"unit": unit, "help": help})


@dataclass(frozen=True)
class Limits:
    """Size limits applied to bundles before anything else is read."""

    max_bundle_bytes: int = _setting(256 * 1024 * 1024, "bytes", "largest bundle accepted")
    max_manifest_bytes: int = _setting(256 * 1024, "bytes", "largest signed manifest accepted")
    max_members: int = _setting(16, "files", "most files in one bundle")


@dataclass(frozen=True)
class MqttSettings:
    """The connection to the broker."""

    broker: str = _setting(
        "mqtt://127.0.0.1:1883", "URL", "the MQTT broker: mqtts://HOST:8883 (TLS) or mqtt://HOST:1883"
    )
    ca: str = _setting("", "path", "CA certificate the broker's certificate is checked against (mqtts://)")
    cert: str = _setting("", "path", "this device's client certificate (mqtts://; its identity on the broker)")
    key: str = _setting("", "path", "the private key of that certificate")
    username: str = _setting("", "", "username on the broker (when it uses passwords, not certificates)")
    password_file: str = _setting(
        "", "path", "file holding the broker password (else the EDGEKIT_MQTT_PASSWORD environment variable)"
    )
    prefix: str = _setting(DEFAULT_PREFIX, "topic", "topic prefix of the fleet")
    keepalive_s: int = _setting(30, "s", "MQTT keep-alive")
    reconnect_min_s: float = _setting(1.0, "s", "first reconnect delay (a random 0-3 s is added per agent)")
    reconnect_max_s: float = _setting(30.0, "s", "longest reconnect delay")
    protocol: str = _setting(
        "auto", "", "MQTT version: auto (5, or 3.1.1 once the broker refuses 5), 5, or 3.1.1 (docs/scaling.md)"
    )


@dataclass(frozen=True)
class CoreSettings:
    """The deployment state machine (:class:`device_agent.core.AgentCore`)."""

    heartbeat_interval_s: float = _setting(5.0, "s", "heartbeat interval")
    reported_min_interval_s: float = _setting(
        1.0, "s", "rate limit of the retained 'reported' summary (phase changes go out at once)"
    )
    chunk_window: int = _setting(8, "chunks", "chunk topics subscribed at once while pulling a bundle")
    chunk_retry_s: float = _setting(5.0, "s", "a chunk that failed its hash is asked for again after this long")
    transfer_timeout_s: float = _setting(120.0, "s", "abandon a transfer that makes no progress for this long")
    transfer_retry_base_s: float = _setting(10.0, "s", "first retry of a timed-out transfer (doubles, jittered)")
    transfer_retry_max_s: float = _setting(600.0, "s", "longest delay between transfer retries")
    max_trial_crashes: int = _setting(
        2, "restarts", "a bundle whose install or trial ended in this many restarts is not retried until asked again"
    )
    event_burst: int = _setting(20, "events", "failure events of one code per period; the rest are counted")
    event_period_s: float = _setting(60.0, "s", "the period of event_burst")
    max_payload_bytes: int = _setting(1 << 20, "bytes", "largest control message read (desired, transfer document)")
    resend_burst: int = _setting(10, "commands", "resend commands handled per event_period_s; the rest are refused")
    resend_max_messages: int = _setting(10_000, "messages", "most messages one resend command may ask for")
    max_chunk_bytes: int = _setting(4 << 20, "bytes", "largest bundle chunk accepted")
    trial_min_rows: int = _setting(
        20, "rows", "a trial's rejection rate is compared with the old model's from this many rows"
    )
    trial_max_reject_increase: float = _setting(
        0.2, "share", "a new model rejecting this much more of the rows than the model it replaces is reverted"
    )
    trial_max_latency_ratio: float = _setting(3.0, "x", "a new model this many times slower (median) is reverted")
    trial_latency_slack_s: float = _setting(0.002, "s", "... and slower by at least this much per row")
    trial_max_memory_ratio: float = _setting(3.0, "x", "a new model needing this many times the memory is reverted")
    trial_memory_slack_bytes: int = _setting(64 << 20, "bytes", "... and at least this much more")
    max_seq_ahead_s: float = _setting(
        86_400.0, "s", "a desired state whose sequence (µs since the epoch) is this far ahead of the clock is refused"
    )
    clock_valid_after: float = _setting(
        1_700_000_000.0, "Unix s", "a clock before this is not set yet: sequences are not held to it"
    )
    desired_wait_s: float = _setting(
        30.0, "s", "a device serving a model that gets no retained desired state this long after connecting says so"
    )
    clock_tolerance_s: float = _setting(
        300.0, "s", "a clock this far behind the newest signed time seen is untrusted (expiry then uses that time)"
    )
    samples_max_expiry_s: float = _setting(
        86_400.0, "s", "a samples request that expires further ahead than this is refused"
    )
    samples_remembered: int = _setting(
        256, "requests", "ids of answered samples requests kept, so a repeated request is answered once"
    )


@dataclass(frozen=True)
class EngineSettings:
    """Serving rows: trial, drift windows, latency (:class:`device_agent.engine.InferenceEngine`)."""

    trial_rows: int = _setting(50, "rows", "live rows a new model must serve without failure before it is committed")
    trial_max_s: float = _setting(10.0, "s", "without that many rows, a trial with no failure passes after this long")
    drift_window_rows: int | None = _setting(None, "rows", "rows per drift window (unset: the bundle's policy)")
    drift_flush_s: float = _setting(60.0, "s", "a partial drift window is reported after this long")
    drift_min_rows: int = _setting(30, "rows", "below this a window's verdict is 'insufficient'")
    latency_samples: int = _setting(2048, "rows", "recent per-row latencies kept for percentiles")
    max_pending_rows: int = _setting(200_000, "rows", "rows awaiting drift accounting; beyond, counted, not kept")
    drift_max_rows_per_s: float = _setting(
        2000.0, "rows/s", "rows accounted for drift at most; beyond, an even sample of the rows (0: every row)"
    )
    intra_op_threads: int = _setting(1, "threads", "onnxruntime intra-op threads (one is fastest for single rows)")
    load_timeout_s: float = _setting(
        60.0, "s", "a new model's load and health check (in a child process) are stopped after this long"
    )
    load_cpu_s: float = _setting(60.0, "s", "... or after this much CPU time")
    load_memory_bytes: int = _setting(1 << 30, "bytes", "... or when they need more memory than this")


@dataclass(frozen=True)
class OutboxSettings:
    """The durable queue of what must reach the host (:class:`device_agent.outbox.Outbox`)."""

    max_rows: int = _setting(100_000, "messages", "oldest telemetry is dropped (and counted) beyond this")
    batch: int = _setting(100, "messages", "messages in flight to the broker at once")
    history_rows: int = _setting(
        10_000, "messages", "delivered messages kept to answer the host's resend requests (0: none)"
    )


@dataclass(frozen=True)
class CaptureSettings:
    """Captured rows for labelling (:mod:`device_agent.capture`): kept on the device, sent only
    when a signed samples request asks."""

    mode: str = _setting("bundle", "", "bundle: as the bundle's policy says; on: capture anyway; off: never")
    below: float | None = _setting(None, "confidence", "capture rows below this confidence (unset: the bundle's)")
    uniform_rate: float | None = _setting(
        None, "fraction", "share of the other rows kept as a uniform sample (unset: the bundle's)"
    )
    max_rows: int = _setting(10_000, "rows", "captured rows kept on disk; the oldest half goes beyond")
    max_bytes: int = _setting(16 << 20, "bytes", "disk the captured rows may use; the oldest half goes beyond")
    max_pending_rows: int = _setting(10_000, "rows", "captured rows awaiting the worker's write; beyond, counted")
    max_message_bytes: int = _setting(256 * 1024, "bytes", "largest message of an answer to a samples request")


@dataclass(frozen=True)
class InputSettings:
    """Where rows come from."""

    source: str = _setting("stdin", "", "stdin | csv:PATH | none")
    rate: float = _setting(0.0, "rows/s", "rows per second when replaying a CSV (0 = as fast as possible)")
    exit_on_eof: bool = _setting(False, "", "exit when the input ends instead of serving on as a daemon")
    max_line_bytes: int = _setting(1 << 20, "bytes", "longest input line; a longer one is answered as an error, unread")
    restart_s: float = _setting(1.0, "s", "an input source that fails is reported and started again after this long")


@dataclass(frozen=True)
class ApiSettings:
    """The local inference API that applications on the device call (docs/local-api.md)."""

    socket: str = _setting(
        "agent.sock", "path", "the Unix socket applications call; relative paths are inside state_dir; empty: none"
    )
    socket_mode: str = _setting("0660", "octal", "permissions of the socket file: who on the device may call the agent")
    tcp_port: int = _setting(
        0, "port", "also listen on 127.0.0.1 at this port (0: off); loopback only: anyone on the device may call"
    )
    max_clients: int = _setting(32, "connections", "connections served at once; a further one is told so and closed")
    max_line_bytes: int = _setting(1 << 20, "bytes", "longest request line (a batch is one line)")
    max_batch_rows: int = _setting(1024, "rows", "most rows in one batch request")
    io_timeout_s: float = _setting(
        10.0, "s", "a client that leaves a request line unfinished, or its answers unread, this long is disconnected"
    )
    mqtt_broker: str = _setting("", "URL", "a broker on the device to take requests from too (empty: off)")
    mqtt_topic: str = _setting(
        "edgekit/local/infer", "topic", "requests on that broker; answers go to each request's MQTT 5 response topic"
    )


@dataclass(frozen=True)
class LogSettings:
    """What the agent writes to stderr (journald, under systemd)."""

    format: str = _setting("text", "", "text, or json: one JSON object per line, for journald or a log shipper")
    level: str = _setting("warning", "", "debug, info, warning or error; each -v on the command line lowers it a step")


@dataclass(frozen=True)
class ServiceSettings:
    """The systemd unit written by ``edgekit-agent service write-unit``."""

    user: str = _setting("edgekit", "", "the unprivileged user the agent runs as")
    group: str = _setting("edgekit", "", "its group: applications in it may call the socket (socket_mode 0660)")
    memory_max: str = _setting("256M", "bytes", "the unit's memory limit (systemd MemoryMax: 128M, 1G)")
    cpu_quota: str = _setting("100%", "", "the unit's CPU limit (systemd CPUQuota: 100% is one CPU)")


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = _setting("", "", "this device's id (letters, digits, _ . : -)")
    state_dir: str = _setting("", "path", "where bundles, state and the outbox live")
    trust: str = _setting("", "path", "the trust file (public keys by role)")
    groups: tuple[str, ...] = _setting((), "", "groups this device belongs to")
    telemetry_key: str = _setting(
        "", "path", "Ed25519 key this device signs its telemetry with (edgekit devices add makes it; empty: unsigned)"
    )
    device_class: str = _setting("", "", "this device's class; bundles whose compat.device_classes omit it are refused")
    tick_interval_s: float = _setting(0.5, "s", "the worker's clock: drift accounting, trials, heartbeats")
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    core: CoreSettings = field(default_factory=CoreSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    input: InputSettings = field(default_factory=InputSettings)
    limits: Limits = field(default_factory=Limits)
    api: ApiSettings = field(default_factory=ApiSettings)
    log: LogSettings = field(default_factory=LogSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)

    # ── building one ───────────────────────────────────────────────────────────────

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
        """Defaults, then the TOML file at ``path``, then ``overrides`` ({"engine.trial_rows": 100})."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except OSError as exc:
                raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None
            values.update(_flatten(doc))
        values.update(overrides or {})
        return build(cls, values)

    def check(self) -> AgentConfig:
        """The settings the agent cannot start without; raises ConfigError naming the first missing."""
        for name in ("device_id", "state_dir", "trust"):
            if not getattr(self, name):
                raise ConfigError(f"{name.replace('_', '-')} is not set: pass --{name.replace('_', '-')} or set it")
        _ = self.mqtt_protocols  # an unknown MQTT version is refused before anything starts
        if self.capture.mode not in ("bundle", "on", "off"):
            raise ConfigError(f"capture.mode {self.capture.mode!r} must be bundle, on or off")
        return self

    @property
    def mqtt_protocols(self) -> tuple[str, ...]:
        """The MQTT versions to try, in order: ``mqtt.protocol`` read."""
        chosen = {"auto": ("5", "3.1.1"), "5": ("5",), "3.1.1": ("3.1.1",)}.get(self.mqtt.protocol)
        if chosen is None:
            raise ConfigError(f"mqtt.protocol {self.mqtt.protocol!r} is not an MQTT version; use auto, 5 or 3.1.1")
        return chosen

    @property
    def broker_host_port(self) -> tuple[str, int, bool]:
        return parse_broker(self.mqtt.broker)

    def broker_endpoint(self) -> BrokerEndpoint:
        """The broker with TLS and credentials, checked (files exist, no password in the clear)."""
        m = self.mqtt
        return endpoint(m.broker, ca=m.ca, cert=m.cert, key=m.key, username=m.username, password_file=m.password_file)

    @property
    def socket_path(self) -> str:
        """The local API's Unix socket ('' when there is none); relative paths are in state_dir."""
        path = self.api.socket
        if not path:
            return ""
        return path if os.path.isabs(path) else os.path.join(self.state_dir, path)

    @property
    def socket_mode(self) -> int:
        try:
            mode = int(self.api.socket_mode, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ConfigError(f"api.socket_mode {self.api.socket_mode!r} is not a file mode; write it in octal: 0660")
        return mode


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt[s]://host:port`` → (host, port, tls); credentials: :func:`device_agent.broker.endpoint`."""
    host, port, tls, _user, _password = parse_url(url)
    return host, port, tls


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_SECTIONS = {"mqtt", "core", "engine", "outbox", "capture", "input", "limits", "api", "log", "service"}


def build(cls: type[AgentConfig], values: dict[str, Any]) -> AgentConfig:
    """An AgentConfig from dotted keys, each checked against its field's type."""
    config = cls()
    by_section: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        if section and section not in _SECTIONS:
            raise ConfigError(f"unknown config section [{section}] (known: {', '.join(sorted(_SECTIONS))})")
        target = getattr(config, section) if section else config
        if name not in {f.name for f in fields(target) if f.name not in _SECTIONS}:
            raise ConfigError(f"unknown setting {key!r}; see docs/settings.md")
        hint = get_type_hints(type(target))[name]
        (by_section.setdefault(section, {}) if section else top)[name] = _coerce(key, value, hint)
    sections = {s: replace(getattr(config, s), **v) for s, v in by_section.items()}
    return replace(config, **top, **sections)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a setting's value against its declared type (TOML and flags give plain values)."""
    if value is None:
        if hint in (int | None, float | None):
            return None
        raise ConfigError(f"setting {key!r} needs a value")
    if hint in (int, int | None):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting {key!r} must be an integer, got {value!r}")
        return value
    if hint in (float, float | None):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"setting {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting {key!r} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"setting {key!r} must be a string, got {value!r}")
        return value
    if hint == tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"setting {key!r} must be a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"setting {key!r} has an unsupported type")  # pragma: no cover - a new field's type


def settings() -> list[tuple[str, str, Any, str]]:
    """(dotted key, unit, default, help) of every setting, in declaration order."""
    out: list[tuple[str, str, Any, str]] = []
    default = AgentConfig()
    for f in fields(AgentConfig):
        if f.name in _SECTIONS:
            section = getattr(default, f.name)
            out += [
                (f"{f.name}.{g.name}", g.metadata["unit"], getattr(section, g.name), g.metadata["help"])
                for g in dataclasses.fields(section)
            ]
        else:
            out.append((f.name, f.metadata["unit"], getattr(default, f.name), f.metadata["help"]))
    return out


def default_of(key: str) -> Any:
    """The default of a dotted setting, for help texts that must not restate it."""
    section, _, name = key.rpartition(".")
    target: Any = getattr(AgentConfig(), section) if section else AgentConfig()
    return getattr(target, name)
