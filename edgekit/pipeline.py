"""The pipeline that makes runs: train (or search), convert with the parity gate, compute
reference statistics and permutation importance, record; and quantize a recorded run.

The run store (:mod:`edgekit.runs`) knows how runs are kept; this module knows how they are
made, and :mod:`edgekit.reproduce` makes one again from its record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .convert import convert_checked
from .data import MAX_CATEGORIES, load_table
from .explain import permutation
from .field import oof
from .field.added import load_added
from .onnx_model import OnnxModel
from .progress import SILENT, Progress
from .reference import build_reference
from .runs import (
    FLOAT_MODEL,
    HOLDOUT_FILE,
    HOLDOUT_ROWS_FILE,
    QUANT_MODEL,
    REFERENCE_FILE,
    Run,
    code_version,
    environment,
    load_run,
    new_run_id,
)
from .train import CV_FOLDS, train
from .workspace import Workspace


def table_options(inputs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`edgekit.data.load_table` for a run's recorded inputs:
    how :func:`train_run` reads its table, and how a reproduction reads it again."""
    dates = inputs.get("datetimes") or {}
    return {
        "task": inputs.get("task"),
        "categorical": list(inputs.get("categorical") or ()),
        "drop": list(inputs.get("drop") or ()),
        "datetimes": {str(k): list(v) if v else None for k, v in dates.items()},
        "max_categories": int(inputs.get("max_categories") or 0) or None,
    }


