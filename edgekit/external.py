"""A model the user brings (an ONNX file exported by any framework), made ready for a bundle.

What edgekit trains, it knows; a user's model it has to read. From the ONNX graph and a CSV
of reference rows this module derives everything a bundle needs, and refuses — naming the
part — what it cannot map onto the model contract (``docs/contract-model-spec.md``):

- the file: a valid ONNX model that onnxruntime loads, with every weight inside the file
  (a bundle carries one self-contained model: external-data references are refused);
- the input: exactly one float32/float64 tensor ``[N, F]`` → the ``tensor`` layout, with
  ``F`` the number of feature columns of the CSV, in the CSV's column order;
- the outputs: one float tensor ``[N, C]`` of class probabilities (rows summing to 1),
  plus an optional label tensor → a classifier. Probabilities given as a list of maps (a
  ``ZipMap``, skl2onnx's default) are read from the tensor the ZipMap is fed: the node is
  removed and that tensor becomes the output (the lineage says so, and keeps the original
  file's SHA-256), and the ZipMap's class labels give the class order. Classes are
  ``--classes`` if given, else the ZipMap's labels, else the sorted distinct target values
  (the order scikit-learn and most label encoders use);
  a label output, when there is one, must agree with ``classes[argmax(probabilities)]``.
  Regressors are refused for now: the reference statistics devices compare against are
  built from class probabilities;
- reference statistics from the CSV's rows, with the prediction and confidence
  distributions taken from the model's own outputs on those rows. They are in-sample
  predictions — out-of-fold predictions need the training procedure, which edgekit does
  not have — and the lineage says so;
- health samples through the device's own runtime, and permutation importance on the
  reference rows, exactly as for a trained run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import BundleBuildError

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
_LABEL_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.STRING)
PROBA_ATOL = 1e-3  # rows of a probability output must sum to 1 within this
IN_SAMPLE_NOTE = (
    "prediction and confidence reference distributions are the model's own outputs on the reference rows "
    "(in-sample): out-of-fold predictions are impossible for a user-supplied model, so if these rows were "
    "used to train it, the reference confidence is optimistic and devices may see confidence drift sooner"
)


class UnsupportedModel(BundleBuildError):
    """The user's ONNX model cannot be mapped onto the bundle's model contract."""


@dataclass
class UserModel:
    """A user's ONNX model, checked, with the manifest model section derived from its graph."""

    data: bytes = field(repr=False)
    filename: str
    sha256: str
    opset: int
    producer: str
    model: dict[str, Any]  # the manifest "model" section, minus features and classes until bound to data
    proba_output: str
    label_output: str | None
    n_features: int | None  # None when the graph leaves the feature dimension open
    batch_one: bool  # the graph takes exactly one row per call
    classes: list[Any] | None = None  # the class labels the graph itself names (a ZipMap's), in column order
    rewrites: list[str] = field(default_factory=list)  # what was changed in the user's graph, and why


def strip_zipmap(proto: onnx.ModelProto) -> tuple[list[Any] | None, list[str]]:
    """Remove ``ZipMap`` nodes that produce graph outputs, in place: the probability tensor each
    one is fed becomes the output instead. Returns the class labels of the (first) ZipMap and a
    description of each change."""
    graph = proto.graph
    outputs = {o.name: i for i, o in enumerate(graph.output)}
    classes: list[Any] | None = None
    changes: list[str] = []
    for node in list(graph.node):
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml" or node.output[0] not in outputs:
            continue
        attrs = {a.name: a for a in node.attribute}
        labels: list[Any] = (
            [int(v) for v in attrs["classlabels_int64s"].ints]
            if "classlabels_int64s" in attrs
            else [v.decode() for v in attrs["classlabels_strings"].strings]
            if "classlabels_strings" in attrs
            else []
        )
        tensor = node.input[0]
        position = outputs[node.output[0]]
        old = graph.output[position]
        graph.node.remove(node)
        width: int | str = len(labels) or "C"
        graph.output.remove(old)
        graph.output.insert(position, onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, ["N", width]))
        if classes is None and labels:
            classes = labels
        changes.append(
            f"ZipMap removed: the probabilities are read from its input tensor {tensor!r} instead of the list of "
            f"maps {old.name!r}"
        )
    return classes, changes


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None


