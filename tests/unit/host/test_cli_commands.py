"""The command line as a user meets it (click's CliRunner, a real workspace, real models):
help with an example everywhere, --json that parses, and one ``error:`` line with the
documented exit code when something is wrong."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result
from skl2onnx import to_onnx
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier

from edgekit.cli import main

# Commands that print data must take --json; these only write a file or print a line of status.
# serve is a daemon: it logs, and --json-log makes that JSON; bridge-config writes a broker's config.
NO_JSON = {("keys", "trust"), ("serve",), ("broker", "bridge-config")}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


ALL = list(_commands(main))


@dataclass
class Cli:
    root: Path
    csv: Path
    runner: CliRunner

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(main, list(args), env={"EDGEKIT_WORKSPACE": str(self.root), "EDGEKIT_USER": "ci"})
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


def _error(result: Result, code: int, match: str) -> str:
    """Exactly one line on stderr, starting with 'error:', nothing on stdout, the right exit code."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    root = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(root), "--json"]).exit_code == 0
    data = load_wine()
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    c = Cli(root, path, runner)
    c("keys", "generate", "--name", "release", "--json")
    c("keys", "trust", "-o", str(root / "trust.json"))
    return c


# Every command, and the groups this part of the code owns (keys and fleet are plain lists).
WITH_EXAMPLE = [p for p, c in ALL if not isinstance(c, click.Group) or p in {("runs",), ("registry",)}]


@pytest.mark.parametrize("path", WITH_EXAMPLE, ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    examples = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("Example:")]
    assert examples and all(e.startswith("Example: edgekit ") for e in examples), result.stdout


@pytest.mark.parametrize("path", [p for p, c in ALL if not isinstance(c, click.Group)], ids=" ".join)
def test_every_data_printing_command_takes_json(path: tuple[str, ...]) -> None:
    command = dict(ALL)[path]
    has_json = any("--json" in p.opts for p in command.params if isinstance(p, click.Option))
    assert has_json or path in NO_JSON


def test_train_bundle_and_the_run_commands_print_json(cli: Cli) -> None:
    a = cli.json("train", str(cli.csv), "--target", "label", "--model", "logreg")
    b = cli.json("train", str(cli.csv), "--target", "label", "--model", "logreg", "--seed", "3")
    cli.json("quantize", a["id"])
    assert [r["id"] for r in cli.json("runs", "list")["runs"]][-2:] == [a["id"], b["id"]]
    shown = cli.json("runs", "show", a["id"])
    assert shown["id"] == a["id"] and set(shown["explain"]["permutation_importance"]) == {
        f["name"] for f in shown["model"]["features"]
    }
    compared = cli.json("runs", "compare", a["id"], b["id"], "--diff-only")
    assert compared["runs"] == [a["id"], b["id"]] and all(f["differs"] for f in compared["fields"])
    assert "seed" in {f["field"] for f in compared["fields"]} and compared["total"] > compared["differing"]
    reproduced = cli.json("runs", "reproduce", b["id"])
    assert reproduced["match"] and reproduced["predictions"]["max_abs_dp"] == 0.0

    text = cli("runs", "show", a["id"]).stdout
    assert "top features (permutation importance" in text
    table = cli("runs", "compare", a["id"], b["id"]).stdout
    assert any(line.startswith("≠") and "seed" in line for line in table.splitlines())
    assert "MATCH" in cli("runs", "reproduce", a["id"]).stdout


