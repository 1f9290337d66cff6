"""Build and sign ``.ekb`` bundles (format: :mod:`device_agent.bundle`).

The bundle carries everything a device needs to serve and to judge its inputs: the model,
the reference statistics of the training data, health samples whose outputs the host
computed with the very model being shipped, the lineage, and the permutation importance
of each feature. It is made from a recorded run (:func:`build`) or from an ONNX model the
user brings plus a CSV of reference rows (:func:`build_from_model`, see
:mod:`edgekit.external`); both end the same way: sign the exact manifest bytes, verify the
result with the device's own code, and register it.

Versions come from the registry (:mod:`edgekit.registry`), the source of truth: a new
bundle is version max+1 of its name, starts in ``staging``, and its file is kept under
``.edgekit/bundles/NAME/vN.ekb`` with its SHA-256 recorded.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import __version__
from device_agent.bundle import FORMAT, HEALTH, MODEL, REFERENCE, ModelSpec, VerifiedBundle, pack, sha256_hex, verify
from device_agent.errors import AgentError
from device_agent.protocol import check_id, dumps
from device_agent.runtime import LoadedModel
from device_agent.trust import MANIFEST_DOMAIN, ROLE_BUNDLE, Trust, sign

from . import registry
from .errors import BundleBuildError
from .explain import manifest_section
from .field.policy import capture_section
from .keys import key_roles, load_private, trust_file
from .progress import SILENT, Progress
from .runs import REFERENCE_FILE, Run, code_version, environment, load_run
from .workspace import Workspace

HEALTH_ROWS = 8
HEALTH_ATOL = 1e-4
REGISTER_ATTEMPTS = 5  # concurrent builds of one name: re-sign with the next version this many times


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    name: str
    version: int
    sha256: str
    size: int
    keyid: str
    stage: str = registry.INITIAL_STAGE
    source: str = "run"
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "keyid": self.keyid,
            "stage": self.stage,
            "source": self.source,
            "warnings": list(self.warnings),
        }


def versions(ws: Workspace, name: str) -> list[int]:
    """The registered versions of ``name``, lowest first."""
    return [v.version for v in registry.versions(ws, name)]


def bundle_path(ws: Workspace, name: str, version: int) -> Path:
    return ws.bundles_dir / name / f"v{version}.ekb"


def _json_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def health_samples(model_bytes: bytes, model: dict[str, Any], X: Any) -> dict[str, Any]:
    """Run the shipped model on a few holdout rows *through the device's own runtime*, row by
    row as a device serves (dynamic int8 picks its scale per input tensor, so a batch gives
    slightly different outputs). The device must reproduce these answers before it activates."""
    spec = ModelSpec.from_manifest({"model": model})
    probe = VerifiedBundle("health", 1, "", len(model_bytes), "", {"model": model}, b"", {MODEL: model_bytes}, spec)
    runtime = LoadedModel(probe)
    rows = [[_json_value(v) for v in row] for row in list(X[:HEALTH_ROWS])]
    rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows]
    preds = [runtime.predict_row(row) for row in rows]
    doc: dict[str, Any] = {"rows": rows, "labels": [_json_value(p.label) for p in preds], "atol": HEALTH_ATOL}
    if spec.task == "classification":
        doc["probabilities"] = [np.asarray(p.probabilities, dtype=np.float64).tolist() for p in preds]
    return doc


def raw_rows(features: list[dict[str, Any]], X: Any) -> list[list[Any]]:
    """Holdout rows as a device receives them (docs/contract-model-spec.md): numbers for
    numeric features, strings for categorical ones, ``None`` for missing. The holdout file
    stores a table with categorical columns as text, numbers included ("23.8", "nan")."""
    out = []
    for row in list(X):
        raw: list[Any] = []
        for f, v in zip(features, list(row), strict=True):
            v = _json_value(v)
            if f.get("type") == "categorical":
                text = "" if v is None else str(v)
                raw.append(None if text == "" and f.get("allow_missing") else text)
            else:
                number = float(v)
                raw.append(None if math.isnan(number) else number)
        out.append(raw)
    return out


def _timestamp(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _manifest(
    ws: Workspace,
    name: str,
    version: int,
    files: dict[str, bytes],
    model: dict[str, Any],
    opset: int | None,
    lineage: dict[str, Any],
    explain: dict[str, Any] | None,
    expires_days: int | None = None,
    rollback_of: Any = None,
    capture: dict[str, Any] | None = None,
) -> bytes:
    created = datetime.now(UTC)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": _timestamp(created),
        "expires": _timestamp(created + timedelta(days=expires_days)) if expires_days else None,
        "compat": {"min_agent": __version__, "opset": opset, "device_classes": []},
        "files": {fname: {"sha256": sha256_hex(blob), "size": len(blob)} for fname, blob in sorted(files.items())},
        "model": model,
        "policy": {
            "drift_window": int(ws.setting("policy", "drift_window", 200)),
            "low_confidence": float(ws.setting("policy", "low_confidence", 0.6)),
            "allow_missing": False,
        },
        "lineage": lineage,
    }
    if capture is not None:
        manifest["policy"]["capture"] = capture
    section = manifest_section(explain)
    if section is not None:
        manifest["explain"] = section
    if rollback_of:
        manifest["rollback_of"] = rollback_of
    return json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")


def model_section(record: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``model`` section of a run (docs/contract-model-spec.md)."""
    m = record["model"]
    return {
        "task": m.get("task", record.get("task")),
        "features": m["features"],
        "input": m["input"],
        "outputs": m["outputs"],
        "classes": m.get("classes") or [],
    }


