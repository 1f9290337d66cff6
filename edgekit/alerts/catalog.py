"""The bundles the rules judge against: looked up in the workspace registry by (name,
version, SHA-256), so the host knows each bundle's reference statistics, its feature
importance and the low-confidence threshold its devices count with.

A bundle the registry does not know (a collector running away from the workspace, a bundle
built elsewhere, or a registry file that no longer matches its recorded hash) gets no
:class:`BundleInfo`: the rules then judge by the device's own verdicts, unweighted (docs/alerts.md).
"""

from __future__ import annotations

import hashlib
import logging
import time

from device_agent.bundle import REFERENCE, read_unverified
from device_agent.drift import Reference
from device_agent.errors import AgentError, ProtocolError
from device_agent.protocol import BundleRef, loads_object

from .. import registry
from ..errors import EdgekitError
from ..workspace import Workspace
from .facts import BundleInfo

log = logging.getLogger("edgekit.alerts")
RETRY_S = 60.0  # a bundle not found is looked for again after this long (it may be built meanwhile)


def info_from_bundle(data: bytes) -> BundleInfo:
    """Reference, permutation importance and low-confidence threshold of a bundle's bytes."""
    manifest, members = read_unverified(data)
    reference = Reference.from_json(loads_object(members[REFERENCE], 1 << 26, REFERENCE))
    importance: dict[str, float] = {}
    explain = manifest.get("explain")
    raw = explain.get("permutation_importance") if isinstance(explain, dict) else None
    if isinstance(raw, dict):
        for name, value in raw.items():
            mean = value.get("mean") if isinstance(value, dict) else None
            if isinstance(mean, int | float) and not isinstance(mean, bool):
                importance[str(name)] = float(mean)
    policy = manifest.get("policy")
    low = policy.get("low_confidence") if isinstance(policy, dict) else None
    return BundleInfo(reference, importance, float(low) if isinstance(low, int | float) else None)


class BundleCatalog:
    def __init__(self, ws: Workspace | None, retry_s: float = RETRY_S) -> None:
        self.ws = ws
        self.retry_s = retry_s
        self._found: dict[str, BundleInfo] = {}
        self._missed: dict[str, float] = {}

    def lookup(self, ref: BundleRef) -> BundleInfo | None:
        hit = self._found.get(ref.sha256)
        if hit is not None or self.ws is None:
            return hit
        if time.monotonic() < self._missed.get(ref.sha256, 0.0):
            return None
        info = self._load(ref)
        if info is None:
            self._missed[ref.sha256] = time.monotonic() + self.retry_s
        else:
            self._found[ref.sha256] = info
        return info

    def _load(self, ref: BundleRef) -> BundleInfo | None:
        assert self.ws is not None
        try:
            mv = registry.get(self.ws, ref.name, ref.version)
            if mv.sha256 != ref.sha256:
                log.info("%s in the registry is not the bundle devices run (another SHA-256)", ref.label)
                return None
            data = mv.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                log.warning("the registry's file of %s does not match its SHA-256: %s", ref.label, mv.path)
                return None
            return info_from_bundle(data)
        except (EdgekitError, AgentError, ProtocolError, OSError, KeyError) as exc:
            log.info("no reference for %s from the registry: %s", ref.label, getattr(exc, "detail", exc))
            return None
