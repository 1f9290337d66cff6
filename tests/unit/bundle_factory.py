"""Real ``.ekb`` bundles built in memory for unit tests, with knobs for every bad variant.

Everything here is real: a tiny ONNX classifier built with ``onnx.helper`` (MatMul + Add +
Softmax, plus ArgMax for the label), ``reference.json`` from :func:`edgekit.reference.build_reference`,
``health.json`` computed with onnxruntime row by row (as the device serves), a manifest shaped
like :func:`edgekit.bundler.manifest_for`'s, Ed25519 signatures from :func:`device_agent.trust.sign`
and the archive from :func:`device_agent.bundle.pack`. Keys come from fixed seeds, so bundles are
byte-for-byte reproducible within a day (``created`` is fixed too).

Bad variants: ``make_bundle`` takes knobs that act *before* signing (``manifest_updates``,
``manifest_text``: the result is validly signed), *after* signing (``tamper_manifest``,
``signatures``, ``sign=False``) or on the members (``files`` are listed with their real
hashes; ``replace_members`` swap bytes after hashing; ``extra_members`` are present but
unlisted). Structural attacks on the ZIP itself use :func:`raw_zip`.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from device_agent import __version__
from device_agent.bundle import (
    FORMAT,
    HEALTH,
    MODEL,
    REFERENCE,
    FloorEntry,
    Limits,
    VerifiedBundle,
    pack,
    sha256_hex,
    verify,
)
from device_agent.protocol import TransferInfo, dumps
from device_agent.transfer import split
from device_agent.trust import (
    DESIRED_DOMAIN,
    MANIFEST_DOMAIN,
    ROLE_BUNDLE,
    ROLE_DEPLOY,
    TRANSFER_DOMAIN,
    Trust,
    public_raw,
    seal,
    sign,
)
from edgekit.reference import build_reference

# ── fixed inputs ────────────────────────────────────────────────────────────────────

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z: "now" for every verification in the tests
CREATED = "2025-06-01T00:00:00Z"
FEATURES = ("f0", "f1", "f2")
CLASSES = ("low", "mid", "high")
INPUT_NAME = "input"
PROBA_NAME = "probabilities"
LABEL_NAME = "label"
WINDOW = 50  # drift window shipped in the manifest policy and the reference thresholds

# Weights chosen so the three classes are all predicted on the sample rows.
_W = np.array([[2.0, 0.0, -2.0], [0.5, 1.0, 0.5], [-1.0, 0.0, 1.0]], dtype=np.float32)
_B = np.array([0.1, 0.3, -0.1], dtype=np.float32)

DELETE = object()  # sentinel for manifest_updates: remove this key


def private_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key: the same seed gives the same key (and key id)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"edgekit-test-{seed}".encode()).digest())


BUNDLE_KEY = private_key(1)  # trusted for 'bundle'
DEPLOY_KEY = private_key(2)  # trusted for 'deploy'
STRANGER_KEY = private_key(3)  # trusted for nothing


def trust_json(*entries: tuple[Ed25519PrivateKey, Sequence[str]]) -> bytes:
    """The bytes of a trust file holding the public halves of ``entries`` with their roles."""
    keys = [
        {"public": base64.b64encode(public_raw(key)).decode("ascii"), "roles": list(roles), "name": f"k{i}"}
        for i, (key, roles) in enumerate(entries)
    ]
    return json.dumps({"format": 1, "keys": keys}).encode("utf-8")


def make_trust(*entries: tuple[Ed25519PrivateKey, Sequence[str]]) -> Trust:
    """A Trust parsed the way a device parses its trust file (defaults: bundle + deploy keys)."""
    if not entries:
        entries = ((BUNDLE_KEY, (ROLE_BUNDLE,)), (DEPLOY_KEY, (ROLE_DEPLOY,)))
    return Trust.from_bytes(trust_json(*entries))


# ── the model and its companions ───────────────────────────────────────────────────


@functools.cache
def model_bytes() -> bytes:
    """A real 3-feature, 3-class ONNX classifier: softmax(x @ W + b) and its argmax."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [PROBA_NAME], axis=1),
            helper.make_node("ArgMax", [PROBA_NAME], [LABEL_NAME], axis=1, keepdims=0),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, len(FEATURES)])],
        [
            helper.make_tensor_value_info(PROBA_NAME, TensorProto.FLOAT, [None, len(CLASSES)]),
            helper.make_tensor_value_info(LABEL_NAME, TensorProto.INT64, [None]),
        ],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, list(_W.shape), _W.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, list(_B.shape), _B.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def sample_rows(n: int = 30, seed: int = 0) -> np.ndarray:
    """Rows from the 'training' distribution: standard normal, float64, shape (n, 3)."""
    return np.random.default_rng(seed).standard_normal((n, len(FEATURES)))


