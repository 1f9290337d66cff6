"""The model registry: named models, integer versions, stages, and who moved what, when, why.

Every bundle built is a version of its name (``.edgekit/bundles/NAME/vN.ekb``), recorded
here in the workspace database (:mod:`edgekit.store`), which is the source of truth for
which versions exist: versions only go up, and the file's SHA-256 is recorded so a file
swapped on disk is noticed before it is deployed.

Stages, and the only moves between them (anything else is refused, nothing changes)::

    (built) ──► staging ──promote──► production ──archive──► archived
                   │                      ▲    (or: another version promoted)
                   └────archive─────► archived ──promote──► staging | production

- A new bundle starts in ``staging``: built, signed and verified, but approved by nobody.
  Only an explicit ``promote --to production`` (with a reason) makes it what ``edgekit
  deploy NAME`` ships.
- At most one version per name is in ``production`` (a unique index enforces it);
  promoting another moves the previous one to ``archived``, recorded with the same reason.
- A version lower than the current production version cannot be promoted to production:
  devices refuse a lower version than one they accepted. Roll back with ``edgekit rollback``,
  which re-signs the old files as a new, higher version (source ``rollback``).
- Every move needs a non-empty reason and appends to the history (``stage_history``, which
  refuses updates and deletes): model, version, from, to, reason, who (``$EDGEKIT_USER`` or
  the OS user), when (UTC).

Deployments keep the registry true to the fleet (:func:`record_deployment`, called by
``edgekit deploy``): *what is production is what devices were last told to run*. Deploying a
version makes it the production version (the previous one is archived); the highest version
ever deployed is the *floor* — devices refuse anything lower — so neither a deploy
(:func:`check_deployable`) nor a promotion to production may go below it, nor below the
production version. A rollback (:mod:`edgekit.rollback`) is the way back: the old files as a
new, higher version that records the version it restores (``rollback_of``).
:func:`protected_versions` names what the broker must keep for the registry's sake.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import store
from .errors import BundleBuildError, WorkspaceError
from .workspace import Workspace

STAGING, PRODUCTION, ARCHIVED = "staging", "production", "archived"
STAGES = (STAGING, PRODUCTION, ARCHIVED)
INITIAL_STAGE = STAGING
# (from, to): the only moves `promote` and `archive` make. None = not registered yet.
TRANSITIONS = frozenset(
    {
        (None, STAGING),
        (STAGING, PRODUCTION),
        (STAGING, ARCHIVED),
        (PRODUCTION, ARCHIVED),
        (ARCHIVED, STAGING),
        (ARCHIVED, PRODUCTION),
    }
)


class RegistryError(WorkspaceError):
    """Unknown model or version, a move the stage table does not allow, a missing reason."""

    kind = "registry"


class VersionTaken(RegistryError):
    """Another process registered this version first (the caller builds the next one)."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    stage: str
    source: str  # "run" | "user-model" | "rollback"
    run_id: str | None
    model_sha256: str | None
    path: Path
    sha256: str
    size: int
    keyid: str | None
    created: str
    created_by: str
    rollback_of: int | None = None  # the version this one restores (source "rollback")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class Deployment:
    name: str
    version: int
    target: str  # "group:G" | "device:D"
    actor: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeployRefused(RegistryError):
    """A version devices would refuse: below one they were given, or below production."""

    kind = "deploy_refused"


@dataclass(frozen=True)
class Transition:
    name: str
    version: int
    from_stage: str | None
    to_stage: str
    reason: str
    actor: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def actor() -> str:
    """Who is acting: ``$EDGEKIT_USER``, else the OS user."""
    name = os.environ.get("EDGEKIT_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _version(ws: Workspace, row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=int(row["version"]),
        stage=row["stage"],
        source=row["source"],
        run_id=row["run_id"],
        model_sha256=row["model_sha256"],
        path=ws.state / row["path"],
        sha256=row["sha256"],
        size=int(row["size"]),
        keyid=row["keyid"],
        created=row["created"],
        created_by=row["created_by"],
        rollback_of=row["rollback_of"],
    )


