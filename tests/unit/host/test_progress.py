"""Progress you can watch: a bar with an ETA on a terminal, one line per state change in a pipe,
nothing under --json — on real quantization and training runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sklearn.datasets import load_wine

from edgekit import pipeline, progress, workspace
from edgekit.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[workspace.Workspace, Path, str]:
    root = tmp_path_factory.mktemp("progress")
    ws = workspace.init(root)
    data = load_wine()
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "label", "mlp")
    return ws, path, run.id


def test_the_mode_follows_the_reader() -> None:
    assert progress.for_cli(False, Terminal()).mode == "bar"
    assert progress.for_cli(False, io.StringIO()).mode == "lines"
    assert progress.for_cli(True, Terminal()).mode == "silent"
    assert progress.SILENT.mode == "silent"


def test_a_pipe_gets_one_line_per_state_change(trained: tuple[workspace.Workspace, Path, str]) -> None:
    ws, _, run_id = trained
    out = io.StringIO()
    pipeline.quantize_run(ws, run_id, progress=progress.for_cli(False, out))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("… quantizing a mlp model: started (") and lines[-1].startswith("… quantizing")
    assert "done in" in lines[-1]
    steps = [line for line in lines[1:-1]]
    assert any("dynamic-int8:" in line for line in steps) and any("timed" in line for line in steps)
    assert len(lines) == len(set(lines)), "never the same line twice"
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_a_bar_with_an_eta(trained: tuple[workspace.Workspace, Path, str]) -> None:
    ws, _, run_id = trained
    out = Terminal()
    pipeline.quantize_run(ws, run_id, progress=progress.for_cli(False, out))
    text = out.getvalue()
    assert "\r" in text and "%|" in text  # drawn in place
    assert "<" in text and ("step/s" in text or "s/step" in text)  # elapsed<remaining, and the rate
    assert "quantizing a mlp model: done in" in text


def test_a_search_shows_its_budget_used(trained: tuple[workspace.Workspace, Path, str]) -> None:
    ws, path, _ = trained
    out = io.StringIO()
    pipeline.train_run(ws, path, "label", "auto", time_budget=2.0, progress=progress.for_cli(False, out))
    lines = out.getvalue().splitlines()
    assert any(line.startswith("… searching models (classification) on 178 rows") for line in lines)
    candidates = [line for line in lines if " cv accuracy " in line]
    assert candidates and all("/2 s #" in line and "leading" in line for line in candidates)
    assert any("converting to ONNX" in line for line in lines)


def test_the_cli_is_silent_under_json_and_talks_otherwise(trained: tuple[workspace.Workspace, Path, str]) -> None:
    ws, _, run_id = trained
    env = {"EDGEKIT_WORKSPACE": str(ws.root)}
    quiet = CliRunner().invoke(main, ["quantize", run_id, "--json"], env=env)
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["schema"]
    talking = CliRunner().invoke(main, ["quantize", run_id], env=env)
    assert talking.exit_code == 0 and "… quantizing a mlp model: started" in talking.stderr
    assert "quantization:" in talking.stdout and "…" not in talking.stdout
