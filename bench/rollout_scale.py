"""A phased rollout to 1,000 simulated devices that aborts on a bad version at its first phase,
next to the same bad version deployed the plain way, in the same run.

Run: ``.venv/bin/python bench/rollout_scale.py`` (a few minutes on 2 cores; ``--devices`` to
shorten). It rewrites only the ``rollout-scale`` section of ``BENCHMARKS.md``.

How it is built, and why:

* **The devices** are ``edgekit sim`` (the agent's own ``AgentCore`` per device, one MQTT
  connection each) in a process of their own (``bench/simproc.py``), all running v1 of a real
  signed wine bundle at the start (``preinstalled``), serving 10 rows/s each. The fault: every
  device that installs v2 (or v4) fails on a live row during its trial and reverts
  (``Faults(trial=1.0, only=...)``): a version that cannot serve the field's rows.
* **The rollout** is the product as a person runs it: ``edgekit serve`` in the workspace (SQLite
  store, alerts off so that only the rollout is measured) and ``edgekit rollout start wine@2
  --group fleet --phases 1%,10%,50%,100%``. The clock starts when the command returns; the
  abort is read from the store; "back" is when every device of the cohort reports the
  rollback version (v1's model re-signed as v3) active in its retained summary, and when the
  whole group does (an abort points the group at the rollback version).
* **The baseline** is the plain ``deploy`` of the same kind of bad version (v4) to the group,
  as one would without phases: how many devices take the bad version, and how long until the
  last of them has failed its trial and is back on the model it ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BENCHMARKS, REPO, log, machine, now_utc, versions, write_section

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from simproc import SimProcess

from edgekit import bundler, keys, pipeline, workspace
from edgekit.fleet.deploy import Target, deploy
from edgekit.fleet.status import fleet_status
from edgekit.sim import Faults, SimConfig
from edgekit.telemetry import open_store
from edgekit.telemetry import rollouts as stored
from tests.support.broker import Broker

SECTION = "rollout-scale"
PREFIX = "edgekit/v1"
GROUP = "fleet"
NAME = "wine"
EDGEKIT = str(Path(sys.executable).parent / "edgekit")


@dataclass
class Result:
    devices: int
    cohort: int
    phase: int
    gate: str
    trial_failed: int  # devices that ran the bad version (and reverted)
    abort_s: float  # rollout start -> aborted
    cohort_back_s: float  # rollout start -> every cohort device on the rollback version
    group_back_s: float  # rollout start -> every device on the rollback version
    baseline_failed: int
    baseline_s: float  # deploy -> every device failed its trial and reverted
    load: tuple[tuple[float, ...], tuple[float, ...]]
    started: str


def wine_csv(path: Path) -> None:
    from sklearn.datasets import load_wine

    data = load_wine()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])


def versions_active(broker: str, devices: set[str] | None = None) -> dict[str, int | None]:
    return {
        d["device"]: (d.get("active") or {}).get("version")
        for d in fleet_status(broker, PREFIX, settle=0.5)
        if devices is None or d["device"] in devices
    }


def wait(what: str, done: Any, timeout: float, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def run(n: int, bake_s: float) -> Result:
    load0 = os.getloadavg()
    started = now_utc()
    with tempfile.TemporaryDirectory(prefix="ek-rollout-scale-") as tmp:
        folder = Path(tmp)
        broker = Broker(max_queued_messages=100_000)
        broker.start()
        try:
            ws = workspace.init(folder / "ws", broker=broker.url)
            with open(ws.root / "edgekit.toml", "a") as fh:
                fh.write("\n[rollout]\ninterval_s = 1.0\n")
            keys.generate(ws, "release")
            trust = folder / "trust.json"
            trust.write_bytes(keys.trust_file(ws).to_json())
            data = folder / "wine.csv"
            wine_csv(data)
            run_ = pipeline.train_run(ws, data, "label", "logreg")
            v1 = bundler.build(ws, run_.id, NAME, "release")
            v2 = bundler.build(ws, run_.id, NAME, "release")
            log(f"bundles v{v1.version}, v{v2.version} ({v2.size:,} bytes)")
            config = SimConfig(
                broker=broker.url,
                trust=trust,
                devices=n,
                groups=(GROUP,),
                rows_csv=data,
                preinstalled=v1.path,
                trial_rows=20,
                faults=Faults(trial=1.0, only=(f"{NAME}@2", f"{NAME}@4")),
            )
            store_url = f"sqlite:///{folder / 'telemetry.db'}"
            with SimProcess(config) as sim:
                log(f"starting {n} simulated devices")
                sim.wait(lambda s: s["connected"] == n and s["active"].get(f"{NAME}@1") == n, timeout=600, poll=1.0)
                serve = subprocess.Popen(
                    [EDGEKIT, "serve", "--store", store_url, "--name", "bench", "--no-alerts"],
                    cwd=ws.root,
                    stdout=subprocess.DEVNULL,
                    stderr=open(folder / "serve.log", "wb"),  # noqa: SIM115 - the process owns it
                )
                try:
                    time.sleep(20)  # serve takes in the fleet's retained state and first heartbeats
                    log("rollout start")
                    out = subprocess.run(
                        [EDGEKIT, "rollout", "start", f"{NAME}@2", "--group", GROUP, "--phases", "1%,10%,50%,100%",
                         "--bake", f"{bake_s:.0f}s", "--store", store_url, "--json"],
                        cwd=ws.root, capture_output=True, text=True, timeout=300, check=True,
                    )  # fmt: skip
                    t0 = time.monotonic()
                    rid = json.loads(out.stdout)["id"]
                    db = open_store(store_url)
                    try:

                        def ended() -> Any:
                            r = stored.get(db, rid)
                            return r if r.state in ("aborted", "completed", "failed") else None

                        r = wait("the rollout to end", ended, timeout=600, poll=0.5)
                    finally:
                        db.close()
                    abort_s = time.monotonic() - t0
                    log(f"rollout {r.state} after {abort_s:.1f} s at phase {r.phase + 1}: {r.note[:200]}")
                    assert r.state == "aborted" and r.rollback is not None, r.log
                    back = r.rollback.version
                    cohort = set(r.targeted)
                    wait(
                        "the cohort back",
                        lambda: set(versions_active(broker.url, cohort).values()) == {back},
                        timeout=600,
                    )
                    cohort_back_s = time.monotonic() - t0
                    log(f"cohort of {len(cohort)} on v{back} after {cohort_back_s:.1f} s")
                    sim.wait(lambda s: s["active"].get(f"{NAME}@{back}") == n, timeout=900, poll=1.0)
                    group_back_s = time.monotonic() - t0
                    log(f"all {n} on v{back} after {group_back_s:.1f} s")
                    failed_rollout = sim.summary()["failures"].get("trial.failed", 0)
                    failed_gate = ", ".join(g.gate for g in r.decisions[-1].failed) if r.decisions else "-"
                finally:
                    serve.terminate()
                    serve.wait(60)

                # The baseline: the same kind of bad version, deployed to the whole group at once.
                v4 = bundler.build(ws, run_.id, NAME, "release")
                assert v4.version == 4, v4.version
                key = keys.load_private(ws, "release")
                t1 = time.monotonic()
                deploy(broker.url, PREFIX, v4.path, Target(group=GROUP), key, key, keys.trust_file(ws))
                # the simulator counts devices that reported a code at least once: every device
                # of the group has failed a trial once all n have (the cohort did on v2 already)
                s = sim.wait(lambda s: s["failures"].get("trial.failed", 0) >= n, timeout=900, poll=1.0)
                sim.wait(lambda s: s["active"].get(f"{NAME}@{back}") == n, timeout=900, poll=1.0)  # all reverted
                baseline_s = time.monotonic() - t1
                baseline_failed = s["failures"]["trial.failed"]
                log(f"baseline: {baseline_failed} devices ran v4 and failed, the last after {baseline_s:.1f} s")
        finally:
            broker.close()
    return Result(
        n,
        len(cohort),
        r.phase,
        failed_gate,
        failed_rollout,
        abort_s,
        cohort_back_s,
        group_back_s,
        baseline_failed,
        baseline_s,
        (load0, os.getloadavg()),
        started,
    )


def render(x: Result) -> str:
    share = x.trial_failed / x.devices
    return "\n".join(
        [
            f"## Rollout at fleet scale ({x.started})",
            "",
            machine(*x.load),
            versions(["paho-mqtt", "onnxruntime", "numpy"]),
            "",
            f"A bad version (every device that runs it fails its trial) rolled out to {x.devices:,} simulated "
            "devices with `edgekit rollout start --phases 1%,10%,50%,100%`, `edgekit serve` running it; "
            "against the same kind of bad version deployed to the group at once with `deploy`, in the same run.",
            "",
            "| | phased rollout | plain deploy (baseline) | ratio |",
            "|---|---|---|---|",
            f"| devices that ran the bad version | {x.trial_failed:,} ({share:.1%}) | {x.baseline_failed:,} | "
            f"{x.trial_failed / max(1, x.baseline_failed):.3f} |",
            f"| stopped at | phase {x.phase + 1} of 4, cohort of {x.cohort} devices; gate: `{x.gate}` | — | |",
            f"| start → aborted (gate decision in the store) | {x.abort_s:.1f} s | — | |",
            f"| start → every cohort device back on the previous model (rollback version active) | "
            f"{x.cohort_back_s:.1f} s | — | |",
            f"| start → all {x.devices:,} devices on the rollback version | {x.group_back_s:.1f} s | — | |",
            f"| deploy → every device failed and reverted to the previous model | — | {x.baseline_s:.1f} s | |",
            "",
            "The abort points the whole group at the rollback version (the previous model re-signed as the "
            "next version: devices refuse lower versions), so every device downloads it once; only the cohort "
            "changes model. One run (each takes about five minutes); its times move with the machine's load, "
            "the counts do not. Rerun: `.venv/bin/python bench/rollout_scale.py`.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--bake", type=float, default=60.0, help="seconds each phase bakes")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    text = render(run(args.devices, args.bake))
    if args.no_write:
        print(text)
    else:
        write_section(SECTION, text, BENCHMARKS)
        log(f"wrote the {SECTION} section of {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
