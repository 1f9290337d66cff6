"""A run's out-of-fold predictions on its training rows, kept with the run.

Two later steps need them: the capture threshold a bundle ships (a percentile of the
out-of-fold confidence: in-sample confidence is inflated, 0.958 vs 0.915 mean max-probability
on wine, and would put the threshold where almost no healthy row falls), and ``edgekit
review``, which looks for training rows whose out-of-fold prediction confidently disagrees
with their label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OOF_FILE = "train_oof.npz"


def _table(X: np.ndarray) -> np.ndarray:
    """Rows stored as the holdout is: floats, or text when a column is categorical."""
    if X.dtype == object:
        return np.array([[str(v) for v in row] for row in X.tolist()], dtype=str)
    return np.asarray(X, dtype=np.float64)


def save(
    run_dir: Path,
    X_train: np.ndarray,
    y_train: np.ndarray,
    oof: np.ndarray,
    task: str,
    index: np.ndarray | None = None,
) -> dict[str, Any]:
    """Store the training rows, labels, out-of-fold outputs and each row's position in the
    table (-1: an added row); return the record's ``confidence`` section (percentiles 0..100
    of the out-of-fold max-probability)."""
    y = np.asarray(y_train)
    if y.dtype == object:
        y = y.astype(str)
    where = np.full(len(y), -1) if index is None else np.asarray(index, dtype=np.int64)
    np.savez(run_dir / OOF_FILE, X=_table(np.asarray(X_train)), y=y, oof=np.asarray(oof, dtype=np.float64), index=where)
    if task != "classification":
        return {}
    top = np.asarray(oof, dtype=np.float64).max(axis=1)
    return {"oof_percentiles": [round(float(v), 6) for v in np.percentile(top, np.arange(101))]}


def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(X, y, out-of-fold outputs) of a run, or None for a run trained before they were kept."""
    path = run_dir / OOF_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["X"], z["y"], z["oof"]


def positions(run_dir: Path) -> np.ndarray | None:
    """Each training row's position in the run's table (-1: an added row)."""
    path = run_dir / OOF_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        found: np.ndarray | None = z.get("index", None)
        return found
