"""Reproducing a run: retrain from its recorded inputs and say whether the metrics and the
predictions came out the same.

A reproduction is refused before any training when the data file is gone or its fingerprint
changed (a retrain on other data is a new run, not a reproduction).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .data import load_table
from .errors import DataError
from .explain import OnnxPredictor
from .pipeline import quantize_run, table_options, train_run
from .progress import SILENT, Progress
from .runs import FLOAT_MODEL, QUANT_MODEL, Run, load_run
from .workspace import Workspace

METRIC_ATOL = 1e-9  # |Δ| allowed per metric: retraining with the same seed is expected to be exact
PREDICTION_ATOL = 1e-6  # max |Δp| allowed between the two float models on the original holdout rows


def _check_data(record: dict[str, Any], data_path: Path, inputs: dict[str, Any]) -> None:
    """Refuse to call a retrain on other data a reproduction: compare the table fingerprints
    (read the way the run read it: same target, task, categorical, dropped and date/time
    columns, same cap on categories)."""
    recorded = record.get("data") or {}
    if not data_path.is_file():
        raise DataError(
            f"the data file of run {record['id']} is gone: {data_path}",
            "pass the file with --data if it moved",
        )
    try:
        fingerprint = load_table(data_path, str(recorded.get("target")), **table_options(inputs)).fingerprint
    except DataError as exc:
        raise DataError(
            f"the data changed since run {record['id']}: {data_path} no longer loads as it did: {exc.message}",
            "restore the file, or pass the original with --data",
        ) from None
    if fingerprint.get("sha256") != recorded.get("sha256"):
        raise DataError(
            f"the data changed since run {record['id']}: {data_path} now has fingerprint "
            f"{str(fingerprint.get('sha256'))[:12]}… ({fingerprint.get('rows')} rows, {fingerprint.get('columns')} "
            f"columns); the run was trained on {str(recorded.get('sha256'))[:12]}… ({recorded.get('rows')} rows, "
            f"{recorded.get('columns')} columns)",
            "a retrain on other data is a new run, not a reproduction: "
            "restore the file, or pass the original with --data",
        )


def _inputs(record: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`train_run` that recreate the run: its recorded ``inputs``
    (for ``auto``, the chosen family and parameters), or, for runs recorded before those were
    written, the family, seed and those parameters that carry a train_run argument's name."""
    recorded: dict[str, Any] | None = record.get("inputs")
    if recorded is None:
        recorded = {**(record.get("params") or {}), "model": (record.get("model") or {}).get("family")}
        if record.get("seed") is not None:
            recorded["seed"] = record["seed"]
    if "max_categories" not in recorded:
        # Recorded before categories were capped and date or identifier columns refused: read
        # the table as it was read then (no cap, its categorical columns taken as they were).
        features = (record.get("model") or {}).get("features") or []
        was_categorical = [f["name"] for f in features if isinstance(f, dict) and f.get("type") == "categorical"]
        recorded = {
            **recorded,
            "max_categories": 0,
            "categorical": sorted({*(recorded.get("categorical") or []), *was_categorical}) or None,
        }
    skip = {"ws", "data_path", "target", "progress", "search_progress"}
    accepted = inspect.signature(train_run).parameters
    return {k: recorded[k] for k in accepted if k not in skip and recorded.get(k) is not None}


def _predictions(run: Run, X: np.ndarray, model_file: str = FLOAT_MODEL) -> np.ndarray:
    return OnnxPredictor(run.artifact(model_file).read_bytes(), run.record["model"]).outputs(X)