def _type_name(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor of {onnx.TensorProto.DataType.Name(t.tensor_type.elem_type).lower()}"
    return {"sequence_type": "sequence", "map_type": "map", "optional_type": "optional"}.get(str(kind), str(kind))


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(proto.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
    for function in proto.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def external_references(proto: onnx.ModelProto) -> list[str]:
    """Names of tensors whose data lives outside the model file."""
    return [t.name or "(unnamed)" for t in _tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL]


def load(path: Path) -> UserModel:
    """Read and check a user's ONNX file; derive the input and outputs, or say what is unsupported."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleBuildError(f"cannot read {path}: {exc.strerror}") from None
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UnsupportedModel(f"{path} is not an ONNX model: {exc}") from None
    external = external_references(proto)
    if external:
        shown = ", ".join(external[:3]) + (f" and {len(external) - 3} more" if len(external) > 3 else "")
        raise UnsupportedModel(
            f"{path.name} keeps {len(external)} tensor(s) in external data files ({shown}); a bundle carries "
            "one self-contained model",
            "save it with the weights inside: onnx.save_model(model, path, save_as_external_data=False)",
        )
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModel(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0]}") from None
    original_sha256 = hashlib.sha256(data).hexdigest()
    zip_classes, rewrites = strip_zipmap(proto)
    if rewrites:
        data = proto.SerializeToString()
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are untyped
        raise UnsupportedModel(
            f"onnxruntime {ort.__version__} cannot load {path.name}: {str(exc).strip().splitlines()[0]}",
            "devices run onnxruntime too: export with an opset and operators it supports",
        ) from None

    graph = proto.graph
    initialised = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialised]
    if len(inputs) != 1:
        names = ", ".join(f"{i.name} ({_type_name(i.type)})" for i in inputs)
        raise UnsupportedModel(
            f"{path.name} has {len(inputs)} inputs ({names}); edgekit can bundle a model with one float "
            "tensor input [N, F]",
            "export the model with all features concatenated into one input",
        )
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else None
    if elem not in _FLOAT_TYPES:
        raise UnsupportedModel(
            f"input {inp.name!r} of {path.name} is a {_type_name(inp.type)}; edgekit can feed one float32 or "
            "float64 tensor [N, F]",
            "export the model with a float input",
        )
    dims = list(inp.type.tensor_type.shape.dim)
    if not inp.type.tensor_type.HasField("shape") or len(dims) != 2:
        raise UnsupportedModel(
            f"input {inp.name!r} of {path.name} has {'an unknown shape' if not dims else f'{len(dims)} dimensions'}; "
            "edgekit feeds a 2-D tensor [N, F] (rows × features)",
            "export the model with a [batch, features] input",
        )
    batch, n_features = _dim(dims[0]), _dim(dims[1])
    if batch is not None and batch != 1:
        raise UnsupportedModel(
            f"input {inp.name!r} of {path.name} takes exactly {batch} rows per call; devices feed one row at a time",
            "export the model with a dynamic (or 1) batch dimension",
        )

    proba: list[str] = []
    labels: list[str] = []
    zipmaps: list[str] = []
    others: list[str] = []
    for out in graph.output:
        t = out.type
        if not t.HasField("tensor_type"):
            (zipmaps if t.HasField("sequence_type") else others).append(out.name)
            continue
        out_dims = [_dim(d) for d in t.tensor_type.shape.dim]
        if t.tensor_type.elem_type in _FLOAT_TYPES:
            if len(out_dims) == 2 and out_dims[1] != 1:
                proba.append(out.name)
            else:
                others.append(out.name)
        elif t.tensor_type.elem_type in _LABEL_TYPES and len(out_dims) <= 2:
            labels.append(out.name)
        else:
            others.append(out.name)
    if not proba:
        if zipmaps:
            raise UnsupportedModel(
                f"{path.name} gives its probabilities as a list of maps ({', '.join(zipmaps)}: a ZipMap), which "
                "devices do not read",
                "export them as a [N, C] tensor (skl2onnx: options={id(model): {'zipmap': False}})",
            )
        described = ", ".join(f"{o.name} ({_type_name(o.type)})" for o in graph.output)
        raise UnsupportedModel(
            f"{path.name} has no [N, C] float output of class probabilities (outputs: {described}); only "
            "classifiers can be bundled from a user's model for now — regression reference statistics are not "
            "supported yet",
            "train the model with 'edgekit train', or export a classifier with a probability output",
        )
    if len(proba) > 1:
        raise UnsupportedModel(
            f"{path.name} has several float [N, C] outputs ({', '.join(proba)}); edgekit cannot tell which one "
            "holds the class probabilities",
            "export the model with a single probability output",
        )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "unknown"
    return UserModel(
        data=data,
        filename=path.name,
        sha256=original_sha256,
        opset=int(opset),
        producer=producer,
        model={
            "task": "classification",
            "input": {"layout": "tensor", "name": inp.name, "dtype": _FLOAT_TYPES[elem]},
            "outputs": {"label": labels[0] if labels else proba[0], "probabilities": proba[0]},
        },
        proba_output=proba[0],
        label_output=labels[0] if labels else None,
        n_features=n_features,
        batch_one=batch == 1,
        classes=zip_classes,
        rewrites=rewrites,
    )


def run(um: UserModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, labels or None) of the model on rows ``X``."""
    if um.n_features is not None and um.n_features != X.shape[1]:
        raise UnsupportedModel(
            f"{um.filename} takes {um.n_features} features; the reference CSV has {X.shape[1]} besides the target",
            "give a CSV whose feature columns are the model's inputs, in order",
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(um.data, sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.asarray(X, dtype=np.float64 if um.model["input"]["dtype"] == "float64" else np.float32)
    name = um.model["input"]["name"]
    wanted = [um.proba_output] + ([um.label_output] if um.label_output else [])
    try:
        if um.batch_one:
            outs = [sess.run(wanted, {name: x[i : i + 1]}) for i in range(len(x))]
            proba = np.concatenate([np.asarray(o[0]).reshape(1, -1) for o in outs])
            labels = np.concatenate([np.asarray(o[1]).reshape(-1) for o in outs]) if um.label_output else None
        else:
            got = sess.run(wanted, {name: x})
            proba = np.asarray(got[0])
            labels = np.asarray(got[1]).reshape(-1) if um.label_output else None
    except Exception as exc:  # onnxruntime's errors are untyped
        raise UnsupportedModel(
            f"{um.filename} fails on the reference rows ({x.shape[0]} × {x.shape[1]}): "
            f"{str(exc).strip().splitlines()[0]}",
            "check that the CSV's feature columns are the model's inputs, in order",
        ) from None
    return proba.astype(np.float64), labels


def parse_classes(text: str) -> list[Any]:
    """``--classes a,b,c`` → labels; integers stay integers (as the CSV loader reads them)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise BundleBuildError(f"--classes {text!r} has an empty label", "give labels separated by commas")
    try:
        return [int(p) for p in parts]
    except ValueError:
        return parts


def bind(
    um: UserModel,
    feature_names: Sequence[str],
    y: np.ndarray,
    proba: np.ndarray,
    labels: np.ndarray | None,
    classes: list[Any] | None = None,
) -> tuple[dict[str, Any], list[Any], str, list[str]]:
    """Tie the model to the reference data: the manifest model section, the classes, where they
    came from, and warnings worth showing. Refuses what does not fit."""
    if proba.ndim != 2 or proba.shape[0] != len(y):
        raise UnsupportedModel(f"output {um.proba_output!r} has shape {proba.shape}, expected [{len(y)}, C]")
    n_classes = proba.shape[1]
    if not np.isfinite(proba).all():
        raise UnsupportedModel(f"output {um.proba_output!r} holds NaN or infinite values on the reference rows")
    sums = proba.sum(axis=1)
    if proba.min() < -PROBA_ATOL or proba.max() > 1 + PROBA_ATOL or np.abs(sums - 1.0).max() > PROBA_ATOL:
        raise UnsupportedModel(
            f"output {um.proba_output!r} does not hold probabilities (values {proba.min():.3g} to {proba.max():.3g}, "
            f"row sums {sums.min():.3g} to {sums.max():.3g}); devices read it as class probabilities",
            "end the graph with a Softmax",
        )
    observed = sorted(
        {v.item() if isinstance(v, np.generic) else v for v in y.tolist()}, key=lambda v: (str(type(v)), v)
    )
    if classes:
        source, chosen = "--classes", list(classes)
    elif um.classes:
        source, chosen = "the class labels of the model's ZipMap", list(um.classes)
    else:
        source, chosen = "the sorted distinct values of the reference target column", observed
    if len(chosen) != n_classes:
        raise UnsupportedModel(
            f"{um.filename} outputs {n_classes} class probabilities, but {source} gives {len(chosen)} classes "
            f"({', '.join(map(str, chosen[:10]))})",
            "pass the labels in the order of the probability columns with --classes a,b,c",
        )
    if len({str(c) for c in chosen}) != len(chosen):
        raise UnsupportedModel(f"the classes {chosen} are not distinct")
    unknown = sorted({str(v) for v in y.tolist()} - {str(c) for c in chosen})
    if unknown:
        raise UnsupportedModel(
            f"the reference target column has labels the model's classes do not include: {', '.join(unknown[:10])}",
            "pass the model's labels with --classes, or drop those rows",
        )
    warnings: list[str] = []
    predicted_idx = np.argmax(proba, axis=1)
    if labels is not None:
        top2 = np.sort(proba, axis=1)[:, -2:] if n_classes > 1 else np.ones((len(proba), 2))
        clear = (top2[:, 1] - top2[:, 0]) > 1e-6
        mine = np.array([str(chosen[i]) for i in predicted_idx])
        theirs = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in labels.tolist()])
        disagree = int(np.sum((mine != theirs) & clear))
        if disagree:
            raise UnsupportedModel(
                f"the model's label output {um.label_output!r} disagrees with classes[argmax(probabilities)] on "
                f"{disagree} of {int(clear.sum())} reference rows, with classes {chosen} (from {source})",
                "pass the labels in the order of the probability columns with --classes a,b,c",
            )
    else:
        warnings.append(
            f"the model has no label output: classes {chosen} (from {source}) are assumed to be the order of "
            "its probability columns"
        )
    accuracy = float(np.mean(np.array([str(chosen[i]) for i in predicted_idx]) == np.array([str(v) for v in y])))
    majority = max(np.unique(np.array([str(v) for v in y]), return_counts=True)[1]) / len(y)
    if accuracy < majority:
        warnings.append(
            f"the model scores {accuracy:.3f} accuracy on the reference rows, below always predicting the most "
            f"common class ({majority:.3f}): check the class order (--classes) and the CSV's column order"
        )
    model = {
        "task": "classification",
        "features": [{"name": n, "type": "numeric", "allow_missing": False} for n in feature_names],
        "input": um.model["input"],
        "outputs": um.model["outputs"],
        "classes": chosen,
    }
    return model, chosen, source, warnings


def reference_metrics(y: np.ndarray, proba: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """Accuracy and log loss of the model on the reference rows (which may include its training rows)."""
    index = {str(c): i for i, c in enumerate(classes)}
    cols = np.array([index[str(v)] for v in y.tolist()])
    p = np.clip(proba / proba.sum(axis=1, keepdims=True), 1e-15, 1.0)
    return {
        "accuracy": float(np.mean(np.argmax(proba, axis=1) == cols)),
        "log_loss": float(-np.mean(np.log(p[np.arange(len(cols)), cols]))),
        "rows": len(cols),
    }
