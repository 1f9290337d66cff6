"""From the field back to a better model, end to end, with real parts and a known truth.

A pump's fault depends on its load and its vibration: ``fault = load + 2·vibration + noise > 0``.
In the training data the vibration sensor read 0 (it was not fitted yet), so model v1 learned
the load alone. In the field the sensor is fitted and the pumps run near the load at which
faults start: v1 is unsure there, and right only half the time. The loop:

    deploy v1 → the agent serves shifted rows → low-confidence rows are captured on the device
    → edgekit fleet samples pull → labels filled in (here: from the generator's truth)
    → edgekit label import → a challenger trained with the labelled rows
    → edgekit compare: better on the field rows → edgekit registry promote --evidence
    → deploy v2 → the share of rows captured as low-confidence drops

Every step is the ``edgekit`` command a person types (run in-process, so the loop takes
seconds); the agent is a real ``edgekit-agent`` process on a real mosquitto.

    python examples/fieldloop.py [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from click.testing import CliRunner  # noqa: E402

from edgekit.cli import main  # noqa: E402
from tests.support.agent import AgentProcess, wait_until  # noqa: E402  (the test suite's helpers)
from tests.support.broker import Broker  # noqa: E402

FEATURES = ["load", "vibration", "temperature"]
TARGET = "fault"
FIELD_ROWS = 300  # rows each model serves in the field
SAY = print


def generate(n: int, rng: np.random.Generator, field: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows and their true labels. In training the vibration sensor reads 0; in the field it
    varies and the load sits near the fault threshold."""
    load = rng.normal(0.0, 0.15 if field else 1.0, n)
    vibration = rng.normal(0.0, 1.0, n) if field else np.zeros(n)
    temperature = rng.normal(0.0, 1.0, n)
    X = np.round(np.c_[load, vibration, temperature], 5)
    y = (X[:, 0] + 2.0 * X[:, 1] + rng.normal(0.0, 0.3, n) > 0).astype(int)
    return X, y


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*FEATURES, TARGET])
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            w.writerow([*row, label])
    return path


class Edgekit:
    """``edgekit ARGS`` in-process, in one workspace, against one broker."""

    def __init__(self, root: Path, broker: str, quiet: bool) -> None:
        self.runner = CliRunner()
        self.env = {"EDGEKIT_WORKSPACE": str(root), "EDGEKIT_BROKER": broker, "EDGEKIT_USER": "field-team"}
        self.quiet = quiet

    def quietly(self, *args: str) -> Any:
        result = self.runner.invoke(main, [*args, "--json"], env=self.env)
        return json.loads(result.stdout) if result.exit_code == 0 else {}

    def __call__(self, *args: str) -> Any:
        if not self.quiet:
            SAY(f"\n$ edgekit {' '.join(args)}")
        result = self.runner.invoke(main, [*args, "--json"], env=self.env)
        if result.exit_code != 0:
            raise SystemExit(f"fieldloop: 'edgekit {' '.join(args)}' failed ({result.exit_code}): {result.output}")
        doc = json.loads(result.stdout)
        if not self.quiet:
            text = self.runner.invoke(main, list(args), env=self.env) if args[0] in ("compare",) else None
            SAY("  " + (text.output.rstrip() if text is not None else _short(doc)).replace("\n", "\n  "))
        return doc


def _short(doc: dict[str, Any]) -> str:
    kind = str(doc.get("schema", "")).split("/")[0].removeprefix("edgekit.")
    if kind == "run":
        return f"run {doc['id']}: holdout accuracy {doc['metrics']['holdout']['accuracy']:.3f}"
    if kind == "bundle":
        return f"{doc['name']} v{doc['version']} (capture policy on)"
    if kind == "deployment":
        return f"{doc['name']} v{doc['version']} → {doc['target']}: {doc['outcome']}"
    if kind == "samples":
        return f"{doc['rows']} captured rows → {doc['path']}"
    if kind == "dataset":
        return f"{doc['name']}@{doc['version']}: {doc['rows']} labelled rows from {', '.join(doc['devices'])}"
    if kind == "stage_changes":
        return "\n".join(f"v{c['version']} → {c['to_stage']}: {c['reason']}" for c in doc["changes"])
    if kind == "review":
        return f"{doc['issues']} of {doc['rows']} training rows look mislabelled → {doc['path']}"
    return kind


def serve(agent: AgentProcess, X: np.ndarray) -> list[dict[str, Any]]:
    return [agent.ask(row) for row in X.tolist()]


def low_rate(pulled: Path, bundle: str, served: int) -> float:
    with pulled.open(newline="") as fh:
        low = sum(r["bundle"] == bundle and r["kind"] == "low" for r in csv.DictReader(fh))
    return low / served