def _reproduce_quantization(
    ws: Workspace, original: Run, again: Run, X: np.ndarray, progress: Progress
) -> dict[str, Any] | None:
    """If the original run was quantized, quantize the reproduction with the recorded settings
    and compare the verdicts and the shipped models' outputs on the original holdout rows."""
    recorded = original.record.get("quantization")
    if not recorded:
        return None
    accepted = inspect.signature(quantize_run).parameters
    # A regressor's report names its gate max_r2_loss: the same setting as max_accuracy_loss.
    recorded = {"max_accuracy_loss": recorded.get("max_r2_loss"), **recorded}
    kwargs = {k: recorded[k] for k in accepted if k not in ("ws", "run_id") and recorded.get(k) is not None}
    progress.stage(f"quantizing the reproduction with {kwargs}")
    again, _ = quantize_run(ws, again.id, **kwargs, progress=progress)
    redone = again.record.get("quantization") or {}
    applied = (bool(recorded.get("applied")), bool(redone.get("applied")))
    max_dp = 0.0
    if all(applied):
        max_dp = float(np.max(np.abs(_predictions(original, X, QUANT_MODEL) - _predictions(again, X, QUANT_MODEL))))
    same_choice = applied[0] == applied[1] and recorded.get("method") == redone.get("method")
    return {
        "settings": kwargs,
        "applied": list(applied),
        "method": [recorded.get("method"), redone.get("method")],
        "max_abs_dp": max_dp,
        "match": same_choice and max_dp <= PREDICTION_ATOL,
    }


def _sha256_file(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def reproduce(
    ws: Workspace,
    run_id: str,
    data_path: Path | None = None,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Retrain ``run_id`` from its recorded inputs (same data, parameters and seed) as a new run,
    and report whether its metrics and its predictions on the original holdout rows match.

    Raises :class:`DataError` before training if the data file is gone or its fingerprint changed.
    """
    original = load_run(ws, run_id)
    rec = original.record
    path = Path(data_path) if data_path is not None else Path(str((rec.get("data") or {}).get("path")))
    inputs = _inputs(rec)
    _check_data(rec, path, inputs)
    progress.stage(f"retraining run {original.id} with {inputs}")
    again = train_run(ws, path, str(rec["data"]["target"]), progress=progress, **inputs)
    again.record["reproduces"] = original.id
    again.save()

    before = store.metric_values(rec)
    after = store.metric_values(again.record)
    metrics = {
        name: {
            "recorded": value,
            "reproduced": after.get(name),
            "delta": None if after.get(name) is None else after[name] - value,
        }
        for name, value in before.items()
    }
    metrics_match = all(m["delta"] is not None and abs(m["delta"]) <= METRIC_ATOL for m in metrics.values())

    X0, y0 = original.holdout()
    X1, y1 = again.holdout()
    same_rows = X0.shape == X1.shape and bool(np.array_equal(X0, X1)) and bool(np.array_equal(y0, y1))
    p0, p1 = _predictions(original, X0), _predictions(again, X0)
    max_dp = float(np.max(np.abs(p0 - p1))) if p0.size else 0.0
    if p0.ndim == 2:
        agreement = ("label_agreement", float(np.mean(np.argmax(p0, axis=1) == np.argmax(p1, axis=1))))
    else:  # a regressor has no labels: the share of predictions within the tolerance
        agreement = ("within_tolerance", float(np.mean(np.isclose(p0, p1, atol=PREDICTION_ATOL, rtol=0.0))))
    predictions_match = same_rows and max_dp <= PREDICTION_ATOL
    quantization = _reproduce_quantization(ws, original, again, X0, progress)

    env0, env1 = (
        (rec.get("environment") or {}).get("packages") or {},
        (again.record.get("environment") or {}).get("packages") or {},
    )
    packages = {k: [env0.get(k), env1.get(k)] for k in sorted(set(env0) | set(env1)) if env0.get(k) != env1.get(k)}
    return {
        "run": original.id,
        "reproduction": again.id,
        "data": {"path": str(path), "sha256": rec["data"].get("sha256"), "unchanged": True},
        "inputs": inputs,
        "match": metrics_match and predictions_match and (quantization is None or quantization["match"]),
        "metrics_match": metrics_match,
        "predictions_match": predictions_match,
        "metrics": metrics,
        "predictions": {
            "rows": len(X0),
            "same_holdout_rows": same_rows,
            "max_abs_dp": max_dp,
            agreement[0]: agreement[1],
            "tolerance": PREDICTION_ATOL,
        },
        "quantization": quantization,
        "model_bytes_identical": _sha256_file(original.artifact(FLOAT_MODEL))
        == _sha256_file(again.artifact(FLOAT_MODEL)),
        "code_version": [rec.get("code_version"), again.record.get("code_version")],
        "package_differences": packages,
        "tolerances": {"metrics": METRIC_ATOL, "predictions": PREDICTION_ATOL},
    }
