"""Run a process as a small device would: under a memory limit and on one CPU.

The memory limit is a cgroup when this machine lets the test make one under its own cgroup
(v2 ``memory.max`` with swap off; else v1 ``memory.limit_in_bytes`` with ``memsw`` to the same
value): that limits what the process really holds in RAM (its RSS plus the page cache it
dirties), which is what runs out on a device. Where no cgroup can be made (an unprivileged
container), the fallback is ``prlimit --as``: RLIMIT_AS bounds *virtual* address space, which
numpy and onnxruntime reserve far beyond what they touch, so it must be set several times
higher than the RSS limit and proves much less; the peak RSS is then read from
``/proc/PID/status`` (VmHWM) instead. ``taskset`` pins the process to one CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v2 hierarchy (controller None) or a v1 controller's."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller in controllers.split(",")):
            return path
    return None


def _v2_cage(limit: int) -> Path | None:
    own = _own_cgroup(None)
    base = CGROUP_ROOT / (own or "/").lstrip("/")
    if own is None or not (base / "cgroup.controllers").exists():
        return None
    try:
        if "memory" not in (base / "cgroup.subtree_control").read_text().split():
            (base / "cgroup.subtree_control").write_text("+memory")
        cage = base / f"edgekit-small-{uuid.uuid4().hex[:8]}"
        cage.mkdir()
    except OSError:
        return None
    try:
        (cage / "memory.max").write_text(str(limit))
        with contextlib.suppress(OSError):
            (cage / "memory.swap.max").write_text("0")
    except OSError:
        cage.rmdir()
        return None
    return cage


def _v1_cage(limit: int) -> Path | None:
    own = _own_cgroup("memory")
    base = CGROUP_ROOT / "memory" / (own or "/").lstrip("/")
    if own is None or not (base / "memory.limit_in_bytes").exists():
        return None
    try:
        cage = base / f"edgekit-small-{uuid.uuid4().hex[:8]}"
        cage.mkdir()
    except OSError:
        return None
    try:
        (cage / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            (cage / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError:
        cage.rmdir()
        return None
    return cage


@dataclass
class Cage:
    kind: str  # "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes" or "prlimit --as"
    limit: int  # bytes: of memory for a cgroup, of address space for prlimit
    path: Path | None  # the cgroup, if one
    cpu: int | None  # the CPU the process is pinned to, if taskset exists

    def command(self, argv: list[str]) -> list[str]:
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        if self.path is not None:  # join the cgroup, then become the program
            join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
            return ["sh", "-c", join, str(self.path), *pin, *argv]
        return ["prlimit", f"--as={self.limit}", "--", *pin, *argv]

    def peak_bytes(self) -> int | None:
        """The cgroup's peak memory use, or None where the kernel does not keep one."""
        if self.path is None:
            return None
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            with contextlib.suppress(OSError, ValueError):
                return int((self.path / name).read_text())
        return None

    def oom_kills(self) -> int:
        if self.path is None:
            return 0
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError):
                for line in (self.path / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def close(self) -> None:
        if self.path is None:
            return
        for _ in range(50):  # the kernel empties the cgroup a moment after its last process exits
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def small_device(memory_bytes: int, address_space_bytes: int, prefer: str = "cgroup") -> Cage:
    """A memory limit of ``memory_bytes`` (a cgroup) or, where none can be made or
    ``prefer="rlimit"``, an address-space limit of ``address_space_bytes``; and one CPU."""
    cpu = min(os.sched_getaffinity(0)) if shutil.which("taskset") else None
    if prefer == "cgroup":
        for make, kind in ((_v2_cage, "cgroup v2 memory.max"), (_v1_cage, "cgroup v1 memory.limit_in_bytes")):
            path = make(memory_bytes)
            if path is not None:
                return Cage(kind, memory_bytes, path, cpu)
    if shutil.which("prlimit") is None:
        raise RuntimeError("neither a cgroup nor prlimit is available to limit memory (apt-get install util-linux)")
    return Cage("prlimit --as", address_space_bytes, None, cpu)


def proc_status(pid: int) -> dict[str, int]:
    """VmPeak, VmSize, VmHWM, VmRSS ... of a live process, in bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if key.startswith(("Vm", "Rss")) and len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
