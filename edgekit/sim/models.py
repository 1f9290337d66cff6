"""One onnxruntime session per bundle for the whole simulated fleet.

Every device verifies every bundle it receives itself (signature, transfer and file hashes,
version floor: the core does it, as on a device). What is shared is what would only cost
memory a thousand times over: the loaded model, its health check (run once per bundle; its
verdict holds for every device), and the pool of rows devices draw from. The simulator runs
all devices on one thread, which is what a shared :class:`LoadedModel` needs (its input
buffer is reused between calls).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from device_agent.bundle import MODEL, REFERENCE, VerifiedBundle, verify
from device_agent.drift import Reference
from device_agent.errors import AgentError
from device_agent.runtime import LoadedModel
from device_agent.trust import Trust

from .rows import RowPool, from_csv, from_reference


class Models:
    def __init__(self, rows_csv: Path | None = None, seed: int = 0) -> None:
        self.rows_csv = rows_csv
        self.seed = seed
        self._models: dict[str, LoadedModel | AgentError] = {}
        self._pools: dict[str, RowPool] = {}

    def __len__(self) -> int:
        return len(self._models)

    def load(self, bundle: VerifiedBundle, data: bytes | bytearray) -> LoadedModel:
        """The bundle's model, loaded and health-checked once; raises the check's error."""
        known = self._models.get(bundle.sha256)
        if known is None:
            known = self._build(bundle, data)
            self._models[bundle.sha256] = known
        if isinstance(known, AgentError):
            raise known
        return known

    def get(self, sha256: str) -> LoadedModel | None:
        known = self._models.get(sha256)
        return known if isinstance(known, LoadedModel) else None

    def preload(self, data: bytes, trust: Trust, now: float) -> VerifiedBundle:
        """A bundle the fleet already runs when the simulation starts (``--preinstalled``)."""
        bundle = verify(data, trust, now=now, keep_model=False)
        self.load(bundle, data)
        return bundle

    def pool(self, model: LoadedModel) -> RowPool:
        sha = model.bundle.sha256
        pool = self._pools.get(sha)
        if pool is None:
            reference = Reference.from_json(model.bundle.json_file(REFERENCE))
            names = [f.name for f in model.features]
            if self.rows_csv is not None:
                pool = from_csv(self.rows_csv, names, reference)
            else:
                pool = from_reference(reference, self.seed)
            self._pools[sha] = pool
        return pool

    def _build(self, bundle: VerifiedBundle, data: bytes | bytearray) -> LoadedModel | AgentError:
        try:
            files = dict(bundle.files)
            if bundle.model_span is not None:  # verified in place, left out of memory: take it now
                begin, end = bundle.model_span
                files[MODEL] = bytes(data[begin:end])
            model = LoadedModel(dataclasses.replace(bundle, files=files, model_span=None))
            model.health_check()
        except AgentError as exc:
            return exc
        return model
