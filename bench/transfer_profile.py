"""Where one agent's CPU and memory go when it receives and installs a bundle: the profiling
behind the notes of the ``transfer`` section of BENCHMARKS.md (it writes nothing there).

One broker, one ``edgekit-agent`` and one raw paho subscriber (``bench/raw_subscriber.py``),
the same 10 MiB bundle as ``bench/transfer.py``; several deploys, each followed by a raw
delivery of the same bytes. Per deploy it prints the agent's CPU (scheduler nanoseconds, all
threads), its peak RSS above its RSS just before (VmHWM reset through ``clear_refs``) and the
raw subscriber's CPU. With ``--tool`` it also profiles the agent:

* ``py-spy``: samples every thread (1 kHz, without pausing the process) during the deploys
  and prints the busy share of each function, inclusive (waits in ``select``, queues and
  condition variables left out; waits in ``fsync`` count as busy).
* ``perf``: samples user and kernel stacks (``perf record -g``) and prints the share of each
  shared object and of the heaviest kernel paths (page faults, writes, reads, copies).
* ``callgrind``: counts the instructions of one deploy (until the verified bundle is stored,
  then until active) and of one raw delivery, split into OpenSSL (SHA-256), ``mem*`` and the
  rest. Counts do not move with the machine's load, but valgrind hides the CPU's SHA and
  AVX-512 extensions, so hashing and copying count for far more instructions than they cost
  natively: read the "rest" column, and the native CPU of hashing from ``bench/transfer.py``.

Run: ``.venv/bin/python bench/transfer_profile.py [--tool py-spy|perf|callgrind]`` (py-spy
and perf must be installed; as root, or with ptrace and perf events allowed).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import transfer as bench
from common import log

from device_agent.protocol import DEFAULT_PREFIX, Topics
from edgekit.fleet.deploy import Target, deploy

IDLE_LEAVES = ("Queue.get", "Event.wait", "Condition.wait", "wait (threading", "select (")


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pyspy_table(raw: Path, top: int = 30) -> list[str]:
    """Busy share of each function (inclusive) from py-spy's raw output."""
    counts: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if any(k in frames[-1] for k in IDLE_LEAVES) or frames[-1].startswith("_loop (paho/mqtt/client.py"):
            continue
        busy += int(n)
        for name in {re.sub(r":\d+\)", ")", f) for f in frames[1:]}:
            counts[name] += int(n)
    return [f"{100 * v / busy:5.1f}%  {k}" for k, v in counts.most_common(top)] if busy else ["no busy samples"]


