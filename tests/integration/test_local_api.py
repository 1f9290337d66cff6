"""Applications on the device call a real agent process: through its Unix socket (the Python
client, a raw socket, socat as in the README), through a broker on the device (MQTT 5
request/response), and ask its health the way a watchdog does."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.client import AgentClient
from edgekit.fleet.deploy import Target
from tests.conftest import HostSetup
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker
from tests.support.deploy import active_version, deploy, status

pytestmark = pytest.mark.broker


def health(*args: str) -> tuple[int, dict[str, Any]]:
    """``edgekit-agent health ... --json`` as a watchdog runs it: exit code and document."""
    done = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "health", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, json.loads(done.stdout)


def test_an_application_calls_the_agent_through_its_socket(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "s1" / "state"
    sock = str(state / "agent.sock")
    agent = AgentProcess("s1", broker.url, state, host.trust, extra=("--input", "none", "--log-format", "json"))
    try:
        wait_until(lambda: Path(sock).exists(), what="the agent's socket")
        code, doc = health("--socket", sock)
        assert (code, doc["serving"], doc["device"], doc["bundle"]) == (1, False, "s1", None)

        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="s1"))
        wait_until(lambda: active_version(broker.url, "s1") == 1, what="active on v1")

        with AgentClient(sock) as app:
            first = app.predict(host.rows[0])
            assert (first["prediction"], first["bundle"]) == (0, "wine@1") and first["confidence"] > 0.5
            by_name = app.predict(dict(zip(host.feature_names, host.rows[-1], strict=True)), id="last")
            assert (by_name["prediction"], by_name["id"]) == (2, "last")
            rows = [host.rows[i % len(host.rows)] for i in range(1024)]
            batch = app.predict_many(rows)
            assert len(batch) == 1024 and all(a["bundle"] == "wine@1" for a in batch)
            alone = [app.predict(r)["prediction"] for r in host.rows[:20]]
            assert [a["prediction"] for a in batch[:20]] == alone
            assert app.predict([1.0, 2.0])["error"] == "row.wrong_shape"

        # A raw socket: what a C or Node program does.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(10)
            raw.connect(sock)
            raw.sendall((json.dumps({"id": 1, "features": host.rows[0]}) + "\n").encode())
            answer = json.loads(raw.makefile("rb").readline())
            assert answer == {**first, "id": 1}

        # Rows served through the socket count in the heartbeat like stdin rows.
        served = 2 + 1024 + 20 + 1
        wait_until(lambda: status(broker.url)["s1"].get("served", 0) >= served, what="socket rows in the heartbeat")

        code, doc = health("--socket", sock)
        assert (code, doc["serving"], doc["bundle"], doc["connected"], doc["phase"]) == (
            0,
            True,
            "wine@1",
            True,
            "active",
        )
        assert doc["last_row_error"]["code"] == "row.wrong_shape"
        assert doc["served"] >= served
        code, doc = health("--socket", str(tmp_path / "nothing.sock"))
        assert (code, doc["reachable"]) == (3, False)
    finally:
        assert agent.stop() == 0
    assert not Path(sock).exists(), "a clean stop removes the socket"
    logged = [json.loads(line) for line in agent.stderr().splitlines() if line.strip()]
    assert logged and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logged)
    assert any("local API on" in entry["msg"] for entry in logged)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (.ci/run installs it)")
def test_the_readme_socat_example(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "x1" / "state"
    agent = AgentProcess("x1", broker.url, state, host.trust, extra=("--input", "none"))
    try:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="x1"))
        wait_until(lambda: active_version(broker.url, "x1") == 1, what="active on v1")
        line = json.dumps(host.rows[0])
        out = subprocess.run(
            f"echo '{line}' | socat - UNIX-CONNECT:{state / 'agent.sock'}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        assert json.loads(out)["prediction"] == 0
        out = subprocess.run(
            f"""echo '{{"op": "health"}}' | socat - UNIX-CONNECT:{state / "agent.sock"}""",
            shell=True,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        assert json.loads(out)["health"]["bundle"] == "wine@1"
    finally:
        agent.stop()


def test_batches_from_the_socket_pass_a_trial(host: HostSetup, broker: Broker, tmp_path: Path) -> None:
    """Only live rows can pass this trial (its time limit is far away): batch rows count."""
    state = tmp_path / "t2" / "state"
    extra = ("--input", "none", "--trial-rows", "500", "--trial-seconds", "600")
    agent = AgentProcess("t2", broker.url, state, host.trust, extra=extra)
    try:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="t2"))
        with AgentClient(str(state / "agent.sock")) as app:
            for _ in range(3):
                wait_until(lambda: status(broker.url).get("t2", {}).get("phase") == "trial", what="v1 on trial")
                assert active_version(broker.url, "t2") is None
                app.predict_many(host.rows[:100])
            app.predict_many(host.rows * 3)
            wait_until(lambda: active_version(broker.url, "t2") == 1, what="trial passed on batch rows")
    finally:
        agent.stop()


class Requester:
    """An application on the device asking over its local broker: MQTT 5 request/response."""

    def __init__(self, broker: Broker) -> None:
        self.answers: dict[bytes, dict[str, Any]] = {}
        self.got = threading.Condition()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("app/replies/#", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        correlation = bytes(getattr(msg.properties, "CorrelationData", b"") or b"")
        with self.got:
            self.answers[correlation] = json.loads(msg.payload)
            self.got.notify_all()

    def ask(self, request: Any, correlation: bytes | None, timeout: float = 10.0) -> dict[str, Any] | None:
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.ResponseTopic = "app/replies/1"
            props.CorrelationData = correlation
        self.client.publish("edgekit/local/infer", json.dumps(request), qos=1, properties=props)
        if correlation is None:
            return None
        with self.got:
            self.got.wait_for(lambda: correlation in self.answers, timeout)
            return self.answers.get(correlation)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_requests_over_a_local_broker_are_answered_on_their_response_topic(
    host: HostSetup, broker: Broker, tmp_path: Path
) -> None:
    local = Broker()  # the device's own broker, not the fleet's
    local.start()
    state = tmp_path / "m1" / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[api]\nmqtt_broker = "{local.url}"\nsocket = "api.sock"\n')
    agent = AgentProcess("m1", broker.url, state, host.trust, extra=("--config", str(config), "--input", "none"))
    app = None
    try:
        deploy(host.root, broker.url, host.bundles[1], "wine", Target(device="m1"))
        wait_until(lambda: active_version(broker.url, "m1") == 1, what="active on v1")
        app = Requester(local)
        wait_until(
            lambda: app.ask(host.rows[0], b"warm-up", timeout=1) is not None, what="the agent on the local broker"
        )
        answer = app.ask({"id": "r1", "features": host.rows[0]}, b"\x00corr-1")
        assert answer is not None and (answer["prediction"], answer["id"]) == (0, "r1")
        batch = app.ask({"rows": host.rows[:50]}, b"corr-2")
        assert batch is not None and len(batch["results"]) == 50
        assert app.ask({"op": "health"}, b"corr-3")["health"]["bundle"] == "wine@1"  # type: ignore[index]
        app.ask(host.rows[0], None)  # no response topic: nobody to answer, nothing breaks
        assert app.ask([1, 2], b"corr-4") == {
            "error": "row.wrong_shape",
            "detail": "row has 2 values, the model expects 13",
        }
        assert "no MQTT 5 response topic" in agent.stderr()

        # `health --config` finds the socket the config names.
        done = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "health", "--config", str(config)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "sets no state_dir" in done.stderr  # a relative socket needs it
        (tmp_path / "full.toml").write_text(f'state_dir = "{state}"\n' + config.read_text())
        code, doc = health("--config", str(tmp_path / "full.toml"))
        assert (code, doc["bundle"]) == (0, "wine@1")
    finally:
        if app is not None:
            app.close()
        agent.stop()
        local.close()
