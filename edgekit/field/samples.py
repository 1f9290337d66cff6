"""``edgekit fleet samples pull``: ask devices for their captured rows and write them as a CSV
people can label.

One signed :class:`~device_agent.protocol.SamplesRequest` per device (deploy key; a fresh id,
so a device answers it once; an expiry a little past the wait), published on the device's
command topic after subscribing to its samples topic; the answer comes in size-bounded
:class:`~device_agent.protocol.SamplesReply` parts, counted until every device has sent all of
its parts or the wait is over. A device that did not answer in time is reported, not waited
for: it answers the next request.

The CSV: the feature columns in the model's order (from the bundle the rows cite), then
``prediction``, ``confidence``, ``device``, ``bundle``, ``time`` (ISO 8601 UTC), ``kind``
(``low`` confidence or the ``uniform`` sample) and an empty ``label`` column to fill in.
"""

from __future__ import annotations

import csv
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.errors import ProtocolError
from device_agent.protocol import SampleRow, SamplesReply, SamplesRequest, Topics
from device_agent.trust import SAMPLES_DOMAIN, seal

from ..errors import FleetError
from ..fleet.client import Connection, collect, connect, publish_all
from ..fleet.deploy import Target, target_members
from ..fleet.status import read_devices

META = ("prediction", "confidence", "device", "bundle", "time", "kind")
LABEL = "label"
EXPIRY_MARGIN_S = 60.0  # a request outlives the wait by this much (clocks differ a little)


@dataclass
class DeviceAnswer:
    device: str
    parts: dict[int, SamplesReply] = field(default_factory=dict)
    expected: int | None = None

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.parts) == self.expected

    @property
    def rows(self) -> list[SampleRow]:
        return [r for p in sorted(self.parts) for r in self.parts[p].rows]

    def to_dict(self) -> dict[str, Any]:
        first = next(iter(self.parts.values()), None)
        return {
            "device": self.device,
            "answered": self.complete,
            "parts": len(self.parts),
            "rows": len(self.rows),
            "capturing": first.capturing if first is not None else None,
            "skipped": sum(p.skipped for p in self.parts.values()),
        }


@dataclass(frozen=True)
class Pulled:
    path: Path
    rows: int
    features: list[str]
    devices: list[DeviceAnswer]
    bundles: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "features": self.features,
            "bundles": self.bundles,
            "devices": [d.to_dict() for d in self.devices],
            "unanswered": [d.device for d in self.devices if not d.complete],
            "seconds": round(self.seconds, 3),
        }


def members(conn: Connection, topics: Topics, target: Target) -> list[str]:
    """The devices a target names (a group: those whose retained birth lists it)."""
    if target.device:
        return [target.device]
    devices = read_devices(collect(conn, [topics.all_devices("state")], settle=0.3), topics)
    return sorted(target_members(target, {d: s.state for d, s in devices.items() if s.state is not None}))


def request(device: str, key: Ed25519PrivateKey, since: float | None, wait: float, now: float) -> tuple[str, bytes]:
    rid = f"samples-{uuid.uuid4().hex[:16]}"
    doc = SamplesRequest(rid, device, now, now + wait + EXPIRY_MARGIN_S, since=since)
    return rid, seal(key, SAMPLES_DOMAIN, doc.to_json())


def pull(
    broker: str,
    prefix: str,
    target: Target,
    deploy_key: Ed25519PrivateKey,
    out: Path,
    *,
    since: float | None = None,
    bundle: str | None = None,
    wait: float = 30.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> Pulled:
    """Ask every device ``target`` names for its captured rows (at or after ``since``; only
    those of ``bundle``, NAME or NAME@V, when given) and write them to ``out``."""
    started = time.monotonic()
    topics = Topics(prefix)
    with connect(broker, purpose="samples") as conn:
        devices = members(conn, topics, target)
        if not devices:
            raise FleetError(f"no device is in {target.label}", "see 'edgekit fleet status'")
        answers = {d: DeviceAnswer(d) for d in devices}
        ids: dict[str, str] = {}
        done = threading.Event()
        lock = threading.Lock()

        def on_message(topic: str, payload: bytes, _retained: bool) -> None:
            parsed = topics.parse_device_topic(topic)
            if parsed is None or parsed[1] != "samples" or parsed[0] not in answers:
                return
            try:
                reply = SamplesReply.decode(payload, max_bytes=64 << 20)
            except ProtocolError:
                return  # a garbled part is no answer; the device is reported as not answered
            with lock:
                if ids.get(parsed[0]) != reply.request:
                    return  # an answer to an older request
                answer = answers[parsed[0]]
                answer.expected = reply.parts
                answer.parts[reply.part] = reply
                if all(a.complete for a in answers.values()):
                    done.set()

        conn.on_message = on_message
        subscribed = threading.Event()
        conn.client.on_subscribe = lambda *_a: subscribed.set()
        conn.client.subscribe([(topics.samples(d), 1) for d in devices])
        subscribed.wait(5.0)
        now = time.time()
        messages = []
        for d in devices:
            rid, payload = request(d, deploy_key, since, wait, now)
            ids[d] = rid
            messages.append((topics.cmd(d), payload, False))
        progress(f"asking {len(devices)} device(s) for their captured rows")
        publish_all(conn, messages)
        done.wait(wait)
        with lock:
            snapshot = list(answers.values())
    features, rows = table(snapshot, bundle)
    write_csv(out, features, rows)
    cited = sorted({r["bundle"] for r in rows})
    return Pulled(out, len(rows), features, snapshot, cited, time.monotonic() - started)


def _wanted(label: str, bundle: str | None) -> bool:
    if bundle is None:
        return True
    return label == bundle if "@" in bundle else label.split("@", 1)[0] == bundle


def table(answers: list[DeviceAnswer], bundle: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The feature names (one model's, in its order) and one dict per captured row."""
    features: list[str] | None = None
    first_label = ""
    rows: list[dict[str, Any]] = []
    for answer in answers:
        info: dict[str, Any] = {}
        for part in answer.parts.values():
            info.update(part.bundles)
        for r in answer.rows:
            if not _wanted(r.bundle, bundle):
                continue
            names = (info.get(r.bundle) or {}).get("features")
            if not isinstance(names, list) or len(names) != len(r.row):
                names = [f"x{i}" for i in range(len(r.row))]
            if features is None:
                features, first_label = [str(n) for n in names], r.bundle
            elif names != features:
                raise FleetError(
                    f"rows of {first_label} and {r.bundle} have different features",
                    f"pull one model's rows at a time: --bundle {r.bundle.split('@', 1)[0]}",
                )
            rows.append(_row(answer.device, r, features))
    rows.sort(key=lambda d: (d["time"], d["device"]))
    return features or [], rows


def _row(device: str, r: SampleRow, features: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(features, r.row, strict=True))
    out.update(
        prediction=r.prediction,
        confidence=r.confidence,
        device=device,
        bundle=r.bundle,
        time=datetime.fromtimestamp(r.ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        kind=r.kind,
    )
    out[LABEL] = ""
    return out


def write_csv(path: Path, features: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*features, *META, LABEL])
        for row in rows:
            w.writerow(["" if row[c] is None else row[c] for c in [*features, *META, LABEL]])
    tmp.replace(path)
