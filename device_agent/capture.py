"""Captured rows: a bounded sample of what the device served, kept on disk for people to label.

Which rows: every row whose confidence is below the bundle's threshold (set at bundle time,
by default the 5th percentile of the training data's *out-of-fold* confidence, so about one
row in twenty of data like the training data falls below it, and many more of data the model
has not seen the like of), plus a small uniform sample of the rest, so the labelled rows also
say how well calibrated the confident answers are. Off unless the bundle's policy or the
agent's config (``capture.mode``) turns it on: rows may be sensitive, and they leave the
device only when a signed samples request asks for them.

Cost on the serving path: a comparison and, for a kept row, one list append under the engine's
lock (:mod:`device_agent.engine`); the worker writes the pending rows on its tick. The file is
appended to and flushed, never fsynced per row: a power cut may lose the last tick's rows,
which a sample can afford; a torn last line is skipped when read.

Bounded in rows and bytes: two segments (``current.jsonl`` and ``previous.jsonl``), each at
most half of ``capture.max_rows`` and ``capture.max_bytes``; when the current one is full it
replaces the previous one, so the oldest half goes and the newest rows are always kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CaptureSettings
from .protocol import SampleRow, SamplesReply, dumps

CURRENT = "current.jsonl"
PREVIOUS = "previous.jsonl"
ANSWERED = "answered.json"
BUNDLES = "bundles.json"
LOW, UNIFORM = "low", "uniform"


@dataclass(frozen=True)
class CapturePolicy:
    """What the engine keeps for one model: rows below ``below``, and ``uniform`` of the rest."""

    below: float
    uniform: float
    basis: str  # where the threshold came from, for the reply and the log

    @classmethod
    def resolve(cls, policy: Mapping[str, Any], settings: CaptureSettings, task: str) -> CapturePolicy | None:
        """The bundle's ``policy.capture`` under the agent's ``capture`` settings; None: off.

        ``capture.mode`` "off" wins over any bundle; "on" captures even when the bundle does
        not ask (with the bundle's threshold if it has one, else ``capture.below``); "bundle"
        follows the bundle. A regressor has no confidence: only the uniform sample applies."""
        raw = policy.get("capture")
        asked: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if settings.mode == "off" or (settings.mode == "bundle" and not asked.get("enabled")):
            return None
        below, basis = _number(asked.get("below")), str(asked.get("basis") or "bundle")
        if settings.below is not None:
            below, basis = settings.below, "agent config"
        if below is None:
            below, basis = float(_number(policy.get("low_confidence")) or 0.0), "bundle low_confidence"
        uniform = _number(asked.get("uniform"))
        if settings.uniform_rate is not None:
            uniform = settings.uniform_rate
        if task != "classification":
            below = -math.inf
        return cls(float(below), min(1.0, max(0.0, uniform if uniform is not None else 0.0)), basis)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _plain(value: Any) -> Any:
    """A row's value as JSON: numpy scalars as Python ones, NaN as null (missing)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record(ts: float, bundle: str, kind: str, prediction: Any, confidence: float, row: Sequence[Any]) -> SampleRow:
    conf = float(confidence)
    return SampleRow(
        ts=round(ts, 3),
        bundle=bundle,
        kind=kind,
        prediction=_plain(prediction),
        confidence=round(conf, 6) if math.isfinite(conf) else None,
        row=tuple(_plain(v) for v in (row.tolist() if hasattr(row, "tolist") else row)),
    )


class SampleStore:
    """The captured rows on disk (``state_dir/samples``), the bundles they came from, and the
    ids of the samples requests already answered."""

    def __init__(self, folder: str | os.PathLike[str], settings: CaptureSettings) -> None:
        self.dir = Path(folder)
        self.settings = settings
        self.dir.mkdir(parents=True, exist_ok=True)
        self.errors = 0
        self._rows, self._bytes = self._measure(self.dir / CURRENT)
        self._fh: Any = None

    @property
    def segment_rows(self) -> int:
        return max(1, self.settings.max_rows // 2)

    @property
    def segment_bytes(self) -> int:
        return max(1024, self.settings.max_bytes // 2)

    @staticmethod
    def _measure(path: Path) -> tuple[int, int]:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return 0, 0
        return data.count(b"\n"), len(data)

    def append(self, rows: Iterable[SampleRow]) -> int:
        """Write rows at the end of the current segment (flushed, not fsynced); returns how many."""
        n = 0
        for item in rows:
            line = dumps(item.to_json()) + b"\n"
            if self._rows >= self.segment_rows or self._bytes + len(line) > self.segment_bytes:
                self._rotate()
            if self._fh is None:
                self._fh = open(self.dir / CURRENT, "ab")  # noqa: SIM115 - kept open between ticks
            self._fh.write(line)
            self._rows += 1
            self._bytes += len(line)
            n += 1
        if self._fh is not None:
            self._fh.flush()
        return n

    def _rotate(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.dir / CURRENT, self.dir / PREVIOUS)
        self._rows = self._bytes = 0

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def rows(self, since: float | None = None) -> Iterator[SampleRow]:
        """Every kept row, oldest first (``since``: at or after this time); torn lines skipped."""
        if self._fh is not None:
            self._fh.flush()
        for name in (PREVIOUS, CURRENT):
            try:
                with open(self.dir / name, "rb") as fh:
                    lines = fh.read().splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    item = SampleRow.from_json(json.loads(line))
                except (ValueError, TypeError, AttributeError, KeyError):
                    continue  # a torn write at a power cut, or a line from another version
                if since is None or item.ts >= since:
                    yield item

    def __len__(self) -> int:
        return self._measure(self.dir / PREVIOUS)[0] + self._rows

    # ── what goes with the rows ─────────────────────────────────────────────────────

    def note_bundle(self, label: str, info: Mapping[str, Any]) -> None:
        """Remember a bundle's name, version, hash and feature names, for replies."""
        known = self.bundles()
        if known.get(label) == dict(info):
            return
        known[label] = dict(info)
        self._write(BUNDLES, known)

    def bundles(self) -> dict[str, Any]:
        found = self._read(BUNDLES)
        return found if isinstance(found, dict) else {}

    def answered(self) -> list[str]:
        found = self._read(ANSWERED)
        return [str(x) for x in found] if isinstance(found, list) else []

    def mark_answered(self, request_id: str, keep: int) -> None:
        """Remember the request as answered (the newest ``keep`` ids are kept)."""
        ids = [i for i in self.answered() if i != request_id] + [request_id]
        self._write(ANSWERED, ids[-keep:])

    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.dir / name).read_bytes())
        except (OSError, ValueError):
            return None

    def _write(self, name: str, obj: Any) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(dumps(obj))
        os.replace(tmp, self.dir / name)


def replies(
    request: str,
    device: str,
    ts: float,
    rows: Sequence[SampleRow],
    bundles: Mapping[str, Any],
    max_bytes: int,
    capturing: bool,
) -> list[SamplesReply]:
    """The answer to one request as documents of at most ``max_bytes`` each (a single row
    larger than that is left out and counted in ``skipped``). Always at least one document,
    so the host knows the device answered even when it has nothing."""
    overhead = 512 + len(dumps(dict(bundles)))
    parts: list[list[SampleRow]] = [[]]
    size = overhead
    skipped = 0
    for item in rows:
        n = len(dumps(item.to_json())) + 1
        if n + overhead > max_bytes:
            skipped += 1
            continue
        if size + n > max_bytes and parts[-1]:
            parts.append([])
            size = overhead
        parts[-1].append(item)
        size += n
    used = {r.bundle for r in rows}
    info = {k: v for k, v in bundles.items() if k in used}
    return [
        SamplesReply(
            request=request,
            ts=ts,
            device=device,
            part=i + 1,
            parts=len(parts),
            total=len(rows) - skipped,
            skipped=skipped,
            capturing=capturing,
            bundles=info,
            rows=tuple(chunk),
        )
        for i, chunk in enumerate(parts)
    ]
