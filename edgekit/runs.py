"""Training runs, recorded so every model can be traced back and reproduced.

A run's record (data fingerprint, code version, parameters and seed, metrics, parity,
quantization, permutation importance, environment, duration) lives in the workspace
database (:mod:`edgekit.store`); ``.edgekit/runs/<id>/`` holds the artifacts a bundle is
made from (the float and quantized ONNX models, the reference statistics, the holdout rows)
and ``run.json``, a human-readable copy of the record.

:func:`compare` lines runs up field by field; :func:`reproduce` retrains from a run's
recorded inputs and says whether the metrics and the predictions came out the same.
"""

from __future__ import annotations

import json
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WorkspaceError
from .workspace import Workspace

RUN_FILE = "run.json"
FLOAT_MODEL = "model.onnx"
QUANT_MODEL = "model.quant.onnx"
REFERENCE_FILE = "reference.json"
HOLDOUT_FILE = "holdout.npz"
PACKAGES = ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "protobuf", "edgekit")

Progress = Callable[[str], None]


@dataclass
class Run:
    path: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["id"])

    def artifact(self, name: str) -> Path:
        return self.path / name

    @property
    def shipped_model(self) -> Path:
        """The model a bundle ships: quantized if quantization was applied and passed its gate."""
        q = self.record.get("quantization") or {}
        return self.artifact(QUANT_MODEL) if q.get("applied") else self.artifact(FLOAT_MODEL)

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.artifact(HOLDOUT_FILE), allow_pickle=False) as z:
            return z["X"], z["y"]

    @property
    def state(self) -> Path:
        """The workspace's ``.edgekit`` folder (runs live in ``.edgekit/runs/<id>``)."""
        return self.path.parent.parent

    def save(self) -> None:
        """Record the run in the workspace database, and refresh the ``run.json`` copy."""
        from . import store

        with store.session(self.state) as conn, store.transaction(conn):
            store.put_run(conn, self.record)
        (self.path / RUN_FILE).write_text(json.dumps(self.record, indent=1, sort_keys=True, default=str))


