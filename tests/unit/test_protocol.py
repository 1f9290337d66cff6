"""Every wire document: round trip, strict parsing, format version, and fuzzed bytes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.errors import ProtocolError
from device_agent.phases import Phase
from device_agent.protocol import (
    BundleRef,
    Command,
    DesiredBundle,
    DesiredState,
    DeviceEvent,
    DeviceState,
    Document,
    DriftMessage,
    DriftSummary,
    ErrorRecord,
    Heartbeat,
    Latency,
    OutboxStats,
    Progress,
    Reported,
    ResendReply,
    ResendRequest,
    Resources,
    Stats,
    Topics,
    TransferInfo,
    range_count,
    to_ranges,
)

REF = BundleRef("pump", 3, "ab" * 32)
ERR = ErrorRecord(5.0, "bundle.hash_mismatch", "model.onnx does not match", "ab" * 32, REF)

EXAMPLES: list[Document] = [
    DesiredState(7, "group:plant-a", DesiredBundle("pump", 3, "ab" * 32, 1234), issued=1.5, expires=99.0),
    DesiredState(1, "device:d1", DesiredBundle("pump", 1, "cd" * 32, 10)),
    TransferInfo("pump", 3, 600, "ab" * 32, 256, ("a", "b", "c")),
    DeviceState(True, 4, "boot", ("g1",), "0.1.0", REF, 12.0),
    DeviceState(False, 5, "boot", (), reason="shutdown"),
    Heartbeat(
        1.0, 5.0, "boot", 4, Phase.ACTIVE, REF, Stats({"served": 3}, Latency(1.0, 2.0, 3.0), OutboxStats(1, 2, 0, 0))
    ),
    Heartbeat(1.0, 5.0, "boot", 4, Phase.IDLE, None),
    Reported(
        2.0,
        "boot",
        "0.1.0",
        Phase.FAILED,
        active=REF,
        previous=BundleRef("pump", 2, "cd" * 32),
        desired=REF,
        progress=Progress(3, 40),
        last_error=ERR,
        last_runtime_error=ErrorRecord(6.0, "row.not_finite", "nan"),
        last_drift=DriftSummary(3.0, REF, "drift", ("f1",), 200),
        failures={"row.not_finite": 2},
        suppressed={"row.not_finite": 1},
        counters={"served": 10},
    ),
    DeviceEvent("boot-1", "boot", 1, 3.0, "d1", "failure", "row.not_finite", "nan", None),
    DeviceEvent("boot-2", "boot", 2, 3.0, "d1", "lifecycle", "lifecycle.activated", "pump v3 is active", REF),
    DriftMessage("boot-3", "boot", 3, 4.0, "d1", REF, {"n": 200, "verdict": "ok", "drifted": [], "features": {}}),
    Heartbeat(
        1.0,
        5.0,
        "boot",
        4,
        Phase.ACTIVE,
        REF,
        Stats({"served": 3}, None, OutboxStats(0, 0, 0, 0), Resources(50 << 20, 1.25, 3.5, 10**9, 4 * 10**9)),
        seq=17,
    ),
    Command("c1", 9.0, "d1", ResendRequest("boot", ((3, 4), (9, 9)))),
    ResendReply("c1", 9.5, "d1", "boot", requeued=((3, 3),), queued=((9, 9),), missing=((4, 4),)),
]


@pytest.mark.parametrize("doc", EXAMPLES, ids=lambda d: type(d).__name__)
def test_round_trip(doc: Document) -> None:
    assert type(doc).decode(doc.encode()) == doc
    assert json.loads(doc.encode())["format"] == 1


@pytest.mark.parametrize("doc", EXAMPLES, ids=lambda d: type(d).__name__)
def test_a_newer_format_is_refused_with_a_clear_message(doc: Document) -> None:
    obj = doc.to_json()
    obj["format"] = 2
    with pytest.raises(ProtocolError, match=r"format 2.*upgrade"):
        type(doc).from_json(obj)
    del obj["format"]
    with pytest.raises(ProtocolError, match="'format'"):
        type(doc).from_json(obj)


@pytest.mark.parametrize("doc", EXAMPLES, ids=lambda d: type(d).__name__)
def test_unknown_fields_are_ignored(doc: Document) -> None:
    obj = doc.to_json()
    obj["added_by_a_newer_agent"] = {"x": 1}
    assert type(doc).from_json(obj) == doc


@pytest.mark.parametrize(
    ("cls", "change"),
    [
        (Reported, {"phase": "sleeping"}),
        (Reported, {"failures": {"x": "1"}}),
        (Reported, {"active": {"name": "a/b", "version": 1, "sha256": "x"}}),
        (Heartbeat, {"bdseq": -1}),
        (Heartbeat, {"ts": True}),
        (DeviceState, {"online": "yes"}),
        (DeviceState, {"groups": "g1"}),
        (DeviceEvent, {"kind": "gossip"}),
        (DeviceEvent, {"device": "+"}),
        (DesiredState, {"target": "everyone"}),
        (DesiredState, {"target": "device:a/b"}),
        (DesiredState, {"seq": 0}),
        (TransferInfo, {"chunks": ["a"]}),
        (TransferInfo, {"chunks": [1, 2, 3]}),
        (DriftMessage, {"window": {"n": "many"}}),
        (Heartbeat, {"resources": {"rss_bytes": "big"}}),
        (Heartbeat, {"seq": -2}),
        (Command, {"kind": "reboot"}),
        (Command, {"resend": {"boot_id": "b", "ranges": [[4, 3]]}}),
        (Command, {"resend": {"boot_id": "b", "ranges": [[0, 3]]}}),
        (Command, {"resend": {"boot_id": "b", "ranges": [[1, 2, 3]]}}),
        (Command, {"resend": {"boot_id": "b", "ranges": [[1, 1]] * 257}}),
        (Command, {"device": "a/b"}),
        (ResendReply, {"missing": [[True, 2]]}),
    ],
)
def test_strict_parsing(cls: type[Document], change: dict[str, Any]) -> None:
    doc = next(d for d in EXAMPLES if isinstance(d, cls))
    with pytest.raises(ProtocolError):
        cls.from_json({**doc.to_json(), **change})


@pytest.mark.parametrize("cls", sorted({type(d) for d in EXAMPLES}, key=lambda c: c.__name__))
@given(payload=st.binary(max_size=300))
@settings(max_examples=80, deadline=None, derandomize=True)
def test_random_bytes_are_a_protocol_error_or_a_document(cls: type[Document], payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        cls.decode(payload)


@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
        max_leaves=20,
    )
)
@settings(max_examples=200, deadline=None, derandomize=True)
def test_any_json_value_is_refused_cleanly(obj: Any) -> None:
    payload = json.dumps({"format": 1, "phase": "idle", **obj} if isinstance(obj, dict) else obj).encode()
    for cls in (
        Reported,
        Heartbeat,
        DeviceState,
        DeviceEvent,
        DriftMessage,
        DesiredState,
        TransferInfo,
        Command,
        ResendReply,
    ):
        with contextlib.suppress(ProtocolError):
            cls.decode(payload)


def test_topic_parsers() -> None:
    t = Topics("p/v1")
    assert t.parse_manifest_topic(t.bundle_manifest("pump", 3)) == ("pump", 3)
    assert t.parse_manifest_topic(t.bundle_chunk("pump", 3, 1)) is None
    assert t.parse_chunk_topic(t.bundle_chunk("pump", 3, 1)) == ("pump", 3, 1)
    assert t.parse_device_topic(t.reported("d1")) == ("d1", "reported")
    assert t.parse_device_topic("other/dev/d1/reported") is None


def test_an_older_heartbeat_without_resources_or_seq_still_reads() -> None:
    obj = Heartbeat(1.0, 5.0, "boot", 4, Phase.IDLE, None).to_json()
    assert "resources" not in obj and "seq" not in obj
    hb = Heartbeat.from_json(obj)
    assert hb.stats.resources is None and hb.seq is None


def test_ranges_merge_and_count() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 8, 3]) == ((1, 3), (5, 5), (8, 9))
    assert to_ranges([]) == ()
    assert range_count(((1, 3), (5, 5))) == 4
