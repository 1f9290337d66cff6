"""``edgekit train``, ``edgekit quantize`` and ``edgekit runs``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from device_agent.features import DATETIME_PARTS

from .. import compare as compare_mod
from .. import progress, workspace

# pipeline and reproduce import scikit-learn and skl2onnx (seconds on a busy machine): they are
# imported by the commands that train, so `edgekit fleet status` does not pay for them.
from .. import runs as runs_mod
from ..errors import ExitCode, UsageError
from .output import emit, json_option, table

MODEL_CHOICES = ("logreg", "rf", "et", "hgb", "lgbm", "xgb", "mlp")


def _train_text(d: dict[str, Any]) -> str:
    h = d["metrics"]["holdout"]
    p = d["parity"]
    model = d["model"]
    task = d.get("task", "classification")
    kinds = [f.get("type", "numeric") for f in model["features"]]
    n_cat = sum(1 for k in kinds if k == "categorical")
    dated = [
        f"{f['name']} → {', '.join(f.get('parts') or [])}" for f in model["features"] if f.get("type") == "datetime"
    ]
    notes = ([f"{n_cat} categorical"] if n_cat else []) + [f"date/time {d}" for d in dated]
    shape = f"{len(kinds)} features" + (f" ({'; '.join(notes)})" if notes else "")
    if task == "regression":
        scores = f"r2 {h['r2']:.4f}  mae {h['mae']:.4g}  rmse {h['rmse']:.4g}"
        parity = f"max |Δy| {p.get('max_abs_dy') or 0.0:.2e} ({p['max_abs_dp']:.1e} of the target's std)"
    else:
        scores = f"accuracy {h['accuracy']:.4f}  f1_macro {h['f1_macro']:.4f}"
        if "roc_auc" in h:
            scores += f"  roc_auc {h['roc_auc']:.4f}"
        parity = f"max |Δp| {p['max_abs_dp']:.2e}  label agreement {p['label_agreement']:.4f}"
    if p.get("boundary_rows"):
        parity += f"; {p['boundary_rows']} boundary rows max {p['boundary_max_abs_dp']:.2e}"
    inp = model.get("input") or {}
    lines = [
        f"run {d['id']}",
        f"  model      {model['family']} ({task}) on {d['data']['rows']} rows, {shape}; "
        f"input {inp.get('layout', 'tensor')} {inp.get('dtype', 'float32')}",
        f"  holdout    {scores}",
    ]
    cv = d["metrics"].get("cv") or {}
    if "mean" in cv:
        lines.append(f"  cv         {cv['metric']} {cv['mean']:.4f} ± {cv['std']:.4f}")
    lines.append(f"  parity     {parity}  " + ("ok" if p["ok"] else "FAILED (this run cannot be bundled)"))
    if not p["ok"] and p.get("explanation"):
        lines.append(f"             {p['explanation']}")
    lines.append(f"  data       sha256 {d['data']['sha256'][:16]}…")
    for name, cap in sorted((d.get("categories") or {}).items()):
        lines.append(
            f"  categories {name}: the {cap['kept']} most frequent of {cap['distinct']} kept, "
            f"the rest ({cap['other_share']:.0%} of training rows) as 'other' (--max-categories)"
        )
    dropped = (d.get("inputs") or {}).get("drop")
    if dropped:
        lines.append(f"  dropped    {', '.join(dropped)}")
    for warning in d.get("warnings") or []:
        lines.append(f"  warning    {warning}")
    board = d.get("leaderboard")
    if board:
        search = d.get("search") or {}
        lines.append(
            f"  search     {search.get('evaluated', len(board))} candidates in {search.get('elapsed_s', 0):.1f} s "
            f"(budget {search.get('time_budget_s', 0):.0f} s), by cv {search.get('metric', '')}; * = chosen"
        )
        if "cross_validated" in search:
            lines.append(
                f"             {search['cross_validated']} cross-validated in full, {search.get('stopped_early', 0)} "
                f"stopped early by successive halving, {search.get('skipped_over_budget', 0)} not started "
                "(would not fit in the time left)"
            )
        rows = [
            [
                str(e["rank"]) + ("*" if e.get("chosen") else ""),
                e["model"],
                f"{e['cv_mean']:.4f} ± {e['cv_std']:.4f}",
                _evaluated_on(e),
                f"{e['fit_seconds']:.2f}",
                str(e.get("size", "")),
                json.dumps(e["params"], sort_keys=True),
            ]
            for e in board
            if e["rank"] <= 10 or e.get("chosen")  # the chosen model is always shown
        ]
        body = table(rows, ["#", "MODEL", "CV", "EVALUATED ON", "FIT S", "SIZE", "PARAMS"])
        lines.extend("    " + line for line in body.splitlines())
        if len(board) > len(rows):
            lines.append(f"    … {len(board) - len(rows)} more (--json for all)")
        chosen = next((e for e in board if e.get("chosen")), None)
        if chosen is not None and chosen["rank"] != 1:
            lines.append(
                "    the top tuned configuration did not beat the best family default by more than one "
                "standard error of its cross-validation, so the default was kept (less luck, same skill)"
            )
    return "\n".join(lines)


def _evaluated_on(entry: dict[str, Any]) -> str:
    """How much evaluation a leaderboard score rests on: folds × fitting rows, or the row sample."""
    if "folds" not in entry:  # runs recorded before the cost-aware search
        return "5 folds"
    if entry["folds"] == 0:
        return f"1 sample of {entry.get('rows', 0)} rows"
    return f"{entry['folds']} fold{'s' if entry['folds'] > 1 else ''} × {entry.get('rows', 0)} rows"


def _datetime_columns(specs: tuple[str, ...]) -> dict[str, list[str] | None]:
    """``--datetime ts`` / ``--datetime ts:hour,weekday`` → {"ts": None} / {"ts": ["hour", "weekday"]}."""
    out: dict[str, list[str] | None] = {}
    for spec in specs:
        name, sep, parts = spec.rpartition(":") if ":" in spec else (spec, "", "")
        chosen = [p.strip() for p in parts.split(",") if p.strip()] if sep else None
        unknown = sorted(set(chosen or ()) - set(DATETIME_PARTS))
        if not name or (sep and not chosen) or unknown:
            raise UsageError(
                f"--datetime {spec!r}: "
                + (f"unknown part {', '.join(unknown)}" if unknown else "give COL or COL:PARTS"),
                f"parts: {', '.join(DATETIME_PARTS)}; e.g. --datetime ts:hour,weekday",
            )
        out[name] = chosen
    return out


@click.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="The column to predict.")
@click.option(
    "--model",
    type=click.Choice(("logreg", "linear", "rf", "et", "hgb", "lgbm", "xgb", "mlp", "auto")),
    default="logreg",
    show_default=True,
    help="A model family, or auto: a cross-validated search within --time-budget.",
)
@click.option("--time-budget", type=float, default=None, help="Seconds for --model auto (default 30).")
@click.option(
    "--metric",
    type=click.Choice(("accuracy", "f1_macro", "roc_auc", "log_loss", "r2", "neg_mae", "neg_rmse")),
    default=None,
    help="Declared metric; auto picks by it (default: accuracy / r2).",
)
@click.option(
    "--task",
    type=click.Choice(("classification", "regression")),
    default=None,
    help="Override the inferred task.",
)
@click.option("--categorical", multiple=True, help="Treat this column as categorical (repeatable).")
@click.option("--drop", multiple=True, help="Leave this column out (repeatable).")
@click.option(
    "--datetime",
    "datetimes",
    multiple=True,
    metavar="COL[:PARTS]",
    help="Use this date/time column through its parts (repeatable): hour, weekday, month by default, "
    "or e.g. ts:hour,weekday (parts: " + ", ".join(DATETIME_PARTS) + ").",
)
@click.option(
    "--max-categories",
    type=click.IntRange(min=0),
    default=None,
    help="Categories kept per categorical column, the rest become 'other' (default 30, edgekit.toml; 0: no cap).",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: edgekit.toml).")
@click.option("--test-size", type=float, default=None, help="Holdout fraction (default: edgekit.toml).")
@click.option(
    "--add",
    "add_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Labelled rows (a CSV from fleet samples pull, labels filled in) added to the training split (repeatable).",
)
@click.option(
    "--add-dataset",
    "add_datasets",
    multiple=True,
    metavar="NAME[@V]",
    help="A dataset version from edgekit label import, added to the training split (repeatable).",
)
@json_option
def train_cmd(
    data: Path,
    target: str,
    model: str,
    time_budget: float | None,
    metric: str | None,
    task: str | None,
    categorical: tuple[str, ...],
    drop: tuple[str, ...],
    datetimes: tuple[str, ...],
    max_categories: int | None,
    seed: int | None,
    test_size: float | None,
    add_files: tuple[str, ...],
    add_datasets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Train a model from a CSV or Parquet file, convert it to ONNX, check parity; prints the run.

    Example: edgekit train data.csv --target label --model auto --time-budget 60 --metric f1_macro
    """
    ws = workspace.find()
    from .. import pipeline

    run = pipeline.train_run(
        ws,
        data,
        target,
        model,
        seed,
        test_size,
        progress=progress.for_cli(as_json),
        task=task,
        categorical=categorical,
        metric=metric,
        time_budget=time_budget,
        drop=drop,
        datetimes=_datetime_columns(datetimes),
        max_categories=max_categories,
        add=[*add_files, *(f"dataset:{d}" for d in add_datasets)],
    )
    emit(run.record, as_json, _train_text, "run")
    if not run.record["parity"]["ok"]:
        raise SystemExit(ExitCode.CONVERSION)


