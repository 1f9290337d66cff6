"""Labelled rows added to a training run (``edgekit train … --add FILE --add-dataset NAME@V``).

The rows join the training split only, never the holdout (:func:`edgekit.train.train`), so a
challenger's holdout metrics stay comparable with its champion's. A file is checked like
``label import`` checks one, against the base table's features and classes; a dataset version
was checked when it was imported. Each source is recorded in the run (``data.added``):
path, fingerprint, rows, source devices, and for a dataset its name and version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.features import Expander

from ..data import Table
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


def inputs(table: Table, rows: list[list[str]]) -> np.ndarray:
    """Checked text cells (:func:`labels.read_labelled`) as rows of the base table's ``X``:
    numbers as floats (NaN missing), categories as text ("" missing), a date/time as its parts
    (the device's own expansion)."""
    expand = Expander([f.device() for f in table.schema])
    out = []
    for row in rows:
        cells: list[Any] = [
            None if text == "" else float(text) if f.type == "numeric" else text
            for f, text in zip(table.schema, row, strict=True)
        ]
        values = expand(cells)
        out.append(
            [
                ("" if v is None else str(v)) if f.type == "categorical" else (math.nan if v is None else float(v))
                for f, v in zip(table.features, values, strict=True)
            ]
        )
    return np.array(out, dtype=table.X.dtype).reshape(len(out), len(table.features))


def load_added(
    ws: Workspace, table: Table, specs: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] | None:
    """(X, y, lineage) of every added source, in the base table's columns; None for none."""
    if not specs:
        return None
    schema = base_schema(table)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    lineage: list[dict[str, Any]] = []
    for spec in specs:
        if spec.startswith(DATASET_PREFIX):
            path, record = labels.resolve(ws, spec[len(DATASET_PREFIX) :])
            if record.get("features") != schema.names or record.get("target") != schema.target:
                raise DataError(
                    f"dataset {spec[len(DATASET_PREFIX) :]} has other columns than {table.path}",
                    f"its features are {', '.join(record.get('features') or [])}",
                )
            found = labels.read_labelled(path, schema, schema.target)
            entry = {"dataset": record["name"], "version": record["version"], "devices": record.get("devices", [])}
        else:
            found = labels.read_labelled(Path(spec), schema)
            entry = {"file": str(Path(spec).resolve()), "devices": sorted(found.devices)}
        fingerprint = labels.fingerprint(schema, found.rows, found.labels)
        xs.append(inputs(table, found.rows))
        ys.append(np.asarray(found.labels).astype(table.y.dtype))
        lineage.append({**entry, "rows": len(found.labels), "fingerprint": fingerprint})
    return np.concatenate(xs), np.concatenate(ys), lineage
