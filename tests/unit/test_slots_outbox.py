"""The device's on-disk state (Slots) and its durable queue to the host (Outbox)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from device_agent.bundle import FloorEntry
from device_agent.errors import StorageError
from device_agent.outbox import Outbox
from device_agent.protocol import BundleRef
from device_agent.slots import STATE, Slots, atomic_write
from device_agent.state import Persisted

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def sample_state() -> Persisted:
    return Persisted(
        active=BundleRef("demo", 2, SHA_B),
        previous=BundleRef("demo", 1, SHA_A),
        floor={"demo": FloorEntry(2, SHA_B), "other": FloorEntry(7, SHA_C)},
        desired_seq={"device": 12, "group:g1": 3},
        bdseq=5,
    )


def tmp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".tmp-*"))


# ── Slots ────────────────────────────────────────────────────────────────────────────


def test_empty_state_dir_loads_defaults(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "state")
    assert (tmp_path / "state" / "bundles").is_dir()
    assert slots.load() == Persisted()


def test_save_load_round_trip(tmp_path: Path) -> None:
    Slots(tmp_path).save(sample_state())
    loaded = Slots(tmp_path).load()  # a fresh instance: what a restart sees
    assert loaded == sample_state()
    assert isinstance(loaded.floor["demo"], FloorEntry)
    assert tmp_files(tmp_path) == []


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.save(sample_state())
    newer = replace(sample_state(), bdseq=6, active=None)
    slots.save(newer)
    assert slots.load() == newer


def test_stray_temp_files_are_cleaned_on_start(tmp_path: Path) -> None:
    Slots(tmp_path).save(sample_state())
    (tmp_path / ".tmp-abc123").write_bytes(b"half a state file")
    (tmp_path / "bundles" / ".tmp-xyz").write_bytes(b"half a bundle")
    keeper = tmp_path / "bundles" / f"{SHA_A}.ekb"
    keeper.write_bytes(b"bundle")
    slots = Slots(tmp_path)
    assert tmp_files(tmp_path) == [] and tmp_files(tmp_path / "bundles") == []
    assert keeper.read_bytes() == b"bundle"
    assert slots.load() == sample_state()


def test_unreadable_state_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / STATE).write_bytes(b"{not json")
    with pytest.raises(StorageError) as info:
        Slots(tmp_path).load()
    assert info.value.code == "storage.failed"


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(StorageError):
        Slots(blocker / "state")


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert tmp_files(tmp_path) == []


def test_save_failure_is_a_storage_error_and_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = Slots(tmp_path)
    slots.save(sample_state())
    before = (tmp_path / STATE).read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", boom)
    changed = replace(sample_state(), bdseq=99)
    with pytest.raises(StorageError):
        slots.save(changed)
    monkeypatch.undo()
    assert (tmp_path / STATE).read_bytes() == before
    assert Slots(tmp_path).load() == sample_state()
    assert tmp_files(tmp_path) == []


def test_atomic_write_cleans_up_when_the_write_itself_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert tmp_files(tmp_path) == []


def test_store_and_read_bundle(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.store_bundle(SHA_A, b"bundle bytes")
    assert slots.read_bundle(SHA_A) == b"bundle bytes"
    assert slots.bundle_path(SHA_A) == tmp_path / "bundles" / f"{SHA_A}.ekb"
    with pytest.raises(StorageError):
        slots.read_bundle(SHA_B)


def test_store_bundle_failure_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slots = Slots(tmp_path)

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError):
        slots.store_bundle(SHA_A, b"bundle bytes")
    monkeypatch.undo()
    assert list((tmp_path / "bundles").iterdir()) == []


def test_prune_keeps_the_named_bundles(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    for sha in (SHA_A, SHA_B, SHA_C):
        slots.store_bundle(sha, sha.encode())
    (tmp_path / "bundles" / "notes.txt").write_bytes(b"not a bundle")
    slots.prune({SHA_A, SHA_C})
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [f"{SHA_A}.ekb", f"{SHA_C}.ekb", "notes.txt"]
    assert slots.read_bundle(SHA_C) == SHA_C.encode()
    slots.prune(set())
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["notes.txt"]


def test_state_file_is_plain_json(tmp_path: Path) -> None:
    Slots(tmp_path).save(sample_state())
    doc = json.loads((tmp_path / STATE).read_bytes())
    assert doc["floor"]["demo"] == {"version": 2, "sha256": SHA_B}
    assert doc["desired_seq"] == {"device": 12, "group:g1": 3}


# ── Outbox ───────────────────────────────────────────────────────────────────────────


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def test_order_is_preserved(outbox: Outbox) -> None:
    for i in range(5):
        outbox.put(f"t/{i}", f"p{i}".encode())
    rows = outbox.peek(10)
    assert [(t, p) for _, t, p in rows] == [(f"t/{i}", f"p{i}".encode()) for i in range(5)]
    ids = [r[0] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert len(outbox) == 5


def test_peek_pages_with_limit_and_after(outbox: Outbox) -> None:
    for i in range(5):
        outbox.put("t", bytes([i]))
    first = outbox.peek(2)
    assert [p for _, _, p in first] == [b"\x00", b"\x01"]
    rest = outbox.peek(10, after=first[-1][0])
    assert [p for _, _, p in rest] == [b"\x02", b"\x03", b"\x04"]
    assert len(outbox) == 5  # peeking removes nothing


def test_ack_removes_exactly_that_row(outbox: Outbox) -> None:
    for i in range(3):
        outbox.put("t", bytes([i]))
    ids = [r[0] for r in outbox.peek(10)]
    outbox.ack(ids[1])
    assert [p for _, _, p in outbox.peek(10)] == [b"\x00", b"\x02"]
    assert len(outbox) == 2
    outbox.ack(ids[1])  # a duplicate ack (PUBACK twice) changes nothing
    outbox.ack(10_000)
    assert len(outbox) == 2


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for i in range(4):
        box.put(f"t/{i}", b"\x00\xffbinary")
    box.ack(box.peek(1)[0][0])
    box.close()
    again = Outbox(path)
    try:
        assert len(again) == 3
        assert [t for _, t, _ in again.peek(10)] == ["t/1", "t/2", "t/3"]
        assert again.peek(1)[0][2] == b"\x00\xffbinary"
        again.put("t/4", b"x")
        assert [t for _, t, _ in again.peek(10)][-1] == "t/4"
    finally:
        again.close()


def test_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_rows=3)
    assert box.dropped == 0
    for i in range(5):
        box.put(f"t/{i}", b"x")
    assert len(box) == 3
    assert box.dropped == 2
    assert [t for _, t, _ in box.peek(10)] == ["t/2", "t/3", "t/4"]
    box.close()
    again = Outbox(path, max_rows=3)
    try:
        assert (len(again), again.dropped) == (3, 2)
        again.put("t/5", b"x")
        assert again.dropped == 3
        assert [t for _, t, _ in again.peek(10)] == ["t/3", "t/4", "t/5"]
    finally:
        again.close()


def test_acked_rows_make_room_without_drops(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "small.sqlite", max_rows=2)
    try:
        box.put("a", b"1")
        box.put("b", b"2")
        box.ack(box.peek(1)[0][0])
        box.put("c", b"3")
        assert box.dropped == 0
        assert [t for _, t, _ in box.peek(10)] == ["b", "c"]
    finally:
        box.close()


# ── staging ──────────────────────────────────────────────────────────────────────────

SHA = "ab" * 32


def test_staged_transfer_survives_a_restart(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.stage_transfer(SHA, b'{"body": "x"}', 12)
    slots.stage_chunk(SHA, 0, b"zero")
    slots.stage_chunk(SHA, 8, b"two!")
    again = Slots(tmp_path)
    envelope, part = again.load_staging()[SHA]
    assert envelope == b'{"body": "x"}'
    assert part == b"zero" + b"\0" * 4 + b"two!", "chunks sit at their offsets; the gap is still zeros"
    again.drop_staging(SHA)
    assert again.load_staging() == {}


def test_a_complete_staged_file_is_adopted_not_written_again(tmp_path: Path) -> None:
    data = b"a whole verified bundle"
    sha = hashlib.sha256(data).hexdigest()
    slots = Slots(tmp_path)
    slots.stage_transfer(sha, b"{}", len(data))
    slots.stage_chunk(sha, 0, data)
    inode = (tmp_path / "staging" / sha / "bundle.part").stat().st_ino
    slots.store_bundle(sha, data)
    assert slots.read_bundle(sha) == data
    assert slots.bundle_path(sha).stat().st_ino == inode, "renamed into place"
    assert slots.load_staging() == {}


def test_an_incomplete_staged_file_is_not_adopted(tmp_path: Path) -> None:
    data = b"a whole verified bundle"
    sha = hashlib.sha256(data).hexdigest()
    slots = Slots(tmp_path)
    slots.stage_transfer(sha, b"{}", len(data))
    slots.stage_chunk(sha, 0, data[:5])  # a chunk write was lost
    slots.store_bundle(sha, data)
    assert slots.read_bundle(sha) == data


def test_a_staged_file_differing_past_its_first_block_is_not_adopted(tmp_path: Path) -> None:
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB: the comparison runs block by block
    sha = hashlib.sha256(data).hexdigest()
    slots = Slots(tmp_path)
    slots.stage_transfer(sha, b"{}", len(data))
    slots.stage_chunk(sha, 0, data)
    slots.stage_chunk(sha, 2_500_000, b"\xff")  # one byte torn in the third block
    inode = (tmp_path / "staging" / sha / "bundle.part").stat().st_ino
    slots.store_bundle(sha, data)
    assert slots.read_bundle(sha) == data
    assert slots.bundle_path(sha).stat().st_ino != inode, "written anew, not renamed"


def test_a_stored_member_as_a_file_of_its_own_for_a_while(tmp_path: Path) -> None:
    data = b"head" + bytes(range(256)) * 8192 + b"tail"  # the member spans several copy blocks
    sha = hashlib.sha256(data).hexdigest()
    slots = Slots(tmp_path)
    slots.store_bundle(sha, data)
    with slots.member_file(sha, (4, len(data) - 4)) as path:
        assert path.read_bytes() == data[4:-4]
    assert not path.exists(), "removed after use"
    with pytest.raises(StorageError), slots.member_file(SHA_A, (0, 10)):
        pass  # no such bundle
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == [f"{sha}.ekb"]


def test_staging_refuses_names_that_are_not_hashes(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    with pytest.raises(StorageError):
        slots.stage_transfer("../../etc", b"x", 1)
    assert list((tmp_path / "staging").iterdir()) == []


def test_interrupted_trials_are_persisted(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    slots.save(Persisted(interrupted={SHA: 1}, bdseq=7))
    loaded = Slots(tmp_path).load()
    assert loaded.interrupted == {SHA: 1} and loaded.bdseq == 7


# ── the outbox's history, for the host's resend requests ────────────────────────────


def _sent(box: Outbox, n: int, boot: str = "b1", start: int = 1) -> None:
    """Queue n messages of ``boot`` and have the broker acknowledge all of them."""
    for seq in range(start, start + n):
        box.put("p/dev/d/events", f"m{seq}".encode(), boot, seq)
    for row_id, _, _ in box.peek(n):
        box.ack(row_id)


def test_acknowledged_messages_stay_in_the_history_not_in_the_queue(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", history_rows=100)
    try:
        _sent(box, 5)
        assert (len(box), box.history) == (0, 5)
        assert box.peek(10) == []
        box.put("p/dev/d/drift", b"m6", "b1", 6)  # still waiting
        requeued, queued, missing = box.requeue("b1", [(2, 3), (6, 8)])
        assert (requeued, queued, missing) == (((2, 3),), ((6, 6),), ((7, 8),))
        assert [p for _, _, p in box.peek(10)] == [b"m6", b"m2", b"m3"]  # back at the end of the queue, in order
        assert (len(box), box.history) == (3, 3)
        assert box.requeue("other-boot", [(1, 2)]) == ((), (), ((1, 2),))
        assert box.requeue("b1", [(2, 2)]) == ((), ((2, 2),), ())  # asked twice: already on its way
    finally:
        box.close()


def test_the_history_is_bounded_and_what_fell_out_is_missing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", history_rows=8)
    try:
        _sent(box, 40)
        assert 8 <= box.history <= 9  # trimmed in steps, never far above its bound
        requeued, _, missing = box.requeue("b1", [(1, 40)])
        assert requeued[-1][1] == 40 and missing[0] == (1, 40 - box_len(requeued))
    finally:
        box.close()


def box_len(ranges: tuple[tuple[int, int], ...]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def test_without_a_history_acknowledged_rows_are_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    try:
        _sent(box, 3)
        assert box.history == 0
        assert box.requeue("b1", [(1, 3)]) == ((), (), ((1, 3),))
    finally:
        box.close()


def test_an_outbox_from_before_the_history_is_adopted(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL)")
    db.execute("INSERT INTO outbox (topic, payload) VALUES ('t', x'00')")
    db.commit()
    db.close()
    box = Outbox(path, history_rows=10)
    try:
        assert len(box) == 1 and box.peek(1)[0][1:] == ("t", b"\x00")
        box.put("t2", b"x", "b", 1)
        assert len(box) == 2
    finally:
        box.close()
