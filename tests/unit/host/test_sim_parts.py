"""The simulator's pure parts: which devices get which fault, and the in-memory outbox."""

from __future__ import annotations

import pytest

from device_agent.protocol import BundleRef
from edgekit.sim.faults import Faults, assign, count
from edgekit.sim.outbox import MemoryOutbox, Row

IDS = [f"d{i:03d}" for i in range(200)]


def test_each_fault_goes_to_exactly_its_share_of_devices_the_same_way_every_time() -> None:
    faults = Faults(install=0.1, trial=0.05, drift=0.25, seed=7)
    first = assign(faults, IDS)
    assert count(first.values()) == {"install": 20, "trial": 10, "errors": 0, "drift": 50, "slow": 0}
    assert assign(faults, IDS) == first
    other = assign(Faults(install=0.1, seed=8), IDS)
    chosen = {d for d, a in first.items() if "install" in a}
    assert chosen != {d for d, a in other.items() if "install" in a}  # the seed decides


def test_a_fault_limited_to_a_bundle_applies_to_that_bundle_only() -> None:
    faults = Faults(trial=1.0, only=("pump@3", "fan"))
    assert faults.applies(BundleRef("pump", 3, "a" * 64))
    assert not faults.applies(BundleRef("pump", 2, "a" * 64))
    assert faults.applies(BundleRef("fan", 9, "a" * 64))
    assert not faults.applies(None)
    assert Faults().applies(None)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(drift=1.5)


def _row(seq: int) -> Row:
    return Row("t", f"m{seq}".encode(), "boot", seq)


def test_outbox_keeps_order_bounds_flight_and_sends_again_what_was_in_flight() -> None:
    box = MemoryOutbox(batch=2, history_rows=10)
    for seq in range(1, 6):
        box.put(_row(seq))
    sent: list[bytes] = []
    mids = iter(range(100, 200))

    def publish(_topic: str, payload: bytes) -> int:
        sent.append(payload)
        return next(mids)

    box.drain(publish)
    assert sent == [b"m1", b"m2"] and len(box) == 5
    box.ack(100)
    box.drain(publish)
    assert sent[-1] == b"m3"
    box.reconnected()  # m2 and m3 were in flight: first again, in order
    box.drain(publish)
    assert sent[-2:] == [b"m2", b"m3"]
    assert box.sent == 1 and len(box) == 4


def test_outbox_answers_a_resend_from_its_history() -> None:
    box = MemoryOutbox(batch=10, history_rows=3)
    for seq in range(1, 6):
        box.put(_row(seq))
    box.drain(lambda _t, _p: len(box.inflight) + 1)
    for mid in range(1, 5):
        box.ack(mid)  # 1..4 delivered; history keeps 2..4; 5 still in flight
    requeued, queued, missing = box.requeue("boot", ((1, 5),))
    assert requeued == ((2, 4),) and queued == ((5, 5),) and missing == ((1, 1),)
    assert [r.seq for r in box.pending] == [2, 3, 4]
    assert box.requeue("other-boot", ((2, 2),)) == ((), (), ((2, 2),))