def code_version(root: Path) -> dict[str, Any] | None:
    """The git commit of the workspace and whether it had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"git_commit": commit, "dirty": bool(dirty)}


def environment() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages}


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def train_run(
    ws: Workspace,
    data_path: Path,
    target: str,
    model: str = "logreg",
    seed: int | None = None,
    test_size: float | None = None,
    progress: Progress = lambda _msg: None,
    *,
    task: str | None = None,
    categorical: list[str] | tuple[str, ...] = (),
    metric: str | None = None,
    time_budget: float | None = None,
    params: dict[str, Any] | None = None,
    search_progress: Callable[[dict[str, Any]], None] | None = None,
) -> Run:
    """Load, train (or search, ``model="auto"``), convert, check parity, compute reference
    statistics; record it all.

    ``task`` overrides the inferred task, ``categorical`` forces columns to be categorical,
    ``metric`` is the declared metric (selection metric of ``auto``), ``time_budget`` the
    search's seconds, ``params`` a family's hyperparameters. ``search_progress`` gets one dict
    per evaluated candidate (else they become ``progress`` lines). The record's ``inputs`` hold
    what :func:`reproduce` needs: for ``auto`` the chosen family and parameters, so a
    reproduction refits that model rather than re-running a time-bound search.
    """
    from .convert import convert_checked
    from .data import load_table
    from .reference import build_reference
    from .train import train

    started = time.monotonic()
    seed = int(ws.setting("train", "seed", 0) if seed is None else seed)
    test_size = float(ws.setting("train", "test_size", 0.25) if test_size is None else test_size)
    window = int(ws.setting("policy", "drift_window", 200))

    progress(f"loading {data_path}")
    table = load_table(data_path, target, task=task, categorical=list(categorical))
    for warning in table.warnings:
        progress(f"warning: {warning}")
    what = "searching models" if model == "auto" else f"training {model}"
    progress(f"{what} ({table.task}) on {table.X.shape[0]} rows x {table.X.shape[1]} features")

    def on_candidate(event: dict[str, Any]) -> None:
        if search_progress is not None:
            search_progress(event)
        elif event.get("event") == "candidate":
            progress(
                f"candidate {event['index']}: {event['model']} cv {event['metric']} {event['cv_mean']:.4f} "
                f"(best {event['best']['model']} {event['best']['cv_mean']:.4f}; "
                f"{event['elapsed_s']:.0f}/{event['time_budget_s']:.0f} s)"
            )

    result = train(
        table,
        model=model,
        seed=seed,
        test_size=test_size,
        params=params,
        metric=metric,
        time_budget=time_budget,
        progress=on_candidate,
    )
    progress("converting to ONNX and checking parity (holdout and boundary rows)")
    onnx_model, parity = convert_checked(result)
    progress("computing reference statistics")
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
    record = {
        "id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {**table.fingerprint, "path": str(data_path)},
        "task": result.task,
        # The manifest's model section (docs/contract-model-spec.md) plus family and opset.
        "model": {
            "family": result.model,
            "task": result.task,
            "features": [f.to_dict() for f in result.features],
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
        },
        "parity": parity.to_dict(),
        "quantization": None,
        "code_version": code_version(ws.root),
        "environment": environment(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    run = Run(path, record)
    run.save()
    finalise_run(run)
    return run


def quantize_run(
    ws: Workspace,
    run_id: str,
    max_accuracy_loss: float = 0.005,
    max_label_changes: int | None = None,
    strategies: list[str] | None = None,
) -> tuple[Run, Any]:
    """Try the quantization strategies for the run's model family on its holdout rows and
    record the report; the chosen model (if any) becomes the run's shipped model.

    The run keeps no training rows, so static int8 calibrates on the holdout rows too (the
    report says how many); ``edgekit.quantize.quantize`` takes separate calibration rows."""
    from .convert import OnnxModel
    from .quantize import quantize

    run = load_run(ws, run_id)
    m = run.record["model"]
    task = str(run.record.get("task") or "classification")
    inp = m["input"]
    float_model = OnnxModel(
        data=run.artifact(FLOAT_MODEL).read_bytes(),
        input_name=inp.get("name") or (inp.get("names") or [""])[0],
        input_dtype=inp.get("dtype", "float32"),
        label_output=m["outputs"]["label"],
        proba_output=m["outputs"].get("probabilities"),
        opset=int(m["opset"]),
    )
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
    )
    if report.applied:
        run.artifact(QUANT_MODEL).write_bytes(report.model)
    else:
        run.artifact(QUANT_MODEL).unlink(missing_ok=True)
    run.record["quantization"] = report.to_dict()
    run.save()
    return run, report


def _run_from_row(ws: Workspace, row: Any) -> Run:
    return Run(ws.runs_dir / str(row["id"]), json.loads(row["record"]))


def load_run(ws: Workspace, run_id: str) -> Run:
    """A run by id or unique id prefix; ``latest`` is the newest run."""
    from . import store

    with store.session(ws.state) as conn:
        if run_id == "latest":
            rows = conn.execute("SELECT id, record FROM runs ORDER BY rowid DESC LIMIT 1").fetchall()
        else:
            rows = conn.execute(
                "SELECT id, record FROM runs WHERE substr(id, 1, ?) = ? ORDER BY rowid", (len(run_id), run_id)
            ).fetchall()
            rows = [r for r in rows if r["id"] == run_id] or rows
    if not rows or not run_id:
        raise WorkspaceError(f"no run {run_id!r}", "see 'edgekit runs list'")
    if len(rows) > 1:
        raise WorkspaceError(f"run id {run_id!r} is ambiguous ({len(rows)} runs)", "give more characters")
    return _run_from_row(ws, rows[0])


def list_runs(ws: Workspace) -> list[Run]:
    """Every recorded run, in the order they were recorded."""
    from . import store

    with store.session(ws.state) as conn:
        rows = conn.execute("SELECT id, record FROM runs ORDER BY rowid").fetchall()
    return [_run_from_row(ws, r) for r in rows]


def finalise_run(run: Run) -> Run:
    """What follows a recorded training run: permutation importance on its holdout, stored with it."""
    from .explain import importance

    importance(run)
    return run


# --- comparing runs -----------------------------------------------------------------------------

# What `compare` lines up, in this order; everything under these keys is flattened to dotted names.
COMPARED = (
    "task",
    "model.family",
    "data",
    "seed",
    "params",
    "metric",
    "metrics",
    "parity",
    "quantization",
    "explain.metric",
    "code_version",
    "environment",
    "duration_s",
)
_NOT_COMPARED = ("data.schema", "explain.permutation_importance")


def _leaves(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict) and obj:
        for k in sorted(obj):
            _leaves(f"{prefix}.{k}", obj[k], out)
    elif not any(prefix == skip or prefix.startswith(skip + ".") for skip in _NOT_COMPARED):
        out[prefix] = obj


def _pick(record: dict[str, Any], dotted: str) -> Any:
    obj: Any = record
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A run record as ``{dotted field: value}`` over the fields :data:`COMPARED` names."""
    out: dict[str, Any] = {}
    for key in COMPARED:
        _leaves(key, _pick(record, key), out)
    from .explain import top_features

    top = top_features(record.get("explain"), 3)
    if top:
        out["explain.top_features"] = [name for name, _, _ in top]
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compare(runs: list[Run]) -> dict[str, Any]:
    """Runs side by side: one row per field, its value in each run, whether they differ, and
    for numbers the difference from the first run."""
    flat = [comparable(r.record) for r in runs]

    def order(field: str) -> tuple[int, str]:
        section = next((i for i, key in enumerate(COMPARED) if field == key or field.startswith(key + ".")), 99)
        return section, field

    fields = sorted({k for f in flat for k in f}, key=order)
    rows = []
    for field in fields:
        values = [f.get(field) for f in flat]
        differs = any(
            json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
            for v in values[1:]
        )
        row: dict[str, Any] = {"field": field, "values": values, "differs": differs}
        if differs and all(_is_number(v) for v in values):
            first = float(values[0])  # type: ignore[arg-type]  # numbers, checked above
            row["delta"] = [float(v) - first for v in values]  # type: ignore[arg-type]
        rows.append(row)
    return {"runs": [r.id for r in runs], "fields": rows, "differing": sum(r["differs"] for r in rows)}


