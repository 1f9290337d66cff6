"""A deliberate rollback: the old model shipped again as a *new, higher* version.

Devices refuse versions below the highest they accepted (rollback protection against a
replaying attacker), so going back is never "deploy v3 again". Instead the files of the
old version are re-signed under the next version number with ``rollback_of`` naming the
version they restore; the registry records it like any other build, and the deploy that
follows is an ordinary upgrade for every device.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_agent.bundle import MANIFEST, SIGNATURE, verify
from device_agent.protocol import check_id

from . import bundler
from .errors import BundleBuildError
from .keys import trust_file
from .workspace import Workspace


def rollback(ws: Workspace, name: str, to_version: int, key_name: str, out_dir: Path | None = None) -> Any:
    """Re-sign ``name`` v``to_version`` as the next version, marked ``rollback_of``."""
    check_id("bundle name", name)
    old_path = bundler.resolve_bundle(ws, f"{name}@{to_version}")
    data = old_path.read_bytes()
    old = verify(data, trust_file(ws), now=datetime.now(UTC).timestamp())  # never re-sign what does not verify
    files = {k: v for k, v in old.files.items() if k not in (MANIFEST, SIGNATURE)}
    latest = max(bundler.versions(ws, name))
    if to_version >= latest:
        raise BundleBuildError(
            f"{name} v{to_version} is already the latest version", "a rollback goes back to an older version"
        )

    def manifest_at(version: int) -> bytes:
        manifest = json.loads(old.manifest_bytes)
        manifest["version"] = version
        manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        manifest["rollback_of"] = {"version": old.version, "sha256": old.sha256, "replaces": latest}
        return json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")

    return bundler.sign_and_register(
        ws,
        name,
        key_name,
        files,
        manifest_at,
        source="rollback",
        run_id=(old.manifest.get("lineage") or {}).get("run_id"),
        reason=f"rollback to v{to_version} (replacing v{latest})",
        out_dir=out_dir,
        rollback_of=to_version,
    )
