"""``edgekit review RUN``: the training rows whose label the model's out-of-fold prediction
confidently disagrees with — usually a mislabel or an odd edge case — ranked for people to check.

Confident learning, by cleanlab (the ``[review]`` extra): ``find_label_issues`` on the run's
out-of-fold probabilities (kept with the run, :mod:`edgekit.field.oof`; in-sample
probabilities would have memorised the very mistakes to find), ranked by self-confidence
(the out-of-fold probability of the given label, lowest first). The CSV has the rank, the
row's number among the table's data rows (``added`` for a labelled row added to the run), its
features, the given label, the label the model suggests, their probabilities, and an empty
``label`` column: people write the right label there (the given one if it was right), and
``edgekit label import review.csv --into NAME --run RUN`` brings the corrections back; a
challenger trained ``--add-dataset NAME`` takes each corrected row *instead of* the original
(rows with the same features are replaced, :func:`edgekit.train.train`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError, WorkspaceError
from ..runs import load_run
from ..workspace import Workspace
from . import oof


def review(ws: Workspace, run_id: str, out: Path, limit: int | None = None) -> dict[str, Any]:
    """Write the suspicious training rows of ``run_id`` to ``out``, most suspicious first."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise UsageError(
            "edgekit review needs cleanlab", "install the review extra: pip install 'edgekit[review]'"
        ) from None
    run = load_run(ws, run_id)
    if run.record.get("task") != "classification":
        raise UsageError(f"run {run.id} is a {run.record.get('task')} model", "review looks for mislabelled classes")
    kept = oof.load(run.path)
    if kept is None:
        raise WorkspaceError(
            f"run {run.id} kept no out-of-fold predictions", f"train it again: edgekit runs reproduce {run.id}"
        )
    X, y, proba = kept
    where = oof.positions(run.path)
    classes = list(run.record["model"].get("classes") or [])
    index = {str(c): i for i, c in enumerate(classes)}
    labels = np.array([index[str(v)] for v in y.tolist()], dtype=np.int64)
    ranked = find_label_issues(
        labels,
        proba,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        n_jobs=1,  # no process pool: forking a process that runs threads (MQTT clients, say) can deadlock
    )
    ranked = [int(i) for i in ranked][: limit or None]
    names = [str(f["name"]) for f in run.record["model"]["features"]]
    suggested = proba.argmax(axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "row", *names, "given", "suggested", "p_given", "p_suggested", "label"])
        for rank, i in enumerate(ranked, start=1):
            row = "added" if where is None or where[i] < 0 else int(where[i]) + 1
            cells = ["" if str(v) in ("nan", "") else v for v in X[i].tolist()]
            w.writerow(
                [
                    rank, row, *cells, classes[labels[i]], classes[suggested[i]],
                    round(float(proba[i, labels[i]]), 4), round(float(proba[i, suggested[i]]), 4), "",
                ]
            )  # fmt: skip
    return {
        "run": run.id,
        "path": str(out),
        "rows": len(labels),
        "issues": len(ranked),
        "method": "cleanlab find_label_issues (prune_by_noise_rate) on out-of-fold probabilities",
        "top": [
            {"row": "added" if where is None or where[i] < 0 else int(where[i]) + 1,
             "given": classes[labels[i]], "suggested": classes[suggested[i]],
             "p_given": round(float(proba[i, labels[i]]), 4)}
            for i in ranked[:10]
        ],
    }  # fmt: skip