def predict_proba(model: bytes, rows: np.ndarray) -> np.ndarray:
    """Probabilities computed row by row with onnxruntime, as the device serves them."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.asarray(rows, dtype=np.float32)
    return np.concatenate([sess.run([PROBA_NAME], {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))])


@functools.cache
def _health_doc() -> dict[str, Any]:
    rows = sample_rows(8, seed=1)
    proba = predict_proba(model_bytes(), rows)
    return {
        "rows": np.asarray(rows, dtype=np.float32).astype(np.float64).tolist(),
        "labels": [CLASSES[int(i)] for i in np.argmax(proba, axis=1)],
        "probabilities": proba.astype(np.float64).tolist(),
        "atol": 1e-4,
    }


def health_doc() -> dict[str, Any]:
    """health.json's content: 8 rows, the labels and probabilities the host computed."""
    return copy.deepcopy(_health_doc())


@functools.cache
def _reference_doc() -> dict[str, Any]:
    x = sample_rows(300, seed=2)
    oof = predict_proba(model_bytes(), x)
    return build_reference(x, list(FEATURES), list(CLASSES), oof, window=WINDOW, draws=2000)


def reference_doc() -> dict[str, Any]:
    """reference.json's content, built by the host's own build_reference."""
    return copy.deepcopy(_reference_doc())


def default_files() -> dict[str, bytes]:
    return {
        MODEL: model_bytes(),
        REFERENCE: dumps(reference_doc()),
        HEALTH: dumps(health_doc()),
    }


