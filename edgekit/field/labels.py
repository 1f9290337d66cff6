"""Labelled field rows: checked against the model's training data, kept as versioned datasets.

``edgekit label import labelled.csv --into NAME`` reads a CSV as ``fleet samples pull`` wrote
it (feature columns, the pull's own columns, and ``label`` filled in by people), checks every
row against the run the rows' model was trained in — every feature column present, numbers
where training had numbers, a missing value only where training had them, a label among the
model's classes (a finite number for a regressor) — and refuses the file at the first bad
cell, naming its line and value. Rows whose label is still empty are left out and counted.

A dataset version is the previous version's rows plus the new ones (exact duplicates of a row
already in it are left out), written as a CSV of the features in training order and the
target column, with a JSON record beside it: fingerprint (:func:`fingerprint`, the same for
the same rows whether from a dataset or a file, so a run's lineage names what it trained
on), the source devices and files, who imported it and when, and the run whose schema it
follows. Field rows are often all of one class; a dataset may be.
Files: ``.edgekit/datasets/NAME/vN.csv`` and ``vN.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_agent.missing import is_missing_text
from device_agent.protocol import check_id

from .. import registry
from ..errors import DataError, UsageError, WorkspaceError
from ..runs import Run, load_run
from ..workspace import Workspace
from .samples import LABEL

DATASETS = "datasets"
_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})@(\d+)$")


@dataclass(frozen=True)
class Schema:
    """What labelled rows must look like: the run's features, target and classes."""

    run_id: str
    target: str
    task: str
    features: list[dict[str, Any]]
    classes: list[Any]

    @classmethod
    def of_run(cls, run: Run) -> Schema:
        rec = run.record
        model = rec["model"]
        return cls(
            run.id,
            str(rec["data"]["target"]),
            str(rec.get("task") or model.get("task") or "classification"),
            list(model["features"]),
            list(model.get("classes") or []),
        )

    @property
    def names(self) -> list[str]:
        return [str(f["name"]) for f in self.features]

    @property
    def categorical(self) -> list[str]:
        return [str(f["name"]) for f in self.features if f.get("type") == "categorical"]

    def label(self, text: str, where: str) -> Any:
        """A label cell as the model's class (or a regressor's number), or a DataError."""
        if self.task == "regression":
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{where}: label {text!r} is not a number", "a regressor's label is a finite number")
            return value
        for c in self.classes:
            if str(c) == text or (isinstance(c, (int, float)) and _same_number(text, c)):
                return c
        shown = ", ".join(repr(str(c)) for c in self.classes[:12])
        raise DataError(f"{where}: label {text!r} is not one of the model's classes", f"use one of {shown}")


def _same_number(text: str, value: float) -> bool:
    try:
        return float(text) == float(value)
    except ValueError:
        return False


@dataclass
class Labelled:
    """The labelled rows of a file, in training order, with where they came from."""

    rows: list[list[str]]  # feature cells as text, in the schema's order
    labels: list[Any]
    devices: set[str] = field(default_factory=set)
    bundles: set[str] = field(default_factory=set)
    unlabelled: int = 0


