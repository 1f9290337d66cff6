"""Training runs, recorded so every model can be traced back and reproduced.

A run is a folder ``.edgekit/runs/<id>/`` with ``run.json`` (data fingerprint, code
version, parameters and seed, metrics, parity, quantization, environment, duration) and
the artifacts a bundle is made from: the float and quantized ONNX models, the reference
statistics and the holdout rows.
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

    def save(self) -> None:
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
) -> Run:
    """Load, train, convert, check parity, compute reference statistics; record it all."""
    from .convert import check_parity, to_onnx
    from .data import load_table
    from .reference import build_reference
    from .train import train

    started = time.monotonic()
    seed = int(ws.setting("train", "seed", 0) if seed is None else seed)
    test_size = float(ws.setting("train", "test_size", 0.25) if test_size is None else test_size)
    window = int(ws.setting("policy", "drift_window", 200))

    progress(f"loading {data_path}")
    table = load_table(data_path, target)
    progress(f"training {model} on {table.X.shape[0]} rows x {table.X.shape[1]} features")
    result = train(table, model=model, seed=seed, test_size=test_size)
    progress("converting to ONNX and checking parity")
    onnx_model = to_onnx(result)
    parity = check_parity(result, onnx_model)
    progress("computing reference statistics")
    reference = build_reference(
        result.X_train, table.feature_names, result.classes, result.oof_proba, window=window, seed=seed
    )

    run_id = new_run_id()
    path = ws.runs_dir / run_id
    path.mkdir(parents=True)
    (path / FLOAT_MODEL).write_bytes(onnx_model.data)
    (path / REFERENCE_FILE).write_text(json.dumps(reference))
    y_test = np.asarray(result.y_test)
    if y_test.dtype == object:
        y_test = y_test.astype(str)
    np.savez(path / HOLDOUT_FILE, X=np.asarray(result.X_test, dtype=np.float64), y=y_test)
    record = {
        "id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {**table.fingerprint, "path": str(data_path)},
        "task": result.task,
        "model": {
            "family": model,
            "features": [{"name": n, "type": "numeric"} for n in table.feature_names],
            "classes": result.classes,
            "input": {"name": onnx_model.input_name, "dtype": onnx_model.input_dtype},
            "outputs": {"label": onnx_model.label_output, "probabilities": onnx_model.proba_output},
            "opset": onnx_model.opset,
        },
        "params": result.params,
        "seed": seed,
        "metrics": result.metrics,
        "parity": parity.to_dict(),
        "quantization": None,
        "code_version": code_version(ws.root),
        "environment": environment(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    run = Run(path, record)
    run.save()
    return run


def quantize_run(ws: Workspace, run_id: str, max_accuracy_loss: float = 0.005) -> tuple[Run, Any]:
    from .convert import OnnxModel
    from .quantize import quantize

    run = load_run(ws, run_id)
    m = run.record["model"]
    float_model = OnnxModel(
        data=run.artifact(FLOAT_MODEL).read_bytes(),
        input_name=m["input"]["name"],
        input_dtype=m["input"]["dtype"],
        label_output=m["outputs"]["label"],
        proba_output=m["outputs"]["probabilities"],
        opset=int(m["opset"]),
    )
    X, y = run.holdout()
    report = quantize(float_model, X, y, m["classes"], max_accuracy_loss=max_accuracy_loss)
    if report.applied:
        run.artifact(QUANT_MODEL).write_bytes(report.model)
    else:
        run.artifact(QUANT_MODEL).unlink(missing_ok=True)
    run.record["quantization"] = report.to_dict()
    run.save()
    return run, report


def load_run(ws: Workspace, run_id: str) -> Run:
    """A run by id or unique id prefix; ``latest`` is the newest run."""
    runs = sorted(p.name for p in ws.runs_dir.glob("*") if (p / RUN_FILE).is_file())
    if run_id == "latest" and runs:
        matches = [runs[-1]]
    else:
        matches = [r for r in runs if r.startswith(run_id)]
    if not matches:
        raise WorkspaceError(f"no run {run_id!r}", "see 'edgekit runs list'")
    if len(matches) > 1:
        raise WorkspaceError(f"run id {run_id!r} is ambiguous ({len(matches)} runs)", "give more characters")
    path = ws.runs_dir / matches[0]
    return Run(path, json.loads((path / RUN_FILE).read_text()))


def list_runs(ws: Workspace) -> list[Run]:
    out = []
    for p in sorted(ws.runs_dir.glob("*")):
        if (p / RUN_FILE).is_file():
            out.append(Run(p, json.loads((p / RUN_FILE).read_text())))
    return out
