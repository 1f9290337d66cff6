"""Per-family strategies beyond the MLP: the MatMul form of linear models (parity first),
lossless compaction of tree ensembles with zero label changes, regression models, and why
static QDQ failed on skl2onnx graphs. Real models, real onnxruntime."""

from __future__ import annotations

import copy
import csv
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Bunch

from edgekit.convert import OnnxModel, dedupe_opset_imports, session, to_onnx
from edgekit.data import load_table
from edgekit.quantize import (
    annotate_types,
    compact_proto,
    linear_parity,
    linear_to_matmul,
    packed_bytes,
    quantize,
)
from edgekit.train import TrainResult, train

FAST: dict[str, Any] = {"latency_rounds": 1, "latency_rows": 10, "max_latency_increase": 10.0}
Models = dict[str, tuple[TrainResult, OnnxModel]]


def csv_of(bunch: Bunch, path: Path, names: list[str] | None = None) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*bunch.feature_names, "label"])
        for row, t in zip(bunch.data, bunch.target, strict=True):
            out.writerow([*row, names[int(t)] if names else t])
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    tmp = tmp_path_factory.mktemp("families")
    cancer = load_table(csv_of(load_breast_cancer(), tmp / "cancer.csv"), "label")
    wine = load_table(csv_of(load_wine(), tmp / "wine.csv"), "label")
    named = load_table(csv_of(load_breast_cancer(), tmp / "named.csv", ["malignant", "benign"]), "label")
    digits = load_table(csv_of(load_digits(), tmp / "digits.csv"), "label")
    out: Models = {}
    for key, table, family in (
        ("cancer-logreg", cancer, "logreg"),
        ("cancer-rf", cancer, "rf"),
        ("cancer-hgb", cancer, "hgb"),
        ("wine-logreg", wine, "logreg"),
        ("wine-rf", wine, "rf"),
        ("named-logreg", named, "logreg"),
        ("digits-logreg", digits, "logreg"),
    ):
        result = train(table, family, seed=0)
        out[key] = (result, to_onnx(result))
    return out


def ops(data: bytes) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def io_signature(data: bytes) -> tuple[list[Any], list[Any]]:
    s = session(data)
    return [(i.name, i.type, i.shape) for i in s.get_inputs()], [(o.name, o.type, o.shape) for o in s.get_outputs()]


# --- linear models --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cancer-logreg", "wine-logreg", "named-logreg"])
def test_linear_rewrite_matches_the_original_graph(models: Models, key: str) -> None:
    """Binary LOGISTIC, multiclass SOFTMAX (+ skl2onnx's Normalizer), string class labels."""
    result, model = models[key]
    rewritten = linear_to_matmul(onnx.load_from_string(model.data)).SerializeToString()
    assert ops(rewritten)["LinearClassifier"] == 0 and ops(rewritten)["MatMul"] == 1
    rows = np.concatenate([result.X_test, result.X_train]).astype(np.float32)
    worst, label_mismatches = linear_parity(model.data, rewritten, {"input": rows})
    assert worst <= 1e-5 and label_mismatches == 0
    assert io_signature(rewritten) == io_signature(model.data)
    labels = session(rewritten).run([model.label_output], {"input": rows[:5]})[0]
    assert set(labels.tolist()) <= set(result.classes)  # int64 or str, as the float model's


def test_linear_regressor_rewrite_matches(diabetes: dict[str, Any]) -> None:
    model = diabetes["linear"]
    rewritten = linear_to_matmul(onnx.load_from_string(model.data)).SerializeToString()
    assert ops(rewritten)["LinearRegressor"] == 0
    worst, _ = linear_parity(model.data, rewritten, {"input": diabetes["X_test"].astype(np.float32)})
    assert worst <= 1e-5 and io_signature(rewritten) == io_signature(model.data)


