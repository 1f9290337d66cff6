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
    boundary_rows,
    check_parity,
    convert_checked,
    dedupe_opset_imports,
    feeds,
    require_parity,
    session,
    to_onnx,
)
from edgekit.data import Table, load_table
from edgekit.errors import ConversionError, DataError
from edgekit.train import MODELS, REGRESSION_MODELS, TrainResult, train


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
    with pytest.raises(DataError, match=r"unknown model 'svm'.*logreg, lgbm, xgb, rf, et, hgb, mlp"):
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


# --- regression, categorical features, missing values ------------------------------------------------


def mixed_table(tmp_path: Path, n: int = 360, seed: int = 0) -> Table:
    """Two numeric features (one with missing values), two categorical ones (one with missing)."""
    rng = np.random.default_rng(seed)
    with (tmp_path / "mixed.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["temp", "load", "site", "mode", "label"])
        for _ in range(n):
            temp, load = rng.normal(20, 5), rng.normal(100, 20)
            site = str(rng.choice(["north", "south", "east"]))
            mode = str(rng.choice(["a", "b", ""]))
            score = temp + (6 if site == "north" else 0) + (3 if mode == "b" else 0) + rng.normal(0, 2)
            out.writerow([f"{temp:.3f}" if rng.random() > 0.08 else "NA", f"{load:.2f}", site, mode, score > 26])
    return load_table(tmp_path / "mixed.csv", "label")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Table:
    return mixed_table(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Table:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    path = tmp_path_factory.mktemp("data") / "diabetes.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*data.feature_names, "progression"])
        out.writerows([*r, t] for r, t in zip(data.data, data.target, strict=True))
    return load_table(path, "progression")


@pytest.mark.parametrize("name", MODELS)
def test_mixed_table_every_family_converts_with_columns_layout(mixed: Table, name: str) -> None:
    result = train(mixed, name, seed=0)
    assert result.task == "classification" and result.classes == ["False", "True"]
    model, report = convert_checked(result)
    assert model.layout == "columns" and model.input_names == ["temp", "load", "site", "mode"]
    assert model.input_spec() == {"layout": "columns", "names": ["temp", "load", "site", "mode"], "dtype": "float32"}
    proto = onnx.load_from_string(model.data)
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert types == {
        "temp": onnx.TensorProto.FLOAT,
        "load": onnx.TensorProto.FLOAT,
        "site": onnx.TensorProto.STRING,
        "mode": onnx.TensorProto.STRING,
    }
    assert report.ok, report.explanation
    assert report.max_abs_dp <= 1e-4 and report.boundary_rows > 0 and report.boundary_max_abs_dp <= 1e-4
    # Raw values, missing ones included, straight into the graph (the device's feed).
    rows = np.array([[np.nan, 90.0, "north", ""], [25.0, 110.0, "nowhere", "b"]], dtype=object)
    _, proba = session(model.data).run(None, feeds(model, rows))
    np.testing.assert_allclose(proba, result.estimator.predict_proba(rows), atol=1e-5)


def test_unseen_holdout_category_is_a_warning_not_an_error(tmp_path: Path) -> None:
    rows = [[i * 0.1, "common" if i % 5 else "rare", i % 2] for i in range(60)]
    rows[-1][1] = "only-once"  # lands in the holdout or training split; force one into the holdout below
    with (tmp_path / "u.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["x", "c", "y"], *rows])
    table = load_table(tmp_path / "u.csv", "y")
    from edgekit.train import unseen_categories

    X_train, X_test = table.X[:-1], table.X[-1:]
    (warning,) = unseen_categories(table.features, X_train, X_test)
    assert "column 'c': 1 holdout rows have categories never seen in training ('only-once')" in warning
    result = train(table, "logreg", seed=0)
    assert all("never seen" in w for w in result.warnings)


@pytest.mark.parametrize("name", REGRESSION_MODELS)
def test_regression_every_family(diabetes: Table, name: str) -> None:
    assert diabetes.task == "regression"
    result = train(diabetes, name, seed=0)
    assert result.task == "regression" and result.classes == [] and result.oof_proba.shape == (331,)
    h = result.metrics["holdout"]
    # XGBoost's own defaults (depth 6, learning rate 0.3, 100 rounds) overfit diabetes' 331
    # rows (holdout r2 0.05); they are kept as the library ships them, and --model auto tunes them.
    assert set(h) == {"r2", "mae", "rmse"} and h["r2"] > (0.0 if name == "xgb" else 0.15)
    assert result.metrics["cv"]["metric"] == "r2"
    model, report = convert_checked(result)
    assert model.proba_output is None and model.layout == "tensor"
    assert report.ok, report.explanation
    assert report.task == "regression" and report.max_abs_dy is not None
    assert report.max_abs_dp <= 1e-4 and report.target_scale == pytest.approx(result.target_scale)


def test_mlp_regressor_predicts_in_target_units(diabetes: Table) -> None:
    """The target-scaled MLP converges (a plain MLPRegressor on diabetes' raw target does not)
    and its converted graph predicts in the target's units."""
    result = train(diabetes, "mlp", seed=0)
    model = to_onnx(result)
    (out,) = session(model.data).run(None, feeds(model, result.X_test))
    np.testing.assert_allclose(out.reshape(-1), result.estimator.predict(result.X_test), rtol=1e-5)
    assert 50 < float(out.mean()) < 250


def test_regression_with_categorical_and_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with (tmp_path / "r.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["a", "b", "kind", "y"])
        for _ in range(240):
            a, b, k = rng.normal(), rng.normal(), str(rng.choice(["x", "y", ""]))
            out.writerow([a if rng.random() > 0.1 else "", b, k, 3 * a - b + (2 if k == "x" else 0) + rng.normal()])
    table = load_table(tmp_path / "r.csv", "y")
    assert table.task == "regression" and [f.allow_missing for f in table.features] == [True, False, True]
    for name in ("linear", "hgb", "lgbm", "xgb"):
        result = train(table, name, seed=0)
        model, report = convert_checked(result)
        assert model.layout == "columns" and report.ok, report.explanation


def test_declared_metrics(cancer: Table, wine: Table, diabetes: Table) -> None:
    result = train(cancer, "logreg", metric="roc_auc")
    assert result.metric == "roc_auc" and result.metrics["cv"]["metric"] == "roc_auc"
    assert 0.95 < result.metrics["cv"]["mean"] <= 1.0 and "roc_auc" in result.metrics["holdout"]
    assert train(cancer, "logreg", metric="log_loss").metrics["cv"]["mean"] < 0.2
    with pytest.raises(DataError, match="needs a binary target; this one has 3 classes"):
        train(wine, "logreg", metric="roc_auc")
    with pytest.raises(DataError, match="'r2' is not a classification metric"):
        train(cancer, "logreg", metric="r2")
    assert train(diabetes, "linear", metric="neg_mae").metrics["cv"]["mean"] < -30


def test_too_few_rows_for_a_regression_split(tmp_path: Path) -> None:
    with (tmp_path / "s.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["x", "y"], *[[i, i * 0.37] for i in range(20)]])
    table = load_table(tmp_path / "s.csv", "y")
    with pytest.raises(
        DataError, match=r"only 20 rows: a 5-fold cross-validation plus a 60% holdout needs at least 25"
    ):
        train(table, "linear", test_size=0.6)
    assert train(table, "linear", test_size=0.25).task == "regression"


# --- parity: boundary rows and float32 ----------------------------------------------------------------


def test_boundary_rows_sit_where_the_label_flips(trained: dict[str, TrainResult]) -> None:
    result = trained["logreg"]
    rows = boundary_rows(result, pairs=32, seed=0)
    assert rows.shape[1] == 30 and len(rows) == 4 * 32
    proba = result.estimator.predict_proba(rows[:64])
    assert np.abs(proba[:, 1] - 0.5).max() < 0.01  # both sides of the flip, bisected
    report = check_parity(result, to_onnx(result))
    assert report.boundary_rows == 256 and report.boundary_max_abs_dp < 1e-5


def test_scaler_in_front_of_a_forest_fails_the_gate_and_says_why(trained: dict[str, TrainResult]) -> None:
    """The float32 pitfall the pipelines avoid: a float64 scaler in front of a tree ensemble."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    base = trained["rf"]
    est = Pipeline([("scale", StandardScaler()), ("model", RandomForestClassifier(100, random_state=0))])
    bad = replace(base, estimator=est.fit(base.X_train, base.y_train))
    report = check_parity(bad, to_onnx(bad))
    assert not report.ok and report.precision_rows > 0.01 * report.rows
    assert report.explanation is not None and "a scaler sits in front of a tree ensemble" in report.explanation
    with pytest.raises(ConversionError, match="holdout rows sit within float32 rounding"):
        require_parity(report)
    # The pipeline edgekit builds has no scaler in front of the trees, and passes.
    assert [name for name, _ in base.estimator.steps] == ["model"]
    assert check_parity(base, to_onnx(base)).ok


def test_float32_precision_loss_switches_to_float64(tmp_path: Path) -> None:
    """An epoch-timestamp feature: float32 resolves it to 128 s, the model needs better. The tool
    converts again with a float64 input where the family allows, and says why it cannot where not."""
    rng = np.random.default_rng(0)
    ts = 1.7e9 + rng.normal(0, 300, 500)
    other = rng.normal(size=500)
    label = ((ts - 1.7e9) / 300 + other + rng.normal(0, 0.5, 500) > 0).astype(int)
    with (tmp_path / "ts.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["ts", "other", "y"], *zip(ts.tolist(), other.tolist(), label.tolist(), strict=True)])
    table = load_table(tmp_path / "ts.csv", "y")
    logreg = train(table, "logreg", seed=0)
    model, report = convert_checked(logreg)
    assert report.ok and model.input_dtype == "float64"
    assert model.input_spec() == {"layout": "tensor", "name": "input", "dtype": "float64"}
    assert [a["input_dtype"] for a in report.attempts] == ["float32", "float64"]
    assert not report.attempts[0]["ok"] and report.attempts[1]["ok"]
    hgb_model, hgb_report = convert_checked(train(table, "hgb", seed=0))
    assert not hgb_report.ok and hgb_model.input_dtype == "float32"  # onnxruntime has no double trees here
    assert hgb_report.explanation is not None and "float32 inputs lose precision on 'ts'" in hgb_report.explanation


def test_parity_report_names_rows_and_values(trained: dict[str, TrainResult]) -> None:
    report = check_parity(trained["logreg"], to_onnx(trained["rf"]))
    assert not report.ok and report.divergent_rows > 0
    worst = report.worst[0]
    assert worst["set"] in ("holdout", "boundary") and worst["diff"] > 0.05
    assert set(worst["expected"]) == {"label", "p_max"}
    assert report.explanation is not None and "worst:" in report.explanation
    json.dumps(report.to_dict())