def label(pulled: Path, truth: dict[tuple[float, ...], int], out: Path) -> int:
    """Fill in the pulled CSV's label column, as people would: here from the generator's truth."""
    with pulled.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    for r in rows:
        r["label"] = str(truth[tuple(float(r[f]) for f in FEATURES)])
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def run(workdir: Path, quiet: bool = False, seed: int = 7) -> dict[str, Any]:
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    write_csv(workdir / "pumps.csv", *generate(800, rng, field=False))
    write_csv(workdir / "holdout.csv", *generate(400, rng, field=False))
    write_csv(workdir / "field-eval.csv", *generate(300, rng, field=True))  # labelled later, for compare
    broker = Broker()
    broker.start()
    agent: AgentProcess | None = None
    try:
        ek = Edgekit(workdir, broker.url, quiet)
        ek("init", str(workdir))
        ek("keys", "generate", "--name", "release")
        CliRunner().invoke(main, ["keys", "trust", "-o", str(workdir / "trust.json")], env=ek.env)
        v1_run = ek("train", str(workdir / "pumps.csv"), "--target", TARGET, "--model", "logreg")
        ek("bundle", v1_run["id"], "--name", "pump", "--key", "release", "--capture", "-o", str(workdir))
        ek("registry", "promote", "pump", "1", "--reason", "first model")
        agent = AgentProcess(
            "pump-7", broker.url, workdir / "device" / "state", workdir / "trust.json", groups=("plant",)
        )
        wait_until(lambda: ek.quietly("fleet", "status")["devices"], what="the agent's birth")
        ek("deploy", "pump", "--group", "plant", "--wait", "30")

        # The field: the vibration sensor is fitted; v1 is unsure near the fault threshold.
        X1, y1 = generate(FIELD_ROWS, rng, field=True)
        answers = serve(agent, X1)
        v1_accuracy = float(np.mean([a["prediction"] == t for a, t in zip(answers, y1.tolist(), strict=True)]))
        if not quiet:
            SAY(f"\n  pump-7 served {FIELD_ROWS} field rows with v1: {v1_accuracy:.0%} right")
        pulled = workdir / "field-v1.csv"
        ek("fleet", "samples", "pull", "--group", "plant", "-o", str(pulled), "--wait", "20")
        truth = {tuple(x): int(t) for x, t in zip(X1.tolist(), y1.tolist(), strict=True)}
        labelled = workdir / "labelled.csv"
        label(pulled, truth, labelled)
        dataset = ek("label", "import", str(labelled), "--into", "pump-field")
        review = ek("review", v1_run["id"], "-o", str(workdir / "review.csv"), "--limit", "20")
        v2_run = ek(
            "train", str(workdir / "pumps.csv"), "--target", TARGET, "--model", "logreg",
            "--add-dataset", f"pump-field@{dataset['version']}",
        )  # fmt: skip
        ek("bundle", v2_run["id"], "--name", "pump", "--key", "release", "--capture", "-o", str(workdir))
        comparison = ek(
            "compare", "pump@1", "pump@2", "--on", str(workdir / "holdout.csv"), "--on", str(workdir / "field-eval.csv")
        )
        (workdir / "compare.json").write_text(json.dumps(comparison))
        promoted = ek("registry", "promote", "pump", "2", "--evidence", str(workdir / "compare.json"))
        ek("deploy", "pump", "--group", "plant", "--wait", "30")

        since = time.time()
        X2, y2 = generate(FIELD_ROWS, rng, field=True)
        answers2 = serve(agent, X2)
        v2_accuracy = float(np.mean([a["prediction"] == t for a, t in zip(answers2, y2.tolist(), strict=True)]))
        if not quiet:
            SAY(f"\n  pump-7 served {FIELD_ROWS} more field rows with v2: {v2_accuracy:.0%} right")
        pulled2 = workdir / "field-v2.csv"
        after = datetime.fromtimestamp(since, UTC).isoformat()
        ek("fleet", "samples", "pull", "--group", "plant", "--since", after, "-o", str(pulled2), "--wait", "20")
        rates = {"v1": low_rate(pulled, "pump@1", FIELD_ROWS), "v2": low_rate(pulled2, "pump@2", FIELD_ROWS)}
        if not quiet:
            SAY(f"\n  rows captured as low-confidence: v1 {rates['v1']:.0%} → v2 {rates['v2']:.0%}")
    finally:
        if agent is not None:
            agent.stop()
        broker.close()
    return {
        "v1_field_accuracy": v1_accuracy,
        "v2_field_accuracy": v2_accuracy,
        "captured_low_rate": rates,
        "dataset": dataset,
        "comparison": comparison,
        "promotion": promoted,
        "review": review,
        "v2_run": v2_run,
        "seconds": round(time.monotonic() - started, 1),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print only a JSON summary")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-fieldloop-"))
    try:
        summary = run(workdir, quiet=args.json)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({k: summary[k] for k in ("v1_field_accuracy", "v2_field_accuracy", "captured_low_rate")}))


if __name__ == "__main__":
    main_cli()
