"""Bundles from a user's own ONNX model: exported by skl2onnx outside edgekit (as another
framework would hand it over) or built by hand with onnx.helper; what cannot be mapped is refused."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from device_agent.bundle import HEALTH, REFERENCE, verify
from device_agent.drift import Reference
from device_agent.runtime import LoadedModel
from edgekit import bundler, keys, registry, workspace
from edgekit.external import IN_SAMPLE_NOTE, UnsupportedModel
from edgekit.workspace import Workspace

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = workspace.init(tmp_path_factory.mktemp("external"))
    keys.generate(ws, "release")
    return ws


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The reference CSVs (string and integer labels) and the raw arrays."""
    folder = tmp_path_factory.mktemp("iris")
    data = load_iris()
    for name, labels in (("iris.csv", SPECIES[data.target]), ("iris_int.csv", data.target)):
        with (folder / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([*FEATURES, "species"])
            for x, y in zip(data.data, labels, strict=True):
                w.writerow([*x.tolist(), y])
    return folder / "iris.csv", folder / "iris_int.csv", data.data, data.target


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _linear_graph(
    W: np.ndarray,
    b: np.ndarray,
    *,
    softmax: bool = True,
    label: bool = True,
    dtype: int = TensorProto.FLOAT,
    n_features: int | str = "F",
    batch: int | str = "N",
) -> onnx.ModelProto:
    """x @ W + b → Softmax → "probs" (and ArgMax → "label"), written by hand."""
    np_type = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1)
        if softmax
        else helper.make_node("Identity", ["logits"], ["probs"]),
    ]
    outputs = [helper.make_tensor_value_info("probs", dtype, [batch, W.shape[1]])]
    if label:
        nodes.append(helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, [batch]))
    graph = helper.make_graph(
        nodes,
        "hand_built",
        [helper.make_tensor_value_info("x", dtype, [batch, n_features])],
        outputs,
        [numpy_helper.from_array(W.astype(np_type), "W"), numpy_helper.from_array(b.astype(np_type), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="by-hand")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def fitted(iris: tuple[Path, Path, np.ndarray, np.ndarray]) -> LogisticRegression:
    _, _, X, y = iris
    return LogisticRegression(max_iter=1000).fit(X, y)


def _device_check(ws: Workspace, path: Path) -> LoadedModel:
    vb = verify(path.read_bytes(), keys.trust_file(ws), now=time.time())
    model = LoadedModel(vb)
    assert model.health_check() == 8
    return model


def test_skl2onnx_model_from_outside_edgekit(
    ws: Workspace, iris: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    csv_path, _, X, y = iris
    clf = LogisticRegression(max_iter=1000).fit(X, SPECIES[y])
    proto = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17)
    model_path = _save(proto, tmp_path / "exported.onnx")

    built = bundler.build_from_model(ws, model_path, csv_path, "species", "iris-lr", "release", tmp_path)
    assert built.version == 1 and built.stage == "staging" and built.source == "user-model"
    assert built.path == tmp_path / "iris-lr-v1.ekb" and not built.warnings

    loaded = _device_check(ws, built.path)
    # The device serves a raw row and gets the class the model itself gives.
    assert loaded.predict_row(X[0].tolist()).label == "setosa"
    assert loaded.predict_row(X[-1].tolist()).label == clf.predict(X[-1:])[0]

    vb = verify(built.path.read_bytes(), keys.trust_file(ws), now=time.time())
    m = vb.manifest
    assert m["model"]["task"] == "classification" and m["model"]["classes"] == list(SPECIES)
    assert m["model"]["input"] == {"layout": "tensor", "name": proto.graph.input[0].name, "dtype": "float32"}
    assert m["model"]["outputs"] == {"label": "label", "probabilities": "probabilities"}
    assert [f["name"] for f in m["model"]["features"]] == FEATURES
    lin = m["lineage"]
    assert lin["source"] == "user-supplied model" and lin["run_id"] is None
    assert lin["model_file"]["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert lin["model_file"]["producer"].startswith("skl2onnx") and lin["model_file"]["opset"] == 17
    assert lin["reference_predictions"] == IN_SAMPLE_NOTE and "out-of-fold" in IN_SAMPLE_NOTE
    assert lin["data"]["rows"] == 150 and lin["data"]["path"] == str(csv_path)
    assert lin["metrics"]["reference"]["accuracy"] > 0.95 and lin["packages"]["onnxruntime"]
    imp = m["explain"]["permutation_importance"]
    assert m["explain"]["metric"] == "neg_log_loss" and m["explain"]["on"] == "reference"
    assert set(imp) == set(FEATURES) and max(imp, key=lambda k: imp[k]["mean"]).startswith("petal")
    # Reference statistics: the model's own predicted-class shares on the reference rows.
    ref = Reference.from_json(json.loads(vb.files[REFERENCE]))
    predicted = clf.predict(X)
    expected = [float(np.mean(predicted == s)) for s in SPECIES]
    assert np.allclose(ref.prediction.proportions, expected)
    assert len(json.loads(vb.files[HEALTH])["rows"]) == 8

    [version] = registry.versions(ws, "iris-lr")
    assert version.source == "user-model" and version.run_id is None and version.stage == "staging"
    assert version.model_sha256 == lin["model_file"]["sha256"]
    assert "user-supplied model exported.onnx" in registry.history(ws, "iris-lr")[0].reason


@pytest.mark.parametrize("labels", ["strings", "integers"])
def test_a_zipmap_export_is_read_through_its_probability_tensor(
    labels: str, ws: Workspace, iris: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """skl2onnx's default export ends in a ZipMap (a list of maps): accepted, the probabilities
    read from the tensor it is fed, its class labels taken as the class order."""
    csv_path, int_csv, X, y = iris
    target = SPECIES[y] if labels == "strings" else y
    clf = LogisticRegression(max_iter=1000).fit(X, target)
    proto = to_onnx(clf, X[:1].astype(np.float32), target_opset=17)  # zipmap on, the default
    assert any(n.op_type == "ZipMap" for n in proto.graph.node)
    model_path = _save(proto, tmp_path / "zipmap.onnx")

    built = bundler.build_from_model(
        ws, model_path, csv_path if labels == "strings" else int_csv, "species", f"iris-zm-{labels}", "release"
    )
    loaded = _device_check(ws, built.path)
    for row in (X[0], X[60], X[-1]):
        got = loaded.predict_row(row.tolist())
        want = clf.predict_proba(row.reshape(1, -1))[0]
        assert got.label == clf.predict(row.reshape(1, -1))[0]
        np.testing.assert_allclose(got.probabilities, want, atol=1e-5)
    m = verify(built.path.read_bytes(), keys.trust_file(ws), now=time.time()).manifest
    assert m["model"]["classes"] == clf.classes_.tolist()
    lineage = m["lineage"]
    assert lineage["classes_from"] == "the class labels of the model's ZipMap"
    assert lineage["model_file"]["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert "ZipMap removed" in lineage["model_file"]["rewritten"][0]
    shipped = onnx.load_from_string(
        verify(built.path.read_bytes(), keys.trust_file(ws), now=time.time()).files["model.onnx"]
    )
    assert not any(n.op_type == "ZipMap" for n in shipped.graph.node)


def test_hand_built_onnx_graph(
    ws: Workspace, iris: tuple[Path, Path, np.ndarray, np.ndarray], fitted: LogisticRegression, tmp_path: Path
) -> None:
    _, int_csv, X, _ = iris
    for dtype, name in ((TensorProto.FLOAT, "hand32"), (TensorProto.DOUBLE, "hand64")):
        model_path = _save(_linear_graph(fitted.coef_.T, fitted.intercept_, dtype=dtype), tmp_path / f"{name}.onnx")
        built = bundler.build_from_model(ws, model_path, int_csv, "species", name, "release")
        loaded = _device_check(ws, built.path)
        assert loaded.spec.classes == (0, 1, 2) and loaded.spec.input_dtype == (
            "float64" if name == "hand64" else "float32"
        )
        assert loaded.predict_row(X[120].tolist()).label == int(fitted.predict(X[120:121])[0])
        assert (
            verify(built.path.read_bytes(), keys.trust_file(ws), now=time.time())
            .manifest["lineage"]["model_file"]["producer"]
            .startswith("by-hand")
        )


def test_a_model_without_a_label_output_takes_the_sorted_classes_and_says_so(
    ws: Workspace, iris: tuple[Path, Path, np.ndarray, np.ndarray], fitted: LogisticRegression, tmp_path: Path
) -> None:
    _, int_csv, _, _ = iris
    path = _save(_linear_graph(fitted.coef_.T, fitted.intercept_, label=False), tmp_path / "nolabel.onnx")
    built = bundler.build_from_model(ws, path, int_csv, "species", "nolabel", "release")
    assert any("no label output" in w for w in built.warnings)
    loaded = _device_check(ws, built.path)
    assert loaded.spec.label_output == loaded.spec.proba_output == "probs"


def test_classes_given_in_the_wrong_order_are_refused(
    ws: Workspace, iris: tuple[Path, Path, np.ndarray, np.ndarray], fitted: LogisticRegression, tmp_path: Path
) -> None:
    _, int_csv, _, _ = iris
    path = _save(_linear_graph(fitted.coef_.T, fitted.intercept_), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModel, match="label output 'label' disagrees with classes"):
        bundler.build_from_model(ws, path, int_csv, "species", "wrong-order", "release", classes=[2, 1, 0])
    assert registry.versions(ws, "wrong-order") == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("external_data", "keeps 2 tensor\\(s\\) in external data files"),
        ("two_inputs", "has 2 inputs"),
        ("int_input", "is a tensor of int64"),
        ("regression", "no \\[N, C\\] float output of class probabilities"),
        ("logits", "does not hold probabilities"),
        ("wrong_width", "takes 5 features; the reference CSV has 4"),
        ("fixed_batch", "takes exactly 8 rows per call"),
        ("three_d", "has 3 dimensions"),
        ("two_class_csv", "outputs 3 class probabilities, but the sorted distinct values .* gives 2 classes"),
        ("not_onnx", "is not an ONNX model"),
    ],
)
def test_what_cannot_be_mapped_is_refused_clearly(
    case: str,
    message: str,
    ws: Workspace,
    iris: tuple[Path, Path, np.ndarray, np.ndarray],
    fitted: LogisticRegression,
    tmp_path: Path,
) -> None:
    _, int_csv, _, _ = iris
    W, b = fitted.coef_.T, fitted.intercept_
    path = tmp_path / f"{case}.onnx"
    csv_path = int_csv
    if case == "external_data":
        onnx.save_model(
            _linear_graph(W, b),
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    elif case == "two_inputs":
        graph = helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["probs"])],
            "two",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        )
        _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    elif case == "int_input":
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["probs"], to=TensorProto.FLOAT)],
            "ints",
            [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3])],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        )
        _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    elif case == "regression":
        _save(_linear_graph(W[:, :1], b[:1], softmax=False, label=False), path)
    elif case == "logits":
        _save(_linear_graph(W, b, softmax=False), path)
    elif case == "wrong_width":
        _save(_linear_graph(np.vstack([W, np.zeros((1, 3))]), b, n_features=5), path)
    elif case == "fixed_batch":
        _save(_linear_graph(W, b, batch=8), path)
    elif case == "three_d":
        graph = helper.make_graph(
            [helper.make_node("Flatten", ["x"], ["probs"])],
            "cube",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3])],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        )
        _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    elif case == "two_class_csv":
        _save(_linear_graph(W, b), path)
        lines = int_csv.read_text().splitlines()
        csv_path = tmp_path / "two.csv"
        csv_path.write_text("\n".join([lines[0], *(line for line in lines[1:] if not line.endswith(",2"))]) + "\n")
    elif case == "not_onnx":
        path.write_bytes(b"\x08\x07garbage that protobuf will not parse \xff\xfe")
    with pytest.raises(UnsupportedModel, match=message) as exc:
        bundler.build_from_model(ws, path, csv_path, "species", f"refused-{case.replace('_', '-')}", "release")
    assert exc.value.exit_code == 5
    assert registry.versions(ws, f"refused-{case.replace('_', '-')}") == []
