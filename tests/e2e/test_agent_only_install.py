"""The agent installs and runs with the device dependencies alone: no scikit-learn, skl2onnx or onnx."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from device_agent.protocol import Topics
from edgekit import keys, workspace
from edgekit.fleet.client import connect
from edgekit.fleet.deploy import Target, publish_bundle, publish_desired
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def agent_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    env_dir = tmp_path_factory.mktemp("agent-venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return python


@pytest.mark.broker
@pytest.mark.timeout(700)
def test_agent_runs_with_device_dependencies_only(
    agent_python: str, host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    probe = "import importlib.util as u; print([m for m in ('sklearn','skl2onnx','onnx') if u.find_spec(m)])"
    out = subprocess.run([agent_python, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"host-only packages importable in the agent install: {out}"
    assert sys.executable != agent_python

    agent = AgentProcess("lean-1", broker.url, tmp_path / "lean" / "state", host.trust, python=agent_python)
    try:
        ws = workspace.load(host.root)
        key = keys.load_private(ws, "release")
        with connect(broker.url) as conn:
            info, _ = publish_bundle(conn, Topics(), host.bundles[1].read_bytes(), "wine", 1, key)
            publish_desired(conn, Topics(), Target(device="lean-1"), info, key)
        answer = wait_until(
            lambda: (a := agent.ask(host.rows[0])) and "prediction" in a and a,
            timeout=30,
            interval=0.5,
            what="a prediction from the lean agent",
        )
        assert answer["bundle"] == "wine@1" and answer["prediction"] == 0
    finally:
        agent.stop()
