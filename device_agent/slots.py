"""The device's persistent state: which bundle is active, which came before, what was accepted.

Layout of the state dir::

    state.json            active / previous bundle refs, version floor, desired seqs, bdseq,
                          and the bundle on trial (if the agent stopped during a trial)
    bundles/<sha256>.ekb  verified bundles (the active one, the one before it, one on trial)
    staging/<sha256>/     a transfer in progress: the signed transfer document and each
                          chunk received so far, so a restart asks only for what is missing
    outbox.sqlite         what must still reach the host

Every write is temp file → fsync → rename → fsync of the directory, so after a crash or a
power cut ``state.json`` names either the old or the new bundle, never neither, and the
bundle it names is complete on disk before the switch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bundle import FloorEntry
from .errors import ProtocolError, StorageError
from .protocol import BundleRef
from .state import Persisted

STATE = "state.json"
BUNDLES = "bundles"
STAGING = "staging"
TRANSFER_DOC = "transfer.json"
PART = "bundle.part"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _holds(path: Path, data: bytes | bytearray) -> bool:
    """Whether the file holds exactly ``data``: compared a block at a time, which costs half
    of hashing it again and never holds more than a block."""
    try:
        if path.stat().st_size != len(data):
            return False
        with open(path, "rb", buffering=0) as fh:
            offset = 0
            while offset < len(data):
                block = fh.read(1 << 20)
                if not block or block != data[offset : offset + len(block)]:
                    return False
                offset += len(block)
    except OSError:
        return False
    return True


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src`` from ``offset`` to ``dst``, inside the kernel where it can."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, offset + done)
            if n == 0:
                raise OSError(errno.EIO, "the stored bundle is shorter than its verified size")
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while done < size:  # a file system without copy_file_range: a block at a time
            block = os.pread(src, min(1 << 20, size - done), offset + done)
            if not block:
                raise OSError(errno.EIO, "the stored bundle is shorter than its verified size") from None
            os.write(dst, block)
            done += len(block)


def atomic_write(path: Path, data: bytes | bytearray) -> None:
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
        self.staging = self.root / STAGING
        try:
            self.bundles.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state dir {self.root}: {exc.strerror}") from None
        self._clean_staging()

    def _clean_staging(self) -> None:
        """Half-written files from a crash are never referenced: delete them."""
        for folder in (self.root, self.bundles, *self.staging.iterdir()):
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
        try:
            floor = {name: FloorEntry(int(e["version"]), str(e["sha256"])) for name, e in doc.get("floor", {}).items()}
            return Persisted(
                active=BundleRef.optional(doc, "active", "state file"),
                previous=BundleRef.optional(doc, "previous", "state file"),
                floor=floor,
                desired_seq={str(k): int(v) for k, v in doc.get("desired_seq", {}).items()},
                bdseq=int(doc.get("bdseq", 0)),
                interrupted={str(k): int(v) for k, v in doc.get("interrupted", {}).items()},
                memory={str(k): int(v) for k, v in doc.get("memory", {}).items()},
                signed_time=float(doc.get("signed_time", 0.0)),
            )
        except (ProtocolError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(f"state file {self.root / STATE} is damaged: {exc}") from None

    def save(self, state: Persisted) -> None:
        doc = {
            "active": None if state.active is None else state.active.to_json(),
            "previous": None if state.previous is None else state.previous.to_json(),
            "floor": {n: {"version": f.version, "sha256": f.sha256} for n, f in state.floor.items()},
            "desired_seq": dict(state.desired_seq),
            "bdseq": state.bdseq,
            "interrupted": dict(state.interrupted),
            "memory": dict(state.memory),
            "signed_time": state.signed_time,
        }
        try:
            atomic_write(self.root / STATE, json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StorageError(f"cannot write {self.root / STATE}: {exc.strerror}") from None

    def bundle_path(self, sha256: str) -> Path:
        return self.bundles / f"{sha256}.ekb"

    def store_bundle(self, sha256: str, data: bytes | bytearray) -> None:
        """Keep a verified bundle durably; a full disk raises StorageError and changes nothing.

        The staged file already holds these bytes (written chunk by chunk as they arrived): it
        is synced and renamed into place rather than written a second time. Staging is best
        effort (a chunk write may have failed), so the file is compared with the verified
        bytes first.
        """
        target = self.bundle_path(sha256)
        try:
            part = self._stage_dir(sha256) / PART
            if part.is_file() and _holds(part, data):
                with open(part, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(part, target)
                _fsync_dir(self.bundles)
            else:
                atomic_write(target, data)
        except OSError as exc:
            raise StorageError(f"cannot store bundle: {exc.strerror}") from None
        self.drop_staging(sha256)

    @contextlib.contextmanager
    def member_file(self, sha256: str, span: tuple[int, int]) -> Iterator[Path]:
        """A stored bundle's member as a file of its own, for the time of the ``with`` block:
        onnxruntime loads a model from a file without the copies it makes of bytes. The kernel
        copies the bytes (``copy_file_range``), so they never pass through this process."""
        begin, end = span
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".member", dir=self.bundles)
        except OSError as exc:
            raise StorageError(f"cannot make room for the model file: {exc.strerror}") from None
        try:
            try:
                with open(self.bundle_path(sha256), "rb") as src:
                    _copy_range(src.fileno(), fd, begin, end - begin)
            except OSError as exc:
                raise StorageError(f"cannot read the stored bundle {sha256[:12]}: {exc.strerror}") from None
            finally:
                os.close(fd)
            yield Path(tmp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

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

    # ── staging: transfers in progress ──────────────────────────────────────────────

    def _stage_dir(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StorageError(f"not a SHA-256: {sha256[:80]!r}")
        return self.staging / sha256

    def stage_transfer(self, sha256: str, envelope: bytes, size: int) -> None:
        """The signed transfer document, and a sparse file of the bundle's size for the chunks."""
        folder = self._stage_dir(sha256)
        try:
            folder.mkdir(exist_ok=True)
            atomic_write(folder / TRANSFER_DOC, envelope)
            with open(folder / PART, "wb") as fh:
                fh.truncate(size)
        except OSError as exc:
            raise StorageError(f"cannot stage the transfer: {exc.strerror}") from None

    def stage_chunk(self, sha256: str, offset: int, data: bytes) -> None:
        """Written in place, not fsynced: a torn chunk fails its hash on reload and is fetched
        again, so durability is not worth a sync per chunk."""
        try:
            fd = os.open(self._stage_dir(sha256) / PART, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot stage a chunk: {exc.strerror}") from None

    def drop_staging(self, sha256: str) -> None:
        with contextlib.suppress(StorageError, OSError):
            shutil.rmtree(self._stage_dir(sha256))

    def load_staging(self) -> dict[str, tuple[bytes, bytes]]:
        staged: dict[str, tuple[bytes, bytes]] = {}
        for folder in self.staging.iterdir():
            try:
                staged[folder.name] = ((folder / TRANSFER_DOC).read_bytes(), (folder / PART).read_bytes())
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
        return staged