def manifest_for(run: Run, name: str, version: int, files: dict[str, bytes], ws: Workspace, **extra: Any) -> bytes:
    rec = run.record
    m = rec["model"]
    model = model_section(rec)
    lineage = {
        "source": "run",
        "run_id": rec["id"],
        "data": rec["data"],
        "params": rec["params"],
        "seed": rec.get("seed"),
        "metrics": rec["metrics"],
        "parity": rec["parity"],
        "quantization": rec.get("quantization"),
        "packages": rec["environment"]["packages"],
        "code_version": rec.get("code_version"),
    }
    return _manifest(
        ws,
        name,
        version,
        files,
        model,
        m.get("opset"),
        lineage,
        rec.get("explain"),
        expires_days=extra.get("expires_days"),
        rollback_of=extra.get("rollback_of"),
        capture=capture_section(ws, rec, extra.get("capture"), extra.get("capture_below")),
    )


def _check_key(ws: Workspace, key_name: str) -> None:
    if ROLE_BUNDLE not in key_roles(ws, key_name):
        raise BundleBuildError(f"key {key_name!r} has no '{ROLE_BUNDLE}' role", "use a key made for signing bundles")


def sign_and_register(
    ws: Workspace,
    name: str,
    key_name: str,
    files: dict[str, bytes],
    manifest_at: Callable[[int], bytes],
    *,
    source: str,
    run_id: str | None,
    reason: str,
    out_dir: Path | None,
    warnings: tuple[str, ...] = (),
    rollback_of: int | None = None,
) -> BuiltBundle:
    """Sign the manifest for the next version, verify the bundle as a device would, load its
    model and replay its health samples with the device's runtime, then store and register
    it. If another build takes the version first, sign the next one."""
    private = load_private(ws, key_name)
    trust = trust_file(ws, (key_name,))
    for _ in range(REGISTER_ATTEMPTS):
        version = registry.next_version(ws, name)
        manifest_bytes = manifest_at(version)
        signature = sign(private, MANIFEST_DOMAIN, manifest_bytes)
        data = pack(manifest_bytes, [signature], files)
        # Self-check with the same code a device runs, before anything leaves the host.
        try:
            vb = verify(data, trust, now=datetime.now(UTC).timestamp())
            LoadedModel(vb).health_check()
        except AgentError as exc:
            raise BundleBuildError(f"the bundle just built does not pass the device's checks: {exc.detail}") from None
        try:
            registry.register(
                ws,
                name,
                version,
                data,
                source=source,
                run_id=run_id,
                model_sha256=sha256_hex(files[MODEL]),
                keyid=signature["keyid"],
                reason=reason,
                path_for=lambda v: bundle_path(ws, name, v),
                rollback_of=rollback_of,
            )
        except registry.VersionTaken:
            continue
        out = bundle_path(ws, name, version)
        if out_dir is not None:
            out = out_dir / f"{name}-v{version}.ekb"
            shutil.copyfile(bundle_path(ws, name, version), out)
        return BuiltBundle(
            out, name, version, sha256_hex(data), len(data), signature["keyid"], source=source, warnings=warnings
        )
    raise BundleBuildError(f"could not register a new version of {name}: other builds kept taking it", "try again")


_sign_and_register = sign_and_register  # the name edgekit.rollback was first written against