def test_linear_matmul_int8_shrinks_a_wide_linear_model(models: Models) -> None:
    """digits: 64 x 10 weights, enough for int8 to pay for its scales."""
    result, model = models["digits-logreg"]
    report = quantize(
        model,
        result.X_test,
        result.y_test,
        result.classes,
        calibration=result.X_train,
        strategies=["compact", "linear-matmul", "linear-matmul+dynamic-int8"],
        **FAST,
    )
    assert report.applied and report.method == "linear-matmul+dynamic-int8", report.reason
    assert ops(report.model)["MatMulInteger"] == 1 and ops(report.model)["LinearClassifier"] == 0
    assert report.size_after < 0.5 * report.size_before and report.quantized_nodes == 2
    assert report.accuracy_after >= report.accuracy_before - 0.005
    by_name = {c["strategy"]: c for c in report.candidates}
    assert by_name["linear-matmul"]["max_abs_diff"] <= 1e-5 and by_name["compact"]["max_abs_diff"] == 0.0
    assert io_signature(report.model) == io_signature(model.data)


def test_small_linear_model_ships_compact_not_int8(models: Models) -> None:
    result, model = models["cancer-logreg"]
    report = quantize(model, result.X_test, result.y_test, result.classes, calibration=result.X_train, **FAST)
    assert report.family == "linear" and report.method == "compact"
    assert report.label_changes == 0 and report.accuracy_after == report.accuracy_before
    int8 = next(c for c in report.candidates if c["strategy"] == "linear-matmul+dynamic-int8")
    assert int8["verdict"] == "no gain" and int8["quantized_nodes"] == 2


# --- tree ensembles -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cancer-rf", "cancer-hgb", "wine-rf"])
def test_trees_shrink_with_zero_label_changes(models: Models, key: str) -> None:
    result, model = models[key]
    report = quantize(model, result.X_test, result.y_test, result.classes, calibration=result.X_train, **FAST)
    assert report.family == "tree" and report.label_change_limit == 0
    assert report.applied and report.method == "compact" and report.quantized_nodes == 0
    assert report.size_after < 0.7 * report.size_before
    assert report.label_changes == 0 and report.label_agreement == 1.0
    compact = next(c for c in report.candidates if c["strategy"] == "compact")
    assert compact["max_abs_diff"] == 0.0  # bit-identical probabilities
    # Rounding values to float16-representable ones: same raw size, only more compressible.
    f16 = next(c for c in report.candidates if c["strategy"] == "tree-f16-values")
    assert f16["verdict"] == "no gain" and f16["size"] == compact["size"]
    assert f16["size_zlib"] < compact["size_zlib"] and "compressible" in f16["reason"]
    # Every float row, also the training rows never seen by the gate, gets the same outputs.
    rows = {"input": result.X_train.astype(np.float32)}
    for a, b in zip(session(model.data).run(None, rows), session(report.model).run(None, rows), strict=True):
        assert np.array_equal(a, b)
    assert io_signature(report.model) == io_signature(model.data)


def test_tree_limits_and_inapplicable_strategies(models: Models) -> None:
    result, model = models["wine-rf"]
    args = (model, result.X_test, result.y_test, result.classes)
    tolerant = quantize(*args, max_label_changes=3, strategies=["compact"], **FAST)
    assert tolerant.label_change_limit == 3 and tolerant.max_label_changes == 3 and tolerant.method == "compact"
    nothing = quantize(*args, strategies=["fp16", "dynamic-int8"], **FAST)
    assert not nothing.applied and nothing.candidates == [] and nothing.model == model.data
    assert "none of the requested strategies applies to a tree model" in nothing.reason


def test_tree_compaction_drops_what_onnxruntime_does_not_read(models: Models) -> None:
    _, model = models["wine-rf"]
    before = onnx.load_from_string(model.data)
    after = compact_proto(before)
    attrs = {a.name: a for a in after.graph.node[0].attribute}
    assert "nodes_hitrates" not in attrs and "nodes_missing_value_tracks_true" not in attrs
    weights = list(attrs["class_weights"].floats)
    old = {a.name: a for a in before.graph.node[0].attribute}
    assert len(weights) < len(old["class_weights"].floats) and 0.0 in old["class_weights"].floats
    leaves = {(t, n) for t, n in zip(old["class_treeids"].ints, old["class_nodeids"].ints, strict=True)}
    kept = {(t, n) for t, n in zip(attrs["class_treeids"].ints, attrs["class_nodeids"].ints, strict=True)}
    assert kept == leaves  # every leaf keeps at least one entry
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]


