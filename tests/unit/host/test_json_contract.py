"""``--json`` is a contract: every command's document, and every error, validated against the
JSON Schemas in docs/json.md; exit codes as documented there."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sklearn.datasets import load_diabetes, load_wine

from edgekit.cli import main
from edgekit.errors import ExitCode
from tests.support.json_contract import (
    FLEET_KIND,
    ROLLOUT_KIND,
    SCHEMAS,
    SECURITY_KIND,
    SIM_KIND,
    STORE_KIND,
    Cli,
    check,
    json_commands,
)

KIND = {
    ("init",): "workspace",
    ("keys", "generate"): "key",
    ("keys", "list"): "keys",
    ("keys", "rotate"): "key",
    ("keys", "revoke"): "key",
    ("train",): "run",
    ("runs", "show"): "run",
    ("runs", "list"): "runs",
    ("quantize",): "quantization",
    ("runs", "compare"): "comparison",
    ("runs", "reproduce"): "reproduction",
    ("bundle",): "bundle",
    ("verify",): "verification",
    ("inspect",): "inspection",
    ("registry", "list"): "models",
    ("registry", "show"): "model",
    ("registry", "promote"): "stage_changes",
    ("registry", "archive"): "stage_changes",
    ("label", "import"): "dataset",
    ("compare",): "model_comparison",
    ("review",): "review",
}


def _csv(path: Path, data: Any, target: str, cast: Any) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), target])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), cast(y)])
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], list[Any]]:
    """One real output (or more) of every documented command, in a real workspace."""
    root = tmp_path_factory.mktemp("contract")
    cli = Cli(root)
    out: dict[tuple[str, ...], list[Any]] = {}

    def run(path: tuple[str, ...], *args: str) -> Any:
        doc = cli(*path, *args)
        out.setdefault(path, []).append(doc)
        return doc

    run(("init",), str(root))
    run(("keys", "generate"), "--name", "release")
    run(("keys", "generate"), "--name", "spare")
    assert run(("keys", "rotate"), "spare", "--new", "spare-2")["revoked"] is False
    assert run(("keys", "revoke"), "spare-2")["revoked"] is True
    run(("keys", "list"))
    wine = _csv(root / "wine.csv", load_wine(), "label", int)
    diabetes = _csv(root / "diabetes.csv", load_diabetes(), "progression", float)
    a = run(("train",), str(wine), "--target", "label", "--model", "logreg")
    b = run(("train",), str(wine), "--target", "label", "--model", "logreg", "--seed", "2")
    r = run(("train",), str(diabetes), "--target", "progression", "--model", "mlp")
    # Reproduced before they are quantized: a reproduction also redoes the quantization, whose
    # choice can hinge on a latency measurement (a noisy machine may choose differently).
    run(("runs", "reproduce"), a["id"])
    run(("runs", "reproduce"), r["id"])
    run(("quantize",), a["id"])
    run(("quantize",), r["id"])
    run(("runs", "list"))
    run(("runs", "show"), r["id"])
    run(("runs", "compare"), a["id"], b["id"], "--diff-only")
    built = run(("bundle",), a["id"], "--name", "wine", "--key", "release", "-o", str(root))
    run(("bundle",), r["id"], "--name", "diabetes", "--key", "release", "-o", str(root))
    trust = root / "trust.json"
    CliRunner().invoke(main, ["keys", "trust", "-o", str(trust)], env={"EDGEKIT_WORKSPACE": str(root)})
    run(("verify",), built["path"], "--trust", str(trust))
    run(("inspect",), built["path"])
    run(("registry", "promote"), "wine", "1", "--reason", "pilot")
    run(("registry", "archive"), "diabetes", "1", "--reason", "not needed")
    run(("registry", "list"))
    run(("registry", "show"), "wine")
    labelled = root / "labelled.csv"
    with wine.open() as src, labelled.open("w") as dst:
        lines = src.read().splitlines()
        dst.write("\n".join([lines[0].rsplit(",", 1)[0] + ",label", *lines[1:60]]) + "\n")
    run(("label", "import"), str(labelled), "--into", "wine-field", "--run", a["id"])
    run(("compare",), a["id"], b["id"], "--on", str(labelled))
    run(("review",), a["id"], "-o", str(root / "review.csv"))
    out[("_cli",)] = [cli]
    return out


def test_every_documented_kind_is_a_valid_schema_and_used() -> None:
    assert set(SCHEMAS) == {
        *KIND.values(),
        *FLEET_KIND.values(),
        *STORE_KIND.values(),
        *SECURITY_KIND.values(),
        *SIM_KIND.values(),
        *ROLLOUT_KIND.values(),
        "error",
    }


def test_every_command_with_json_is_documented() -> None:
    """The fleet commands' documents are checked against a real broker and agent in
    tests/integration/test_fleet_json.py; those reading the telemetry store in
    tests/unit/host/test_history_cli.py; the simulator's in tests/integration/test_sim.py; the rollout
    commands' in tests/unit/host/test_rollout_cli.py and tests/integration/test_rollout.py."""
    assert set(json_commands(main)) == (
        set(KIND) | set(FLEET_KIND) | set(STORE_KIND) | set(SECURITY_KIND) | set(SIM_KIND) | set(ROLLOUT_KIND)
    )


