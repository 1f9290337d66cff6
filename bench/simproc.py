"""A simulated fleet in a process of its own, for benchmarks that time the host side.

The simulator is bound by Python: run in the benchmark's own process, its thread would take
the GIL from whatever is being timed there (``fleet status``, a raw baseline). So it runs here,
as a child: ``SimProcess(config)`` starts ``python bench/simproc.py CONFIG_JSON``, which runs
:class:`edgekit.sim.Fleet` and answers one line per request on stdin: ``summary`` (the
fleet's :class:`~edgekit.sim.Summary` as JSON, plus the process's CPU seconds) or ``stop``
(the devices say goodbye; the last line is the final summary).

The same mode runs plain paho clients (``--raw``): N subscribers on the simulator's own
network loop (:mod:`edgekit.sim.net`) that wait on a control topic and, per job published
there, take every retained message under a filter and count bytes: the raw-MQTT baseline of
a delivery to the same number of connections from one process.

Usable from other benchmarks (a rollout at fleet scale, say)::

    with SimProcess(SimConfig(broker=..., trust=..., devices=1000, preinstalled=v1)) as sim:
        sim.wait(lambda s: s["active"].get("pump@1") == 1000, timeout=120)
        ...
        print(sim.summary()["active"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgekit.sim import Faults, Fleet, SimConfig  # noqa: E402

RAW_CONTROL = "bench/raw-fleet/control"


def config_json(config: SimConfig) -> str:
    doc = dataclasses.asdict(config)
    for key in ("trust", "rows_csv", "preinstalled"):
        doc[key] = None if doc[key] is None else str(doc[key])
    return json.dumps(doc)


def config_from_json(text: str) -> SimConfig:
    doc = json.loads(text)
    faults = doc.pop("faults")
    faults["only"] = tuple(faults["only"])
    for key in ("trust", "rows_csv", "preinstalled"):
        doc[key] = None if doc[key] is None else Path(doc[key])
    doc["groups"] = tuple(doc["groups"])
    return SimConfig(**doc, faults=Faults(**faults))


class SimProcess:
    def __init__(self, config: SimConfig | None = None, raw: tuple[str, int] | None = None) -> None:
        """A simulated fleet, or with ``raw=(broker_url, n)`` n raw subscribers."""
        args = [sys.executable, __file__]
        args += ["--raw", raw[0], str(raw[1])] if raw is not None else [config_json(config)]  # type: ignore[arg-type]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()
        self.lines: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, request: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator exited ({self.proc.poll()})")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def summary(self) -> dict[str, Any]:
        return self.ask("summary")

    def wait(self, done: Callable[[dict[str, Any]], bool], timeout: float, poll: float = 0.1) -> dict[str, Any]:
        """Poll the summary until ``done(summary)``; raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.summary()
            if done(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated fleet not there after {timeout:.0f} s: {s}")
            time.sleep(poll)

    def stop(self, timeout: float = 30.0) -> dict[str, Any] | None:
        final = None
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                final = self.ask("stop", timeout)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return final

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


class SimGroup:
    """One fleet spread over several simulator processes (``--id-prefix`` per process, as the
    README says to run more devices than one core carries); its summary is their sum."""

    def __init__(self, config: SimConfig, processes: int) -> None:
        share = [config.devices // processes + (1 if i < config.devices % processes else 0) for i in range(processes)]
        self.members = [
            SimProcess(dataclasses.replace(config, devices=n, id_prefix=f"{config.id_prefix}p{i}-"))
            for i, n in enumerate(share)
        ]

    def summary(self) -> dict[str, Any]:
        return merge([m.summary() for m in self.members])

    def wait(self, done: Callable[[dict[str, Any]], bool], timeout: float, poll: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = self.summary()
            if done(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated fleet not there after {timeout:.0f} s: {s}")
            time.sleep(poll)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> SimGroup:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of several processes as one: counts added, per-key tables added, times the latest."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                table = out.setdefault(key, {})
                for k, v in value.items():
                    table[k] = table.get(k, 0) + v
            elif isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif key in ("now", "elapsed_s"):
                out[key] = max(out.get(key, value), value)
            else:
                out[key] = out.get(key, 0) + value
    return out


# ── the child ─────────────────────────────────────────────────────────────────────────


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve_requests(summary: Callable[[], dict[str, Any]], stop: Callable[[], None]) -> None:
    for line in sys.stdin:
        request = line.strip()
        if request == "summary":
            print(json.dumps({**summary(), "process_cpu_s": _cpu(), "now": time.monotonic()}), flush=True)
        elif request == "stop":
            stop()
            return
    stop()


def run_fleet(config: SimConfig) -> None:
    fleet = Fleet(config)
    threading.Thread(target=_serve_requests, args=(lambda: fleet.summary().to_dict(), fleet.stop), daemon=True).start()
    final = fleet.run()
    print(json.dumps({**final.to_dict(), "process_cpu_s": _cpu(), "now": time.monotonic()}), flush=True)


def run_raw(broker: str, n: int) -> None:
    """n plain subscribers on one loop; per job on the control topic, the time all are complete."""
    from edgekit.fleet.client import parse_broker
    from edgekit.sim.net import Connection, Loop

    host, port = parse_broker(broker)
    loop = Loop()
    job: dict[str, Any] = {}
    got: list[int] = [0] * n
    state = {"complete": 0, "done_at": 0.0, "connected": 0, "stopping": False}
    links: list[Connection] = []

    def on_message(i: int) -> Callable[[str, bytes, bool], None]:
        def handle(topic: str, payload: bytes, _retained: bool) -> None:
            if topic == RAW_CONTROL:
                job.clear()
                job.update(json.loads(payload))
                got[i] = 0
                links[i].subscribe([job["filter"]])
                return
            if not job or got[i] >= job["size"]:
                return
            got[i] += len(payload)
            if got[i] >= job["size"]:
                links[i].unsubscribe([job["filter"]])
                state["complete"] += 1
                if state["complete"] == n:
                    state["done_at"] = time.monotonic()

        return handle

    def on_connected(i: int) -> Callable[[int | None, int], None]:
        def handle(_max: int | None, _bdseq: int) -> None:
            state["connected"] += 1
            links[i].subscribe([RAW_CONTROL])

        return handle

    for i in range(n):
        link = Connection(
            loop, f"bench-raw-{i}", host, port, keepalive=60, announce=8 << 20,
            will=lambda _b: ("bench/raw-fleet/will", b""), bdseq=1,
            on_connected=on_connected(i), on_disconnected=lambda _r: None,
            on_message=on_message(i), on_acked=lambda _m: None,
        )  # fmt: skip
        links.append(link)
        loop.call_later((i // 50) * 0.05, link.connect)

    def summary() -> dict[str, Any]:
        return {"connected": state["connected"], "complete": state["complete"], "done_at": state["done_at"]}

    def reset() -> None:
        state["complete"], state["done_at"] = 0, 0.0

    def requests() -> None:
        for line in sys.stdin:
            request = line.strip()
            if request == "reset":
                reset()
                print(json.dumps(summary()), flush=True)
            elif request == "summary":
                print(json.dumps({**summary(), "process_cpu_s": _cpu(), "now": time.monotonic()}), flush=True)
            elif request == "stop":
                break
        loop.stop()

    threading.Thread(target=requests, daemon=True).start()
    loop.run()
    for link in links:
        link.close()
    loop.flush(1.0)
    print(json.dumps(summary()), flush=True)


def main() -> None:
    if sys.argv[1] == "--raw":
        run_raw(sys.argv[2], int(sys.argv[3]))
    else:
        run_fleet(config_from_json(sys.argv[1]))


if __name__ == "__main__":
    main()
