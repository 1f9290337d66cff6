"""Labelled rows added to a training run (``edgekit train … --add FILE --add-dataset NAME@V``).

The rows join the training split only, never the holdout (:func:`edgekit.train.train`), so a
challenger's holdout metrics stay comparable with its champion's. A file is checked like
``label import`` checks one, against the base table's features and classes; a dataset version
was checked when it was imported. Each source is recorded in the run (``data.added``):
path, fingerprint, rows, source devices, and for a dataset its name and version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Table, load_table
from ..errors import DataError
from ..workspace import Workspace
from . import labels

DATASET_PREFIX = "dataset:"


def base_schema(table: Table) -> labels.Schema:
    classes = sorted({v.item() if isinstance(v, np.generic) else v for v in table.y.tolist()}, key=str)
    return labels.Schema(
        run_id="(this run)",
        target=table.target,
        task=table.task,
        features=[f.to_dict() for f in table.schema],
        classes=classes if table.task == "classification" else [],
    )


def load_added(
    ws: Workspace, table: Table, specs: Sequence[str], options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] | None:
    """(X, y, lineage) of every added source, in the base table's columns; None for none."""
    if not specs:
        return None
    schema = base_schema(table)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    lineage: list[dict[str, Any]] = []
    categorical = sorted({*schema.categorical, *(options.get("categorical") or [])})
    opts = {**options, "categorical": categorical, "max_categories": None}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            if spec.startswith(DATASET_PREFIX):
                path, record = labels.resolve(ws, spec[len(DATASET_PREFIX) :])
                if record.get("features") != schema.names or record.get("target") != schema.target:
                    raise DataError(
                        f"dataset {spec[len(DATASET_PREFIX) :]} has other columns than {table.path}",
                        f"its features are {', '.join(record.get('features') or [])}",
                    )
                entry = {"dataset": record["name"], "version": record["version"], "devices": record.get("devices", [])}
            else:
                found = labels.read_labelled(Path(spec), schema)
                path = Path(tmp) / f"added-{len(lineage)}.csv"
                labels.write_table(path, schema, found.rows, found.labels)
                entry = {"file": str(Path(spec).resolve()), "devices": sorted(found.devices)}
            added = load_table(path, table.target, 1, **opts)
            if added.feature_names != table.feature_names:
                raise DataError(f"{spec}: features {added.feature_names} differ from {table.feature_names}")
            xs.append(added.X)
            ys.append(added.y)
            lineage.append({**entry, "rows": len(added.y), "fingerprint": added.fingerprint["sha256"]})
    X = np.concatenate([np.asarray(x, dtype=table.X.dtype) for x in xs])
    y = np.concatenate([np.asarray(v).astype(table.y.dtype) for v in ys])
    return X, y, lineage