def test_bundle_registry_and_deploy_resolution(cli: Cli) -> None:
    run = cli.json("runs", "list")["runs"][0]["id"]
    out = cli.root / "out"
    v1 = cli.json("bundle", run, "--name", "cellar", "--key", "release", "-o", str(out))
    v2 = cli.json("bundle", run, "--name", "cellar", "--key", "release", "-o", str(out))
    assert (v1["version"], v2["version"], v1["stage"]) == (1, 2, "staging")
    assert cli.json("verify", v1["path"], "--trust", str(cli.root / "trust.json"))["ok"]
    manifest = cli.json("inspect", v2["path"])["manifest"]
    assert manifest["explain"]["metric"] == "neg_log_loss" and manifest["lineage"]["run_id"] == run
    # For people: figures formatted, yes/no rather than Python's True/False.
    text = cli("inspect", v2["path"]).stdout
    assert "True" not in text and "False" not in text and re.search(r"quantized  (yes|no) \(", text), text
    assert re.search(r"parity     ok  max \|Δp\| \d\.\d\de-\d\d  label agreement 100\.00%", text), text
    assert re.search(r"holdout accuracy \d\.\d{4} f1_macro \d\.\d{4}", text), text

    [model] = cli.json("registry", "list")["models"]
    assert (model["name"], model["production"], model["staging"]) == ("cellar", None, [1, 2])
    moved = cli.json("registry", "promote", "cellar", "1", "--to", "production", "--reason", "pilot")
    assert [(c["version"], c["to_stage"], c["actor"]) for c in moved["changes"]] == [(1, "production", "ci")]
    moved = cli.json("registry", "promote", "cellar", "2", "--reason", "better")
    assert [(c["version"], c["from_stage"], c["to_stage"]) for c in moved["changes"]] == [
        (1, "production", "archived"),
        (2, "staging", "production"),
    ]
    shown = cli.json("registry", "show", "cellar")
    assert shown["production"] == 2 and len(shown["history"]) == 5
    assert "by ci: better" in cli("registry", "show", "cellar").stdout
    archived = cli.json("registry", "archive", "cellar", "2", "--reason", "recalled")
    assert archived["changes"][0]["to_stage"] == "archived"

    # deploy NAME needs a production version; the error comes before any broker is contacted
    no_prod = cli("deploy", "cellar", "--device", "d1", "--broker", "mqtt://127.0.0.1:9", ok=False)
    _error(no_prod, 2, "model cellar has no production version (v1 archived, v2 archived)")
    cli("registry", "promote", "cellar", "2", "--reason", "recall was a false alarm")
    unreachable = cli("deploy", "cellar", "--device", "d1", "--broker", "mqtt://127.0.0.1:9", ok=False)
    _error(unreachable, 6, "cannot reach the MQTT broker")  # resolved, verified, then the broker
    _error(cli("deploy", "cellar@7", "--device", "d1", ok=False), 2, "model cellar has no version 7")


