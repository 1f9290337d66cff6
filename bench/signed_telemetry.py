"""What signed telemetry costs: signing on the device, verifying on the host, per document.

Baselines measured in the same run, on the same documents: on the device, serialising the
document (what the agent does for every publish anyway); on the host, the strict parse
every reader does (``device_agent.protocol``). Rewrites only the ``signed-telemetry``
section of ``BENCHMARKS.md``.

    .venv/bin/python bench/signed_telemetry.py [--rounds 7] [--n 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import log, machine, now_utc, versions, write_section
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.protocol import DeviceEvent, DriftMessage, Heartbeat, Topics
from device_agent.telemetry_sig import Signer, verify
from tests.support import fleetdocs


def _median_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - started) / n)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()
    topics = Topics()
    key = Ed25519PrivateKey.generate()
    sign = Signer(key)
    public = key.public_key()
    docs = {
        "heartbeat": (topics.hb("d1"), fleetdocs.heartbeat("b", 1_764_672_000.0), Heartbeat),
        "event": (topics.events("d1"), fleetdocs.event("d1", "b", 7), DeviceEvent),
        "drift window": (topics.drift("d1"), fleetdocs.window("d1", "b", 7, verdict="drift"), DriftMessage),
    }
    rows = []
    for name, (topic, doc, cls) in docs.items():
        log(f"measuring {name}")
        payload = doc.encode()  # type: ignore[attr-defined]
        signed = sign(topic, payload)
        assert verify(public, topic, signed) == "verified"
        encode = _median_us(doc.encode, args.n, args.rounds)  # type: ignore[attr-defined]
        signing = _median_us(lambda t=topic, p=payload: sign(t, p), args.n, args.rounds)
        decode = _median_us(lambda c=cls, p=signed: c.decode(p), args.n, args.rounds)  # type: ignore[attr-defined]
        checking = _median_us(lambda t=topic, p=signed: verify(public, t, p), args.n, args.rounds)
        rows.append(
            f"| {name} | {len(payload)} → {len(signed)} | {encode:.1f} | {signing:.1f} ({signing / encode:.1f}×) "
            f"| {decode:.1f} | {checking:.1f} ({checking / decode:.1f}×) |"
        )
    body = "\n".join(
        [
            "## signed-telemetry",
            "",
            f"{now_utc()}; {machine(load_start, os.getloadavg())}; "
            f"{versions(['cryptography'])}. Medians of {args.rounds} rounds of {args.n} documents each.",
            "",
            "| document | bytes (unsigned → signed) | device: encode µs | device: + sign µs (× encode) "
            "| host: strict parse µs | host: + verify µs (× parse) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Signing re-reads the document to sign its canonical form; verifying parses it once more and "
            "checks one Ed25519 signature. Both are paid only in a secured fleet (an open fleet reads no "
            "signature). On the host, verification is the larger part of what the collector does per "
            "message: at a fleet's total rate, budget for it (shared subscriptions spread it over collectors).",
        ]
    )
    if args.no_write:
        print(body)
    else:
        write_section("signed-telemetry", body)
        log("wrote the signed-telemetry section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
