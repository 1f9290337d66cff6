"""FLAML's side of ``bench/auto_vs_flaml.py``, run by the benchmark's own interpreter
(``bench/.venv-flaml``: FLAML is not an edgekit dependency).

Reads a job (JSON on stdin): the CSV, the target, each feature's kind as edgekit read it, the
training and holdout row indices edgekit used, the task, metric, budget and seed. Fits
``flaml.AutoML`` on the training rows with one thread and the budget, scores the holdout, and
prints one JSON line: score, seconds, the chosen learner and its configuration.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, r2_score


def frame(job: dict) -> tuple[pd.DataFrame, pd.Series]:
    data = pd.read_csv(job["csv"], keep_default_na=False, na_values=[""], dtype=str)
    X = pd.DataFrame(index=data.index)
    for name, kind in job["features"]:
        if kind == "numeric":
            X[name] = pd.to_numeric(data[name], errors="coerce")
        else:
            X[name] = data[name].astype("category")
    y = data[job["target"]]
    y = pd.to_numeric(y) if job["task"] == "regression" else y.astype(str)
    return X, y


def main() -> int:
    job = json.loads(sys.stdin.read())
    warnings.filterwarnings("ignore")
    from flaml import AutoML

    X, y = frame(job)
    train_idx, test_idx = np.asarray(job["train"]), np.asarray(job["test"])
    automl = AutoML()
    t0 = time.perf_counter()
    automl.fit(
        X.iloc[train_idx],
        y.iloc[train_idx],
        task="classification" if job["task"] == "classification" else "regression",
        metric="accuracy" if job["task"] == "classification" else "r2",
        time_budget=job["budget"],
        seed=job["seed"],
        n_jobs=1,
        verbose=0,
    )
    seconds = time.perf_counter() - t0
    pred = automl.predict(X.iloc[test_idx])
    truth = y.iloc[test_idx]
    value = accuracy_score(truth, pred) if job["task"] == "classification" else r2_score(truth, pred)
    print(
        json.dumps(
            {
                "score": float(value),
                "seconds": seconds,
                "learner": automl.best_estimator,
                "config": {
                    k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for k, v in (automl.best_config or {}).items()
                },
                "trials": len(getattr(automl, "config_history", {}) or {}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
