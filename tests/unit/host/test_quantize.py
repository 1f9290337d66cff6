"""quantize: per-family strategies on real models through real onnxruntime; the gates hold,
"no gain" is reported plainly and the shipped model keeps the float model's contract."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.utils import Bunch

from device_agent.bundle import MODEL, verify
from device_agent.runtime import LoadedModel
from edgekit import bundler, keys, pipeline, runs, workspace
from edgekit.cli import main as cli_main
from edgekit.convert import OnnxModel, session, to_onnx
from edgekit.data import Table, load_table
from edgekit.errors import QuantizationError
from edgekit.quantize import QuantizeReport, contract_problems, quantize
from edgekit.train import TrainResult, train

# Few latency samples keep the tests fast; latency is not what these tests judge, so the
# "too slow" guard is opened wide (a loaded CI machine must not flip a verdict).
FAST: dict[str, Any] = {"latency_rounds": 1, "latency_rows": 10, "max_latency_increase": 10.0}
EXISTING_KEYS = {
    "applied",
    "method",
    "quantized_nodes",
    "size_before",
    "size_after",
    "accuracy_before",
    "accuracy_after",
    "label_agreement",
    "max_accuracy_loss",
    "reason",
}


def table_from(bunch: Bunch, path: Path) -> Table:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*bunch.feature_names, "label"])
        out.writerows([*row, t] for row, t in zip(bunch.data, bunch.target, strict=True))
    return load_table(path, "label")


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Table:
    return table_from(load_breast_cancer(), tmp_path_factory.mktemp("q") / "cancer.csv")


@pytest.fixture(scope="module")
def converted(cancer: Table, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainResult, OnnxModel]]:
    out = {}
    for name in ("logreg", "mlp"):
        result = train(cancer, name, seed=0)
        out[name] = (result, to_onnx(result))
    wine = train(table_from(load_wine(), tmp_path_factory.mktemp("w") / "wine.csv"), "mlp", seed=0)
    out["wine-mlp"] = (wine, to_onnx(wine))
    return out


def op_types(data: bytes) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def row_by_row_accuracy(report: QuantizeReport, model: OnnxModel, result: TrainResult) -> float:
    sess = session(report.model)
    X = result.X_test.astype(np.float32)
    proba = np.concatenate([sess.run([model.proba_output], {"input": X[i : i + 1]})[0] for i in range(len(X))])
    return float(np.mean(np.asarray(result.classes)[np.argmax(proba, axis=1)] == result.y_test))


def assert_same_contract(float_data: bytes, shipped: bytes, X: np.ndarray) -> None:
    a, b = session(float_data), session(shipped)
    assert [(i.name, i.type, i.shape) for i in a.get_inputs()] == [(i.name, i.type, i.shape) for i in b.get_inputs()]
    assert [(o.name, o.type, o.shape) for o in a.get_outputs()] == [(o.name, o.type, o.shape) for o in b.get_outputs()]
    feed = {"input": X[:20].astype(np.float32)}
    assert contract_problems(onnx.load_from_string(float_data), onnx.load_from_string(shipped), a, b, feed) == []


def test_mlp_dynamic_int8(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes, strategies=["dynamic-int8"], **FAST)
    assert report.applied and report.method == "dynamic-int8" and report.family == "mlp"
    assert report.size_before == len(model.data) and report.size_after == len(report.model)
    assert report.size_after < 0.6 * report.size_before
    ops = op_types(report.model)
    assert ops["MatMulInteger"] == 2 and ops["MatMul"] == 0
    assert report.quantized_nodes == 4  # 2 MatMulInteger + 2 DynamicQuantizeLinear
    assert report.accuracy_before == pytest.approx(result.metrics["holdout"]["accuracy"])
    assert report.accuracy_after >= report.accuracy_before - 0.005 and report.label_agreement >= 0.99
    # The shipped bytes, run row by row as a device runs them, give the accuracy the report claims.
    assert row_by_row_accuracy(report, model, result) == pytest.approx(report.accuracy_after)
    assert_same_contract(model.data, report.model, result.X_test)


def test_static_qdq_int8_on_a_multiclass_mlp(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    """The multiclass (Softmax) skl2onnx MLP is the graph FIELD-NOTES saw fail; calibrated on
    the training rows, only the MatMuls are quantized."""
    result, model = converted["wine-mlp"]
    report = quantize(
        model,
        result.X_test,
        result.y_test,
        result.classes,
        calibration=result.X_train,
        strategies=["static-qdq-int8"],
        **FAST,
    )
    assert report.applied and report.method == "static-qdq-int8", report.reason
    assert report.calibration_rows == len(result.X_train)
    proto = onnx.load_from_string(report.model)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == 4 and ops["MatMul"] == 2  # each MatMul's input and output
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_weights) == 2 and ops["Softmax"] == 1
    # Softmax and the probabilities stay float: no 8-bit steps in what the device reads.
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    assert not any(n.op_type == "QuantizeLinear" and softmax.output[0] in n.input for n in proto.graph.node)
    assert report.size_after < 0.6 * report.size_before
    assert report.accuracy_after >= report.accuracy_before - 0.005
    assert_same_contract(model.data, report.model, result.X_test)


def test_fp16_mlp_loads_and_keeps_float32_io(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes, strategies=["fp16"], **FAST)
    assert report.applied and report.method == "fp16", report.reason
    proto = onnx.load_from_string(report.model)
    assert {i.data_type for i in proto.graph.initializer if len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert report.size_after < 0.75 * report.size_before
    (cand,) = report.candidates
    assert cand["max_abs_diff"] < 5e-3 and report.label_agreement == 1.0
    assert_same_contract(model.data, report.model, result.X_test)


def test_all_mlp_strategies_are_measured_and_the_smallest_passing_one_ships(
    converted: dict[str, tuple[TrainResult, OnnxModel]],
) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes, calibration=result.X_train, **FAST)
    by_name = {c["strategy"]: c for c in report.candidates}
    assert list(by_name) == ["compact", "dynamic-int8", "static-qdq-int8", "static-qop-int8", "fp16"]
    for c in report.candidates:
        assert c["size"] and c["latency_p50_us"] and c["accuracy"] is not None and c["label_changes"] is not None
    chosen = [c for c in report.candidates if c["verdict"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["strategy"] == report.method
    passed = [c for c in report.candidates if c["verdict"] in ("chosen", "passed") and c["strategy"] != "compact"]
    assert chosen[0]["size"] == min(c["size"] for c in passed)
    assert report.latency_p50_us_before and report.latency_p50_us_after == chosen[0]["latency_p50_us"]
    summary = report.to_dict()
    assert set(summary) >= EXISTING_KEYS and "model" not in summary
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary


def test_gate_refusal_keeps_the_float_model(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes, max_accuracy_loss=-0.01, **FAST)
    assert not report.applied and report.method == "none" and report.model == model.data
    assert report.size_after == report.size_before and report.accuracy_after == report.accuracy_before
    assert report.quantized_nodes == 0 and report.reason.startswith("no gain")
    refused = [c for c in report.candidates if c["verdict"] == "refused"]
    assert refused and all("above the -1.0 pt gate" in c["reason"] for c in refused)
    dynamic = next(c for c in report.candidates if c["strategy"] == "dynamic-int8")
    assert dynamic["quantized_nodes"] == 4 and dynamic["size"] < report.size_before  # the refused candidate's figures


def near_ties(model: OnnxModel, X: np.ndarray, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Rows on the float model's decision boundary (bisection between rows of both classes),
    and the float model's labels for them."""
    sess = session(model.data)

    def label(rows: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.argmax(sess.run([model.proba_output], {"input": rows.astype(np.float32)})[0], axis=1)
        return out

    first = label(X)
    a, b = X[first == 0][:n], X[first == 1][:n]
    k = min(len(a), len(b))
    a, b = a[:k], b[:k]
    lo, hi = np.zeros((k, 1)), np.ones((k, 1))
    for _ in range(40):
        mid = (lo + hi) / 2
        is_a = label(a + mid * (b - a)) == 0
        lo, hi = np.where(is_a[:, None], mid, lo), np.where(is_a[:, None], hi, mid)
    rows = (a + lo * (b - a)).astype(np.float32).astype(np.float64)
    return rows, label(rows)


def test_label_change_limit_refuses_and_tolerance_allows(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    rows, labels = near_ties(model, result.X_test)
    kw = {"strategies": ["dynamic-int8"], "max_accuracy_loss": 1.0, **FAST}
    strict = quantize(model, rows, labels, result.classes, max_label_changes=0, **kw)
    (cand,) = strict.candidates
    assert cand["label_changes"] > 0, "int8 should move some rows that sit on the boundary"
    assert not strict.applied and cand["verdict"] == "refused" and "labels changed; at most 0" in cand["reason"]
    tolerant = quantize(model, rows, labels, result.classes, max_label_changes=len(rows), **kw)
    assert tolerant.applied and tolerant.label_changes == cand["label_changes"]
    assert tolerant.label_agreement == pytest.approx(1 - cand["label_changes"] / len(rows))
    # Without a limit, non-tree families are judged by the accuracy gate alone.
    assert quantize(model, rows, labels, result.classes, **kw).label_change_limit is None


def test_no_gain_is_reported_plainly(tmp_path: Path) -> None:
    """Iris logistic regression: 4 x 3 weights. int8 scales and the extra nodes outweigh any
    saving; and a model compacted once has nothing left to gain."""
    result = train(table_from(load_iris(), tmp_path / "iris.csv"), "logreg", seed=0)
    model = to_onnx(result)
    int8 = ["linear-matmul+dynamic-int8", "linear-matmul+static-qdq-int8"]
    report = quantize(model, result.X_test, result.y_test, result.classes, strategies=int8, **FAST)
    assert not report.applied and report.method == "none" and report.model == model.data
    assert report.reason.startswith("no gain") and report.size_after == report.size_before
    assert [c["verdict"] for c in report.candidates] == ["no gain", "no gain"]
    assert all(c["quantized_nodes"] > 0 and c["size"] > report.size_before for c in report.candidates)

    compacted = quantize(model, result.X_test, result.y_test, result.classes, **FAST)
    assert compacted.applied and compacted.method == "compact"
    again = quantize(replace(model, data=compacted.model), result.X_test, result.y_test, result.classes, **FAST)
    assert not again.applied and again.model == compacted.model
    assert {c["verdict"] for c in again.candidates} == {"no gain"}
    assert "compaction would not make the file smaller" in again.candidates[0]["reason"]


def test_duplicated_opset_entries_are_handled(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    """skl2onnx can emit the ai.onnx opset twice, which breaks the quantizer: bytes from
    elsewhere (a stored run) may still carry it."""
    result, model = converted["mlp"]
    proto = onnx.load_from_string(model.data)
    proto.opset_import.add(domain="", version=model.opset)
    doubled = replace(model, data=proto.SerializeToString())
    report = quantize(doubled, result.X_test, result.y_test, result.classes, strategies=["dynamic-int8"], **FAST)
    assert report.applied and report.quantized_nodes == 4


def test_contract_check_catches_class_order_names_and_types(
    converted: dict[str, tuple[TrainResult, OnnxModel]],
) -> None:
    result, model = converted["wine-mlp"]
    feed = {"input": result.X_test[:20].astype(np.float32)}
    original = onnx.load_from_string(model.data)

    def problems(proto: onnx.ModelProto) -> list[str]:
        return contract_problems(original, proto, session(model.data), session(proto.SerializeToString()), feed)

    permuted = onnx.load_from_string(model.data)
    classes = next(i for i in permuted.graph.initializer if i.name == "classes")
    values = onnx.numpy_helper.to_array(classes)[::-1].copy()
    classes.CopyFrom(onnx.numpy_helper.from_array(values, "classes"))
    assert any("class order" in p for p in problems(permuted))

    renamed = onnx.load_from_string(model.data)
    renamed.graph.output[1].name = "probs"
    next(n for n in renamed.graph.node if "probabilities" in n.output).output[0] = "probs"
    for node in renamed.graph.node:
        node.input[:] = ["probs" if i == "probabilities" else i for i in node.input]
    assert any(p.startswith("outputs") for p in problems(renamed))
    assert problems(original) == []


def test_wrong_class_list_is_an_error(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["logreg"]
    with pytest.raises(QuantizationError, match="2 probability columns for 3 classes"):
        quantize(model, result.X_test, result.y_test, [0, 1, 2], **FAST)
    with pytest.raises(QuantizationError, match="unknown strategy"):
        quantize(model, result.X_test, result.y_test, result.classes, strategies=["int4"], **FAST)


@pytest.mark.parametrize(("family", "method"), [("rf", "compact"), ("mlp", "dynamic-int8")])
def test_cli_quantize_and_the_device_serves_the_result(tmp_path: Path, family: str, method: str) -> None:
    """`edgekit quantize` records the report; the bundle built from it (packed encoding, int8)
    verifies, loads and passes its health check in the device agent's own code."""
    ws = workspace.init(tmp_path)
    data = tmp_path / "wine.csv"
    table_from(load_wine(), data)
    run = pipeline.train_run(ws, data, "label", family, seed=0)
    res = CliRunner().invoke(
        cli_main, ["quantize", run.id, "--json"], env={"EDGEKIT_WORKSPACE": str(tmp_path)}, catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["applied"] and out["method"] == method and out["label_changes"] == 0
    assert out["label_change_limit"] == (0 if family == "rf" else None)
    stored = runs.load_run(ws, run.id)
    assert stored.record["quantization"]["method"] == method
    shipped = stored.shipped_model.read_bytes()
    assert shipped != stored.artifact(runs.FLOAT_MODEL).read_bytes() and len(shipped) == out["size_after"]

    keys.generate(ws, "signer")
    built = bundler.build(ws, run.id, "wine", "signer")
    bundle = verify(built.path.read_bytes(), keys.trust_file(ws, ("signer",)), now=time.time())
    assert bundle.files[MODEL] == shipped
    loaded = LoadedModel(bundle)
    assert loaded.health_check() > 0
    X, y = stored.holdout()
    served = [loaded.predict_row(row.tolist()).label for row in X]
    assert np.mean(np.asarray(served) == y) == pytest.approx(out["accuracy_after"])
