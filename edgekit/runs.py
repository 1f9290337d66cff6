"""The run store: training runs, recorded so every model can be traced back and reproduced.

A run's record (data fingerprint, code version, parameters and seed, metrics, parity,
quantization, permutation importance, environment, duration) lives in the workspace
database (:mod:`edgekit.store`); ``.edgekit/runs/<id>/`` holds the artifacts a bundle is
made from (the float and quantized ONNX models, the reference statistics, the holdout rows)
and ``run.json``, a human-readable copy of the record.

What makes runs lives elsewhere: :mod:`edgekit.pipeline` trains and quantizes them,
:mod:`edgekit.compare` lines them up, :mod:`edgekit.reproduce` retrains one from its record.
"""

from __future__ import annotations

import json
import platform
import secrets
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .errors import WorkspaceError
from .workspace import Workspace

RUN_FILE = "run.json"
FLOAT_MODEL = "model.onnx"
QUANT_MODEL = "model.quant.onnx"
REFERENCE_FILE = "reference.json"
HOLDOUT_FILE = "holdout.npz"
HOLDOUT_ROWS_FILE = "holdout_rows.json"  # the holdout as a device receives it, when that differs from X
PACKAGES = ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "protobuf", "edgekit")


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

    def holdout_rows(self) -> list[list[Any]] | None:
        """The holdout rows as a device receives them (date/time values as text), when they
        differ from the model inputs :meth:`holdout` holds; else None."""
        path = self.artifact(HOLDOUT_ROWS_FILE)
        if not path.is_file():
            return None
        rows: list[list[Any]] = json.loads(path.read_text())
        return rows

    @property
    def state(self) -> Path:
        """The workspace's ``.edgekit`` folder (runs live in ``.edgekit/runs/<id>``)."""
        return self.path.parent.parent

    def save(self) -> None:
        """Record the run in the workspace database, and refresh the ``run.json`` copy."""
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


def _run_from_row(ws: Workspace, row: Any) -> Run:
    return Run(ws.runs_dir / str(row["id"]), json.loads(row["record"]))


def load_run(ws: Workspace, run_id: str) -> Run:
    """A run by id or unique id prefix; ``latest`` is the newest run."""
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
    with store.session(ws.state) as conn:
        rows = conn.execute("SELECT id, record FROM runs ORDER BY rowid").fetchall()
    return [_run_from_row(ws, r) for r in rows]
