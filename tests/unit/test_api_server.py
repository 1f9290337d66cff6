"""The local API's server in-process: a real engine on a real model, real sockets, the real client."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import sample_rows, verified
from local_server import Server, fake_health

from device_agent.api_server import Handler, LocalApi
from device_agent.client import AgentClient, AgentUnavailable, RequestRefused
from device_agent.config import ApiSettings, EngineSettings
from device_agent.engine import InferenceEngine
from device_agent.errors import ListenFailed
from device_agent.events import Event
from device_agent.local_api import Health
from device_agent.runtime import LoadedModel


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel(verified())


@pytest.fixture
def server(tmp_path: Path, model: LoadedModel) -> Iterator[Server]:
    s = Server(tmp_path, model)
    yield s
    s.stop()


def read_lines(sock: socket.socket, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


ROWS = sample_rows(8, seed=4).tolist()


def test_the_python_client_serves_rows_batches_and_health(server: Server) -> None:
    with AgentClient(server.path) as agent:
        one = agent.predict(ROWS[0])
        assert set(one) == {"prediction", "confidence", "bundle"} and one["bundle"] == "demo@1"
        assert agent.predict({"f0": ROWS[0][0], "f1": ROWS[0][1], "f2": ROWS[0][2]}, id="r1") == {**one, "id": "r1"}
        assert agent.predict([1.0, "warm", 0.0], id=7) == {
            "error": "row.bad_value",
            "detail": "feature 'f1' is 'warm'; this model needs a number",
            "id": 7,
        }
        many = agent.predict_many([*ROWS, [1.0]])
        assert [a.get("prediction") for a in many[:8]] == [agent.predict(r)["prediction"] for r in ROWS]
        assert many[8]["error"] == "row.wrong_shape"
        assert agent.health()["serving"] is True
    assert server.engine.served == 1 + 1 + 8 + 8 and server.engine.rejected == 2


def test_a_raw_socket_needs_only_json_lines(server: Server) -> None:
    """What a C or Node program does: write lines, read as many lines back, in order."""
    with server.raw() as sock:
        requests = [
            json.dumps(ROWS[0]),
            '{"id": "b", "rows": [[0.1, 0.2, 0.3], [1, 2]]}',
            "",  # blank lines are skipped, not answered
            "not json",
            '{"op": "health", "id": 5}',
            '{"op": "reboot"}',
            '{"rows": "all of them"}',
        ]
        sock.sendall(("\n".join(requests) + "\n").encode())
        answers = read_lines(sock, 6)
    assert "prediction" in answers[0]
    assert answers[1]["id"] == "b" and [("error" in a) for a in answers[1]["results"]] == [False, True]
    assert answers[2] == {"error": "row.bad_value", "detail": "input line is not valid JSON"}
    assert answers[3]["id"] == 5 and answers[3]["health"]["device"] == "d1"
    assert answers[4]["error"] == "client.bad_request" and "'reboot'" in answers[4]["detail"]
    assert answers[5] == {"error": "client.bad_request", "detail": "'rows' must be a list of rows"}


def test_a_last_line_without_newline_is_answered_before_closing(server: Server) -> None:
    with server.raw() as sock:
        sock.sendall(json.dumps(ROWS[1]).encode())
        sock.shutdown(socket.SHUT_WR)
        answers = read_lines(sock, 1)
        assert sock.recv(10) == b""  # then the agent closes
    assert "prediction" in answers[0]


def test_too_many_rows_and_too_long_lines_are_refused_whole(tmp_path: Path, model: LoadedModel) -> None:
    server = Server(tmp_path, model, max_batch_rows=4, max_line_bytes=2000)
    try:
        with AgentClient(server.path) as agent:
            with pytest.raises(RequestRefused) as info:
                agent.predict_many(ROWS[:5])
            assert info.value.error == "client.too_large" and "at most 4" in info.value.detail
            assert len(agent.predict_many(ROWS[:4])) == 4
        assert server.engine.served == 4  # the refused batch served nothing
        with server.raw() as sock:
            sock.sendall(b"[" + b"1.0, " * 1000)  # no newline within the limit
            answer = read_lines(sock, 1)[0]
            assert answer["error"] == "client.too_large" and "2000 bytes" in answer["detail"]
            assert sock.recv(10) == b""  # the rest of that line cannot be told from a request: closed
        with AgentClient(server.path) as agent:  # the server is fine
            assert "prediction" in agent.predict(ROWS[0])
    finally:
        server.stop()


def test_connections_beyond_the_limit_are_told_and_closed(tmp_path: Path, model: LoadedModel) -> None:
    server = Server(tmp_path, model, max_clients=2)
    try:
        held = [AgentClient(server.path), AgentClient(server.path)]
        for c in held:
            c.predict(ROWS[0])
        with pytest.raises(RequestRefused) as info:
            AgentClient(server.path).predict(ROWS[0])
        assert info.value.error == "client.busy"
        held[0].close()
        deadline = time.monotonic() + 10
        while server.api.clients > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        late = AgentClient(server.path)
        assert "prediction" in late.predict(ROWS[0])
        late.close()
        held[1].close()
    finally:
        server.stop()


def test_a_client_that_stops_reading_blocks_nobody_and_is_dropped(tmp_path: Path, model: LoadedModel) -> None:
    """It floods requests and never reads: the agent stops reading it once its unread answers
    reach the line limit, others are served meanwhile, the worker's tick is never held up,
    and after io_timeout_s it is disconnected."""
    server = Server(tmp_path, model, max_line_bytes=4096, io_timeout_s=1.5)
    try:
        flood = server.raw()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.settimeout(0.5)
        line = (json.dumps(ROWS[0]) + "\n").encode()
        sent = 0
        with pytest.raises(TimeoutError):  # eventually the agent stops reading it: sendall blocks
            for _ in range(200_000):
                flood.sendall(line)
                sent += 1
        served_at_stall = server.engine.served
        assert served_at_stall < sent  # held back, not answered into an unbounded buffer
        with AgentClient(server.path, timeout=2) as other:
            t0 = time.monotonic()
            for r in ROWS:
                assert "prediction" in other.predict(r)
            assert time.monotonic() - t0 < 1.0
            t0 = time.monotonic()
            server.engine.tick()  # what the worker does every tick: must not wait for the flood
            assert time.monotonic() - t0 < 0.5
            time.sleep(2.5)
            assert server.api.clients == 1  # the flood is gone, the polite client stays
            assert "prediction" in other.predict(ROWS[1])
        flood.close()
    finally:
        server.stop()


def test_an_unfinished_line_is_dropped_after_the_timeout(tmp_path: Path, model: LoadedModel) -> None:
    server = Server(tmp_path, model, io_timeout_s=0.8)
    try:
        with server.raw() as stuck, AgentClient(server.path) as other:
            stuck.sendall(b"[0.1, 0.2")
            assert "prediction" in other.predict(ROWS[0])
            time.sleep(1.8)
            assert stuck.recv(10) == b""
            assert "prediction" in other.predict(ROWS[0])
    finally:
        server.stop()


def test_many_clients_at_once_are_all_answered_in_order(server: Server) -> None:
    errors: list[str] = []

    def work(k: int) -> None:
        with AgentClient(server.path) as agent:
            for i in range(100):
                answer = agent.predict(ROWS[(k + i) % 8], id=f"{k}-{i}")
                if answer.get("id") != f"{k}-{i}":
                    errors.append(f"{k}-{i}: {answer}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and server.engine.served == 800


def test_no_model_is_an_answer_not_a_failure(tmp_path: Path) -> None:
    server = Server(tmp_path, None)
    try:
        with AgentClient(server.path) as agent:
            assert agent.predict(ROWS[0])["error"] == "row.no_model"
            assert [a["error"] for a in agent.predict_many(ROWS[:2])] == ["row.no_model"] * 2
    finally:
        server.stop()


# ── the socket file ───────────────────────────────────────────────────────────────────


def test_the_socket_gets_its_mode_and_is_removed_at_stop(tmp_path: Path, model: LoadedModel) -> None:
    server = Server(tmp_path, model)
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    server.stop()
    assert not os.path.exists(server.path)


def test_a_socket_left_by_a_crash_is_replaced_and_a_live_one_is_not(tmp_path: Path, model: LoadedModel) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "agent.sock"))
    stale.close()  # the file stays, nobody listens: what a killed agent leaves
    first = Server(tmp_path, model)
    try:
        with pytest.raises(ListenFailed, match="another process already serves on"):
            Server(tmp_path, model)
        with AgentClient(first.path) as agent:
            assert "prediction" in agent.predict(ROWS[0])  # the failed second one took nothing away
    finally:
        first.stop()


def test_a_file_in_the_way_is_not_deleted(tmp_path: Path, model: LoadedModel) -> None:
    (tmp_path / "agent.sock").write_text("precious")
    with pytest.raises(ListenFailed, match="is not a socket"):
        Server(tmp_path, model)
    assert (tmp_path / "agent.sock").read_text() == "precious"


def test_loopback_tcp(tmp_path: Path, model: LoadedModel) -> None:
    events: list[Event] = []
    engine = InferenceEngine(events.append, EngineSettings(drift_window_rows=1000))
    engine.activate(model)
    settings = ApiSettings(tcp_port=free_port())
    api = LocalApi(Handler(engine, settings, fake_health), settings, "", 0o660)
    api.bind()
    api.start()
    try:
        assert api.tcp_address == ("127.0.0.1", settings.tcp_port)
        with AgentClient(tcp=("127.0.0.1", settings.tcp_port)) as agent:
            assert "prediction" in agent.predict(ROWS[0])
    finally:
        api.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ── the client ────────────────────────────────────────────────────────────────────────


def test_the_client_says_when_no_agent_is_there(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable, match="no agent socket at"):
        AgentClient(str(tmp_path / "absent.sock")).predict([1, 2, 3])


def test_the_client_reconnects_once_after_the_agent_restarted(tmp_path: Path, model: LoadedModel) -> None:
    server = Server(tmp_path, model)
    agent = AgentClient(server.path)
    assert "prediction" in agent.predict(ROWS[0])
    server.stop()
    server = Server(tmp_path, model)
    try:
        assert "prediction" in agent.predict(ROWS[0])  # the kept connection was dead: reopened
    finally:
        agent.close()
        server.stop()


# ── tensor batches ────────────────────────────────────────────────────────────────────


def test_a_tensor_batch_is_answered_as_columns(server: Server) -> None:
    import numpy as np

    x = np.asarray(sample_rows(64, seed=8), dtype=np.float32)
    x[5, 0] = np.nan
    with AgentClient(server.path) as agent:
        answer = agent.predict_array(x, id="t1")
        singles = [agent.predict(r) for r in x.tolist()]
        as_lists = agent.predict_array(x.astype(np.float64).tolist())
    assert answer["id"] == "t1" and answer["bundle"] == "demo@1"
    assert answer["errors"] == [{"row": 5, "error": singles[5]["error"], "detail": singles[5]["detail"]}]
    assert answer["prediction"][5] is None and answer["confidence"][5] is None
    assert [p for i, p in enumerate(answer["prediction"]) if i != 5] == [
        s["prediction"] for i, s in enumerate(singles) if i != 5
    ]
    assert as_lists["prediction"] == answer["prediction"]
    assert server.engine.served == 63 * 3 and server.engine.rejected == 3


def test_tensor_bytes_may_arrive_in_pieces_and_be_followed_by_lines(server: Server) -> None:
    import numpy as np

    x = np.asarray(sample_rows(10, seed=2), dtype="<f8")
    header = json.dumps({"id": 1, "tensor": {"shape": [10, 3], "dtype": "float64"}}).encode() + b"\n"
    data = x.tobytes()
    with server.raw() as sock:
        sock.sendall(header + data[:37])
        time.sleep(0.2)
        sock.sendall(data[37:] + json.dumps(ROWS[0]).encode() + b"\n")
        answers = read_lines(sock, 2)
    assert answers[0]["id"] == 1 and len(answers[0]["prediction"]) == 10 and answers[0]["errors"] == []
    assert "prediction" in answers[1] and answers[1]["prediction"] in ("low", "mid", "high")


@pytest.mark.parametrize(
    ("header", "error", "detail"),
    [
        ({"tensor": {"shape": [2, 4]}}, "row.wrong_shape", "rows have 4 values, the model expects 3"),
        ({"tensor": {"shape": [2]}}, "client.bad_request", "two non-negative integers"),
        ({"tensor": {"shape": [2, 3], "dtype": "int8"}}, "client.bad_request", "use float32 or float64"),
        ({"tensor": {"shape": [2000, 3]}}, "client.too_large", "at most 1024"),
        ({"tensor": {"shape": [1000, 300]}}, "client.too_large", "the limit is 1048576"),
    ],
)
def test_bad_tensor_headers_are_refused(server: Server, header: dict[str, Any], error: str, detail: str) -> None:
    import numpy as np

    rows, cols = header["tensor"]["shape"] if len(header["tensor"]["shape"]) == 2 else (0, 0)
    body = np.zeros((rows, cols), dtype=np.float32).tobytes() if error == "row.wrong_shape" else b""
    with server.raw() as sock:
        sock.sendall(json.dumps(header).encode() + b"\n" + body + json.dumps(ROWS[0]).encode() + b"\n")
        answers = read_lines(sock, 2)
    assert answers[0]["error"] == error and detail in answers[0]["detail"]
    assert "prediction" in answers[1]  # the connection goes on


def test_a_tensor_over_mqtt_comes_in_one_message(server: Server) -> None:
    import numpy as np

    x = np.asarray(sample_rows(4, seed=2), dtype=np.float32)
    message = json.dumps({"tensor": {"shape": [4, 3]}}).encode() + b"\n" + x.tobytes()
    answer = json.loads(server.handler.handle_message(message))
    assert len(answer["prediction"]) == 4
    short = json.loads(server.handler.handle_message(message[:-4]))
    assert short["error"] == "client.bad_request" and "carries 44" in short["detail"]
    assert "prediction" in json.loads(server.handler.handle_message(json.dumps(ROWS[0]).encode()))


def test_a_binary_answer_holds_the_same_columns_as_raw_bytes(server: Server) -> None:
    import numpy as np

    x = np.asarray(sample_rows(64, seed=9), dtype=np.float32)
    x[7, 1] = np.nan
    with AgentClient(server.path) as agent:
        as_json = agent.predict_array(x, id="j")
        binary = agent.predict_tensor(x, id="b")
        after = agent.predict(x[0].tolist())  # the connection is in step after the raw bytes
    assert binary.header["id"] == "b" and binary.bundle == "demo@1" and binary.header["rows"] == 64
    assert binary.errors == as_json["errors"] and [e["row"] for e in binary.errors] == [7]
    assert binary.predictions == as_json["prediction"]
    assert binary.columns["class_index"][7] == -1
    conf = np.asarray(binary.confidence)
    assert conf.dtype == np.float32 and np.isnan(conf[7])
    expected = np.array([np.nan if c is None else c for c in as_json["confidence"]])
    assert np.allclose(conf, expected, atol=1e-6, equal_nan=True)
    assert after["prediction"] == as_json["prediction"][0]


def test_a_binary_answer_to_a_tensor_that_does_not_fit_is_one_error_line(server: Server) -> None:
    import numpy as np

    with AgentClient(server.path) as agent:
        with pytest.raises(RequestRefused) as refused:
            agent.predict_tensor(np.zeros((2, 5), dtype=np.float32))
        assert refused.value.error == "row.wrong_shape"
        assert "prediction" in agent.predict(ROWS[0])
    with server.raw() as sock:
        header = {"tensor": {"shape": [1, 3]}, "answer": "text"}
        sock.sendall(json.dumps(header).encode() + b"\n")
        assert read_lines(sock, 1)[0]["error"] == "client.bad_request"


def test_a_binary_answer_over_mqtt_is_its_header_line_and_bytes(server: Server) -> None:
    import numpy as np

    x = np.asarray(sample_rows(4, seed=3), dtype=np.float32)
    message = json.dumps({"tensor": {"shape": [4, 3]}, "answer": "binary"}).encode() + b"\n" + x.tobytes()
    head, _, raw = server.handler.handle_message(message).partition(b"\n")
    header = json.loads(head)
    assert header["columns"] == [["class_index", "int32"], ["confidence", "float32"]]
    assert header["nbytes"] == len(raw) == 4 * 4 + 4 * 4
    labels = [header["classes"][j] for j in np.frombuffer(raw[:16], dtype="<i4")]
    as_json = json.dumps({"tensor": {"shape": [4, 3]}}).encode() + b"\n" + x.tobytes()
    assert labels == json.loads(server.handler.handle_message(as_json))["prediction"]


def test_the_health_command_answers_a_watchdog(tmp_path: Path, model: LoadedModel) -> None:
    from click.testing import CliRunner

    from device_agent import cli

    serving = Server(tmp_path, model)
    try:
        result = CliRunner().invoke(cli.main, ["health", "--socket", serving.path])
        assert result.exit_code == 0
        assert result.output.strip() == "d1: serving demo@1, phase active, connected, outbox 0"
    finally:
        serving.stop()
    idle = Server(tmp_path, None)
    idle.handler.health = lambda: Health(
        False, "d1", "0", None, False, "idle", False, {"code": "trust.unavailable", "detail": "no trust file", "ts": 0},
        None, 3, 0, 0, 0, 0.0,
    )  # fmt: skip
    try:
        result = CliRunner().invoke(cli.main, ["health", "--socket", idle.path])
        assert result.exit_code == 1
        assert "serving no model" in result.output and "offline from the fleet broker" in result.output
        assert "last error trust.unavailable: no trust file" in result.output
    finally:
        idle.stop()