def _transition(row: sqlite3.Row) -> Transition:
    return Transition(
        row["name"], int(row["version"]), row["from_stage"], row["to_stage"], row["reason"], row["actor"], row["at"]
    )


def _check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise RegistryError("a reason is required for every stage change", 'say why with --reason "…"')
    return text


# --- reading -------------------------------------------------------------------------------------


def versions(ws: Workspace, name: str) -> list[ModelVersion]:
    """Every version of ``name``, lowest first (empty if the name is unknown)."""
    with store.session(ws.state) as conn:
        rows = conn.execute("SELECT * FROM model_versions WHERE name = ? ORDER BY version", (name,)).fetchall()
    return [_version(ws, r) for r in rows]


def get(ws: Workspace, name: str, version: int) -> ModelVersion:
    with store.session(ws.state) as conn:
        row = conn.execute("SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        known = [r[0] for r in conn.execute("SELECT version FROM model_versions WHERE name = ? ORDER BY 1", (name,))]
    if row is None:
        if not known:
            raise RegistryError(f"no model named {name!r} in the registry", "see 'edgekit registry list'")
        raise RegistryError(f"model {name} has no version {version}", f"versions: {', '.join(map(str, known))}")
    return _version(ws, row)


def production(ws: Workspace, name: str) -> ModelVersion | None:
    with store.session(ws.state) as conn:
        row = conn.execute("SELECT * FROM model_versions WHERE name = ? AND stage = 'production'", (name,)).fetchone()
    return None if row is None else _version(ws, row)


def models(ws: Workspace) -> list[dict[str, Any]]:
    """One summary per model name: its versions by stage, the production and latest versions."""
    with store.session(ws.state) as conn:
        rows = conn.execute(
            """SELECT m.name, m.created, v.version, v.stage, v.created AS version_created
               FROM models m JOIN model_versions v ON v.name = m.name ORDER BY m.name, v.version"""
        ).fetchall()
        last = {
            r["name"]: r["at"]
            for r in conn.execute("SELECT name, max(at) AS at FROM stage_history GROUP BY name").fetchall()
        }
        deployed = {
            r["name"]: int(r["v"])
            for r in conn.execute("SELECT name, max(version) AS v FROM deployments GROUP BY name").fetchall()
        }
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(
            r["name"],
            {
                "name": r["name"],
                "created": r["created"],
                "production": None,
                "staging": [],
                "archived": [],
                "latest": 0,
            },
        )
        if r["stage"] == PRODUCTION:
            m["production"] = r["version"]
        else:
            m[r["stage"]].append(r["version"])
        m["latest"] = max(m["latest"], r["version"])
    for name, m in out.items():
        m["updated"] = last.get(name)
        m["deployed"] = deployed.get(name)  # the highest version devices were given
    return list(out.values())


def history(ws: Workspace, name: str, version: int | None = None) -> list[Transition]:
    """Every stage change of ``name`` (or of one version), oldest first."""
    with store.session(ws.state) as conn:
        if version is None:
            rows = conn.execute("SELECT * FROM stage_history WHERE name = ? ORDER BY id", (name,)).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM stage_history WHERE name = ? AND version = ? ORDER BY id", (name, version)
            ).fetchall()
    return [_transition(r) for r in rows]


def show(ws: Workspace, name: str) -> dict[str, Any]:
    found = versions(ws, name)
    if not found:
        raise RegistryError(f"no model named {name!r} in the registry", "see 'edgekit registry list'")
    prod = next((v.version for v in found if v.stage == PRODUCTION), None)
    done = deployments(ws, name)
    return {
        "name": name,
        "production": prod,
        "deployed": max((d.version for d in done), default=None),
        "versions": [v.to_dict() for v in found],
        "history": [t.to_dict() for t in history(ws, name)],
        "deployments": [d.to_dict() for d in done],
    }


# --- registering a new version -------------------------------------------------------------------


