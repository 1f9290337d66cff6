"""quantize: an MLP shrinks, linear and tree graphs are reported as untouched, the gate holds."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.utils import Bunch

from edgekit.convert import OnnxModel, session, to_onnx
from edgekit.data import Table, load_table
from edgekit.errors import QuantizationError
from edgekit.quantize import quantize
from edgekit.train import TrainResult, train


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
def converted(cancer: Table) -> dict[str, tuple[TrainResult, OnnxModel]]:
    out = {}
    for name in ("logreg", "rf", "mlp"):
        result = train(cancer, name, seed=0)
        out[name] = (result, to_onnx(result))
    return out


def op_types(data: bytes) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def test_mlp_is_quantized(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes)
    assert report.applied and report.method == "dynamic-int8"
    assert report.size_before == len(model.data) and report.size_after == len(report.model)
    assert report.size_after < 0.7 * report.size_before
    ops = op_types(report.model)
    assert ops["MatMulInteger"] == 2 and ops["MatMul"] == 0
    assert report.quantized_nodes == 4  # 2 MatMulInteger + 2 DynamicQuantizeLinear
    assert report.accuracy_before == pytest.approx(result.metrics["holdout"]["accuracy"])
    assert report.accuracy_after >= report.accuracy_before - 0.005
    assert report.label_agreement >= 0.99
    assert "4 quantization nodes" in report.reason
    # The shipped bytes run and give the holdout accuracy the report claims.
    (proba,) = session(report.model).run([model.proba_output], {"input": result.X_test.astype(np.float32)})
    assert np.mean(np.argmax(proba, axis=1) == result.y_test) == pytest.approx(report.accuracy_after)
    summary = report.to_dict()
    assert "model" not in summary and json.loads(json.dumps(summary)) == summary


@pytest.mark.parametrize("name", ["logreg", "rf"])
def test_linear_and_tree_graphs_are_not_touched(converted: dict[str, tuple[TrainResult, OnnxModel]], name: str) -> None:
    result, model = converted[name]
    report = quantize(model, result.X_test, result.y_test, result.classes)
    assert not report.applied and report.method == "none" and report.quantized_nodes == 0
    assert "nothing in the graph is quantizable" in report.reason
    assert report.model == model.data  # byte for byte the float model
    assert report.accuracy_after == report.accuracy_before and report.label_agreement == 1.0


def test_gate_refusal_keeps_the_float_model(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["mlp"]
    report = quantize(model, result.X_test, result.y_test, result.classes, max_accuracy_loss=-0.01)
    assert not report.applied and report.method == "none"
    assert report.model == model.data
    assert report.quantized_nodes == 4 and report.size_after < report.size_before  # the refused candidate
    assert "above the -1.0 pt gate" in report.reason


def test_tiny_mlp_that_does_not_shrink_is_refused(tmp_path: Path) -> None:
    """4 features x 64 hidden x 3 classes: scales and extra nodes outweigh the int8 savings."""
    result = train(table_from(load_iris(), tmp_path / "iris.csv"), "mlp", seed=0)
    model = to_onnx(result)
    report = quantize(model, result.X_test, result.y_test, result.classes)
    assert not report.applied and report.quantized_nodes > 0
    assert report.size_after >= report.size_before and "not smaller" in report.reason
    assert report.model == model.data


def test_duplicated_opset_entries_are_handled(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    """skl2onnx can emit the ai.onnx opset twice, which breaks the quantizer: bytes from
    elsewhere (a stored run) may still carry it."""
    result, model = converted["mlp"]
    proto = onnx.load_from_string(model.data)
    proto.opset_import.add(domain="", version=model.opset)
    doubled = replace(model, data=proto.SerializeToString())
    report = quantize(doubled, result.X_test, result.y_test, result.classes)
    assert report.applied and report.quantized_nodes == 4


def test_wrong_class_list_is_an_error(converted: dict[str, tuple[TrainResult, OnnxModel]]) -> None:
    result, model = converted["logreg"]
    with pytest.raises(QuantizationError, match="2 probability columns for 3 classes"):
        quantize(model, result.X_test, result.y_test, [0, 1, 2])
