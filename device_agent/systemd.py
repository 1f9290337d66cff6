"""Running the agent as a systemd service: the unit file, and telling systemd it is ready.

``edgekit-agent service write-unit --config /etc/edgekit/agent.toml`` writes a unit for that
config: the agent runs as an unprivileged user with no capabilities and no new privileges,
sees the file system read-only except its state directory (and the directory of its socket),
runs under a memory and a CPU limit, restarts on failure with a growing delay where the local
systemd supports one (``RestartSteps``, systemd 254 and later; older ones retry at a fixed
delay, and never give up), and logs to journald. ``Type=notify``: systemd counts the agent as
started once its local API listens (:func:`notify`), so a unit ordered ``After=`` it can
connect straight away.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .config import AgentConfig

_HOMES = ("/home", "/root", "/run/user")
_TMPS = ("/tmp", "/var/tmp")


def notify(message: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET ("READY=1", "STOPPING=1").
    False (and nothing done) when systemd did not ask for it."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


def systemd_version() -> int | None:
    """The version of the systemd on this machine (``systemctl --version``), or None."""
    exe = shutil.which("systemctl") or shutil.which("systemd-analyze")
    if exe is None:
        return None
    try:
        first = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else None


def _arg(value: str) -> str:
    """A path as one word of a unit file: % doubled (a specifier otherwise), quoted if it has spaces."""
    value = value.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def unit_text(config: AgentConfig, config_path: str, executable: str, version: int | None = None) -> str:
    """The unit for an agent started as ``executable --config config_path``.

    Paths must be absolute (systemd does not resolve relative ones). The state directory is
    the only writable place: through ``StateDirectory=`` when it is under /var/lib (systemd
    creates it, owned by the service user) and ``ReadWritePaths=`` elsewhere; a socket under
    /run gets its ``RuntimeDirectory=``, which systemd creates and removes with the service."""
    for what, path in (
        ("the executable", executable),
        ("the config file", config_path),
        ("state_dir", config.state_dir),
    ):
        if not os.path.isabs(path):
            raise ValueError(f"{what} must be an absolute path for systemd, got {path!r}")
    state = os.path.normpath(config.state_dir)
    svc = config.service
    lines = [
        "# Written by `edgekit-agent service write-unit`; settings: docs/settings.md ([service]).",
        "[Unit]",
        f"Description=edgekit device agent ({config.device_id or 'device'})",
        "After=network-online.target",
        "Wants=network-online.target",
        "# Never give up restarting: the device has nobody to restart it by hand.",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        # Under systemd stdin is /dev/null: applications call the local API instead.
        f"ExecStart={_arg(executable)} --config {_arg(config_path)}"
        + (" --input none" if config.input.source == "stdin" else ""),
        f"User={svc.user}",
        f"Group={svc.group}",
        "Restart=on-failure",
        "RestartSec=2s",
    ]
    if version is not None and version >= 254:  # the version that added RestartSteps / RestartMaxDelaySec
        lines += ["RestartSteps=8", "RestartMaxDelaySec=5min"]
    lines += ["TimeoutStopSec=20s", "Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1", ""]

    lines.append("# Only the state directory (and the socket's) is writable.")
    lines.append("ProtectSystem=strict")
    if _under(state, "/var/lib") and state != "/var/lib":
        lines += [f"StateDirectory={os.path.relpath(state, '/var/lib')}", "StateDirectoryMode=0750"]
    else:
        lines.append(f"# {state} must exist and belong to {svc.user}: nothing else can be created.")
        lines.append(f"ReadWritePaths={_arg(state)}")
    socket_path = config.socket_path
    if socket_path:
        folder = os.path.dirname(os.path.normpath(socket_path))
        if _under(folder, "/run") and folder != "/run" and not _under(folder, "/run/user"):
            lines += [f"RuntimeDirectory={os.path.relpath(folder, '/run')}", "RuntimeDirectoryMode=0750"]
        elif not _under(folder, state):
            lines.append(f"ReadWritePaths={_arg(folder)}")
    needed = (executable, config_path, state, config.trust or "/")
    in_home = any(_under(p, h) for p in needed for h in _HOMES)
    lines.append(f"ProtectHome={'read-only' if in_home else 'yes'}")
    if any(_under(p, t) for p in needed for t in _TMPS):
        lines.append("# PrivateTmp is off: the agent's files are under /tmp (move them to have it on).")
    else:
        lines.append("PrivateTmp=yes")
    lines += [
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "UMask=0027",
        "",
        "# Resources: docs/small-devices.md says what the agent needs.",
        f"MemoryMax={svc.memory_max}",
        f"CPUQuota={svc.cpu_quota}",
        "TasksMax=64",
        "",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=edgekit-agent",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def agent_executable() -> str:
    """The absolute path of the ``edgekit-agent`` being run (or the one installed beside this
    Python, or on PATH): what ExecStart runs."""
    candidates = [Path(sys.argv[0]) if Path(sys.argv[0]).name == "edgekit-agent" else None]
    candidates.append(Path(sys.executable).parent / "edgekit-agent")
    found = shutil.which("edgekit-agent")
    candidates.append(Path(found) if found else None)
    for path in candidates:
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return str(path.absolute())
    raise FileNotFoundError("cannot find the edgekit-agent program; pass --exec with its absolute path")