def read_labelled(path: Path, schema: Schema, label_column: str | None = None) -> Labelled:
    """Every labelled row of ``path``, checked against ``schema`` (see the module docstring)."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty", "give the CSV fleet samples pull wrote, labels filled in") from None
        except csv.Error as exc:
            raise DataError(f"{path} is not a CSV file: {exc}") from None
        col = _label_column(header, schema, label_column, path)
        missing = [n for n in schema.names if n not in header]
        if missing:
            raise DataError(
                f"{path} has no column {missing[0]!r}, a feature of run {schema.run_id}",
                f"its features are {', '.join(schema.names)}",
            )
        at = {h: i for i, h in enumerate(header)}
        out = Labelled([], [])
        try:
            for line, cells in enumerate(reader, start=2):
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path} line {line}: {len(cells)} cells for {len(header)} columns")
                text = cells[at[col]].strip()
                if text == "":
                    out.unlabelled += 1
                    continue
                where = f"{path} line {line}"
                out.labels.append(schema.label(text, where))
                out.rows.append([_cell(f, cells[at[str(f["name"])]].strip(), where) for f in schema.features])
                if "device" in at:
                    out.devices.add(cells[at["device"]].strip())
                if "bundle" in at:
                    out.bundles.add(cells[at["bundle"]].strip())
        except csv.Error as exc:
            raise DataError(f"{path} is not a valid CSV file: {exc}") from None
    out.devices.discard("")
    out.bundles.discard("")
    if not out.labels:
        raise DataError(f"{path} has no labelled row ({out.unlabelled} rows with an empty '{col}')", "fill in labels")
    return out


def _label_column(header: list[str], schema: Schema, given: str | None, path: Path) -> str:
    for name in [given] if given else [LABEL, schema.target]:
        if name in header:
            return str(name)
    raise DataError(f"{path} has no label column {given or LABEL!r}", "fill in the 'label' column pull wrote")


def _cell(feature: dict[str, Any], text: str, where: str) -> str:
    name, kind = str(feature["name"]), feature.get("type")
    if is_missing_text(text):
        if not feature.get("allow_missing"):
            raise DataError(
                f"{where}: column {name!r} is missing a value, and the model was trained with none missing there",
                "fill it in or leave the row out",
            )
        return ""
    if kind == "numeric":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: column {name!r} value {text!r} is not a number", "training had numbers here")
    return text


# ── datasets ─────────────────────────────────────────────────────────────────────────


def folder(ws: Workspace, name: str) -> Path:
    return ws.state / DATASETS / check_id("dataset name", name)


def versions(ws: Workspace, name: str) -> list[int]:
    d = folder(ws, name)
    found = [int(p.stem[1:]) for p in d.glob("v*.json") if p.stem[1:].isdigit()] if d.is_dir() else []
    return sorted(found)


def meta(ws: Workspace, name: str, version: int) -> dict[str, Any]:
    path = folder(ws, name) / f"v{version}.json"
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkspaceError(f"no dataset {name}@{version}", "see .edgekit/datasets, or edgekit label import") from None
    return loaded


def resolve(ws: Workspace, spec: str) -> tuple[Path, dict[str, Any]]:
    """``NAME@V`` (or ``NAME``: its latest version) → (its CSV, its record)."""
    m = _SPEC.match(spec)
    name, version = (m.group(1), int(m.group(2))) if m else (spec, None)
    if version is None:
        found = versions(ws, name)
        if not found:
            raise WorkspaceError(f"no dataset {name!r}", "import labelled rows: edgekit label import FILE --into NAME")
        version = found[-1]
    record = meta(ws, name, version)
    return folder(ws, name) / f"v{version}.csv", record


def schema_for(ws: Workspace, labelled: Path, run: str | None, model: str | None) -> Schema:
    """The run whose training data the rows are checked against: ``run``, the run of bundle
    ``model`` (NAME@V or NAME's production version), or the run of the bundle the file's rows cite."""
    if run:
        return Schema.of_run(load_run(ws, run))
    spec = model
    if spec is None:
        cited = _cited_bundles(labelled)
        if len(cited) != 1:
            raise UsageError(
                f"{labelled} cites {len(cited)} bundles ({', '.join(sorted(cited)) or 'none'})",
                "say which model's training data to check against: --model NAME@V or --run RUN",
            )
        spec = next(iter(cited))
    name, _, v = spec.partition("@")
    if v:
        mv = registry.get(ws, name, int(v))
    else:
        prod = registry.production(ws, name)
        if prod is None:
            raise UsageError(f"{name} has no production version", "give --model NAME@V")
        mv = prod
    if not mv.run_id:
        raise UsageError(f"{name} v{mv.version} was not built from a run", "give --run RUN")
    return Schema.of_run(load_run(ws, mv.run_id))


def _cited_bundles(path: Path) -> set[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return {row.get("bundle", "") or "" for row in csv.DictReader(fh)} - {""}
    except (OSError, csv.Error):
        return set()


def fingerprint(schema: Schema, rows: list[list[str]], labels: list[Any]) -> str:
    """SHA-256 of the rows as a dataset keeps them: the header (features in training order, the
    target), then one JSON line per row of its cells as text and its label as text. The same
    rows give the same fingerprint whether they come from a dataset version or a file."""
    digest = hashlib.sha256(b"edgekit-labelled-v1\n")
    digest.update((json.dumps([*schema.names, schema.target]) + "\n").encode())
    for row, label in zip(rows, labels, strict=True):
        digest.update((json.dumps([*row, str(label)]) + "\n").encode())
    return digest.hexdigest()


def write_table(path: Path, schema: Schema, rows: list[list[str]], labels: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*schema.names, schema.target])
        for row, label in zip(rows, labels, strict=True):
            w.writerow([*row, label])
    tmp.replace(path)


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [r for r in reader if r]


def import_labels(
    ws: Workspace,
    labelled: Path,
    into: str,
    *,
    run: str | None = None,
    model: str | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Check ``labelled`` and add its rows to dataset ``into`` as its next version."""
    check_id("dataset name", into)
    schema = schema_for(ws, labelled, run, model)
    found = read_labelled(labelled, schema, label_column)
    previous = versions(ws, into)
    old_rows: list[list[str]] = []
    sources: list[dict[str, Any]] = []
    devices: set[str] = set()
    if previous:
        before = meta(ws, into, previous[-1])
        if before.get("run_id") and before["run_id"] != schema.run_id and before.get("features") != schema.names:
            raise DataError(
                f"dataset {into} follows run {before['run_id']}'s features, not run {schema.run_id}'s",
                "import into a new dataset name",
            )
        _, old_rows = read_table(folder(ws, into) / f"v{previous[-1]}.csv")
        sources = list(before.get("sources") or [])
        devices = set(before.get("devices") or [])
    seen = {tuple(r) for r in old_rows}
    new_rows = [[*r, str(label)] for r, label in zip(found.rows, found.labels, strict=True)]
    added: list[list[str]] = []
    for r in new_rows:
        if tuple(r) not in seen:
            seen.add(tuple(r))
            added.append(r)
    version = (previous[-1] if previous else 0) + 1
    rows = old_rows + added
    path = folder(ws, into) / f"v{version}.csv"
    write_table(path, schema, [r[:-1] for r in rows], [r[-1] for r in rows])
    now = datetime.now(UTC).isoformat(timespec="seconds")
    who = registry.actor()
    counts = Counter(str(v) for v in found.labels)
    record = {
        "name": into,
        "version": version,
        "path": str(path),
        "rows": len(rows),
        "added": len(added),
        "duplicates": len(new_rows) - len(added),
        "unlabelled": found.unlabelled,
        "labels": dict(sorted(counts.items())),
        "fingerprint": fingerprint(schema, [r[:-1] for r in rows], [r[-1] for r in rows]),
        "run_id": schema.run_id,
        "target": schema.target,
        "task": schema.task,
        "features": schema.names,
        "devices": sorted(devices | found.devices),
        "sources": [
            *sources,
            {
                "file": str(labelled.resolve()),
                "rows": len(added),
                "devices": sorted(found.devices),
                "bundles": sorted(found.bundles),
                "imported_by": who,
                "imported_at": now,
            },
        ],
        "imported_by": who,
        "imported_at": now,
    }
    (folder(ws, into) / f"v{version}.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return record