def _quant_text(d: dict[str, Any]) -> str:
    verdict = f"applied ({d['method']})" if d["applied"] else "not applied — the float model is kept"
    metric = d.get("metric", "accuracy")
    regression = "r2_before" in d
    before, after, gate = (("r2_before", "r2_after", "max_r2_loss") if regression else
                           ("accuracy_before", "accuracy_after", "max_accuracy_loss"))  # fmt: skip
    p50 = (d.get("latency_p50_us_before"), d.get("latency_p50_us_after"))
    lines = [
        f"quantization: {verdict}",
        f"  reason     {d['reason']}",
        f"  size       {d['size_before']} → {d['size_after']} bytes ({d['size_after'] / d['size_before']:.2f}×)",
        f"  {metric:<10} {d[before]:.4f} → {d[after]:.4f}  "
        + ("" if regression else f"label agreement {d['label_agreement']:.4f}  ")
        + f"(gate: ≤ {d[gate] * 100:.1f} pt loss)",
    ]
    if None not in p50:
        lines.append(f"  p50        {p50[0]:.1f} → {p50[1]:.1f} µs per row (onnxruntime, 1 thread)")
    lines.append(f"  quantized nodes {d['quantized_nodes']}")
    candidates = d.get("candidates") or []
    score = "r2" if regression else "accuracy"
    if candidates:
        rows = [
            [
                c["strategy"],
                c["verdict"],
                "" if c["size"] is None else f"{c['size']} ({c['size'] / d['size_before']:.2f}×)",
                "" if c["latency_p50_us"] is None else f"{c['latency_p50_us']:.1f}",
                "" if c.get(score) is None else f"{c[score]:.4f}",
                *([] if regression else ["" if c["label_changes"] is None else str(c["label_changes"])]),
            ]
            for c in candidates
        ]
        header = ["STRATEGY", "VERDICT", "BYTES", "P50 µs", metric.upper(), *([] if regression else ["LABELS CHANGED"])]
        lines += ["", table(rows, header)]
        lines += [f"  {c['strategy']}: {c['reason']}" for c in candidates if c["verdict"] != "chosen"]
    return "\n".join(lines)


