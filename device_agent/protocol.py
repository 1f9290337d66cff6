"""The MQTT topic tree and the JSON rules every message follows, shared by device and host.

One definition of each wire format: the host imports this module rather than repeating
topic strings. Every payload that arrives from outside goes through :func:`loads_strict`,
which refuses duplicate keys, NaN/Infinity and oversized input, so a garbled or hostile
message becomes a :class:`ProtocolError` instead of a half-parsed dict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

DEFAULT_PREFIX = "edgekit/v1"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_id(kind: str, value: str) -> str:
    """Device ids, group ids and bundle names become topic levels: no wildcards, no slashes."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ProtocolError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '_', '.', ':' or '-', starting alphanumeric"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(data: bytes | str, max_bytes: int = 1 << 20, what: str = "message") -> Any:
    """Parse JSON from outside: bounded size, UTF-8, no duplicate keys, no NaN or Infinity."""
    if len(data) > max_bytes:
        raise ProtocolError(f"{what} is {len(data)} bytes, above the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def loads_object(data: bytes | str, max_bytes: int = 1 << 20, what: str = "message") -> dict[str, Any]:
    obj = loads_strict(data, max_bytes, what)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def dumps(obj: Any) -> bytes:
    """Compact, sorted, ASCII-safe JSON; NaN refused so we never emit what we would reject."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class Topics:
    """Builds and parses topic names under one prefix (one fleet)."""

    prefix: str = DEFAULT_PREFIX

    def dev(self, device: str, leaf: str) -> str:
        return f"{self.prefix}/dev/{device}/{leaf}"

    def state(self, device: str) -> str:
        return self.dev(device, "state")

    def hb(self, device: str) -> str:
        return self.dev(device, "hb")

    def reported(self, device: str) -> str:
        return self.dev(device, "reported")

    def events(self, device: str) -> str:
        return self.dev(device, "events")

    def drift(self, device: str) -> str:
        return self.dev(device, "drift")

    def desired_device(self, device: str) -> str:
        return self.dev(device, "desired")

    def desired_group(self, group: str) -> str:
        return f"{self.prefix}/group/{group}/desired"

    def bundle_manifest(self, name: str, version: int) -> str:
        return f"{self.prefix}/bundle/{name}/{version}/manifest"

    def bundle_chunk(self, name: str, version: int, index: int) -> str:
        return f"{self.prefix}/bundle/{name}/{version}/chunk/{index}"

    def all_devices(self, leaf: str) -> str:
        return f"{self.prefix}/dev/+/{leaf}"

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """``{p}/dev/{d}/{leaf}`` -> (device, leaf); None for anything else."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2:
            return None
        return rest[0], rest[1]

    def parse_chunk_topic(self, topic: str) -> tuple[str, int, int] | None:
        """``{p}/bundle/{name}/{version}/chunk/{i}`` -> (name, version, i); None otherwise."""
        head = f"{self.prefix}/bundle/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 4 or parts[2] != "chunk":
            return None
        try:
            return parts[0], int(parts[1]), int(parts[3])
        except ValueError:
            return None


# Message field helpers: decode with types checked, so callers never KeyError on hostile input.


def req_str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: field {key!r} must be a string")
    return value


def req_int(obj: dict[str, Any], key: str, what: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ProtocolError(f"{what}: field {key!r} must be an integer >= {minimum}")
    return value


def req_obj(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: field {key!r} must be an object")
    return value


def req_list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: field {key!r} must be a list")
    return value
