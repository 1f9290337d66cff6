"""Input sources run under a supervisor: a source that fails is reported and started again.

A row is answered whatever it holds (:func:`device_agent.sources.answer_line` never raises),
so what is left to fail is the source itself: a read error on stdin, a CSV file that went
away. Before, such a failure ended the input thread silently while the agent kept sending
heartbeats, so the host saw a healthy device that served nothing. Now each failure becomes a
``SourceFailed`` event (the core reports it as ``input.failed``) and the source starts again
after ``input.restart_s``; a source that ends normally (end of file) is not restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("edgekit.agent")


def supervise(
    name: str,
    run: Callable[[], object],
    report: Callable[[str, str], None],
    stop: threading.Event,
    restart_s: float,
) -> int:
    """Run ``run`` until it returns; on an exception, ``report(name, why)`` and run it again
    after ``restart_s`` (unless ``stop`` is set meanwhile). Returns how many times it failed."""
    failures = 0
    while not stop.is_set():
        try:
            run()
            return failures
        except Exception as exc:
            failures += 1
            why = f"{type(exc).__name__}: {exc}"
            log.error("input %s failed (%s); restarting it in %.1f s", name, why, restart_s)
            report(name, why)
            if stop.wait(restart_s):
                break
    return failures
