"""The workspace database: schema versions, migrations that adopt older workspaces, round trips."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from edgekit import bundler, keys, pipeline, registry, runs, store, workspace
from edgekit.errors import WorkspaceError
from edgekit.workspace import Workspace


def _wine_csv(path: Path) -> Path:
    data = load_wine()
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, runs.Run, Path]:
    """A workspace with one run and one bundle, built with the current code."""
    root = tmp_path_factory.mktemp("store")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    run = pipeline.train_run(ws, _wine_csv(root / "wine.csv"), "label", "logreg")
    built = bundler.build(ws, run.id, "wine", "release")
    return ws, run, built.path


def test_a_new_database_is_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    with store.session(tmp_path / ".edgekit") as conn:
        assert store.schema_version(conn) == store.SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        applied = [tuple(r) for r in conn.execute("SELECT version, description FROM schema_migrations ORDER BY 1")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert [v for v, _ in applied] == [1, 2, 3]
    assert {"runs", "run_metrics", "models", "model_versions", "stage_history", "deployments"} <= tables
    assert (tmp_path / ".edgekit" / "edgekit.db").is_file()


def test_opening_again_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / ".edgekit"
    store.connect(state).close()
    with store.session(state) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 3
        assert store.migrate(conn, state) == 3


def test_run_round_trip_through_the_store(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, run, _ = trained
    loaded = runs.load_run(ws, run.id[:10])
    assert loaded.record == json.loads(json.dumps(run.record, default=str))
    assert loaded.path == run.path and loaded.holdout()[0].shape[0] == 45
    assert runs.load_run(ws, "latest").id == run.id
    assert [r.id for r in runs.list_runs(ws)] == [run.id]
    # run.json stays a readable copy of the same record
    assert json.loads((run.path / "run.json").read_text())["id"] == run.id
    with store.session(ws.state) as conn:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run.id,)).fetchone()
        metrics = dict(conn.execute("SELECT name, value FROM run_metrics WHERE run_id = ?", (run.id,)).fetchall())
    assert row["family"] == "logreg" and row["seed"] == 0 and row["parity_ok"] == 1 and row["quantized"] == 0
    assert row["data_sha256"] == run.record["data"]["sha256"]
    assert metrics["holdout.accuracy"] == run.record["metrics"]["holdout"]["accuracy"]
    assert "cv.accuracy_mean" in metrics


def test_saving_again_updates_the_row_and_its_metrics(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, run, _ = trained
    copy = runs.load_run(ws, run.id)
    copy.record["metrics"] = {**copy.record["metrics"], "extra": {"score": 0.5}}
    copy.save()
    with store.session(ws.state) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        value = conn.execute("SELECT value FROM run_metrics WHERE name = 'extra.score'").fetchone()[0]
    assert value == 0.5
    del copy.record["metrics"]["extra"]
    copy.save()


def test_unknown_and_ambiguous_run_ids(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, _, _ = trained
    with pytest.raises(WorkspaceError, match="no run 'nope'"):
        runs.load_run(ws, "nope")
    with pytest.raises(WorkspaceError, match="no run"):
        runs.load_run(ws, "")


def test_a_workspace_from_before_the_database_is_adopted(
    tmp_path: Path, trained: tuple[Workspace, runs.Run, Path]
) -> None:
    """runs/<id>/run.json folders and bundles/NAME/vN.ekb files from an older edgekit appear
    in the database on first open: runs as runs, bundles as staging versions with history."""
    _, run, bundle = trained
    old = workspace.init(tmp_path / "old")
    shutil.copytree(run.path, old.runs_dir / run.id)
    (old.runs_dir / run.id / "run.json").write_text(json.dumps(run.record))
    (old.runs_dir / "junk").mkdir()
    (old.runs_dir / "junk" / "run.json").write_text("{not json")
    for v in (1, 2):
        (old.bundles_dir / "wine").mkdir(exist_ok=True)
        shutil.copyfile(bundle, old.bundles_dir / "wine" / f"v{v}.ekb")
    assert not (old.state / "edgekit.db").exists()

    assert [r.id for r in runs.list_runs(old)] == [run.id]
    found = registry.versions(old, "wine")
    assert [(v.version, v.stage, v.source, v.run_id) for v in found] == [
        (1, "staging", "run", run.id),
        (2, "staging", "run", run.id),
    ]
    assert found[0].path == old.bundles_dir / "wine" / "v1.ekb" and found[0].keyid
    history = registry.history(old, "wine")
    assert [(h.version, h.from_stage, h.to_stage, h.actor) for h in history] == [
        (1, None, "staging", "edgekit migration"),
        (2, None, "staging", "edgekit migration"),
    ]
    # the next build continues the numbering
    assert bundler.versions(old, "wine") == [1, 2] and registry.next_version(old, "wine") == 3


def test_migrating_a_version_1_database_keeps_its_runs(
    tmp_path: Path, trained: tuple[Workspace, runs.Run, Path]
) -> None:
    _, run, bundle = trained
    state = tmp_path / ".edgekit"
    conn = store.connect(state, migrate_to=1)
    with store.transaction(conn):
        store.put_run(conn, run.record)
    assert store.schema_version(conn) == 1
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {"runs"}
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'model_versions'").fetchone()[0] == 0
    conn.close()
    (state / "bundles" / "wine").mkdir(parents=True)
    shutil.copyfile(bundle, state / "bundles" / "wine" / "v1.ekb")

    with store.session(state) as conn:
        assert store.schema_version(conn) == 3
        assert conn.execute("SELECT id FROM runs").fetchone()[0] == run.id
        assert tuple(conn.execute("SELECT name, version, stage FROM model_versions").fetchone()) == (
            "wine",
            1,
            "staging",
        )
        applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert applied == [1, 2, 3]


def test_a_version_2_database_learns_its_rollbacks_lineage(
    tmp_path: Path, trained: tuple[Workspace, runs.Run, Path]
) -> None:
    """Rollbacks built before the lineage column: migration 3 reads rollback_of from their manifests."""
    from edgekit.rollback import rollback

    ws, run, _ = trained
    bundler.build(ws, run.id, "lineage", "release")
    bundler.build(ws, run.id, "lineage", "release")
    rollback(ws, "lineage", 1, "release")
    with store.session(ws.state) as conn:  # as a version 2 database had it
        conn.execute("ALTER TABLE model_versions DROP COLUMN rollback_of")
        conn.execute("DROP TABLE deployments")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
        conn.execute("PRAGMA user_version = 2")
    with store.session(ws.state) as conn:
        assert store.schema_version(conn) == 3
    assert [v.rollback_of for v in registry.versions(ws, "lineage")] == [None, None, 1]
    assert registry.deployments(ws, "lineage") == []


def test_deployments_are_append_only(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, _, _ = trained
    registry.record_deployment(ws, "wine", 1, "device:d1")
    with store.session(ws.state) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE deployments SET version = 0")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM deployments")


def test_a_database_from_a_newer_edgekit_is_refused(tmp_path: Path) -> None:
    state = tmp_path / ".edgekit"
    with store.session(state) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(store.StoreError, match="schema version 99; this edgekit knows up to 3") as exc:
        store.connect(state)
    assert exc.value.exit_code == 2


def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / ".edgekit"
    state.mkdir()
    (state / "edgekit.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(store.StoreError, match="not a usable edgekit database"):
        store.connect(state)


def test_stage_history_is_append_only(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, _, _ = trained
    with store.session(ws.state) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE stage_history SET reason = 'rewritten'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM stage_history")
        with pytest.raises(sqlite3.IntegrityError):  # a reason is required by the schema too
            conn.execute(
                "INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, at) "
                "VALUES ('wine', 1, 'staging', 'archived', '  ', 'me', 'now')"
            )


def test_a_failed_transaction_leaves_nothing(trained: tuple[Workspace, runs.Run, Path]) -> None:
    ws, run, _ = trained
    record = {**run.record, "id": "20000101-000000-abcdef"}
    with store.session(ws.state) as conn:
        with pytest.raises(RuntimeError), store.transaction(conn):
            store.put_run(conn, record)
            raise RuntimeError("boom")
        assert conn.execute("SELECT count(*) FROM runs WHERE id = ?", (record["id"],)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM run_metrics WHERE run_id = ?", (record["id"],)).fetchone()[0] == 0
