"""Helpers shared by ``bench/run.py`` and ``bench/transfer.py``: the machine line, library
versions, and writing one section of ``BENCHMARKS.md`` without touching the others.

``BENCHMARKS.md`` is written by several scripts, each owning the text between its own
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers, so every section can come from a
different run (each states its own date, load and versions). Sections that are missing are
inserted in the order of :data:`SECTIONS`; the short header above the first section says
which script writes which section.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"

# (marker name, script that writes it, what it measures), in the order they appear in the file.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("inference", "bench/run.py", "single-row latency of the device agent against bare onnxruntime and scikit-learn"),
    ("transfer", "bench/transfer.py", "a 10 MiB bundle to 20 agent processes against raw mosquitto delivery"),
    ("quantization", "bench/quantization.py", "what each quantization strategy does per model family"),
    ("auto-vs-default", "bench/auto_vs_default.py", "`--model auto` against the default model"),
    ("auto-vs-flaml", "bench/auto_vs_flaml.py", "`--model auto` against FLAML at equal time budgets"),
    (
        "drift-power",
        "bench/drift_power.py",
        "drift verdicts: false alarms on every bundled data set, detection power and delay by window size and shift",
    ),
    ("collector", "bench/collector.py", "`edgekit serve` ingestion vs a bare paho subscriber (SQLite, PostgreSQL)"),
    ("alerts", "bench/alerts.py", "persisting-drift alerts: false alerts on stationary streams, delay after a step"),
    (
        "local-api",
        "bench/local_api.py",
        "applications calling the agent's socket: single rows, batches, concurrent clients, against bare onnxruntime",
    ),
    (
        "fleet-scale",
        "bench/fleet_scale.py",
        "1,000 simulated devices: fleet status, a 1 MiB bundle to all, serve ingesting their telemetry, vs raw MQTT",
    ),
    (
        "rollout-scale",
        "bench/rollout_scale.py",
        "a phased rollout to 1,000 simulated devices aborted at its first phase, against a plain deploy",
    ),
    (
        "small-device",
        "bench/small_device.py",
        "the agent under a 128 MiB memory limit on one CPU: memory, CPU, start and install times",
    ),
    ("install-probe", "bench/install_probe.py", "what the child-process probe of a new model adds to an install"),
    ("signed-telemetry", "bench/signed_telemetry.py", "signing telemetry on the device and verifying it on the host"),
)


def header() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure below was measured on this project's machines by a script in `bench/`. Each script "
        "rewrites only its own section (between its own `NAME:start` and `NAME:end` HTML-comment markers), "
        "so sections can come from different runs: each one states its date, machine load and library versions.",
        "",
        "| section | rerun | what it measures |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | `.venv/bin/python {script}` | {what} |" for name, script, what in SECTIONS]
    return "\n".join(lines) + "\n\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def versions(names: Sequence[str]) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def machine(load_start: Sequence[float], load_end: Sequence[float]) -> str:
    fmt = "/".join
    return (
        f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} {platform.release()}); "
        f"load average 1/5/15 min at start {fmt(f'{v:.2f}' for v in load_start)}, "
        f"at end {fmt(f'{v:.2f}' for v in load_end)} (the machine is shared)"
    )


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


_START = re.compile(r"<!-- [A-Za-z0-9_-]+:start -->")


def _first_marker(text: str) -> int:
    """Offset of the first section's start marker (any section, known here or not), or -1."""
    match = _START.search(text)
    return match.start() if match else -1


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between ``name``'s markers with ``body`` (insert the section, in the
    order of :data:`SECTIONS`, when it is missing) and refresh the header; leave every other
    section byte for byte as it was. The file is re-read right before writing and replaced
    atomically, because other benchmark scripts write it too."""
    start, end = _markers(name)
    section = f"{start}\n{body.strip()}\n\n{end}"
    text = path.read_text() if path.exists() else ""
    cut = _first_marker(text)
    # Whatever precedes the first section is the header; a file written before sections had
    # markers holds the old inference report there, which this section replaces.
    sections_text = text[cut:] if cut >= 0 else ""
    if start in sections_text and end in sections_text and sections_text.index(start) < sections_text.index(end):
        before, rest = sections_text.split(start, 1)
        _, after = rest.split(end, 1)
        sections_text = before + section + after
    else:
        order = [n for n, _, _ in SECTIONS]
        later = [_markers(n)[0] for n in order[order.index(name) + 1 :]] if name in order else []
        at = min((sections_text.find(m) for m in later if m in sections_text), default=-1)
        if at >= 0:
            sections_text = sections_text[:at] + section + "\n\n" + sections_text[at:]
        else:
            sections_text = (sections_text.rstrip("\n") + "\n\n" if sections_text else "") + section + "\n"
    out = header() + sections_text.lstrip("\n")
    if not out.endswith("\n"):
        out += "\n"
    fd, tmp = tempfile.mkstemp(prefix=".BENCHMARKS-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
