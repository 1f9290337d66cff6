"""The registry tells the fleet's story: a rollback is a new version with its lineage, what is
deployed becomes production, and what devices would refuse is refused before it is published.

Two real agents in a group, the registry's library API around the fleet library's deploy
(the deploy command makes the same calls)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_wine

from edgekit import bundler, keys, pipeline, registry, workspace
from edgekit.fleet.deploy import Target, deploy
from edgekit.fleet.gc import collect_garbage
from edgekit.fleet.release import release
from edgekit.fleet.status import fleet_status
from edgekit.rollback import rollback
from tests.support.agent import AgentProcess, wait_until
from tests.support.broker import Broker

pytestmark = pytest.mark.broker
P = "edgekit/v1"


def _deploy(ws: workspace.Workspace, broker: Broker, spec: str) -> None:
    """``edgekit deploy SPEC --group plant-a --wait 40``: check, publish, record, watch."""
    key = keys.load_private(ws, "release")
    result = release(ws, spec, Target(group="plant-a"), broker=broker.url, bundle_key=key, deploy_key=key, wait=40)
    assert result.outcome == {"r1": "active", "r2": "active"}, result.outcome


def key_of(ws: workspace.Workspace) -> Any:
    return keys.load_private(ws, "release")


def test_rollback_deploy_and_gc_tell_one_story(tmp_path: Path, broker: Broker) -> None:
    ws = workspace.init(tmp_path / "ws")
    keys.generate(ws, "release")
    trust = tmp_path / "trust.json"
    trust.write_bytes(keys.trust_file(ws).to_json())
    data = load_wine()
    path = tmp_path / "wine.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(n.replace("/", "_") for n in data.feature_names), "label"])
        for x, y in zip(data.data, data.target, strict=True):
            w.writerow([*x.tolist(), int(y)])
    run = pipeline.train_run(ws, path, "label", "logreg")
    bundler.build(ws, run.id, "wine", "release")
    bundler.build(ws, run.id, "wine", "release")
    registry.promote(ws, "wine", 1, "production", "first release")

    agents = [AgentProcess(d, broker.url, tmp_path / d / "state", trust, groups=("plant-a",)) for d in ("r1", "r2")]
    try:
        _deploy(ws, broker, "wine")  # v1, the production version
        _deploy(ws, broker, "wine@2")
        assert registry.production(ws, "wine").version == 2  # type: ignore[union-attr]

        # Going back: v1 is refused before anything is published, with the way that works.
        with pytest.raises(registry.DeployRefused, match="rollback wine --to 1"):
            _deploy(ws, broker, "wine@1")
        v3 = rollback(ws, "wine", 1, "release")
        assert registry.get(ws, "wine", v3.version).rollback_of == 1
        _deploy(ws, broker, f"wine@{v3.version}")

        # The registry, the broker and the devices agree: v3 is production and active everywhere.
        assert registry.production(ws, "wine").version == 3  # type: ignore[union-attr]
        wait_until(
            lambda: (
                sorted((d["device"], (d.get("active") or {}).get("version")) for d in fleet_status(broker.url, P))
                == [("r1", 3), ("r2", 3)]
            ),
            what="v3 active on both devices",
        )
        _deploy(ws, broker, "wine")  # NAME now means v3, which every device accepts

        # gc removes what neither the devices nor the registry need: v1 (archived, and the
        # devices' previous bundle is v2 — v3 carries v1's model under a new version).
        protected = registry.protected_versions(ws)
        assert ("wine", 3) in protected and ("wine", 1) not in protected
        report = collect_garbage(broker.url, P, dry_run=True, protected=protected)
        assert {(r["name"], r["version"]) for r in report.removed} == {("wine", 1)}
        assert all(ws_key not in {(r["name"], r["version"]) for r in report.removed} for ws_key in protected)

        # A version the registry never recorded reaches the devices (another workspace, or a
        # plain file): the devices' own reports still stop a lower one before it is published.
        v4 = bundler.build(ws, run.id, "wine", "release")
        deploy(broker.url, P, v4.path, Target(group="plant-a"), key_of(ws), key_of(ws), keys.trust_file(ws), wait=40)
        with pytest.raises(registry.DeployRefused, match=r"which r[12] runs"):
            release(
                ws,
                f"wine@{v3.version}",
                Target(group="plant-a"),
                broker=broker.url,
                bundle_key=key_of(ws),
                deploy_key=key_of(ws),
            )
    finally:
        for agent in agents:
            agent.stop()
