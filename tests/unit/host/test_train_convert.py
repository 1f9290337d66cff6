"""train → to_onnx → parity on real data sets, real skl2onnx and real onnxruntime."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.utils import Bunch

from edgekit.convert import (
    check_parity,
    dedupe_opset_imports,
    require_parity,
    session,
    to_onnx,
)
from edgekit.data import Table, load_table
from edgekit.errors import ConversionError, DataError
from edgekit.train import MODELS, TrainResult, train


def table_from(bunch: Bunch, path: Path, text_labels: bool = False) -> Table:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*bunch.feature_names, "label"])
        for row, t in zip(bunch.data, bunch.target, strict=True):
            out.writerow([*row, bunch.target_names[t] if text_labels else t])
    return load_table(path, "label")


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Table:
    return table_from(load_breast_cancer(), tmp_path_factory.mktemp("data") / "cancer.csv")


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Table:
    return table_from(load_wine(), tmp_path_factory.mktemp("data") / "wine.csv", text_labels=True)


@pytest.fixture(scope="module")
def trained(cancer: Table) -> dict[str, TrainResult]:
    return {name: train(cancer, name, seed=0) for name in MODELS}


def test_train_result_is_complete_and_honest(cancer: Table, trained: dict[str, TrainResult]) -> None:
    result = trained["logreg"]
    assert result.task == "classification" and result.model == "logreg" and result.seed == 0
    assert result.classes == [0, 1] and all(type(c) is int for c in result.classes)
    assert len(result.X_test) == 143 and len(result.X_train) == 426  # 25 % holdout of 569
    # Stratified: class shares match the whole table within one row.
    share = np.mean(cancer.y)
    assert abs(np.sum(result.y_test) - share * len(result.y_test)) <= 1
    assert result.oof_proba.shape == (426, 2)
    np.testing.assert_allclose(result.oof_proba.sum(axis=1), 1.0)
    holdout = result.metrics["holdout"]
    assert 0.95 <= holdout["accuracy"] <= 1.0 and 0.9 <= holdout["f1_macro"] <= 1.0
    assert 0.0 < holdout["log_loss"] < 0.2
    cv = result.metrics["cv"]
    assert 0.94 <= cv["accuracy_mean"] <= 1.0 and 0.0 < cv["accuracy_std"] < 0.05
    # The CV accuracy is the accuracy of the out-of-fold probabilities.
    oof_accuracy = np.mean(np.argmax(result.oof_proba, axis=1) == result.y_train)
    assert abs(oof_accuracy - cv["accuracy_mean"]) < 0.01
    assert result.params["max_iter"] == 2000 and result.params["model"] == "logreg"
    assert result.params["seed"] == 0 and result.params["test_size"] == 0.25
    json.dumps(result.params)
    assert result.duration_s > 0


def test_out_of_fold_confidence_is_lower_than_in_sample(trained: dict[str, TrainResult]) -> None:
    """Why oof_proba exists: a forest is nearly certain about its own training rows."""
    rf = trained["rf"]
    in_sample = rf.estimator.predict_proba(rf.X_train).max(axis=1).mean()
    out_of_fold = rf.oof_proba.max(axis=1).mean()
    assert in_sample > out_of_fold + 0.02


def test_same_seed_same_model(cancer: Table, trained: dict[str, TrainResult]) -> None:
    again = train(cancer, "hgb", seed=0)
    assert again.metrics == trained["hgb"].metrics
    np.testing.assert_array_equal(again.oof_proba, trained["hgb"].oof_proba)


def test_params_are_json_safe(trained: dict[str, TrainResult]) -> None:
    mlp = trained["mlp"].params
    assert mlp["hidden_layer_sizes"] == [64] and mlp["random_state"] == 0
    rf = trained["rf"].params
    assert rf["n_estimators"] == 100 and rf["n_jobs"] == 1
    for result in trained.values():
        assert json.loads(json.dumps(result.params)) == result.params


def test_unknown_model_lists_choices(cancer: Table) -> None:
    with pytest.raises(DataError, match=r"unknown model 'svm'.*logreg, rf, hgb, mlp"):
        train(cancer, "svm")


def test_too_few_rows_of_a_class(tmp_path: Path) -> None:
    rows = [[i, i % 7, "a"] for i in range(40)] + [[i, 3, "b"] for i in range(6)]
    with (tmp_path / "few.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["x1", "x2", "y"], *rows])
    with pytest.raises(DataError, match=r"class 'b' has only 6 rows.*at least 8 rows per class"):
        train(load_table(tmp_path / "few.csv", "y"), "logreg")


@pytest.mark.parametrize("name", MODELS)
def test_parity_every_family(trained: dict[str, TrainResult], name: str) -> None:
    result = trained[name]
    model = to_onnx(result)
    report = check_parity(result, model)
    assert report.rows == 143
    assert report.max_abs_dp <= 1e-4, report
    assert report.label_agreement == 1.0 and report.ties == 0
    assert report.ok
    require_parity(report)
    assert set(report.to_dict()) >= {"rows", "max_abs_dp", "label_agreement", "tolerance", "ok"}


def test_onnx_interface_read_from_the_graph(trained: dict[str, TrainResult]) -> None:
    model = to_onnx(trained["hgb"])  # HistGradientBoosting converts (needs protobuf < 7)
    proto = onnx.load_from_string(model.data)
    assert model.input_name == "input" and model.input_dtype == "float32"
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not dims[0].HasField("dim_value") and dims[1].dim_value == 30
    outputs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert outputs == {model.label_output: onnx.TensorProto.INT64, model.proba_output: onnx.TensorProto.FLOAT}
    domains = [o.domain for o in proto.opset_import]
    assert len(domains) == len(set(domains))
    assert model.opset == 17
    label, proba = session(model.data).run(None, {"input": trained["hgb"].X_test[:5].astype(np.float32)})
    assert label.dtype == np.int64 and proba.shape == (5, 2)


def test_text_labels_multiclass(wine: Table) -> None:
    for name in ("logreg", "hgb"):
        result = train(wine, name, seed=1)
        assert result.classes == ["class_0", "class_1", "class_2"]
        model = to_onnx(result)
        report = check_parity(result, model)
        assert report.ok and report.label_agreement == 1.0 and report.max_abs_dp <= 1e-4


def test_hgb_float32_input_alone_moves_sklearn(trained: dict[str, TrainResult]) -> None:
    """Why parity compares against the original rows: sklearn's HGB on float32-cast rows is
    not the model we measured, while the ONNX model (float32 thresholds too) is."""
    report = check_parity(trained["hgb"], to_onnx(trained["hgb"]))
    assert report.max_abs_dp < 1e-5
    assert report.f32_rows_max_abs_dp > 1e-4


def test_parity_catches_the_wrong_model(trained: dict[str, TrainResult]) -> None:
    """A gate that can fail: the forest's graph is not the logistic regression."""
    report = check_parity(trained["logreg"], to_onnx(trained["rf"]))
    assert not report.ok and report.max_abs_dp > 0.05
    with pytest.raises(ConversionError, match=r"diverges.*max \|Δp\|.*tolerance 0.0001"):
        require_parity(report)


def test_require_parity_on_a_doctored_report(trained: dict[str, TrainResult]) -> None:
    good = check_parity(trained["logreg"], to_onnx(trained["logreg"]))
    bad = replace(good, max_abs_dp=0.0123, label_agreement=0.986, ok=False)
    with pytest.raises(ConversionError) as info:
        require_parity(bad)
    message = str(info.value)
    assert "0.0123" in message and "98.60%" in message and "tolerance 0.0001" in message
    assert "do not ship" in message and "\n" not in message


def test_dedupe_opset_imports() -> None:
    proto = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], []),
        opset_imports=[
            onnx.helper.make_opsetid("", 17),
            onnx.helper.make_opsetid("ai.onnx.ml", 1),
            onnx.helper.make_opsetid("", 15),
        ],
    )
    dedupe_opset_imports(proto)
    assert Counter((o.domain, o.version) for o in proto.opset_import) == Counter({("", 17): 1, ("ai.onnx.ml", 1): 1})
