"""The registry: versions from real bundle builds, stage moves with reasons, history, deploy NAME."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from edgekit import bundler, keys, pipeline, registry, workspace
from edgekit.errors import BundleBuildError
from edgekit.registry import RegistryError
from edgekit.workspace import Workspace


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    """A workspace with one trained run (bundles are built per test, in fresh names)."""
    root = tmp_path_factory.mktemp("registry")
    ws = workspace.init(root)
    keys.generate(ws, "release")
    data = load_wine()
    path = root / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "label", "logreg")
    return ws, run.id


def _bundles(ws: Workspace, run_id: str, name: str, n: int) -> list[bundler.BuiltBundle]:
    return [bundler.build(ws, run_id, name, "release") for _ in range(n)]


def test_new_bundles_are_numbered_by_the_registry_and_start_in_staging(
    built: tuple[Workspace, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, run_id = built
    monkeypatch.setenv("EDGEKIT_USER", "ana")
    b1, b2 = _bundles(ws, run_id, "fresh", 2)
    assert (b1.version, b2.version) == (1, 2) and b1.stage == b2.stage == "staging"
    assert b1.path == ws.bundles_dir / "fresh" / "v1.ekb" and b1.path.is_file()
    versions = registry.versions(ws, "fresh")
    assert [(v.version, v.stage, v.source, v.run_id, v.created_by) for v in versions] == [
        (1, "staging", "run", run_id, "ana"),
        (2, "staging", "run", run_id, "ana"),
    ]
    assert versions[0].sha256 == b1.sha256 and versions[0].size == b1.size and versions[0].keyid == b1.keyid
    assert versions[0].model_sha256 and bundler.versions(ws, "fresh") == [1, 2]
    [h1, _] = registry.history(ws, "fresh")
    assert (h1.from_stage, h1.to_stage, h1.actor) == (None, "staging", "ana") and run_id in h1.reason


def test_the_registry_not_the_folder_decides_the_next_version(built: tuple[Workspace, str]) -> None:
    """A stray file in the bundle folder is not a version; a deleted file does not free its number."""
    ws, run_id = built
    [b1] = _bundles(ws, run_id, "numbering", 1)
    shutil.copyfile(b1.path, ws.bundles_dir / "numbering" / "v7.ekb")
    b1.path.unlink()
    [b2] = _bundles(ws, run_id, "numbering", 1)
    assert b2.version == 2 and bundler.versions(ws, "numbering") == [1, 2]


def test_promotion_to_production_archives_the_previous_one(
    built: tuple[Workspace, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, run_id = built
    _bundles(ws, run_id, "pump", 3)
    monkeypatch.setenv("EDGEKIT_USER", "ana")
    [c1] = registry.promote(ws, "pump", 1, "production", "pilot on line 1 went well")
    assert (c1.from_stage, c1.to_stage, c1.reason, c1.actor) == (
        "staging",
        "production",
        "pilot on line 1 went well",
        "ana",
    )
    monkeypatch.setenv("EDGEKIT_USER", "bo")
    demoted, promoted = registry.promote(ws, "pump", 3, "production", "better recall")
    assert (demoted.version, demoted.from_stage, demoted.to_stage) == (1, "production", "archived")
    assert demoted.reason == "replaced by v3: better recall" and demoted.actor == "bo"
    assert (promoted.version, promoted.from_stage, promoted.to_stage) == (3, "staging", "production")
    assert registry.production(ws, "pump").version == 3  # type: ignore[union-attr]
    assert [v.stage for v in registry.versions(ws, "pump")] == ["archived", "staging", "production"]

    history = registry.history(ws, "pump")
    assert [(h.version, h.from_stage, h.to_stage, h.actor) for h in history][-3:] == [
        (1, "staging", "production", "ana"),
        (1, "production", "archived", "bo"),
        (3, "staging", "production", "bo"),
    ]
    assert all(h.at.endswith("+00:00") for h in history)
    assert [h.to_stage for h in registry.history(ws, "pump", 1)] == ["staging", "production", "archived"]
    summary = {m["name"]: m for m in registry.models(ws)}["pump"]
    assert (summary["production"], summary["staging"], summary["archived"], summary["latest"]) == (3, [2], [1], 3)


def test_every_move_needs_a_reason_and_a_legal_transition(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    _bundles(ws, run_id, "fan", 2)
    for reason in ("", "   ", None):
        with pytest.raises(RegistryError, match="a reason is required"):
            registry.promote(ws, "fan", 1, "production", reason)  # type: ignore[arg-type]
        with pytest.raises(RegistryError, match="a reason is required"):
            registry.archive(ws, "fan", 1, reason)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="already in staging"):
        registry.promote(ws, "fan", 1, "staging", "again")
    with pytest.raises(RegistryError, match="cannot promote to 'archived'"):
        registry.promote(ws, "fan", 1, "archived", "use archive")
    registry.promote(ws, "fan", 2, "production", "go")
    with pytest.raises(RegistryError, match="cannot move from production to staging") as exc:
        registry.promote(ws, "fan", 2, "staging", "back")
    assert "archived" in str(exc.value) and exc.value.exit_code == 2
    # Older than production: devices would refuse it.
    with pytest.raises(RegistryError, match="v1 is older than v2, the production version"):
        registry.promote(ws, "fan", 1, "production", "roll back")
    with pytest.raises(RegistryError, match="model fan has no version 9"):
        registry.archive(ws, "fan", 9, "gone")
    with pytest.raises(RegistryError, match="no model named 'nothing'"):
        registry.promote(ws, "nothing", 1, "production", "x")
    # None of the refusals changed anything or left history behind.
    assert [v.stage for v in registry.versions(ws, "fan")] == ["staging", "production"]
    assert len(registry.history(ws, "fan")) == 3


def test_archive_and_bring_back(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    _bundles(ws, run_id, "valve", 2)
    registry.promote(ws, "valve", 2, "production", "ship it")
    t = registry.archive(ws, "valve", 2, "false alarms on line 3")
    assert (t.from_stage, t.to_stage) == ("production", "archived")
    assert registry.production(ws, "valve") is None
    registry.archive(ws, "valve", 1, "superseded")
    with pytest.raises(RegistryError, match="already in archived"):
        registry.archive(ws, "valve", 1, "twice")
    [back] = registry.promote(ws, "valve", 1, "staging", "retest")
    assert (back.from_stage, back.to_stage) == ("archived", "staging")
    [again] = registry.promote(ws, "valve", 2, "production", "alarms were a sensor fault")
    assert (again.from_stage, again.to_stage) == ("archived", "production")


def test_deploy_name_resolves_to_the_production_file(built: tuple[Workspace, str], tmp_path: Path) -> None:
    ws, run_id = built
    b = _bundles(ws, run_id, "press", 3)
    with pytest.raises(RegistryError, match=r"model press has no production version \(v1 staging, v2 staging"):
        registry.resolve(ws, "press")
    registry.promote(ws, "press", 2, "production", "pilot")
    assert registry.resolve(ws, "press") == ws.bundles_dir / "press" / "v2.ekb" == b[1].path
    assert bundler.resolve_bundle(ws, "press") == b[1].path
    assert registry.resolve(ws, "press@3") == b[2].path  # an explicit version, whatever its stage
    assert registry.resolve(ws, "press@1") == b[0].path
    # A file path still works, inside or outside the workspace.
    outside = tmp_path / "copy.ekb"
    shutil.copyfile(b[0].path, outside)
    assert registry.resolve(ws, str(outside)) == outside
    assert registry.resolve(None, str(outside)) == outside
    with pytest.raises(BundleBuildError, match="no bundle file"):
        registry.resolve(ws, str(tmp_path / "missing.ekb"))
    with pytest.raises(RegistryError, match="no version 8"):
        registry.resolve(ws, "press@8")
    with pytest.raises(RegistryError, match="not a version number"):
        registry.resolve(ws, "press@latest")
    with pytest.raises(RegistryError, match="no model named 'other'"):
        registry.resolve(ws, "other")


def test_deploy_refuses_a_registered_file_that_changed_on_disk(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    [b] = _bundles(ws, run_id, "lathe", 1)
    registry.promote(ws, "lathe", 1, "production", "ok")
    data = bytearray(b.path.read_bytes())
    data[-10] ^= 0xFF
    b.path.write_bytes(bytes(data))
    with pytest.raises(BundleBuildError, match="does not match the SHA-256 the registry recorded"):
        registry.resolve(ws, "lathe")
    b.path.unlink()
    with pytest.raises(BundleBuildError, match="is missing"):
        registry.resolve(ws, "lathe@1")


def test_a_version_taken_by_a_concurrent_build_is_not_overwritten(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    [b1] = _bundles(ws, run_id, "race", 1)
    before = b1.path.read_bytes()
    with pytest.raises(registry.VersionTaken):
        registry.register(
            ws,
            "race",
            1,
            b"other bytes",
            source="run",
            run_id=run_id,
            model_sha256=None,
            keyid=None,
            reason="late",
            path_for=lambda v: bundler.bundle_path(ws, "race", v),
        )
    assert b1.path.read_bytes() == before and len(registry.versions(ws, "race")) == 1


def test_who_is_the_os_user_without_edgekit_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    monkeypatch.delenv("EDGEKIT_USER", raising=False)
    assert registry.actor() == getpass.getuser()
    monkeypatch.setenv("EDGEKIT_USER", "  ci-bot ")
    assert registry.actor() == "ci-bot"


def test_the_issue_s_story_rollback_then_deploy(built: tuple[Workspace, str]) -> None:
    """rollback --to 1 gives v3 (rollback_of 1); deploying v3 makes it production, so 'deploy
    NAME' ships v3, not the v1 every device would refuse; v1 itself is refused up front."""
    from edgekit.rollback import rollback

    ws, run_id = built
    _bundles(ws, run_id, "wine", 2)
    registry.promote(ws, "wine", 1, "production", "first release")
    assert registry.record_deployment(ws, "wine", 1, "group:plant-a") == []  # already production
    changes = registry.record_deployment(ws, "wine", 2, "group:plant-a")
    assert [(c.version, c.from_stage, c.to_stage) for c in changes] == [
        (1, "production", "archived"),
        (2, "staging", "production"),
    ]
    assert changes[1].reason == "deployed to group:plant-a"

    v3 = rollback(ws, "wine", 1, "release")
    mv = registry.get(ws, "wine", v3.version)
    assert (v3.version, mv.source, mv.rollback_of, mv.stage) == (3, "rollback", 1, "staging")
    assert registry.show(ws, "wine")["versions"][2]["rollback_of"] == 1

    # v1 is below what devices were given: refused, pointing at the rollback that restores it.
    with pytest.raises(registry.DeployRefused, match="v1 is older than v2, which was deployed to group:plant-a") as exc:
        registry.check_deployable(ws, "wine", 1)
    assert exc.value.exit_code == 2 and "v3 already restores v1: use wine@3" in str(exc.value)
    with pytest.raises(registry.DeployRefused):
        registry.record_deployment(ws, "wine", 1, "group:plant-a")
    with pytest.raises(RegistryError, match="v3 already restores v1"):
        registry.promote(ws, "wine", 1, "production", "go back")

    assert registry.check_deployable(ws, "wine", 3).version == 3
    registry.record_deployment(ws, "wine", 3, "group:plant-a")
    assert registry.production(ws, "wine").version == 3  # type: ignore[union-attr]
    assert registry.resolve(ws, "wine") == bundler.bundle_path(ws, "wine", 3)
    assert registry.floor(ws, "wine").version == 3  # type: ignore[union-attr]
    assert [(d.version, d.target) for d in registry.deployments(ws, "wine")] == [
        (1, "group:plant-a"),
        (2, "group:plant-a"),
        (3, "group:plant-a"),
    ]
    summary = {m["name"]: m for m in registry.models(ws)}["wine"]
    assert (summary["production"], summary["deployed"], summary["archived"]) == (3, 3, [1, 2])
    # Never below what was deployed, even for a version never made production.
    with pytest.raises(
        registry.DeployRefused, match="roll back with a new, higher version: edgekit rollback wine --to 2"
    ):
        registry.check_deployable(ws, "wine", 2)


def test_the_registry_protects_production_and_staging(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    _bundles(ws, run_id, "mill", 3)
    registry.promote(ws, "mill", 2, "production", "ok")
    registry.archive(ws, "mill", 1, "old")
    protected = {k: v for k, v in registry.protected_versions(ws).items() if k[0] == "mill"}
    assert protected == {("mill", 2): "production in the registry", ("mill", 3): "staging in the registry"}


def test_unknown_versions_cannot_be_recorded_as_deployed(built: tuple[Workspace, str]) -> None:
    ws, run_id = built
    _bundles(ws, run_id, "drill", 1)
    with pytest.raises(RegistryError, match="no version 4"):
        registry.record_deployment(ws, "drill", 4, "device:d1")
    assert registry.deployments(ws, "drill") == []
