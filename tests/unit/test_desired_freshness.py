"""No single desired document freezes or rolls back a device: expired ones are refused (judged
by a clock that cannot be set back past the signed time), sequences far ahead of the clock are
refused, and a cleared or missing desired state is reported instead of passing in silence."""

from __future__ import annotations

from bundle_factory import NOW, valid_bundle

from device_agent.events import Message, Tick
from tests.unit.test_core import DEFAULTS, DEV, DOWNLOADING, T, codes, desire, on_v1, reported

V2 = valid_bundle("demo", 2)
V3 = valid_bundle("demo", 3)
US = 1_000_000  # edgekit deploy numbers desired states by the microsecond


def test_a_sequence_ten_years_ahead_is_refused_and_normal_deploys_go_on() -> None:
    core = on_v1()
    out = desire(core, V2, seq=int((NOW + 10 * 365 * 86400) * US))
    assert codes(out) == ["desired.rejected"] and "days ahead" in core.last_runtime_error.detail  # type: ignore[union-attr]
    assert core.state.desired_seq == {}, "nothing stored: the next normal deploy is not frozen out"
    out = desire(core, V2, seq=int(NOW * US))
    assert codes(out) == [] and core.phase == DOWNLOADING


def test_a_sequence_a_little_ahead_is_accepted() -> None:
    core = on_v1()
    desire(core, V2, seq=int((NOW + DEFAULTS.max_seq_ahead_s / 2) * US))
    assert core.phase == DOWNLOADING


def test_a_clock_that_was_never_set_does_not_judge_sequences() -> None:
    core = on_v1()
    desire(core, V2, 86400.0, seq=int(NOW * US))  # the device believes it is 2 January 1970
    assert core.phase == DOWNLOADING


def test_an_expired_desired_state_is_refused() -> None:
    core = on_v1()
    out = desire(core, V2, seq=2, issued=NOW - 100, expires=NOW - 1)
    assert codes(out) == ["desired.rejected"] and "expired" in core.last_runtime_error.detail  # type: ignore[union-attr]


def test_a_cleared_desired_state_is_reported() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    out = core.handle(Message(T.desired_device(DEV), b"", True), NOW + 1)
    assert codes(out) == ["desired.missing"]
    assert "cleared" in reported(out).last_runtime_error.detail  # type: ignore[union-attr]


def test_no_desired_state_after_connecting_is_reported_once() -> None:
    core = on_v1()
    assert codes(core.handle(Tick(), NOW + DEFAULTS.desired_wait_s - 1)) == []
    out = core.handle(Tick(), NOW + DEFAULTS.desired_wait_s + 1)
    assert codes(out) == ["desired.missing"]
    assert codes(core.handle(Tick(), NOW + 2 * DEFAULTS.desired_wait_s)) == []


def test_a_retained_desired_state_after_connecting_is_not_missing() -> None:
    core = on_v1()
    desire(core, V2, seq=2)
    assert "desired.missing" not in codes(core.handle(Tick(), NOW + DEFAULTS.desired_wait_s + 1))


# ── recovery with a root key ─────────────────────────────────────────────────────────


def _root_trust() -> object:
    from bundle_factory import BUNDLE_KEY, DEPLOY_KEY, make_trust, private_key

    from device_agent.trust import ROLE_BUNDLE, ROLE_DEPLOY, ROLE_ROOT

    root = private_key(77)
    return root, make_trust((BUNDLE_KEY, (ROLE_BUNDLE,)), (DEPLOY_KEY, (ROLE_DEPLOY,)), (root, (ROLE_ROOT,)))


def test_a_root_signed_recovery_unfreezes_a_device_that_holds_a_sequence_far_ahead() -> None:
    from dataclasses import replace

    from bundle_factory import DEPLOY_KEY

    root, trust = _root_trust()
    core = on_v1(trust=trust)
    frozen = int((NOW + 5 * 365 * 86400) * US)  # accepted by an older agent, or within the limit of a wrong clock
    core.state = replace(core.state, desired_seq={"device": frozen})
    assert codes(desire(core, V2, seq=int(NOW * US))) == ["desired.rejected"]  # frozen: every deploy is older
    # A recovery signed only by the deploy key is refused: it needs the stronger key.
    assert codes(desire(core, V2, seq=int(NOW * US), recover=True, key=DEPLOY_KEY))[0] == "bundle.unknown_key"
    out = desire(core, V2, seq=int(NOW * US), recover=True, key=root, issued=NOW, expires=NOW + 3600)
    assert codes(out) == [] and core.state.desired_seq == {"device": int(NOW * US)} and core.phase == DOWNLOADING
    desire(core, V3, NOW + 10, seq=int((NOW + 10) * US))  # normal deploys work again
    assert core.goal is not None and core.goal.bundle.version == 3


def test_the_host_re_signs_only_what_verifies_and_keeps_the_sequence() -> None:
    from bundle_factory import DEPLOY_KEY, STRANGER_KEY, desired_payload, make_trust

    from device_agent.protocol import DesiredState
    from device_agent.trust import DESIRED_DOMAIN, ROLE_DEPLOY, open_envelope
    from edgekit.fleet.freshness import resign

    good = (T.desired_device(DEV), desired_payload(V2, seq=5, issued=NOW - 10, expires=NOW + 10), True)
    forged = (T.desired_group("g9"), desired_payload(V2, seq=6, target="group:g9", key=STRANGER_KEY), True)
    done, items = resign([good, forged, (T.desired_group("gone"), b"", True)], DEPLOY_KEY, make_trust(), 3600, NOW)
    assert [(r.target, r.problem is None) for r in done] == [("device:dev1", True), ("?", False)]
    [(topic, payload, retain)] = items
    body, _ = open_envelope(make_trust(), ROLE_DEPLOY, DESIRED_DOMAIN, payload, "desired")
    doc = DesiredState.from_json(body)
    assert (topic, retain, doc.seq, doc.issued, doc.expires) == (good[0], True, 5, NOW, NOW + 3600)


def test_fleet_status_flags_a_device_without_a_retained_desired_state() -> None:
    from bundle_factory import desired_payload

    from device_agent.protocol import DeviceState
    from edgekit.fleet.status import status_view

    def birth(device: str, groups: tuple[str, ...]) -> tuple[str, bytes, bool]:
        return (T.state(device), DeviceState(online=True, bdseq=1, boot_id="b", groups=groups, ts=NOW).encode(), True)

    messages = [
        birth("a", ()),
        birth("b", ("g1",)),
        birth("c", ()),
        (T.desired_device("a"), desired_payload(V2, seq=3, target="device:a"), True),
        (T.desired_group("g1"), desired_payload(V2, seq=4, target="group:g1"), True),
        (T.desired_device("c"), b"", True),  # cleared
    ]
    view = {d["device"]: d for d in status_view(messages, T, NOW, with_desired=True)}
    assert [view[d]["desired_missing"] for d in "abc"] == [False, False, True]
    assert view["b"]["desired"]["target"] == "group:g1" and view["a"]["desired"]["seq"] == 3
