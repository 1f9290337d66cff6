"""The output contract (docs/contract-model-spec.md): a candidate a device would see
differently from the float model — inputs, outputs, opset, dtypes, shapes, class order — is
refused, however small it is."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort


def contract_problems(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    before_sess: ort.InferenceSession,
    after_sess: ort.InferenceSession,
    feed: dict[str, np.ndarray],
) -> list[str]:
    """What a device would see differently (docs/contract-model-spec.md): input names, types
    and shapes; output names, order, types and shapes; the default opset; and, on real rows,
    each output's dtype and shape and the label each class index maps to (class order)."""
    problems = []

    def sig(args: list[Any]) -> list[tuple[str, str, list[Any]]]:
        return [(a.name, a.type, list(a.shape)) for a in args]

    if sig(before_sess.get_inputs()) != sig(after_sess.get_inputs()):
        problems.append(f"inputs {sig(after_sess.get_inputs())} != {sig(before_sess.get_inputs())}")
    if sig(before_sess.get_outputs()) != sig(after_sess.get_outputs()):
        problems.append(f"outputs {sig(after_sess.get_outputs())} != {sig(before_sess.get_outputs())}")
    if _default_opset(before) != _default_opset(after):
        problems.append(f"opset {_default_opset(after)} != {_default_opset(before)}")
    if problems:
        return problems
    single = {k: v[:1] for k, v in feed.items()}
    for rows in (feed, single):
        a = before_sess.run(None, rows)
        b = after_sess.run(None, rows)
        for out, x, z in zip(before_sess.get_outputs(), a, b, strict=True):
            x, z = np.asarray(x), np.asarray(z)
            if x.dtype != z.dtype or x.shape != z.shape:
                problems.append(f"output {out.name!r} is {z.dtype}{list(z.shape)}, was {x.dtype}{list(x.shape)}")
        problems.extend(_class_order_problems(a, b))
    return list(dict.fromkeys(problems))


def _class_order_problems(a: list[Any], b: list[Any]) -> list[str]:
    """Where a label output and a [N, C] probability output exist: rows whose arg-max agrees
    must carry the same label (a permuted class list would not)."""
    labels = [
        i for i, x in enumerate(a) if np.asarray(x).ndim == 1 and not np.issubdtype(np.asarray(x).dtype, np.floating)
    ]
    probas = [i for i, x in enumerate(a) if np.asarray(x).ndim == 2 and np.issubdtype(np.asarray(x).dtype, np.floating)]
    if not labels or not probas:
        return []
    la, lb = np.asarray(a[labels[0]]), np.asarray(b[labels[0]])
    pa, pb = np.asarray(a[probas[0]]), np.asarray(b[probas[0]])
    same = np.argmax(pa, axis=1) == np.argmax(pb, axis=1)
    if np.any(la[same] != lb[same]):
        return ["labels differ on rows with the same arg-max: the class order changed"]
    return []


def _default_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