@pytest.mark.parametrize("path", sorted(KIND), ids=" ".join)
def test_each_command_prints_its_documented_document(
    path: tuple[str, ...], outputs: dict[tuple[str, ...], list[Any]]
) -> None:
    assert outputs[path], f"no output of {path}"
    for doc in outputs[path]:
        assert doc["schema"] == f"edgekit.{KIND[path]}/1"
        check(KIND[path], doc)


def test_regression_documents_say_r2(outputs: dict[tuple[str, ...], list[Any]]) -> None:
    regression = next(d for d in outputs[("quantize",)] if d["task"] == "regression")
    assert "r2_before" in regression and "accuracy_before" not in regression and "label_agreement" not in regression
    shown = outputs[("runs", "show")][0]
    assert shown["task"] == "regression" and "label_agreement" not in shown["parity"]
    reproduced = outputs[("runs", "reproduce")][1]
    assert "within_tolerance" in reproduced["predictions"] and "label_agreement" not in reproduced["predictions"]


@pytest.mark.parametrize(
    ("args", "code", "exit_code"),
    [
        (("runs", "show", "nope"), "workspace", ExitCode.USAGE),
        (("runs", "compare", "latest"), "usage", ExitCode.USAGE),
        (("train", "wine.csv"), "usage", ExitCode.USAGE),  # --target is missing: click's own usage error
        (("train", "wine.csv", "--target", "nope"), "data", ExitCode.DATA),
        (("train", "wine.csv", "--target", "label", "--datetime", "x:hours"), "usage", ExitCode.USAGE),
        (("bundle", "--name", "x", "--key", "release"), "usage", ExitCode.USAGE),
        (("bundle", "latest", "--name", "x", "--key", "nokey"), "workspace", ExitCode.USAGE),
        (("registry", "promote", "wine", "9", "--reason", "x"), "registry", ExitCode.USAGE),
        (("registry", "show", "unknown"), "registry", ExitCode.USAGE),
        (("inspect", "missing.ekb"), "usage", ExitCode.USAGE),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_errors_are_documents_with_the_documented_exit_code(
    args: tuple[str, ...], code: str, exit_code: int, outputs: dict[tuple[str, ...], list[Any]]
) -> None:
    cli: Cli = outputs[("_cli",)][0]
    args = tuple(str(cli.root / a) if a.endswith(".csv") else a for a in args)
    doc = cli(*args, code=exit_code)
    check("error", doc)
    assert (doc["code"], doc["exit_code"], doc["ok"]) == (code, exit_code, False)
    assert doc["detail"] and "\n" not in doc["detail"]


def test_a_refused_bundle_is_an_error_document_with_the_device_code(
    outputs: dict[tuple[str, ...], list[Any]], tmp_path: Path
) -> None:
    cli: Cli = outputs[("_cli",)][0]
    built = Path(outputs[("bundle",)][0]["path"])
    tampered = tmp_path / "tampered.ekb"
    data = bytearray(built.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    doc = cli("verify", str(tampered), "--trust", str(cli.root / "trust.json"), code=ExitCode.VERIFY_FAILED)
    check("error", doc)
    assert doc["code"].startswith("bundle.")
