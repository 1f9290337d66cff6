"""The C and Node examples of docs/local-api.md, compiled and run against a real server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_factory import verified
from local_server import Server

from device_agent.runtime import LoadedModel

DOC = Path(__file__).resolve().parents[2] / "docs" / "local-api.md"


def example(name: str) -> str:
    block = re.search(rf"<!-- {name}:start -->\n```\w+\n(.*?)```\n<!-- {name}:end -->", DOC.read_text(), re.S)
    assert block is not None, f"docs/local-api.md lost its {name}"
    return block.group(1)


@pytest.fixture
def wine_shaped(tmp_path: Path) -> Iterator[Server]:
    """The examples send a 13-feature row: the tiny test model takes 3, so its answer is a row error."""
    server = Server(tmp_path, LoadedModel(verified()))
    yield server
    server.stop()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (.ci/run installs gcc)")
def test_the_c_example_talks_to_the_agent(wine_shaped: Server, tmp_path: Path) -> None:
    source = tmp_path / "ask.c"
    source.write_text(example("c-example"))
    subprocess.run(["cc", "-Wall", "-o", str(tmp_path / "ask"), str(source)], check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "ask"), wine_shaped.path], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"error": "row.wrong_shape", "detail": "row has 13 values, the model expects 3"}
    missing = subprocess.run([str(tmp_path / "ask"), str(tmp_path / "none.sock")], capture_output=True, timeout=30)
    assert missing.returncode == 3


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_example_talks_to_the_agent(wine_shaped: Server, tmp_path: Path) -> None:
    script = tmp_path / "ask.js"
    script.write_text(example("node-example"))
    out = subprocess.run(["node", str(script), wine_shaped.path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "row.wrong_shape" in out.stdout and "id: 1" in out.stdout