def callgrind_split(path: Path) -> str:
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(path)], capture_output=True, text=True
    ).stdout
    total = crypto = mem = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = n
        elif "libcrypto" in name:
            crypto += n
        elif re.search(r"mem(move|cpy|set)", name):
            mem += n
    return (
        f"{total / 1e6:.0f} M instructions: OpenSSL {crypto / 1e6:.0f} M, mem* {mem / 1e6:.0f} M, "
        f"rest {(total - crypto - mem) / 1e6:.1f} M"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--mib", type=float, default=10.0)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--tool", choices=("none", "py-spy", "perf", "callgrind"), default="none")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-transfer-profile")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("callgrind.*"):
        old.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-profile-"))
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"] if args.tool == "callgrind" else []
    repeats = 1 if grind else args.repeats
    broker = bench.Broker()
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    try:
        bundles = bench.make_bundles(tmp, repeats, int(args.mib * 2**20))
        broker.start()
        fleet = bench.AgentFleet(1, tmp / "agents", broker.url, bundles.trust_path, args.trial_seconds)
        raw = bench.RawFleet(1, broker.url)
        device = fleet.devices[0]
        if grind:  # the same commands, under callgrind
            agent = fleet.procs[device]
            agent.kill()
            agent.wait()
            fleet.procs[device] = subprocess.Popen(
                [*grind, f"--callgrind-out-file={args.out}/callgrind.agent.%p", *map(str, agent.args)],  # type: ignore[union-attr]
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            sub = raw.procs[0]
            sub.kill()
            sub.wait()
            raw.procs[0] = subprocess.Popen(
                [*grind, f"--callgrind-out-file={args.out}/callgrind.raw.%p", *map(str, sub.args)],  # type: ignore[union-attr]
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        procs = [*fleet.procs.values(), *raw.procs]
        raw.start_readers()
        monitor = bench.Monitor(broker.url, Topics(DEFAULT_PREFIX))
        raw.wait_ready(600)
        if not monitor.wait(lambda: monitor.online.get(device, False), 600):
            raise RuntimeError("the agent did not come online")
        apid, rpid = fleet.procs[device].pid, raw.procs[0].pid
        bench.settle([apid, rpid])
        profiler: subprocess.Popen[bytes] | None = None
        if args.tool == "py-spy":
            exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            cmd = [exe, "record", "--pid", str(apid), "--rate", "1000", "--threads", "--nonblocking"]
            profiler = subprocess.Popen([*cmd, "-f", "raw", "-o", str(args.out / "py-spy.txt")])
        elif args.tool == "perf":
            cmd = ["perf", "record", "-F", "2000", "-g", "-p", str(apid), "-o", str(args.out / "perf.data")]
            profiler = subprocess.Popen(cmd)
        if profiler is not None:
            time.sleep(1.0)

        def control(*what: str) -> None:
            subprocess.run(["callgrind_control", *what], check=True, capture_output=True)

        for i, path in enumerate(bundles.paths):
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            staging = fleet.state_dirs[device] / "staging" / sha
            before = status_mib(apid, "VmRSS")
            bench.reset_peak(apid)
            cpu0 = bench.cpu_exact(apid)
            if grind:
                control("-i", "on", str(apid))
            t0 = time.monotonic()
            deploy(broker.url, DEFAULT_PREFIX, path, Target(group=bench.GROUP), bundles.key, bundles.key, bundles.trust)
            if grind:  # a dump when the verified bundle is stored, another when it is active
                seen = False
                while not (seen and not staging.exists()):
                    seen = seen or staging.exists()
                    time.sleep(0.002)
                control("-d", "stored", str(apid))
            if not monitor.wait(lambda sha=sha, t0=t0: bool(monitor.active(sha, t0)), 600):  # type: ignore[misc]
                raise RuntimeError(f"deploy {i + 1} did not become active")
            if grind:
                control("-d", "active", str(apid))
                control("-i", "off", str(apid))
            agent_cpu = bench.cpu_exact(apid) - cpu0
            peak = status_mib(apid, "VmHWM") - before
            bench.settle([apid, rpid])
            raw0 = bench.cpu_exact(rpid)
            if grind:
                control("-i", "on", str(rpid))
            done = bench.raw_trial(i + 1, data, broker, raw, 600)
            if grind:
                control("-d", "raw", str(rpid))
                control("-i", "off", str(rpid))
            raw_cpu = bench.cpu_exact(rpid) - raw0
            print(
                f"deploy {i + 1}: agent CPU {agent_cpu:.3f} s (to active, {time.monotonic() - t0:.2f} s), peak RSS "
                f"+{peak:.1f} MiB over {before:.0f} MiB; raw subscriber CPU {raw_cpu:.4f} s "
                f"({done.all_done_s:.3f} s); agent / raw {agent_cpu / raw_cpu:.1f}×",
                flush=True,
            )
            bench.settle([apid, rpid])
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        monitor.close()
    finally:
        bench.stop_all(procs)
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.tool == "py-spy":
        print("\n".join(pyspy_table(args.out / "py-spy.txt")))
    elif args.tool == "perf":
        report = ["perf", "report", "-i", str(args.out / "perf.data"), "--stdio", "-g", "none"]
        for sort in (["--no-children", "--sort", "dso"], ["--children", "--sort", "sym"]):
            lines = subprocess.run([*report, *sort], capture_output=True, text=True).stdout.splitlines()
            keep = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
            print("\n".join(keep[:12] if sort[-1] == "dso" else [ln for ln in keep if "[k]" in ln][:25]))
    elif args.tool == "callgrind":
        for dump in sorted(args.out.glob("callgrind.*.*.*")):
            print(f"{dump.name}: {callgrind_split(dump)}")
    log(f"profiles in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