def test_packed_encoding_parses_to_the_same_model(models: Models) -> None:
    _, model = models["cancer-rf"]
    proto = onnx.load_from_string(model.data)
    packed = packed_bytes(proto)
    assert onnx.load_from_string(packed) == proto and len(packed) < 0.8 * len(model.data)
    rows = {"input": np.random.default_rng(0).normal(size=(50, 30)).astype(np.float32) * 100}
    for a, b in zip(session(model.data).run(None, rows), session(packed).run(None, rows), strict=True):
        assert np.array_equal(a, b)


# --- regression -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes() -> dict[str, Any]:
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    out: dict[str, Any] = {"X_train": X_train, "X_test": X_test, "y_test": y_test}
    estimators: dict[str, Pipeline | RandomForestRegressor] = {
        "linear": make_pipeline(StandardScaler(), LinearRegression()),
        "rf": RandomForestRegressor(n_estimators=30, random_state=0, n_jobs=1),
        "mlp": make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(64,), max_iter=300, random_state=0)),
    }
    for name, est in estimators.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a short fit is enough here
            est.fit(X_train, y_train)
        proto = skl_to_onnx(
            est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))], target_opset={"": 17, "ai.onnx.ml": 3}
        )
        dedupe_opset_imports(proto)
        out[name] = OnnxModel(proto.SerializeToString(), "input", "float32", proto.graph.output[0].name, "", 17)
    return out


def test_regression_is_detected_and_scored_by_r2(diabetes: dict[str, Any]) -> None:
    d = diabetes
    rf = quantize(d["rf"], d["X_test"], d["y_test"], None, calibration=d["X_train"], **FAST)
    assert rf.task == "regression" and rf.metric == "r2" and rf.family == "tree"
    assert rf.method == "compact" and rf.label_changes == 0 and rf.accuracy_after == rf.accuracy_before
    assert rf.mae_before == rf.mae_after and rf.mae_before is not None and rf.size_after < 0.7 * rf.size_before

    mlp = quantize(d["mlp"], d["X_test"], d["y_test"], None, strategies=["dynamic-int8"], **FAST)
    (cand,) = mlp.candidates
    assert cand["accuracy"] is not None and cand["mae"] is not None and cand["quantized_nodes"] == 4
    assert mlp.applied == (mlp.accuracy_before - cand["accuracy"] <= 0.005)
    strict = quantize(
        d["mlp"], d["X_test"], d["y_test"], None, strategies=["dynamic-int8"], max_accuracy_loss=-1, **FAST
    )
    assert not strict.applied and "R² loss" in strict.candidates[0]["reason"]


# --- why static QDQ failed on skl2onnx graphs -------------------------------------------------


class _Rows(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, X: np.ndarray) -> None:
        self._it = iter([{"input": X.astype(np.float32)}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def test_static_qdq_fails_on_untyped_tensors_and_works_once_typed(tmp_path: Path) -> None:
    """quant_pre_process drops the no-op Cast after skl2onnx's Scaler; onnx cannot type a
    Scaler's output, so nothing downstream is typed, the Softmax output is not calibrated, and
    the quantizer's Softmax adjustment fails. Typing the tensors from onnxruntime fixes it."""
    result = train(load_table(csv_of(load_wine(), tmp_path / "w.csv"), "label"), "mlp", seed=0)
    proto = onnx.load_from_string(to_onnx(result).data)
    dedupe_opset_imports(proto)
    # What pre-processing does to the graph: the float→float Cast goes.
    cast = next(n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] == proto.graph.node[0].output[0])
    for node in proto.graph.node:
        node.input[:] = [cast.input[0] if i == cast.output[0] else i for i in node.input]
    proto.graph.node.remove(cast)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(proto, str(src))
    with pytest.raises(RuntimeError, match="Only an existing tensor can be modified"):
        quantize_static(str(src), str(dst), _Rows(result.X_train), quant_format=QuantFormat.QDQ)
    onnx.save(annotate_types(copy.deepcopy(proto)), str(src))
    quantize_static(str(src), str(dst), _Rows(result.X_train), quant_format=QuantFormat.QDQ)
    assert ops(dst.read_bytes())["QuantizeLinear"] > 0
    # The quantizer's own output names dynamic dimensions ("unk__1"); quantize() puts the float
    # model's declared inputs and outputs back, so only names and types are compared here.
    quantized = session(dst.read_bytes())
    assert [(o.name, o.type) for o in quantized.get_outputs()] == [
        (o.name, o.type) for o in session(proto.SerializeToString()).get_outputs()
    ]