def next_version(ws: Workspace, name: str) -> int:
    with store.session(ws.state) as conn:
        row = conn.execute("SELECT max(version) FROM model_versions WHERE name = ?", (name,)).fetchone()
    return int(row[0] or 0) + 1


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def register(
    ws: Workspace,
    name: str,
    version: int,
    data: bytes,
    *,
    source: str,
    run_id: str | None,
    model_sha256: str | None,
    keyid: str | None,
    reason: str,
    path_for: Callable[[int], Path],
    rollback_of: int | None = None,
) -> ModelVersion:
    """Store bundle bytes as ``name`` v``version`` (``staging``) and record it, atomically.
    ``rollback_of`` is the version a rollback restores.

    Raises :class:`VersionTaken` if ``version`` is no longer the next one (another build won
    the race); the caller signs the bundle again with the next version.
    """
    reason = _check_reason(reason)
    who, at = actor(), store.now_iso()
    path = path_for(version)
    with store.session(ws.state) as conn, store.transaction(conn):
        top = conn.execute("SELECT max(version) FROM model_versions WHERE name = ?", (name,)).fetchone()[0]
        if version != int(top or 0) + 1:
            raise VersionTaken(f"{name} v{version} is taken (latest is v{top})")
        conn.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)", (name, at))
        conn.execute(
            """INSERT INTO model_versions (name, version, stage, source, run_id, model_sha256, path, sha256, size,
                                           keyid, created, created_by, rollback_of)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                name,
                version,
                INITIAL_STAGE,
                source,
                run_id,
                model_sha256,
                str(path.relative_to(ws.state)),
                hashlib.sha256(data).hexdigest(),
                len(data),
                keyid,
                at,
                who,
                rollback_of,
            ),
        )
        conn.execute(
            """INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, at)
               VALUES (?, ?, NULL, ?, ?, ?, ?)""",
            (name, version, INITIAL_STAGE, reason, who, at),
        )
        # Inside the transaction: if the write fails nothing is recorded; if the commit fails
        # an unrecorded file is left, which the next build of this version overwrites.
        _atomic_write(path, data)
    return get(ws, name, version)


# --- moving between stages -----------------------------------------------------------------------


def _move(
    conn: sqlite3.Connection, name: str, version: int, frm: str, to: str, reason: str, who: str, at: str
) -> Transition:
    conn.execute("UPDATE model_versions SET stage = ? WHERE name = ? AND version = ?", (to, name, version))
    conn.execute(
        """INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, at)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        (name, version, frm, to, reason, who, at),
    )
    return Transition(name, version, frm, to, reason, who, at)


