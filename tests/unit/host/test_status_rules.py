"""How a device's connectivity is judged from its retained messages (pure, no broker)."""

from __future__ import annotations

from device_agent.phases import Phase
from device_agent.protocol import DeviceState, Heartbeat
from edgekit.fleet.status import DeviceStatus

NOW = 1_000_000.0


def state(online: bool, bdseq: int) -> DeviceState:
    return DeviceState(online=online, bdseq=bdseq, boot_id="b")


def hb(age: float, bdseq: int = 3) -> Heartbeat:
    return Heartbeat(ts=NOW - age, interval=5.0, boot_id="b", bdseq=bdseq, phase=Phase.IDLE, active=None)


def status(st: DeviceState | None, beat: Heartbeat) -> str:
    return DeviceStatus("d", state=st, hb=beat).connectivity(NOW)


def test_online_with_a_recent_heartbeat() -> None:
    assert status(state(True, 3), hb(2)) == "online"


def test_stale_when_the_heartbeats_stop_but_no_will_came() -> None:
    assert status(state(True, 3), hb(60)) == "stale"


def test_offline_when_the_will_is_the_latest_word() -> None:
    assert status(state(False, 3), hb(60)) == "offline"


def test_a_late_will_from_an_older_connection_does_not_hide_a_live_device() -> None:
    assert status(state(False, 3), hb(1, bdseq=4)) == "online"


def test_a_will_of_the_current_connection_is_believed_even_with_a_recent_heartbeat() -> None:
    assert status(state(False, 4), hb(1, bdseq=4)) == "offline"


def test_unknown_without_any_state() -> None:
    assert status(None, hb(1)) == "unknown"