def manifest_dict(name: str, version: int, files: Mapping[str, bytes]) -> dict[str, Any]:
    """A manifest shaped like edgekit.bundler.manifest_for's."""
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": CREATED,
        "expires": None,
        "compat": {"min_agent": __version__, "opset": 13, "device_classes": []},
        "files": {fname: {"sha256": sha256_hex(blob), "size": len(blob)} for fname, blob in sorted(files.items())},
        "model": {
            "task": "classification",
            "features": [{"name": f, "type": "numeric"} for f in FEATURES],
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, len(FEATURES)]},
            "outputs": {"label": LABEL_NAME, "probabilities": PROBA_NAME},
            "classes": list(CLASSES),
        },
        "policy": {"drift_window": WINDOW, "low_confidence": 0.6, "allow_missing": False},
        "lineage": {"run_id": "run-test", "data": {"fingerprint": "0" * 64}, "params": {}, "metrics": {}},
    }


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive update; nested dicts merge, DELETE removes a key."""
    for key, value in updates.items():
        if value is DELETE:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


# ── bundles ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Built:
    """One packed bundle and what went into it."""

    data: bytes
    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: dict[str, bytes] = field(repr=False)
    signatures: list[dict[str, str]]

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])


def make_bundle(
    *,
    name: str = "demo",
    version: int = 1,
    signer: Ed25519PrivateKey = BUNDLE_KEY,
    files: Mapping[str, bytes] | None = None,
    manifest_updates: Mapping[str, Any] | None = None,
    manifest_text: Callable[[bytes], bytes] | None = None,
    tamper_manifest: Callable[[bytes], bytes] | None = None,
    signatures: list[dict[str, str]] | None = None,
    sign_manifest: bool = True,
    replace_members: Mapping[str, bytes] | None = None,
    extra_members: Mapping[str, bytes] | None = None,
) -> Built:
    """Build a signed bundle; every knob left at its default gives a valid one.

    ``files``: listed members (hashed for real), defaults to model/reference/health.
    ``manifest_updates``: merged into the manifest dict before signing.
    ``manifest_text``: rewrites the manifest *bytes* before signing (duplicate keys, NaN…).
    ``tamper_manifest``: rewrites the manifest bytes *after* signing.
    ``signatures``: the manifest.sig list to pack instead of the real one.
    ``sign_manifest=False``: no manifest.sig member at all.
    ``replace_members``: member bytes swapped after the manifest was hashed and signed.
    ``extra_members``: members packed but not listed in the manifest.
    """
    listed = dict(default_files() if files is None else files)
    manifest = _merge(manifest_dict(name, version, listed), manifest_updates or {})
    mbytes = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")
    if manifest_text is not None:
        mbytes = manifest_text(mbytes)
    sigs = [sign(signer, MANIFEST_DOMAIN, mbytes)] if signatures is None else signatures
    if tamper_manifest is not None:
        mbytes = tamper_manifest(mbytes)
    members = {**listed, **(replace_members or {}), **(extra_members or {})}
    data = pack(mbytes, sigs, members)
    if not sign_manifest:
        data = raw_zip([(n, b) for n, b in read_zip(data) if n != "manifest.sig"])
    return Built(data=data, manifest=manifest, manifest_bytes=mbytes, files=listed, signatures=sigs)


@functools.cache
def valid_bundle(name: str = "demo", version: int = 1) -> Built:
    """A valid bundle, built once per (name, version)."""
    return make_bundle(name=name, version=version)


def verify_built(
    built: Built | bytes,
    trust: Trust | None = None,
    *,
    floor: Mapping[str, FloorEntry] | None = None,
    expect_name: str | None = None,
    expect_sha256: str | None = None,
    limits: Limits | None = None,
    now: float = NOW,
    keep_model: bool = True,
) -> VerifiedBundle:
    """device_agent.bundle.verify with the test defaults (trusted keys, fixed now)."""
    data = built.data if isinstance(built, Built) else built
    return verify(
        data,
        trust or make_trust(),
        now=now,
        floor=floor,
        expect_name=expect_name,
        expect_sha256=expect_sha256,
        limits=limits or Limits(),
        keep_model=keep_model,
    )


def verified(**knobs: Any) -> VerifiedBundle:
    """make_bundle(**knobs), verified: for tests of what comes after verification."""
    return verify_built(make_bundle(**knobs))


# ── raw ZIP surgery ─────────────────────────────────────────────────────────────────


def read_zip(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def raw_zip(members: Iterable[tuple[str, bytes]], compressed: Iterable[str] = ()) -> bytes:
    """A ZIP with exactly these members in this order, names taken literally (duplicates,
    '../', absolute paths allowed); members named in ``compressed`` are deflated."""
    deflate = set(compressed)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of some tests
        with zipfile.ZipFile(buf, "w") as zf:
            for name, blob in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
                zf.writestr(info, blob)
    return buf.getvalue()


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    """``data`` with the byte at ``offset`` XOR ``mask``."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# ── signed protocol documents ───────────────────────────────────────────────────────


def desired_payload(
    built: Built,
    *,
    seq: int = 1,
    target: str = "device:dev1",
    key: Ed25519PrivateKey = DEPLOY_KEY,
    **extra: Any,
) -> bytes:
    """A sealed desired-state document pointing at ``built``."""
    body = {
        "format": 1,
        "seq": seq,
        "target": target,
        "bundle": {"name": built.name, "version": built.version, "sha256": built.sha256, "size": len(built.data)},
        **extra,
    }
    return seal(key, DESIRED_DOMAIN, body)


def transfer_payload(
    built: Built, chunk_size: int, *, key: Ed25519PrivateKey = BUNDLE_KEY, **overrides: Any
) -> tuple[bytes, list[bytes]]:
    """The sealed transfer document for ``built`` and its chunks, as ``edgekit deploy`` makes them."""
    parts = split(built.data, chunk_size)
    info = TransferInfo(
        built.name,
        built.version,
        len(built.data),
        built.sha256,
        chunk_size,
        tuple(hashlib.sha256(p).hexdigest() for p in parts),
    )
    body = {**info.to_json(), **overrides}
    return seal(key, TRANSFER_DOMAIN, body), parts