def _current(conn: sqlite3.Connection, name: str, version: int) -> str:
    row = conn.execute("SELECT stage FROM model_versions WHERE name = ? AND version = ?", (name, version)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT version FROM model_versions WHERE name = ? ORDER BY 1", (name,))]
        if not known:
            raise RegistryError(f"no model named {name!r} in the registry", "see 'edgekit registry list'")
        raise RegistryError(f"model {name} has no version {version}", f"versions: {', '.join(map(str, known))}")
    return str(row["stage"])


def _check_move(name: str, version: int, frm: str, to: str) -> None:
    if frm == to:
        raise RegistryError(f"{name} v{version} is already in {to}")
    if (frm, to) not in TRANSITIONS:
        allowed = sorted(t for f, t in TRANSITIONS if f == frm)
        raise RegistryError(
            f"{name} v{version} cannot move from {frm} to {to}",
            f"from {frm} it can go to: {', '.join(allowed)}",
        )


def promote(ws: Workspace, name: str, version: int, to: str, reason: str) -> list[Transition]:
    """Move ``name`` v``version`` to ``to`` (``production`` or ``staging``); returns every change
    made, the demotion of the previous production version included."""
    if to not in (PRODUCTION, STAGING):
        raise RegistryError(f"cannot promote to {to!r}", "promote to production or staging; use 'archive' to archive")
    reason = _check_reason(reason)
    who, at = actor(), store.now_iso()
    with store.session(ws.state) as conn, store.transaction(conn):
        frm = _current(conn, name, version)
        _check_move(name, version, frm, to)
        changes = []
        if to == PRODUCTION:
            _check_not_below(conn, name, version, RegistryError)
            changes += _demote_production(conn, name, version, f"replaced by v{version}: {reason}", who, at)
        changes.append(_move(conn, name, version, frm, to, reason, who, at))
    return changes


def _demote_production(
    conn: sqlite3.Connection, name: str, version: int, reason: str, who: str, at: str
) -> list[Transition]:
    row = conn.execute("SELECT version FROM model_versions WHERE name = ? AND stage = 'production'", (name,)).fetchone()
    if row is None or int(row["version"]) == version:
        return []
    return [_move(conn, name, int(row["version"]), PRODUCTION, ARCHIVED, reason, who, at)]


def _floor(conn: sqlite3.Connection, name: str) -> Deployment | None:
    """The highest version of ``name`` ever deployed (its latest deployment): devices that got
    it refuse anything lower."""
    row = conn.execute(
        "SELECT * FROM deployments WHERE name = ? ORDER BY version DESC, id DESC LIMIT 1", (name,)
    ).fetchone()
    return None if row is None else _deployment(row)


def _way_back(conn: sqlite3.Connection, name: str, version: int, above: int) -> str:
    """What to do instead of going back to ``version``: the rollback that already restores it
    (above ``above``), or the command that makes one."""
    row = conn.execute(
        "SELECT max(version) FROM model_versions WHERE name = ? AND rollback_of = ? AND version >= ?",
        (name, version, above),
    ).fetchone()
    if row[0] is not None:
        return f"v{row[0]} already restores v{version}: use {name}@{row[0]}"
    return f"roll back with a new, higher version: edgekit rollback {name} --to {version} --key KEY"


def _check_not_below(conn: sqlite3.Connection, name: str, version: int, error: type[RegistryError]) -> None:
    """Refuse a version below the production version, or below the highest one deployed."""
    prod = conn.execute(
        "SELECT version FROM model_versions WHERE name = ? AND stage = 'production'", (name,)
    ).fetchone()
    floor = _floor(conn, name)
    if floor is not None and version < floor.version:
        raise error(
            f"{name} v{version} is older than v{floor.version}, which was deployed to {floor.target} at {floor.at}; "
            "devices refuse a version lower than one they accepted",
            _way_back(conn, name, version, floor.version),
        )
    if prod is not None and version < int(prod["version"]):
        raise error(
            f"{name} v{version} is older than v{prod['version']}, the production version; devices refuse "
            "a version lower than one they accepted",
            _way_back(conn, name, version, int(prod["version"])),
        )


def archive(ws: Workspace, name: str, version: int, reason: str) -> Transition:
    """Move ``name`` v``version`` to ``archived``."""
    reason = _check_reason(reason)
    who, at = actor(), store.now_iso()
    with store.session(ws.state) as conn, store.transaction(conn):
        frm = _current(conn, name, version)
        _check_move(name, version, frm, ARCHIVED)
        return _move(conn, name, version, frm, ARCHIVED, reason, who, at)


# --- deployments ---------------------------------------------------------------------------------


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(row["name"], int(row["version"]), row["target"], row["actor"], row["at"])


def deployments(ws: Workspace, name: str) -> list[Deployment]:
    """Every recorded deployment of ``name``, oldest first."""
    with store.session(ws.state) as conn:
        rows = conn.execute("SELECT * FROM deployments WHERE name = ? ORDER BY id", (name,)).fetchall()
    return [_deployment(r) for r in rows]


def floor(ws: Workspace, name: str) -> Deployment | None:
    """The highest version of ``name`` ever deployed, and where: devices refuse anything lower."""
    with store.session(ws.state) as conn:
        return _floor(conn, name)


def check_deployable(ws: Workspace, name: str, version: int) -> ModelVersion:
    """The registered version, if devices will take it; else :class:`DeployRefused` (a usage
    error, exit 2) saying which version they hold and what to deploy instead."""
    with store.session(ws.state) as conn:
        _current(conn, name, version)
        _check_not_below(conn, name, version, DeployRefused)
    return get(ws, name, version)


def record_deployment(
    ws: Workspace, name: str, version: int, target: str, reason: str | None = None
) -> list[Transition]:
    """Record that ``name`` v``version`` was deployed to ``target`` (``group:G`` / ``device:D``):
    it becomes the production version, the previous one is archived. Refused, and nothing
    recorded, when devices would refuse the version (:func:`check_deployable`). Returns the
    stage changes made (none when it already was production)."""
    why = (reason or "").strip() or f"deployed to {target}"
    who, at = actor(), store.now_iso()
    with store.session(ws.state) as conn, store.transaction(conn):
        frm = _current(conn, name, version)
        _check_not_below(conn, name, version, DeployRefused)
        conn.execute(
            "INSERT INTO deployments (name, version, target, actor, at) VALUES (?, ?, ?, ?, ?)",
            (name, version, target, who, at),
        )
        if frm == PRODUCTION:
            return []
        changes = _demote_production(conn, name, version, f"replaced by v{version}, {why}", who, at)
        changes.append(_move(conn, name, version, frm, PRODUCTION, why, who, at))
    return changes


def protected_versions(ws: Workspace) -> dict[tuple[str, int], str]:
    """(name, version) → why the broker must keep it for the registry's sake: every production
    and staging version (``bundles gc`` never removes these)."""
    with store.session(ws.state) as conn:
        rows = conn.execute(
            "SELECT name, version, stage FROM model_versions WHERE stage IN ('production', 'staging') ORDER BY 1, 2"
        ).fetchall()
    return {(r["name"], int(r["version"])): f"{r['stage']} in the registry" for r in rows}


# --- resolving what to deploy --------------------------------------------------------------------


def _checked_file(mv: ModelVersion) -> Path:
    try:
        data = mv.path.read_bytes()
    except FileNotFoundError:
        raise BundleBuildError(f"the file of {mv.name} v{mv.version} is missing: {mv.path}") from None
    if hashlib.sha256(data).hexdigest() != mv.sha256:
        raise BundleBuildError(
            f"{mv.path} does not match the SHA-256 the registry recorded for {mv.name} v{mv.version}",
            "the file was replaced or damaged; rebuild the bundle",
        )
    return mv.path


def resolve(ws: Workspace | None, spec: str) -> Path:
    """What ``edgekit deploy`` ships: a ``.ekb`` file path as given, ``NAME@VERSION`` from the
    registry, or ``NAME`` = its production version. Registry files are checked against the
    recorded SHA-256."""
    path = Path(spec)
    if path.suffix == ".ekb" or path.exists() or os.sep in spec:
        if not path.is_file():
            raise BundleBuildError(f"no bundle file {spec}")
        return path
    if ws is None:
        raise BundleBuildError(f"{spec!r} is not a bundle file", "give a path to a .ekb file")
    name, at, ver = spec.partition("@")
    if at:
        try:
            version = int(ver)
        except ValueError:
            raise RegistryError(
                f"{ver!r} in {spec!r} is not a version number", "use NAME@VERSION, e.g. pump@3"
            ) from None
        return _checked_file(get(ws, name, version))
    found = versions(ws, name)
    if not found:
        raise RegistryError(f"no model named {name!r} in the registry", "build one with 'edgekit bundle'")
    prod = next((v for v in found if v.stage == PRODUCTION), None)
    if prod is None:
        listed = ", ".join(f"v{v.version} {v.stage}" for v in found)
        raise RegistryError(
            f"model {name} has no production version ({listed})",
            f'promote one: edgekit registry promote {name} {found[-1].version} --to production --reason "…", '
            f"or deploy {name}@VERSION",
        )
    return _checked_file(prod)
