"""Build and sign ``.ekb`` bundles from recorded runs (format: :mod:`device_agent.bundle`).

The bundle carries everything a device needs to serve and to judge its inputs: the model,
the reference statistics of the training data, health samples whose outputs the host
computed with the very model being shipped, and the run's lineage. Versions increase per
bundle name; each built bundle is kept under ``.edgekit/bundles/NAME/vN.ekb``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
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

from .errors import BundleBuildError
from .keys import key_roles, load_private, trust_file
from .runs import REFERENCE_FILE, Run, load_run
from .workspace import Workspace

HEALTH_ROWS = 8
HEALTH_ATOL = 1e-4


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    name: str
    version: int
    sha256: str
    size: int
    keyid: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "keyid": self.keyid,
        }


def versions(ws: Workspace, name: str) -> list[int]:
    folder = ws.bundles_dir / name
    found = [int(m.group(1)) for p in folder.glob("v*.ekb") if (m := re.fullmatch(r"v(\d+)\.ekb", p.name))]
    return sorted(found)


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


def manifest_for(run: Run, name: str, version: int, files: dict[str, bytes], ws: Workspace, **extra: Any) -> bytes:
    rec = run.record
    m = rec["model"]
    created = datetime.now(UTC)
    expires_days = extra.get("expires_days")
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "expires": (created + timedelta(days=expires_days)).isoformat(timespec="seconds").replace("+00:00", "Z")
        if expires_days
        else None,
        "compat": {"min_agent": __version__, "opset": m.get("opset"), "device_classes": []},
        "files": {fname: {"sha256": sha256_hex(blob), "size": len(blob)} for fname, blob in sorted(files.items())},
        "model": {
            "task": rec["task"],
            "features": m["features"],
            "input": m["input"],
            "outputs": m["outputs"],
            "classes": m["classes"],
        },
        "policy": {
            "drift_window": int(ws.setting("policy", "drift_window", 200)),
            "low_confidence": float(ws.setting("policy", "low_confidence", 0.6)),
            "allow_missing": False,
        },
        "lineage": {
            "run_id": rec["id"],
            "data": rec["data"],
            "params": rec["params"],
            "seed": rec.get("seed"),
            "metrics": rec["metrics"],
            "parity": rec["parity"],
            "quantization": rec.get("quantization"),
            "packages": rec["environment"]["packages"],
            "code_version": rec.get("code_version"),
        },
    }
    if extra.get("rollback_of"):
        manifest["rollback_of"] = extra["rollback_of"]
    return json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")


def build(
    ws: Workspace,
    run_id: str,
    name: str,
    key_name: str,
    out_dir: Path | None = None,
    expires_days: int | None = None,
) -> BuiltBundle:
    """Pack a run into the next version of bundle ``name``, signed with key ``key_name``."""
    check_id("bundle name", name)
    if ROLE_BUNDLE not in key_roles(ws, key_name):
        raise BundleBuildError(f"key {key_name!r} has no '{ROLE_BUNDLE}' role", "use a key made for signing bundles")
    run = load_run(ws, run_id)
    parity = run.record.get("parity") or {}
    if not parity.get("ok"):
        raise BundleBuildError(
            f"run {run.id} failed its ONNX parity check (max |Δp| {parity.get('max_abs_dp')}, "
            f"label agreement {parity.get('label_agreement')})",
            "the converted model does not match scikit-learn; retrain with another model family",
        )
    model_bytes = run.shipped_model.read_bytes()
    X, _ = run.holdout()
    try:
        health = health_samples(model_bytes, run.record["model"], X)
    except Exception as exc:  # onnxruntime errors are untyped
        raise BundleBuildError(f"the model of run {run.id} does not run in onnxruntime: {exc}") from None
    files = {
        MODEL: model_bytes,
        REFERENCE: run.artifact(REFERENCE_FILE).read_bytes(),
        HEALTH: dumps(health),
    }
    version = (versions(ws, name) or [0])[-1] + 1
    manifest_bytes = manifest_for(run, name, version, files, ws, expires_days=expires_days)
    private = load_private(ws, key_name)
    signature = sign(private, MANIFEST_DOMAIN, manifest_bytes)
    data = pack(manifest_bytes, [signature], files)

    # Self-check with the same code a device runs, before anything leaves the host.
    try:
        verify(data, trust_file(ws, (key_name,)), now=datetime.now(UTC).timestamp())
    except AgentError as exc:
        raise BundleBuildError(f"the bundle just built does not verify: {exc.detail}") from None

    stored = bundle_path(ws, name, version)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    out = stored
    if out_dir is not None:
        out = out_dir / f"{name}-v{version}.ekb"
        shutil.copyfile(stored, out)
    return BuiltBundle(out, name, version, sha256_hex(data), len(data), signature["keyid"])


def verify_file(path: Path, trust_path: Path) -> VerifiedBundle:
    """Verify a bundle file exactly as a device would (minus running the model)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleBuildError(f"cannot read {path}: {exc.strerror}") from None
    trust = Trust.load(trust_path)
    return verify(data, trust, now=datetime.now(UTC).timestamp())


def resolve_bundle(ws: Workspace | None, spec: str) -> Path:
    """A bundle file path, or NAME / NAME@VERSION from the workspace's bundle store."""
    path = Path(spec)
    if path.suffix == ".ekb" or path.exists():
        if not path.is_file():
            raise BundleBuildError(f"no bundle file {spec}")
        return path
    if ws is None:
        raise BundleBuildError(f"{spec!r} is not a bundle file", "give a path to a .ekb file")
    name, _, ver = spec.partition("@")
    known = versions(ws, name)
    if not known:
        raise BundleBuildError(f"no bundle named {name!r} in this workspace", "build one with 'edgekit bundle'")
    version = int(ver) if ver else known[-1]
    if version not in known:
        raise BundleBuildError(f"bundle {name} has no version {version}", f"versions: {known}")
    return bundle_path(ws, name, version)
