"""The agent's log on stderr: plain text for a terminal, or one JSON object per line for
journald and log shippers (``log.format``), at the level the config file sets (``log.level``).

Under systemd, stderr is a journald stream: each line then starts with its syslog priority
(``<3>``), which journald strips and records, so ``journalctl -p warning`` filters the agent's
lines whichever format they are in.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from .errors import ConfigError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, thread, msg, and exc
    when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _Journald(logging.Formatter):
    """Prefix each line with its syslog priority for journald (``SyslogLevelPrefix``)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>" + self.inner.format(record).replace("\n", " ⏎ ")


def stderr_is_journald() -> bool:
    """True when stderr is the journald stream systemd set up ($JOURNAL_STREAM names it)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(v) for v in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def check(fmt: str, level: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"log.format {fmt!r}: use {' or '.join(FORMATS)}")
    if level not in LEVELS:
        raise ConfigError(f"log.level {level!r}: use one of {', '.join(LEVELS)}")


def setup(fmt: str, level: str, verbose: int = 0) -> None:
    """Configure the root logger; each ``-v`` lowers the configured level one step."""
    check(fmt, level)
    threshold = max(logging.DEBUG, LEVELS[level] - 10 * verbose)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    if stderr_is_journald():
        formatter = _Journald(formatter)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
