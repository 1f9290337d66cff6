"""The small-device profile: a real agent with a ~1 MiB model, under a 128 MiB memory limit and
on one CPU, still downloads, verifies, trials and serves — a first bundle, then an upgrade
(two models in memory during its trial) — through a real broker.

The memory limit is a cgroup when the machine lets the test make one, else an address-space
rlimit (tests/support/limits.py says why that is a weaker stand-in). Figures are printed, not
asserted: bench/small_device.py measures them (BENCHMARKS.md, docs/small-devices.md).
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from device_agent.client import AgentClient
from edgekit.fleet.deploy import Target
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.deploy import active_version, deploy, status
from tests.support.limits import cpu_seconds, proc_status, small_device
from tests.support.models import Shipped, sensors_rf

pytestmark = pytest.mark.broker

MIB = 1 << 20


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    pytest.importorskip("sklearn")
    return sensors_rf(tmp_path_factory.mktemp("small"))


def expected_labels(bundle: Path, rows: list[list[float]]) -> list[int]:
    with zipfile.ZipFile(bundle) as z:
        session = ort.InferenceSession(z.read("model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probs = session.run(["probabilities"], {name: np.asarray(rows, dtype=np.float32)})[0]
    return [int(i) for i in np.argmax(probs, axis=1)]


def test_a_128_mib_one_cpu_device_downloads_verifies_trials_and_serves(
    small_model: Shipped, broker: Broker, tmp_path: Path
) -> None:
    assert 0.75 * MIB <= small_model.model_bytes <= 1.5 * MIB
    cage = small_device(128 * MIB, 768 * MIB)  # the fallback: 1.5× the address space the agent was seen to need
    state = tmp_path / "tiny" / "state"
    extra = ("--input", "none", "--trial-rows", "300", "--trial-seconds", "600")
    started = time.monotonic()
    agent = AgentProcess("tiny", broker.url, state, small_model.trust, extra=extra, wrap=cage.command)
    try:
        pid = agent.proc.pid
        sock = str(state / "agent.sock")
        wait_until(lambda: os.path.exists(sock), timeout=60, what="the agent's socket")
        with AgentClient(sock, timeout=30) as app:
            assert app.health()["serving"] is False
            start_s = time.monotonic() - started
            # The limits really apply to the agent process.
            if cage.path is not None:
                assert cage.path.name in Path(f"/proc/{pid}/cgroup").read_text()
            else:
                assert str(cage.limit) in Path(f"/proc/{pid}/limits").read_text()
            if cage.cpu is not None:
                assert os.sched_getaffinity(pid) == {cage.cpu}

            for version, bundle in enumerate(small_model.bundles, start=1):
                t0 = time.monotonic()
                deploy(small_model.root, broker.url, bundle, "sensors", Target(device="tiny"))
                wait_until(
                    lambda v=version: (
                        (status(broker.url).get("tiny") or {}).get("phase") == "trial"
                        and app.health()["bundle"] == f"sensors@{v}"
                    ),
                    timeout=120,
                    what=f"v{version} on trial",
                )
                answers = app.predict_many(small_model.rows[:400])  # live rows pass the trial
                wait_until(lambda v=version: active_version(broker.url, "tiny") == v, timeout=60, what=f"v{version}")
                print(f"v{version}: desired → active in {time.monotonic() - t0:.2f} s")
                assert [a["prediction"] for a in answers] == expected_labels(bundle, small_model.rows[:400])
            one = app.predict(small_model.rows[0])
            assert one["bundle"] == "sensors@2"
            doc = app.health()
            assert doc["serving"] and doc["last_error"] is None
        assert agent.proc.poll() is None, agent.stderr()[-2000:]
        mem = proc_status(pid)
        print(
            f"{cage.kind}: start {start_s:.2f} s, cpu {cpu_seconds(pid):.2f} s, VmHWM {mem['VmHWM'] / MIB:.0f} MiB"
            f" (anon {mem.get('RssAnon', 0) / MIB:.0f} MiB), VmPeak {mem['VmPeak'] / MIB:.0f} MiB,"
            f" cgroup peak {(cage.peak_bytes() or 0) / MIB:.0f} MiB"
        )
        assert cage.oom_kills() == 0
    finally:
        agent.stop()
        cage.close()
