"""How a device's connectivity is judged from its retained messages (pure, no broker)."""

from __future__ import annotations

from edgekit.fleet.status import DeviceStatus

NOW = 1_000_000.0


def status(state: dict, hb: dict) -> str:
    return DeviceStatus("d", state=state, hb=hb).connectivity(NOW)


def test_online_with_a_recent_heartbeat() -> None:
    assert status({"online": True, "bdseq": 3}, {"ts": NOW - 2, "interval": 5, "bdseq": 3}) == "online"


def test_stale_when_the_heartbeats_stop_but_no_will_came() -> None:
    assert status({"online": True, "bdseq": 3}, {"ts": NOW - 60, "interval": 5, "bdseq": 3}) == "stale"


def test_offline_when_the_will_is_the_latest_word() -> None:
    assert status({"online": False, "bdseq": 3}, {"ts": NOW - 60, "interval": 5, "bdseq": 3}) == "offline"


def test_a_late_will_from_an_older_connection_does_not_hide_a_live_device() -> None:
    assert status({"online": False, "bdseq": 3}, {"ts": NOW - 1, "interval": 5, "bdseq": 4}) == "online"


def test_a_will_of_the_current_connection_is_believed_even_with_a_recent_heartbeat() -> None:
    assert status({"online": False, "bdseq": 4}, {"ts": NOW - 1, "interval": 5, "bdseq": 4}) == "offline"


def test_unknown_without_any_state() -> None:
    assert status({}, {"ts": NOW - 1, "interval": 5}) == "unknown"
