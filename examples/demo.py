"""The whole edgekit story in about a minute, with real parts only.

Trains a classifier on scikit-learn's breast-cancer data (written out as a CSV first, as
your own data would be), converts and quantizes it, signs it into a bundle, starts a
mosquitto broker on a free loopback port, the telemetry collector (``edgekit serve``, SQLite
in the workspace) and two device agents as separate processes, deploys the bundle to both
over MQTT, streams rows into both — one of them with a clear shift in one feature — tries to
slip a tampered bundle past one device, prints the fleet status, the alerts the collector
raised and writes the fleet report (``fleet.html``), and stops everything it started.

    python examples/demo.py [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.broker import Broker  # noqa: E402  (the same broker helper the tests use)

BIN = Path(sys.executable).parent
SHIFTED_FEATURE = "mean radius"
ROWS_PER_DEVICE = 600
QUIET = False


def say(text: str) -> None:
    if not QUIET:
        print(text, flush=True)


def edgekit(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    say(f"\n$ edgekit {' '.join(args)}")
    proc = subprocess.run([str(BIN / "edgekit"), *args], cwd=cwd, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        say("  " + out.replace("\n", "\n  "))
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: 'edgekit {args[0]}' failed with exit code {proc.returncode}")
    return proc


def quiet_json(*args: str, cwd: Path) -> Any:
    proc = subprocess.run([str(BIN / "edgekit"), *args, "--json"], cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def write_csv(path: Path) -> tuple[list[str], np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = list(data.feature_names)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, "diagnosis"])
        for x, y in zip(data.data, data.target, strict=True):
            writer.writerow([*x.tolist(), ["malignant", "benign"][int(y)]])
    return names, np.asarray(data.data)


class Device:
    """One edgekit-agent process fed through its stdin."""

    def __init__(self, name: str, broker: str, workdir: Path, trust: Path) -> None:
        self.name = name
        self.answers: list[dict[str, Any]] = []
        self.log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(BIN / "edgekit-agent"),
                "--device-id",
                name,
                "--broker",
                broker,
                "--state-dir",
                str(workdir / name),
                "--trust",
                str(trust),
                "--group",
                "demo-fleet",
                "--heartbeat",
                "1",
                "--trial-seconds",
                "2",
                "-v",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.append(json.loads(line))

    def feed(self, rows: np.ndarray) -> None:
        assert self.proc.stdin is not None
        for row in rows:
            self.proc.stdin.write(json.dumps(row.tolist()) + "\n")
        self.proc.stdin.flush()

    def wait_answers(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def status(cwd: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([str(BIN / "edgekit"), "fleet", "status", "--json"], cwd=cwd, capture_output=True, text=True)
    return list(json.loads(proc.stdout)["devices"]) if proc.returncode == 0 else []


def wait_status(cwd: Path, check: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    current = status(cwd)
    while not check(current) and time.monotonic() < deadline:
        time.sleep(0.5)
        current = status(cwd)
    return current


def tamper(src: Path, dst: Path) -> None:
    """Change one byte of the model after signing, as a corrupted disk or an attacker would."""
    import zipfile

    data = bytearray(src.read_bytes())
    info = zipfile.ZipFile(src).getinfo("model.onnx")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x01
    dst.write_bytes(bytes(data))


class Collector:
    """``edgekit serve`` beside the agents: stores their telemetry and raises alerts."""

    def __init__(self, workdir: Path) -> None:
        self.log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "edgekit"), "serve", "--name", "demo"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=self.log
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def firing_alerts(workdir: Path, check: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The collector's firing alerts, read from its store (what `edgekit fleet alerts` reads), once ``check`` holds."""
    from edgekit.telemetry import open_store

    store = open_store(f"sqlite:///{workdir / '.edgekit' / 'telemetry.db'}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            current = [a.to_json() for a in store.alerts(state="firing")]
            if check(current) or time.monotonic() > deadline:
                return current
            time.sleep(0.5)
    finally:
        store.close()


def run(workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    names, X = write_csv(workdir / "cancer.csv")
    say(f"wrote {workdir / 'cancer.csv'}: {X.shape[0]} rows, {X.shape[1]} features + diagnosis")

    broker = Broker(persistence=True)
    broker.start()
    say(f"started mosquitto on {broker.url}")
    devices: list[Device] = []
    collector: Collector | None = None
    try:
        edgekit("init", ".", "--broker", broker.url, cwd=workdir)
        edgekit("keys", "generate", "--name", "release", cwd=workdir)
        edgekit("keys", "trust", "-o", "trust.json", cwd=workdir)
        edgekit("train", "cancer.csv", "--target", "diagnosis", "--model", "mlp", cwd=workdir)
        trained = quiet_json("runs", "show", "latest", cwd=workdir)
        edgekit("quantize", trained["id"], cwd=workdir)
        quant = quiet_json("runs", "show", trained["id"], cwd=workdir)["quantization"]
        edgekit("bundle", trained["id"], "--name", "cancer", "--key", "release", cwd=workdir)
        built = {"path": str(workdir / "cancer-v1.ekb"), "name": "cancer", "version": 1}
        edgekit("verify", "cancer-v1.ekb", "--trust", "trust.json", cwd=workdir)
        edgekit("inspect", "cancer-v1.ekb", cwd=workdir)

        say("\nstarting the collector: edgekit serve (SQLite in .edgekit/telemetry.db, alert rules on)")
        collector = Collector(workdir)
        say("starting two device agents: edge-1 and edge-2 (group demo-fleet)")
        devices = [Device(n, broker.url, workdir, workdir / "trust.json") for n in ("edge-1", "edge-2")]
        wait_status(workdir, lambda s: sum(d["status"] == "online" for d in s) == 2)
        edgekit("deploy", Path(built["path"]).name, "--group", "demo-fleet", "--wait", "30", cwd=workdir)

        rng = np.random.default_rng(7)
        normal = X[rng.integers(0, len(X), ROWS_PER_DEVICE)]
        shifted = X[rng.integers(0, len(X), ROWS_PER_DEVICE)].copy()
        col = names.index(SHIFTED_FEATURE)
        shifted[:, col] += 1.5 * X[:, col].std()
        say(f"\nstreaming {ROWS_PER_DEVICE} rows into each device; edge-2's '{SHIFTED_FEATURE}' is shifted by +1.5σ")
        devices[0].feed(normal)
        devices[1].feed(shifted)
        for d in devices:
            d.wait_answers(ROWS_PER_DEVICE)
            say(f"  {d.name}: {len(d.answers)} answers, e.g. {d.answers[0]}")

        say("\na bundle modified after signing is refused by the host …")
        tamper(Path(built["path"]), workdir / "cancer-tampered.ekb")
        refused = edgekit("deploy", "cancer-tampered.ekb", "--device", "edge-1", cwd=workdir, check=False)
        say("… and, forced past the host's check, by the device, which keeps serving its model:")
        edgekit("deploy", "cancer-tampered.ekb", "--device", "edge-1", "--force", cwd=workdir)
        wait_status(workdir, lambda s: any(d["device"] == "edge-1" and d["phase"] == "failed" for d in s))
        devices[0].feed(normal[:5])
        devices[0].wait_answers(ROWS_PER_DEVICE + 5)
        say(f"  edge-1 still answers: {devices[0].answers[-1]}")

        fleet = wait_status(
            workdir,
            lambda s: (
                all((d.get("drift") or {}).get("n") for d in s) and sum(d["served"] for d in s) >= 2 * ROWS_PER_DEVICE
            ),
            timeout=20,
        )
        edgekit("fleet", "status", cwd=workdir)

        key = f"drift:edge-2:{SHIFTED_FEATURE}"
        say(
            f"\nthe collector judges each device's windows: '{SHIFTED_FEATURE}' drifting in 3 of the "
            "last 5 windows pages"
        )
        firing = firing_alerts(workdir, lambda found: any(a["key"] == key for a in found))
        edgekit("fleet", "alerts", cwd=workdir)
        edgekit("report", "-o", "fleet.html", cwd=workdir)
        report = {"path": str(workdir / "fleet.html"), "bytes": (workdir / "fleet.html").stat().st_size}
    finally:
        if collector is not None:
            collector.stop()
        for d in devices:
            d.stop()
        broker.close()
        say("\nstopped the collector, the agents and the broker")
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "run": trained["id"],
        "parity": trained["parity"],
        "quantization": {
            k: quant[k] for k in ("applied", "size_before", "size_after", "accuracy_before", "accuracy_after", "reason")
        },
        "bundle": built,
        "host_refused_tampered": refused.returncode != 0,
        "answers": {d.name: len(d.answers) for d in devices},
        "served_after_tamper": devices[0].answers[-1] if devices else None,
        "fleet": fleet,
        "alerts": firing,
        "report": report,
    }
    say(f"\ndemo finished in {summary['seconds']} s")
    return summary


def main() -> None:
    global QUIET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: temporary)")
    parser.add_argument("--json", action="store_true", help="print only a JSON summary (used by the tests)")
    args = parser.parse_args()
    QUIET = args.json
    # Stopped by a service manager or a test's timeout: unwind, so the broker, collector and
    # agents it started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        raise SystemExit("demo: mosquitto is not installed (make demo installs it)")
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgekit-demo-")))
        else:
            workdir = args.workdir.resolve()
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
        summary = run(workdir)
    if args.json:
        print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