def train_run(
    ws: Workspace,
    data_path: Path,
    target: str,
    model: str = "logreg",
    seed: int | None = None,
    test_size: float | None = None,
    progress: Progress = SILENT,
    *,
    task: str | None = None,
    categorical: list[str] | tuple[str, ...] = (),
    metric: str | None = None,
    time_budget: float | None = None,
    params: dict[str, Any] | None = None,
    search_progress: Callable[[dict[str, Any]], None] | None = None,
    drop: list[str] | tuple[str, ...] = (),
    datetimes: dict[str, list[str] | None] | None = None,
    max_categories: int | None = None,
    add: Sequence[str] = (),
) -> Run:
    """Load, train (or search, ``model="auto"``), convert, check parity, compute reference
    statistics; record it all.

    ``task`` overrides the inferred task, ``categorical`` forces columns to be categorical,
    ``drop`` leaves columns out, ``datetimes`` names date/time columns and their parts (None:
    chosen from the data), ``max_categories`` caps categorical columns (default: edgekit.toml's
    ``train.max_categories``, else 30; 0: no cap), ``metric`` is the declared metric (selection
    metric of ``auto``), ``time_budget`` the search's seconds, ``params`` a family's
    hyperparameters. ``progress`` shows the stages and the search (a bar over its time
    budget); ``search_progress`` also gets one dict per evaluated search candidate. The
    record's ``inputs`` hold what :func:`reproduce` needs: for ``auto`` the chosen family and
    parameters, so a reproduction refits that model rather than re-running a time-bound search.
    ``add`` names labelled rows that join the training split only: CSV files, or
    ``dataset:NAME@V`` (:mod:`edgekit.field.added`).
    """
    started = time.monotonic()
    seed = int(ws.setting("train", "seed", 0) if seed is None else seed)
    test_size = float(ws.setting("train", "test_size", 0.25) if test_size is None else test_size)
    window = int(ws.setting("policy", "drift_window", 200))

    progress.stage(f"loading {data_path}")
    cap = int(ws.setting("train", "max_categories", MAX_CATEGORIES) if max_categories is None else max_categories)
    options = {"task": task, "categorical": categorical, "drop": drop, "datetimes": datetimes, "max_categories": cap}
    table = load_table(data_path, target, **table_options(options))
    for warning in table.warnings:
        progress.warn(warning)
    added = load_added(ws, table, list(add))
    extra = None if added is None else (added[0], added[1])
    shape = f"({table.task}) on {table.X.shape[0]} rows x {table.X.shape[1]} inputs"
    if model == "auto":
        with progress.task(f"searching models {shape}", time_budget, unit="s") as searching:

            def on_candidate(event: dict[str, Any]) -> None:
                if search_progress is not None:
                    search_progress(event)
                if event.get("event") == "candidate":
                    budget = float(event["time_budget_s"])
                    searching.set_total(budget)
                    searching.set(
                        min(float(event["elapsed_s"]), budget),
                        f"#{event['index']} {event['model']} cv {event['metric']} {event['cv_mean']:.4f}, "
                        f"leading {event['best']['model']} {event['best']['cv_mean']:.4f}",
                    )

            result = train(
                table, model=model, seed=seed, test_size=test_size, params=params, metric=metric,
                time_budget=time_budget, progress=on_candidate, extra=extra,
            )  # fmt: skip
    else:
        progress.stage(f"training {model} {shape}: {CV_FOLDS}-fold cross-validation, then the final fit")
        result = train(table, model=model, seed=seed, test_size=test_size, params=params, metric=metric, extra=extra)
    progress.stage("converting to ONNX and checking parity (holdout and boundary rows)")
    onnx_model, parity = convert_checked(result)
    progress.stage("computing reference statistics")
    reference = build_reference(
        result.X_train,
        table.feature_names,
        result.classes,
        result.oof_proba,
        window=window,
        seed=seed,
        feature_types=[f.type for f in result.features],
        task=result.task,
    )

    run_id = new_run_id()
    path = ws.runs_dir / run_id
    path.mkdir(parents=True)
    (path / FLOAT_MODEL).write_bytes(onnx_model.data)
    (path / REFERENCE_FILE).write_text(json.dumps(reference))
    y_test = np.asarray(result.y_test)
    if y_test.dtype == object:
        y_test = y_test.astype(str)
    if result.X_test.dtype == object:
        # Categorical features: the holdout is stored as text (numbers as their exact repr,
        # "nan" for missing numbers, "" for missing categories); np.asarray(col, float) reads
        # a numeric column back exactly.
        X_test = np.array([[str(v) for v in row] for row in result.X_test.tolist()], dtype=str)
    else:
        X_test = np.asarray(result.X_test, dtype=np.float64)
    np.savez(path / HOLDOUT_FILE, X=X_test, y=y_test)
    confidence = oof.save(path, result.X_train, result.y_train, result.oof_proba, result.task, result.train_index)
    if result.rows_test is not None:  # date/time features: the rows a device receives differ from X
        (path / HOLDOUT_ROWS_FILE).write_text(json.dumps([_json_row(r) for r in result.rows_test.tolist()]))
    record = {
        "id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {**table.fingerprint, "path": str(data_path), **({"added": added[2]} if added else {})},
        "task": result.task,
        # The manifest's model section (docs/contract-model-spec.md) plus family and opset.
        "model": {
            "family": result.model,
            "task": result.task,
            "features": [f.to_dict() for f in table.schema],
            "input": onnx_model.input_spec(),
            "outputs": onnx_model.outputs_spec(),
            "classes": result.classes,
            "opset": onnx_model.opset,
        },
        "params": result.params,
        "seed": seed,
        "metric": result.metric,
        "metrics": result.metrics,
        "warnings": result.warnings,
        "categories": result.categories or None,
        "leaderboard": result.leaderboard,
        "search": {**result.search, "requested": model} if result.search else None,
        "inputs": {
            "model": result.model,
            "params": result.search["chosen"]["params"] if result.search else params,
            "seed": seed,
            "test_size": test_size,
            "task": task,
            "categorical": list(categorical) or None,
            "metric": metric,
            "drop": list(drop) or None,
            "datetimes": {k: list(v) if v else None for k, v in (datetimes or {}).items()} or None,
            "max_categories": cap,
            "add": list(add) or None,
        },
        "parity": parity.to_dict(),
        "confidence": confidence or None,
        "quantization": None,
        "code_version": code_version(ws.root),
        "environment": environment(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    run = Run(path, record)
    run.save()
    progress.stage("measuring permutation importance on the holdout")
    finalise_run(run)
    return run


def _json_row(row: list[Any]) -> list[Any]:
    return [None if isinstance(v, float) and v != v else v for v in row]


def finalise_run(run: Run) -> Run:
    """What follows a recorded training run: permutation importance on its holdout, stored with it."""
    importance(run)
    return run


def importance(run: Run) -> dict[str, Any]:
    """Permutation importance of a run's float model on its holdout rows; stored with the run.

    Explaining must never lose a trained model: if it fails, the run records why
    (``explain.error``) and training carries on.
    """
    try:
        X, y = run.holdout()
        result = permutation(
            run.artifact(FLOAT_MODEL).read_bytes(),
            {**run.record["model"], "classes": run.record["model"].get("classes") or []},
            X,
            y,
            seed=int(run.record.get("seed") or 0),
        )
    except Exception as exc:  # sklearn / onnxruntime errors are untyped
        result = {"error": f"{type(exc).__name__}: {exc}"}
    run.record["explain"] = result
    run.save()
    return result


def quantize_run(
    ws: Workspace,
    run_id: str,
    max_accuracy_loss: float = 0.005,
    max_label_changes: int | None = None,
    strategies: list[str] | None = None,
    progress: Progress = SILENT,
) -> tuple[Run, Any]:
    """Try the quantization strategies for the run's model family on its holdout rows and
    record the report; the chosen model (if any) becomes the run's shipped model.

    The run keeps no training rows, so static int8 calibrates on the holdout rows too (the
    report says how many); ``edgekit.quantize.quantize`` takes separate calibration rows."""
    from .quantize import quantize

    run = load_run(ws, run_id)
    m = run.record["model"]
    task = str(run.record.get("task") or "classification")
    float_model = OnnxModel.from_record(run.artifact(FLOAT_MODEL).read_bytes(), m)
    X, y = run.holdout()
    report = quantize(
        float_model,
        X,
        y,
        m.get("classes") or [],
        max_accuracy_loss=max_accuracy_loss,
        task=task,
        max_label_changes=max_label_changes,
        strategies=strategies,
        progress=progress,
    )
    if report.applied:
        run.artifact(QUANT_MODEL).write_bytes(report.model)
    else:
        run.artifact(QUANT_MODEL).unlink(missing_ok=True)
    run.record["quantization"] = report.to_dict()
    run.save()
    return run, report