def test_bundle_from_a_users_onnx_model(cli: Cli, tmp_path: Path) -> None:
    data = load_wine()
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(data.data, data.target)
    onx = to_onnx(clf, data.data[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17)
    (tmp_path / "rf.onnx").write_bytes(onx.SerializeToString())
    built = cli.json(
        "bundle", "--model", str(tmp_path / "rf.onnx"), "--reference", str(cli.csv), "--target", "label",
        "--name", "byo", "--key", "release", "-o", str(tmp_path),
    )  # fmt: skip
    assert built["source"] == "user-model" and built["stage"] == "staging"
    text = cli("inspect", built["path"]).stdout
    assert "user-supplied rf.onnx" in text and "important" in text
    zipmap = to_onnx(clf, data.data[:1].astype(np.float32), target_opset=17)  # skl2onnx's default: a ZipMap
    (tmp_path / "zip.onnx").write_bytes(zipmap.SerializeToString())
    accepted = cli.json(
        "bundle", "--model", str(tmp_path / "zip.onnx"), "--reference", str(cli.csv), "--target", "label",
        "--name", "byo", "--key", "release", "-o", str(tmp_path),
    )  # fmt: skip
    assert accepted["version"] == 2 and accepted["source"] == "user-model"


def test_errors_are_one_line_with_the_documented_exit_code(cli: Cli, tmp_path: Path) -> None:
    run = cli.json("runs", "list")["runs"][0]["id"]
    _error(cli("runs", "show", "zzz", ok=False), 2, "no run 'zzz'")
    _error(cli("runs", "compare", run, ok=False), 2, "compare needs at least two runs")
    _error(cli("bundle", "--name", "x", "--key", "release", ok=False), 2, "give either a RUN_ID or --model")
    _error(cli("bundle", run, "--model", str(cli.csv), "--name", "x", "--key", "release", ok=False), 2, "either")
    _error(
        cli("bundle", "--model", str(cli.csv), "--name", "x", "--key", "release", ok=False),
        2,
        "--model needs --reference",
    )
    _error(cli("registry", "show", "nothing", ok=False), 2, "no model named 'nothing'")
    _error(cli("registry", "promote", "nothing", "1", "--reason", "x", ok=False), 2, "no model named")
    _error(cli("registry", "archive", "cellar", "1", "--reason", "  ", ok=False), 2, "a reason is required")
    missing = cli("registry", "promote", "cellar", "1", ok=False)  # click's own usage error
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.stderr

    # A bundle tampered with after the build: refused by verify with exit 7.
    bundle = cli.root / ".edgekit" / "bundles" / "cellar" / "v1.ekb"
    tampered = tmp_path / "tampered.ekb"
    blob = bytearray(bundle.read_bytes())
    blob[-200] ^= 0xFF
    tampered.write_bytes(bytes(blob))
    verdict = cli("verify", str(tampered), "--trust", str(cli.root / "trust.json"), ok=False)
    assert verdict.exit_code == 7 and verdict.stderr.startswith("error: ") and len(verdict.stderr.splitlines()) == 1

    # Outside any workspace.
    empty = CliRunner().invoke(main, ["runs", "list"], env={"EDGEKIT_WORKSPACE": str(tmp_path)})
    _error(empty, 2, "no edgekit.toml")


def test_reproduce_exit_codes(cli: Cli, tmp_path: Path) -> None:
    """0 when it matches (above), 3 when the data changed, 1 when the retrained model differs."""
    run = cli.json("train", str(cli.csv), "--target", "label", "--model", "logreg", "--seed", "5")["id"]
    original = cli.csv.read_text()
    try:
        cli.csv.write_text(original.replace(original.splitlines()[3], original.splitlines()[4], 1))
        _error(cli("runs", "reproduce", run, ok=False), 3, "the data changed since run")
    finally:
        cli.csv.write_text(original)
    _error(cli("runs", "reproduce", run, "--data", str(tmp_path / "gone.csv"), ok=False), 3, "is gone")
    # Swap the recorded model for another run's: the retrained one no longer matches it.
    other = cli.json("train", str(cli.csv), "--target", "label", "--model", "rf", "--seed", "5")["id"]
    runs_dir = cli.root / ".edgekit" / "runs"
    (runs_dir / run / "model.onnx").write_bytes((runs_dir / other / "model.onnx").read_bytes())
    differs = cli("runs", "reproduce", run, "--json", ok=False)
    assert differs.exit_code == 1
    report = json.loads(differs.stdout)
    assert not report["match"] and report["predictions"]["max_abs_dp"] > 1e-3
    assert "DOES NOT MATCH" in cli("runs", "reproduce", run, ok=False).stdout


def test_shell_completion_works_as_the_readme_says() -> None:
    """``eval "$(_EDGEKIT_COMPLETE=bash_source edgekit)"`` installs it; completing asks click."""
    source = CliRunner().invoke(main, [], prog_name="edgekit", env={"_EDGEKIT_COMPLETE": "bash_source"})
    assert source.exit_code == 0 and "_edgekit_completion" in source.stdout
    env = {"_EDGEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "edgekit ru", "COMP_CWORD": "1"}
    words = CliRunner().invoke(main, [], prog_name="edgekit", env=env)
    assert words.exit_code == 0 and "plain,runs" in words.stdout.splitlines()
    env = {"_EDGEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "edgekit runs re", "COMP_CWORD": "2"}
    assert "plain,reproduce" in CliRunner().invoke(main, [], prog_name="edgekit", env=env).stdout.splitlines()
