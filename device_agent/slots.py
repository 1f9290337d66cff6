"""The device's persistent state: which bundle is active, which came before, what was accepted.

Layout of the state dir::

    state.json            active / previous bundle refs, version floor, desired seqs, bdseq
    bundles/<sha256>.ekb  verified bundles (the active one and the one before it)
    outbox.sqlite         what must still reach the host

Every write is temp file → fsync → rename → fsync of the directory, so after a crash or a
power cut ``state.json`` names either the old or the new bundle, never neither, and the
bundle it names is complete on disk before the switch.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .bundle import FloorEntry
from .core import Persisted
from .errors import AgentError

STATE = "state.json"
BUNDLES = "bundles"


class StorageError(AgentError):
    code = "storage.failed"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Slots:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.bundles = self.root / BUNDLES
        try:
            self.bundles.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state dir {self.root}: {exc.strerror}") from None
        self._clean_staging()

    def _clean_staging(self) -> None:
        """Half-written files from a crash are never referenced: delete them."""
        for folder in (self.root, self.bundles):
            for stray in folder.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    stray.unlink()

    def load(self) -> Persisted:
        try:
            doc: dict[str, Any] = json.loads((self.root / STATE).read_bytes())
        except FileNotFoundError:
            return Persisted()
        except (OSError, ValueError) as exc:
            raise StorageError(f"state file {self.root / STATE} is unreadable: {exc}") from None
        floor = {name: FloorEntry(int(e["version"]), str(e["sha256"])) for name, e in doc.get("floor", {}).items()}
        return Persisted(
            active=doc.get("active"),
            previous=doc.get("previous"),
            floor=floor,
            desired_seq={str(k): int(v) for k, v in doc.get("desired_seq", {}).items()},
            bdseq=int(doc.get("bdseq", 0)),
        )

    def save(self, state: Persisted) -> None:
        doc = {
            "active": state.active,
            "previous": state.previous,
            "floor": {n: {"version": f.version, "sha256": f.sha256} for n, f in state.floor.items()},
            "desired_seq": state.desired_seq,
            "bdseq": state.bdseq,
        }
        try:
            atomic_write(self.root / STATE, json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StorageError(f"cannot write {self.root / STATE}: {exc.strerror}") from None

    def bundle_path(self, sha256: str) -> Path:
        return self.bundles / f"{sha256}.ekb"

    def store_bundle(self, sha256: str, data: bytes) -> None:
        """Stage a verified bundle durably; a full disk raises StorageError and changes nothing."""
        try:
            atomic_write(self.bundle_path(sha256), data)
        except OSError as exc:
            raise StorageError(f"cannot store bundle: {exc.strerror}") from None

    def read_bundle(self, sha256: str) -> bytes:
        try:
            return self.bundle_path(sha256).read_bytes()
        except OSError as exc:
            raise StorageError(f"active bundle {sha256[:12]} is missing from the state dir: {exc.strerror}") from None

    def prune(self, keep: set[str]) -> None:
        for path in self.bundles.glob("*.ekb"):
            if path.stem not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