@click.command("quantize")
@click.argument("run_id")
@click.option("--max-accuracy-loss", type=float, default=0.005, show_default=True, help="Gate, as a fraction.")
@click.option(
    "--max-label-changes",
    type=click.IntRange(min=0),
    default=None,
    help="Holdout rows allowed to change label, for every strategy (default: 0 for tree ensembles, "
    "not limited for the others, where the accuracy gate decides).",
)
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    help="Try only this strategy (repeatable), e.g. dynamic-int8, static-qdq-int8, fp16, compact.",
)
@json_option
def quantize_cmd(
    run_id: str, max_accuracy_loss: float, max_label_changes: int | None, strategies: tuple[str, ...], as_json: bool
) -> None:
    """Shrink a run's model where it helps: tries int8 (dynamic, static), fp16, the MatMul form
    of linear models and lossless compaction, as fit the model family; reports size, p50
    latency, accuracy and label agreement per strategy and ships the best that passes the gates.

    Example: edgekit quantize latest --max-accuracy-loss 0.01
    """
    from .. import pipeline

    _, report = pipeline.quantize_run(
        workspace.find(),
        run_id,
        max_accuracy_loss,
        max_label_changes,
        list(strategies) or None,
        progress=progress.for_cli(as_json),
    )
    emit(report.to_dict(), as_json, _quant_text, "quantization")


