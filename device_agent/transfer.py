"""Reassembling a bundle from retained chunk topics: which chunks are still missing, which
arrived intact. Pure: the caller feeds chunk bytes in and asks what to subscribe to next.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .errors import ChunkRejected, ProtocolError
from .protocol import check_id, req_int, req_list, req_str

MAX_CHUNKS = 65_536


@dataclass(frozen=True)
class TransferInfo:
    """The signed transfer document published next to the chunks."""

    name: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]  # sha256 hex of each chunk, in order

    @classmethod
    def from_json(cls, body: dict[str, Any], max_chunk_bytes: int) -> TransferInfo:
        what = "transfer document"
        info = cls(
            name=check_id("bundle name", req_str(body, "name", what)),
            version=req_int(body, "version", what, 1),
            size=req_int(body, "size", what, 1),
            sha256=req_str(body, "sha256", what),
            chunk_size=req_int(body, "chunk_size", what, 1),
            chunks=tuple(str(c) for c in req_list(body, "chunks", what)),
        )
        expected = -(-info.size // info.chunk_size)
        if info.chunk_size > max_chunk_bytes:
            raise ProtocolError(f"{what}: chunk size {info.chunk_size} above this device's {max_chunk_bytes}")
        if len(info.chunks) != expected or expected > MAX_CHUNKS:
            raise ProtocolError(f"{what}: {len(info.chunks)} chunk hashes for {expected} chunks")
        return info

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }

    def chunk_length(self, index: int) -> int:
        if index == len(self.chunks) - 1:
            return self.size - self.chunk_size * index
        return self.chunk_size


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


class Assembly:
    """Chunks received so far for one transfer, each checked against its signed hash.

    Each chunk is copied to its place in one buffer of the bundle's size as it arrives, and
    the message that carried it can go: the bundle is held once, never as a list of chunks
    plus the joined whole.
    """

    def __init__(self, info: TransferInfo) -> None:
        self.info = info
        self._buffer = bytearray(info.size)
        self._have: set[int] = set()

    @property
    def received(self) -> int:
        return len(self._have)

    @property
    def total(self) -> int:
        return len(self.info.chunks)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.total

    def missing(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        out: list[int] = []
        for i in range(self.total):
            if i not in self._have and i not in exclude:
                out.append(i)
                if len(out) >= limit:
                    break
        return out

    def accept(self, index: int, payload: bytes | bytearray | memoryview) -> bool:
        """Store a chunk; False for a harmless duplicate, ChunkRejected for a bad one."""
        if not 0 <= index < self.total:
            raise ChunkRejected(f"chunk {index} is out of range (0..{self.total - 1})")
        if index in self._have:
            return False
        if len(payload) != self.info.chunk_length(index):
            raise ChunkRejected(f"chunk {index} is {len(payload)} bytes, expected {self.info.chunk_length(index)}")
        if hashlib.sha256(payload).hexdigest() != self.info.chunks[index]:
            raise ChunkRejected(f"chunk {index} does not match its signed hash")
        start = index * self.info.chunk_size
        self._buffer[start : start + len(payload)] = payload
        self._have.add(index)
        return True

    def assemble(self) -> bytearray:
        """The whole bundle, without a copy: the caller takes the buffer over."""
        if not self.complete:
            raise ChunkRejected(f"transfer incomplete: {self.received}/{self.total} chunks")
        return self._buffer
