"""What the supervised load costs an install: a model's load and health check in the agent's
process (the old way) against the child-process probe followed by the load in the agent (the
way the agent installs now). Serving is not on this path: the worker installs while the input
thread serves the old model, so only the install takes longer.

Run: ``.venv/bin/python bench/install_probe.py`` (a minute or two). It rewrites the
``install-probe`` section of ``BENCHMARKS.md``. Models: the test suite's 3-feature classifier
(1 KB) and a 4 MiB dense network (1024x1024 float32 weights), built with onnx.helper. Each
figure is the median of ``--repeats`` installs, alternating the two ways; the first probe,
which starts the fork server, is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

import numpy as np
from bundle_factory import FEATURES, INPUT_NAME, default_files, make_bundle, verify_built
from common import BENCHMARKS, log, machine, now_utc, versions, write_section
from onnx import TensorProto, helper

from device_agent.bundle import MODEL, VerifiedBundle
from device_agent.probe import Budget, probe
from device_agent.runtime import LoadedModel
from tests.unit.hostile_models import _classifier

SECTION = "install-probe"
BUDGET = Budget(timeout_s=120.0, memory_bytes=1 << 30, cpu_s=120.0)


def dense_model(width: int = 1024) -> bytes:
    """A float32 network with one width x width layer: ~4 MiB of weights."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(len(FEATURES), width)).astype(np.float32)
    w2 = (rng.normal(size=(width, width)) / width).astype(np.float32)
    w3 = (rng.normal(size=(width, len(FEATURES))) / width).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "W2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "W3"], ["back"]),
        helper.make_node("Add", [INPUT_NAME, "back"], ["fed"]),
    ]
    extra = [
        helper.make_tensor(n, TensorProto.FLOAT, list(a.shape), a.tobytes(), raw=True)
        for n, a in (("W1", w1), ("W2", w2), ("W3", w3))
    ]
    return _classifier(nodes, "fed", extra)


def bundle_of(model: bytes) -> VerifiedBundle:
    files = {**default_files(), MODEL: model}
    if model != default_files()[MODEL]:
        files = _with_health(files, model)
    return verify_built(make_bundle(files=files), keep_model=False)


def _with_health(files: dict[str, bytes], model: bytes) -> dict[str, bytes]:
    """Health samples the model itself answers (the test bundle's belong to its own model)."""
    import json

    import onnxruntime as ort
    from bundle_factory import CLASSES, HEALTH, sample_rows

    rows = sample_rows(8, seed=3).astype(np.float32)
    session = ort.InferenceSession(model)
    proba = session.run(["probabilities"], {INPUT_NAME: rows})[0]
    doc = {
        "rows": rows.astype(float).tolist(),
        "labels": [CLASSES[int(i)] for i in proba.argmax(axis=1)],
        "probabilities": proba.astype(float).tolist(),
        "atol": 1e-4,
    }
    return {**files, HEALTH: json.dumps(doc).encode()}


def in_process(bundle: VerifiedBundle, path: Path) -> float:
    started = time.perf_counter()
    model = LoadedModel(bundle, 1, model_path=path)
    model.health_check()
    return time.perf_counter() - started


def supervised(bundle: VerifiedBundle, path: Path) -> float:
    started = time.perf_counter()
    probe(bundle, str(path), 1, BUDGET)
    LoadedModel(bundle, 1, model_path=path)
    return time.perf_counter() - started


def measure(repeats: int) -> dict[str, object]:
    """The timings, in a process whose main module is not this script: a probe's child
    re-imports its parent's main module, which for the agent is the light ``device_agent.cli``
    and here would be this script with the whole test factory behind it."""
    out: dict[str, object] = {"rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (
            ("3-feature classifier, 1 KB", default_files()[MODEL]),
            ("dense 1024x1024, 4 MiB", dense_model()),
        ):
            bundle = bundle_of(model)
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model)
            if "first" not in out:
                out["first"] = supervised(bundle, path)  # starts the fork server
            old, new = [], []
            for _ in range(repeats):
                old.append(in_process(bundle, path))
                new.append(supervised(bundle, path))
            out["rows"].append((name, statistics.median(old), statistics.median(new)))  # type: ignore[union-attr]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--print", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()
    load_start = os.getloadavg()
    here = Path(__file__).resolve().parent
    code = (
        f"import sys, json; sys.path.insert(0, {str(here)!r}); import install_probe; "
        f"print(json.dumps(install_probe.measure({args.repeats})))"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    rows = []
    for name, a, b in result["rows"]:
        rows.append(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | +{(b - a) * 1e3:.0f} | {b / a:.1f}x |")
        log(f"{name}: in process {a * 1e3:.1f} ms, supervised {b * 1e3:.1f} ms")
    first_probe = result["first"]
    text = "\n".join(
        [
            "## Installing a model under a budget: the cost of the child-process probe",
            "",
            f"Measured {now_utc()} by `bench/install_probe.py` ({args.repeats} installs per way, medians). "
            + machine(load_start, os.getloadavg()),
            "",
            "| model | load + health check in the agent (ms) | probe in a child, then load (ms) | added (ms) | ratio |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"The first probe of a process also starts the fork server: {first_probe * 1e3:.0f} ms. "
            "Serving is not on this path (the worker installs while the input thread serves the old model); "
            "the added time is mostly the child importing numpy and onnxruntime before it sets its limits.",
            "",
            versions(["onnxruntime", "numpy"]),
        ]
    )
    if args.print:
        print(text)
    else:
        write_section(SECTION, text, BENCHMARKS)
        log(f"wrote the {SECTION} section of {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