# --- reproducing a run --------------------------------------------------------------------------

METRIC_ATOL = 1e-9  # |Δ| allowed per metric: retraining with the same seed is expected to be exact
PREDICTION_ATOL = 1e-6  # max |Δp| allowed between the two float models on the original holdout rows


def _check_data(record: dict[str, Any], data_path: Path, inputs: dict[str, Any]) -> None:
    """Refuse to call a retrain on other data a reproduction: compare the table fingerprints
    (read the way the run read it: same target, task and categorical columns)."""
    import inspect

    from .data import load_table
    from .errors import DataError

    recorded = record.get("data") or {}
    if not data_path.is_file():
        raise DataError(
            f"the data file of run {record['id']} is gone: {data_path}",
            "pass the file with --data if it moved",
        )
    accepted = inspect.signature(load_table).parameters
    options = {k: v for k, v in inputs.items() if k in ("task", "categorical") and k in accepted}
    try:
        fingerprint = load_table(data_path, str(recorded.get("target")), **options).fingerprint
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
    import inspect

    recorded: dict[str, Any] | None = record.get("inputs")
    if recorded is None:
        recorded = {**(record.get("params") or {}), "model": (record.get("model") or {}).get("family")}
        if record.get("seed") is not None:
            recorded["seed"] = record["seed"]
    skip = {"ws", "data_path", "target", "progress", "search_progress"}
    accepted = inspect.signature(train_run).parameters
    return {k: recorded[k] for k in accepted if k not in skip and recorded.get(k) is not None}


def _predictions(run: Run, X: np.ndarray, model_file: str = FLOAT_MODEL) -> np.ndarray:
    from .explain import OnnxPredictor

    return OnnxPredictor(run.artifact(model_file).read_bytes(), run.record["model"]).outputs(X)


def _reproduce_quantization(
    ws: Workspace, original: Run, again: Run, X: np.ndarray, progress: Progress
) -> dict[str, Any] | None:
    """If the original run was quantized, quantize the reproduction with the recorded settings
    and compare the verdicts and the shipped models' outputs on the original holdout rows."""
    import inspect

    recorded = original.record.get("quantization")
    if not recorded:
        return None
    accepted = inspect.signature(quantize_run).parameters
    kwargs = {k: recorded[k] for k in accepted if k not in ("ws", "run_id") and recorded.get(k) is not None}
    progress(f"quantizing the reproduction with {kwargs}")
    again, _ = quantize_run(ws, again.id, **kwargs)
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
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def reproduce(
    ws: Workspace,
    run_id: str,
    data_path: Path | None = None,
    progress: Progress = lambda _msg: None,
) -> dict[str, Any]:
    """Retrain ``run_id`` from its recorded inputs (same data, parameters and seed) as a new run,
    and report whether its metrics and its predictions on the original holdout rows match.

    Raises :class:`DataError` before training if the data file is gone or its fingerprint changed.
    """
    from . import store

    original = load_run(ws, run_id)
    rec = original.record
    path = Path(data_path) if data_path is not None else Path(str((rec.get("data") or {}).get("path")))
    inputs = _inputs(rec)
    _check_data(rec, path, inputs)
    progress(f"retraining run {original.id} with {inputs}")
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
        agreement = float(np.mean(np.argmax(p0, axis=1) == np.argmax(p1, axis=1)))
    else:
        agreement = float(np.mean(np.isclose(p0, p1, atol=PREDICTION_ATOL, rtol=0.0)))
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
            "label_agreement": agreement,
            "tolerance": PREDICTION_ATOL,
        },
        "quantization": quantization,
        "model_bytes_identical": _sha256_file(original.artifact(FLOAT_MODEL))
        == _sha256_file(again.artifact(FLOAT_MODEL)),
        "code_version": [rec.get("code_version"), again.record.get("code_version")],
        "package_differences": packages,
        "tolerances": {"metrics": METRIC_ATOL, "predictions": PREDICTION_ATOL},
    }