def _headline(record: dict[str, Any]) -> str:
    """The holdout metric a list shows: accuracy for classifiers, else the first recorded one."""
    holdout = (record.get("metrics") or {}).get("holdout") or {}
    for key in ("accuracy", "r2", *sorted(holdout)):
        value = holdout.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{key} {value:.4f}"
    return "-"


def _list_text(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no runs yet: train one with 'edgekit train data.csv --target COLUMN'"
    rows = []
    for r in records:
        parity = r.get("parity") or {}
        rows.append(
            [
                r["id"],
                str((r.get("model") or {}).get("family") or (r.get("params") or {}).get("model")),
                _headline(r),
                "ok" if parity.get("ok") else "FAIL",
                "yes" if (r.get("quantization") or {}).get("applied") else "no",
                str((r.get("data") or {}).get("sha256", ""))[:12],
                str(r.get("reproduces") or ""),
            ]
        )
    return table(rows, ["RUN", "MODEL", "HOLDOUT", "PARITY", "QUANTIZED", "DATA", "REPRODUCES"])


@click.group("runs")
def runs_group() -> None:
    """Recorded training runs: list, show, compare, reproduce.

    Example: edgekit runs compare 20260101-120000-ab12cd latest
    """


@runs_group.command("list")
@json_option
def runs_list(as_json: bool) -> None:
    """List runs, oldest first.

    Example: edgekit runs list --json
    """
    records = [r.record for r in runs_mod.list_runs(workspace.find())]
    emit(records, as_json, _list_text, "runs", "runs")


def _show_text(d: dict[str, Any]) -> str:
    from ..explain import top_features

    try:
        lines = [_train_text(d)]
    except (KeyError, TypeError, ValueError):  # a record shape the training summary does not know
        lines = [f"run {d['id']}"]
    code = d.get("code_version") or {}
    env = d.get("environment") or {}
    quant = d.get("quantization") or {}
    params = {k: v for k, v in (d.get("params") or {}).items() if k not in ("model", "seed", "test_size")}
    metrics = d.get("metrics") or {}
    lines += [
        f"  created    {d.get('created')}  ({d.get('duration_s')} s)",
        f"  file       {(d.get('data') or {}).get('path')}  target {(d.get('data') or {}).get('target')}",
        f"  seed       {d.get('seed')}  params {json.dumps(params, sort_keys=True, default=str)[:200]}",
        "  cv         " + "  ".join(f"{k} {_cell(v, 40)}" for k, v in sorted((metrics.get("cv") or {}).items())),
        "  quantized  "
        + (
            f"{quant.get('method')}: {'applied' if quant.get('applied') else 'not applied'} ({quant.get('reason')})"
            if quant
            else "not tried"
        ),
        "  code       "
        + (
            f"git {str(code.get('git_commit'))[:12]}{' (dirty)' if code.get('dirty') else ''}" if code else "not in git"
        ),
        f"  env        python {env.get('python')}  {env.get('platform')}",
    ]
    if d.get("reproduces"):
        lines.append(f"  reproduces {d['reproduces']}")
    explain = d.get("explain") or {}
    top = top_features(explain, 5)
    if top:
        lines.append(
            f"  top features (permutation importance, {explain.get('metric')} on {explain.get('rows')} "
            f"{explain.get('on', 'holdout')} rows, {explain.get('n_repeats')} repeats)"
        )
        width = max(len(name) for name, _, _ in top)
        lines += [f"    {name:<{width}}  {mean:+.4f} ± {std:.4f}" for name, mean, std in top]
    elif explain.get("error"):
        lines.append(f"  importance not computed: {explain['error']}")
    return "\n".join(lines)


@runs_group.command("show")
@click.argument("run_id")
@json_option
def runs_show(run_id: str, as_json: bool) -> None:
    """Show everything recorded about a run, with its most important features.

    Example: edgekit runs show latest
    """
    run = runs_mod.load_run(workspace.find(), run_id)
    emit(run.record, as_json, _show_text, "run")


def _cell(value: Any, width: int = 28) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _compare_text(d: dict[str, Any]) -> str:
    rows = [["≠" if f["differs"] else "", f["field"], *[_cell(v) for v in f["values"]]] for f in d["fields"]]
    header = ["", "FIELD", *d["runs"]]
    summary = f"{d['differing']} of {d['total']} fields differ" + (" (only those shown)" if d["diff_only"] else "")
    return table(rows, header) + "\n" + summary if rows else summary


@runs_group.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--diff-only", is_flag=True, help="Show only the fields that differ.")
@json_option
def runs_compare(run_ids: tuple[str, ...], diff_only: bool, as_json: bool) -> None:
    """Compare runs side by side: data, parameters, metrics, environment; ≠ marks differences.

    Example: edgekit runs compare 20260101-120000-ab12cd latest --diff-only
    """
    ws = workspace.find()
    result = compare_mod.compare([runs_mod.load_run(ws, r) for r in run_ids], diff_only=diff_only)
    emit(result, as_json, _compare_text, "comparison")


def _reproduce_text(d: dict[str, Any]) -> str:
    p = d["predictions"]
    lines = [
        f"run {d['run']} reproduced as run {d['reproduction']}: " + ("MATCH" if d["match"] else "DOES NOT MATCH"),
        f"  data         {d['data']['path']}  sha256 {str(d['data']['sha256'])[:16]}…  unchanged",
        "  inputs       " + "  ".join(f"{k}={v}" for k, v in sorted(d["inputs"].items())),
        f"  predictions  max |Δp| {p['max_abs_dp']:.3g} on {p['rows']} holdout rows (tolerance {p['tolerance']:g}), "
        + (
            f"label agreement {p['label_agreement']:.4f}"
            if "label_agreement" in p
            else f"{p.get('within_tolerance', 0.0):.2%} within the tolerance"
        )
        + ("" if p["same_holdout_rows"] else ", BUT the holdout split differs"),
        f"  model bytes  {'identical' if d['model_bytes_identical'] else 'differ'}",
        *(
            [
                f"  quantized    {q['method'][0]} → {q['method'][1]}, applied {q['applied'][0]} → {q['applied'][1]}, "
                f"max |Δp| {q['max_abs_dp']:.3g}: " + ("same" if q["match"] else "DIFFERENT")
            ]
            if (q := d.get("quantization"))
            else []
        ),
        "  metrics" + ("      all equal" if d["metrics_match"] else "      (≠ beyond tolerance)"),
    ]
    for name, m in sorted(d["metrics"].items()):
        delta = m["delta"]
        mark = "≠ " if delta is None or abs(delta) > d["tolerances"]["metrics"] else "  "
        after = "missing" if m["reproduced"] is None else f"{m['reproduced']:.6g}"
        shown = "" if delta is None else f"  Δ {delta:+.3g}"
        lines.append(f"    {mark}{name:<28} {m['recorded']:.6g} → {after}{shown}")
    for pkg, (a, b) in sorted(d["package_differences"].items()):
        lines.append(f"  package      {pkg} {a} → {b}")
    return "\n".join(lines)


@runs_group.command("reproduce")
@click.argument("run_id")
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The run's data file, if it moved (its fingerprint must still match).",
)
@json_option
def runs_reproduce(run_id: str, data_path: Path | None, as_json: bool) -> None:
    """Retrain a run from its recorded data, parameters and seed; compare metrics and predictions.

    Exit 0 when both match, 1 when they do not, 3 when the data file is gone or changed.

    Example: edgekit runs reproduce latest --json
    """
    ws = workspace.find()
    from .. import reproduce

    report = reproduce.reproduce(ws, run_id, data_path, progress=progress.for_cli(as_json))
    emit(report, as_json, _reproduce_text, "reproduction")
    if not report["match"]:
        raise SystemExit(ExitCode.ERROR)


COMMANDS = [train_cmd, quantize_cmd, runs_group]
