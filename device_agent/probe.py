"""A new model's load and health check, run in a supervised child process under a budget.

A signed model can still be hostile or broken: a ``Loop`` with 10^12 iterations hung the
agent's worker in the health check (no heartbeats, no further deployments), and a model that
allocates gigabytes per row passed on a machine that had them. onnxruntime cannot be stopped
reliably from inside the process (``RunOptions.terminate`` is only polled between some
operators), so the first load and the health check run in a child process with
``RLIMIT_AS`` (address space: the child's own at the start plus ``engine.load_memory_bytes``)
and ``RLIMIT_CPU`` (``engine.load_cpu_s``), and the parent kills it after
``engine.load_timeout_s`` of wall-clock time. Only a model that passed there is loaded into
the agent itself.

The children come from a small fork server (started on the first install, then kept; it
imports neither numpy nor onnxruntime, so it costs the device a few MiB, not the ~60 MiB a
preloaded runtime would), so the agent's serving threads are never forked; each child imports
the runtime, then sets its limits, so the budget is the model's alone. The child also measures what the
model costs — the memory its load and health check added, and the time per health sample — so
the trial can compare the new model with the one it replaces.

``step`` is called as the child reaches each stage (``during_load``, ``during_health_check``):
the crash tests kill the agent there, and the attempt, persisted before the install started,
then counts against the bundle.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

from .bundle import VerifiedBundle
from .errors import AgentError, ModelCrashed, ModelError, ModelResources, ModelTimeout, by_code

_context: BaseContext | None = None


@dataclass(frozen=True)
class Budget:
    """What a model's load and health check may take."""

    timeout_s: float  # wall-clock seconds
    memory_bytes: int  # address space above what the child starts with
    cpu_s: float  # CPU seconds


@dataclass(frozen=True)
class ProbeResult:
    """What the model cost in the child: memory its load and health check added (peak RSS
    growth), the mean time per health sample, and the probe's own wall-clock time."""

    rss_bytes: int
    latency_s: float
    seconds: float


def _ctx() -> BaseContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["device_agent.probe"])  # light: the server stays small
        _context = ctx
    return _context


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _die_with_parent() -> None:
    """The fork server exits when the agent does; its child should not outlive it by its CPU limit."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _lower(which: int, limit: int) -> None:
    """Set a limit, never above the one the agent already runs under (a device may cap the
    agent's address space itself; an unprivileged process cannot raise it)."""
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(which, (limit, hard if which == resource.RLIMIT_CPU else limit))


def _resource_failure(exc: AgentError) -> bool:
    """onnxruntime's errors are untyped: an allocation refused under RLIMIT_AS reads like this."""
    text = exc.detail.lower()
    return any(word in text for word in ("alloc", "memory", "bad_array_new_length"))


def _child(
    conn: multiprocessing.connection.Connection, bundle: VerifiedBundle, path: str, threads: int, budget: Budget
) -> None:
    _die_with_parent()
    try:
        from .runtime import LoadedModel  # numpy and onnxruntime first: the budget is the model's

        base = _status_kib("VmSize:") * 1024
        _lower(resource.RLIMIT_AS, base + budget.memory_bytes)
        used = resource.getrusage(resource.RUSAGE_SELF)
        _lower(resource.RLIMIT_CPU, max(1, int(used.ru_utime + used.ru_stime + budget.cpu_s + 0.999)))
        rss0 = _status_kib("VmRSS:") * 1024
        model = LoadedModel(bundle, threads, model_path=path)
        conn.send(("loaded",))
        started = time.perf_counter()
        samples = model.health_check()
        latency = (time.perf_counter() - started) / max(1, samples)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send(("ok", max(0, peak - rss0), latency))
    except MemoryError:
        conn.send(("error", ModelResources.code, "the model needed more memory than its budget"))
    except AgentError as exc:
        if isinstance(exc, ModelError) and _resource_failure(exc):
            conn.send(("error", ModelResources.code, f"above its memory budget: {exc.detail}"))
        else:
            conn.send(("error", exc.code, exc.detail))
    except BaseException as exc:  # anything else the model made the runtime raise
        conn.send(("error", ModelCrashed.code, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _rebuild(code: str, detail: str) -> AgentError:
    cls = by_code(code) or ModelCrashed
    return cls(detail)


def _died(exitcode: int | None, stage: str, budget: Budget) -> AgentError:
    if exitcode is not None and -exitcode == signal.SIGXCPU:
        return ModelTimeout(f"the model's {stage} used more than {budget.cpu_s:.0f} s of CPU and was stopped")
    if exitcode is not None and -exitcode == signal.SIGKILL:
        return ModelResources(f"the model's {stage} was killed (out of memory?)")
    return ModelCrashed(f"the process checking the model died during its {stage} (exit code {exitcode})")


def probe(
    bundle: VerifiedBundle,
    model_path: str,
    threads: int,
    budget: Budget,
    step: Callable[[str], None] = lambda _point: None,
) -> ProbeResult:
    """Load ``model_path`` and run ``bundle``'s health samples in a child under ``budget``.
    Raises the typed failure (timeout, memory, crash, load, health) or returns the cost."""
    ctx: Any = _ctx()
    started = time.monotonic()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, bundle, model_path, threads, budget), daemon=True)
    proc.start()
    sender.close()
    stage = "load"
    deadline = started + budget.timeout_s
    try:
        step("during_load")
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not receiver.poll(left):
                raise ModelTimeout(f"the model's {stage} took longer than {budget.timeout_s:.0f} s and was stopped")
            try:
                message = receiver.recv()
            except (EOFError, OSError):
                proc.join(5)
                raise _died(proc.exitcode, stage, budget) from None
            if message[0] == "loaded":
                stage = "health check"
                step("during_health_check")
                continue
            if message[0] == "ok":
                return ProbeResult(int(message[1]), float(message[2]), time.monotonic() - started)
            raise _rebuild(str(message[1]), str(message[2]))
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        receiver.close()
        with contextlib.suppress(Exception):
            proc.close()


def warm_up() -> None:
    """Start the fork server ahead of the first install (it imports numpy and onnxruntime)."""
    _ctx()
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver

        forkserver.ensure_running()
