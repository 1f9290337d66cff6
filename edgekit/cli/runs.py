"""``edgekit train``, ``edgekit quantize`` and ``edgekit runs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import runs as runs_mod
from .. import workspace
from .output import emit, json_option, progress_printer, table

MODEL_CHOICES = ("logreg", "rf", "hgb", "mlp")


def _train_text(d: dict[str, Any]) -> str:
    h = d["metrics"]["holdout"]
    p = d["parity"]
    lines = [
        f"run {d['id']}",
        f"  model      {d['model']['family']} on {d['data']['rows']} rows, {len(d['model']['features'])} features",
        f"  holdout    accuracy {h['accuracy']:.4f}  f1_macro {h['f1_macro']:.4f}",
        f"  parity     max |Δp| {p['max_abs_dp']:.2e}  label agreement {p['label_agreement']:.4f}  "
        + ("ok" if p["ok"] else "FAILED (this run cannot be bundled)"),
        f"  data       sha256 {d['data']['sha256'][:16]}…",
    ]
    return "\n".join(lines)


@click.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="The column to predict.")
@click.option("--model", type=click.Choice(MODEL_CHOICES), default="logreg", show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: edgekit.toml).")
@click.option("--test-size", type=float, default=None, help="Holdout fraction (default: edgekit.toml).")
@json_option
def train_cmd(data: Path, target: str, model: str, seed: int | None, test_size: float | None, as_json: bool) -> None:
    """Train a model from a CSV, convert it to ONNX, check parity; prints the run id.

    Example: edgekit train data.csv --target label --model rf
    """
    ws = workspace.find()
    run = runs_mod.train_run(ws, data, target, model, seed, test_size, progress=progress_printer(not as_json))
    emit(run.record, as_json, _train_text)
    if not run.record["parity"]["ok"]:
        raise SystemExit(4)


def _quant_text(d: dict[str, Any]) -> str:
    verdict = "applied" if d["applied"] else "not applied — the float model is kept"
    return "\n".join(
        [
            f"quantization ({d['method']}): {verdict}",
            f"  reason     {d['reason']}",
            f"  size       {d['size_before']} → {d['size_after']} bytes ({d['size_after'] / d['size_before']:.2f}×)",
            f"  accuracy   {d['accuracy_before']:.4f} → {d['accuracy_after']:.4f}  "
            f"label agreement {d['label_agreement']:.4f}  (gate: ≤ {d['max_accuracy_loss'] * 100:.1f} pt loss)",
            f"  quantized nodes {d['quantized_nodes']}",
        ]
    )


@click.command("quantize")
@click.argument("run_id")
@click.option("--max-accuracy-loss", type=float, default=0.005, show_default=True, help="Gate, as a fraction.")
@json_option
def quantize_cmd(run_id: str, max_accuracy_loss: float, as_json: bool) -> None:
    """Quantize a run's model to int8 where it helps; reports size and accuracy before/after.

    Example: edgekit quantize latest --max-accuracy-loss 0.01
    """
    _, report = runs_mod.quantize_run(workspace.find(), run_id, max_accuracy_loss)
    emit(report.to_dict(), as_json, _quant_text)


@click.group("runs")
def runs_group() -> None:
    """Recorded training runs."""


@runs_group.command("list")
@json_option
def runs_list(as_json: bool) -> None:
    """List runs, newest last.

    Example: edgekit runs list --json
    """
    records = [r.record for r in runs_mod.list_runs(workspace.find())]
    emit(
        records,
        as_json,
        lambda rs: table(
            [
                [
                    r["id"],
                    r["model"]["family"],
                    f"{r['metrics']['holdout']['accuracy']:.4f}",
                    "ok" if r["parity"]["ok"] else "FAIL",
                    "yes" if (r.get("quantization") or {}).get("applied") else "no",
                    r["data"]["sha256"][:12],
                ]
                for r in rs
            ],
            ["RUN", "MODEL", "ACCURACY", "PARITY", "QUANTIZED", "DATA"],
        ),
    )


@runs_group.command("show")
@click.argument("run_id")
@json_option
def runs_show(run_id: str, as_json: bool) -> None:
    """Show everything recorded about a run.

    Example: edgekit runs show latest
    """
    run = runs_mod.load_run(workspace.find(), run_id)
    emit(run.record, as_json, _train_text)


COMMANDS = [train_cmd, quantize_cmd, runs_group]
