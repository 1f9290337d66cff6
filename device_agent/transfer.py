"""Reassembling a bundle from retained chunk topics: which chunks are still missing, which
arrived intact. Pure: the caller feeds chunk bytes in and asks what to subscribe to next.
"""

from __future__ import annotations

import hashlib

from .errors import ChunkRejected
from .protocol import TransferInfo


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