def build(
    ws: Workspace,
    run_id: str,
    name: str,
    key_name: str,
    out_dir: Path | None = None,
    expires_days: int | None = None,
    progress: Progress = SILENT,
    *,
    capture: bool | None = None,
    capture_below: str | None = None,
) -> BuiltBundle:
    """Pack a run into the next version of bundle ``name``, signed with key ``key_name``.
    ``capture``/``capture_below`` set the devices' capture policy (:mod:`edgekit.field.policy`)."""
    check_id("bundle name", name)
    _check_key(ws, key_name)
    run = load_run(ws, run_id)
    parity = run.record.get("parity") or {}
    if not parity.get("ok"):
        agreement = f", label agreement {parity['label_agreement']}" if "label_agreement" in parity else ""
        raise BundleBuildError(
            f"run {run.id} failed its ONNX parity check (max |Δp| {parity.get('max_abs_dp')}{agreement})",
            "the converted model does not match scikit-learn; retrain with another model family",
        )
    model_bytes = run.shipped_model.read_bytes()
    X, _ = run.holdout()
    model = model_section(run.record)
    capture_section(ws, run.record, capture, capture_below)  # a bad threshold fails before any work
    progress.stage(f"computing health samples of run {run.id} through the device runtime")
    rows = run.holdout_rows()
    if rows is None and any(f.get("type") == "datetime" for f in model["features"]):
        raise BundleBuildError(f"run {run.id} kept no holdout rows as a device receives them", "train it again")
    try:
        health = health_samples(
            model_bytes, model, rows[:HEALTH_ROWS] if rows is not None else raw_rows(model["features"], X[:HEALTH_ROWS])
        )
    except Exception as exc:  # onnxruntime errors are untyped
        raise BundleBuildError(f"the model of run {run.id} does not run in onnxruntime: {exc}") from None
    files = {
        MODEL: model_bytes,
        REFERENCE: run.artifact(REFERENCE_FILE).read_bytes(),
        HEALTH: dumps(health),
    }
    progress.stage("signing, then verifying and replaying the health samples as a device would")
    return sign_and_register(
        ws,
        name,
        key_name,
        files,
        lambda version: manifest_for(
            run, name, version, files, ws, expires_days=expires_days, capture=capture, capture_below=capture_below
        ),
        source="run",
        run_id=run.id,
        reason=f"built from run {run.id}",
        out_dir=out_dir,
    )


def build_from_model(
    ws: Workspace,
    model_path: Path,
    reference_csv: Path,
    target: str,
    name: str,
    key_name: str,
    out_dir: Path | None = None,
    expires_days: int | None = None,
    classes: list[Any] | None = None,
    progress: Progress = SILENT,
) -> BuiltBundle:
    """Bundle a user's ONNX classifier with reference statistics from ``reference_csv``.

    Same manifest, same checks as a run's bundle (see :mod:`edgekit.external` for what is
    derived and what is refused); the lineage records the model file's SHA-256, that it was
    user-supplied, and that the reference predictions are in-sample.
    """
    from . import external
    from .data import load_table
    from .explain import permutation
    from .reference import build_reference

    check_id("bundle name", name)
    _check_key(ws, key_name)
    progress.stage(f"checking {model_path.name} and reading the reference rows")
    um = external.load(model_path)
    table = load_table(reference_csv, target)
    proba, labels = external.run(um, table.X)
    model, chosen, classes_from, warnings = external.bind(um, table.feature_names, table.y, proba, labels, classes)
    seed = int(ws.setting("train", "seed", 0))
    reference = build_reference(
        table.X,
        table.feature_names,
        chosen,
        proba,
        window=int(ws.setting("policy", "drift_window", 200)),
        seed=seed,
    )
    try:
        health = health_samples(um.data, model, table.X)
    except AgentError as exc:
        raise BundleBuildError(f"the device runtime cannot serve {um.filename}: {exc.detail}") from None
    except Exception as exc:  # onnxruntime errors are untyped
        raise BundleBuildError(f"the device runtime cannot serve {um.filename}: {exc}") from None
    progress.stage("measuring permutation importance on the reference rows")
    explain = permutation(um.data, model, table.X, table.y, seed=seed, rows_used="reference")
    progress.stage("signing, then verifying and replaying the health samples as a device would")
    files = {MODEL: um.data, REFERENCE: dumps(reference), HEALTH: dumps(health)}
    lineage = {
        "source": "user-supplied model",
        "run_id": None,
        "model_file": {
            "name": um.filename,
            "sha256": um.sha256,
            "size": model_path.stat().st_size,
            "producer": um.producer,
            "opset": um.opset,
            "rewritten": um.rewrites or None,  # what was changed before it was bundled, and why
        },
        "classes_from": classes_from,
        "data": {**table.fingerprint, "path": str(reference_csv), "role": "reference rows"},
        "reference_predictions": external.IN_SAMPLE_NOTE,
        "params": None,
        "seed": seed,
        "metrics": {"reference": external.reference_metrics(table.y, proba, chosen)},
        "parity": None,
        "quantization": None,
        "packages": environment()["packages"],
        "code_version": code_version(ws.root),
    }
    return sign_and_register(
        ws,
        name,
        key_name,
        files,
        lambda version: _manifest(
            ws, name, version, files, model, um.opset, lineage, explain, expires_days=expires_days
        ),
        source="user-model",
        run_id=None,
        reason=f"built from user-supplied model {um.filename} (sha256 {um.sha256[:16]}…)",
        out_dir=out_dir,
        warnings=tuple(warnings),
    )


def verify_file(path: Path, trust_path: Path) -> VerifiedBundle:
    """Verify a bundle file exactly as a device would (minus running the model)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleBuildError(f"cannot read {path}: {exc.strerror}") from None
    trust = Trust.load(trust_path)
    return verify(data, trust, now=datetime.now(UTC).timestamp())


def resolve_bundle(ws: Workspace | None, spec: str) -> Path:
    """A bundle file path, ``NAME@VERSION``, or ``NAME`` (its production version): see
    :func:`edgekit.registry.resolve`."""
    return registry.resolve(ws, spec)
