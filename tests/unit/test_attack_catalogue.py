"""The rest of the attacker's catalogue: mix-and-match bundles, models that reach for files,
and chunks that are duplicated, reordered, out of range or misnamed. Each case asserts the
typed failure, that the previous model still serves (core.active), and that the persisted
state (version floor) did not change."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from bundle_factory import default_files, make_bundle, verify_built
from onnx import TensorProto, helper, numpy_helper

from device_agent.actions import Install
from device_agent.bundle import MODEL, FloorEntry
from device_agent.errors import HashMismatch, ModelLoadFailed, SizeMismatch
from device_agent.events import Message
from device_agent.runtime import LoadedModel
from tests.unit.test_core import NOW, V1, V2, T, active_ref, codes, desire, of_type, on_v1, send_transfer_doc

FLOOR_V1 = {"demo": FloorEntry(1, V1.sha256)}


def _unchanged(core: Any) -> None:
    assert core.active == active_ref(V1)
    assert core.floor == FLOOR_V1


def test_manifest_of_one_bundle_with_the_model_of_another() -> None:
    """A validly signed manifest travelling with another bundle's model: the allow-list's
    size and hash catch it, whichever differs first."""
    other_model = _model_with_external_data("weights.bin")
    mixed = make_bundle(version=1, replace_members={MODEL: other_model})
    with pytest.raises((SizeMismatch, HashMismatch)):
        verify_built(mixed)
    same_size = bytearray(default_files()[MODEL])
    same_size[len(same_size) // 2] ^= 0x40
    with pytest.raises(HashMismatch):
        verify_built(make_bundle(version=1, replace_members={MODEL: bytes(same_size)}))


def _model_with_external_data(location: str) -> bytes:
    weights = numpy_helper.from_array(np.ones((3, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"]),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "36")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["/etc/passwd", "../../../etc/hostname", "weights.bin"])
def test_a_model_that_reaches_for_files_does_not_load(location: str) -> None:
    files = {**default_files(), MODEL: _model_with_external_data(location)}
    bundle = verify_built(make_bundle(files=files))  # signed and hashed: only loading can refuse it
    with pytest.raises(ModelLoadFailed):
        LoadedModel(bundle)


def test_duplicate_and_out_of_order_chunks_still_assemble_exactly_once() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    first, parts = send_transfer_doc(core, V2)
    window = [int(t.rsplit("/", 1)[1]) for a in first if hasattr(a, "topics") for t in a.topics if "/chunk/" in t]
    out: list[Any] = []
    for i in reversed(window):  # out of order
        out += core.handle(Message(T.bundle_chunk("demo", 2, i), parts[i], True), NOW)
        out += core.handle(Message(T.bundle_chunk("demo", 2, i), parts[i], True), NOW)  # and twice
    assert codes(out) == []
    assert core.transfer is not None and core.transfer.received == len(window)
    _unchanged(core)


@pytest.mark.parametrize(
    "topic",
    [
        T.bundle_chunk("demo", 2, 99_999),  # out of range
        T.bundle_chunk("demo", 2, -1),
        f"{T.prefix}/bundle/demo/2/chunk/abc",  # not a number
        f"{T.prefix}/bundle/demo/2/chunk/0/extra",  # too deep
        f"{T.prefix}/bundle/demo/two/chunk/0",
    ],
)
def test_chunks_nobody_asked_for_are_ignored(topic: str) -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    send_transfer_doc(core, V2)
    out = core.handle(Message(topic, b"\0" * 512, True), NOW)
    assert not of_type(out, Install) and core.transfer is not None and core.transfer.received == 0
    _unchanged(core)


def test_a_chunk_before_its_transfer_document_is_ignored_and_fetched_later() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    early = core.handle(Message(T.bundle_chunk("demo", 2, 0), b"x" * 512, True), NOW)
    assert codes(early) == [] and core.transfer is None
    first, _ = send_transfer_doc(core, V2)
    assert any("/chunk/0" in t for a in first if hasattr(a, "topics") for t in a.topics)
    _unchanged(core)


def test_an_unsigned_desired_document_changes_nothing() -> None:
    core = on_v1()
    body = {"seq": 9, "target": "device:dev1", "bundle": {"name": "demo", "version": 2, "sha256": V2.sha256, "size": 1}}
    out = core.handle(Message(T.desired_device("dev1"), json.dumps({"body": json.dumps(body)}).encode(), True), NOW)
    assert codes(out) == ["bundle.missing_signature"]
    assert core.state.desired_seq == {} and core.goal is None
    _unchanged(core)
