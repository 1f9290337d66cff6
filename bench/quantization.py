"""Quantization per model family: what each strategy does to size, single-row latency and
accuracy, on the data sets that ship with scikit-learn.

Run: ``.venv/bin/python bench/quantization.py`` (about a minute on 2 cores). It rewrites only
the section between ``<!-- quantization:start -->`` and ``<!-- quantization:end -->`` of
``BENCHMARKS.md`` (appended at the end when the markers are absent); other sections belong to
other benchmarks.

For each data set (breast_cancer, wine, digits; diabetes as regression) and each model family
(logreg / linear, rf, hgb, LightGBM, XGBoost, mlp) the real pipeline runs: a CSV → ``edgekit.data.load_table`` →
``edgekit.train.train`` (seed 0, 25 % holdout) → ``edgekit.convert.to_onnx`` →
``edgekit.quantize.quantize`` with the holdout rows as the gate's rows and the training rows as
calibration rows. ``quantize`` tries every strategy that fits the family, measures each
candidate (bytes; single-row p50 over interleaved runs on one onnxruntime thread; accuracy or
R²; label changes against the float model, every row run alone as a device runs it) and picks
the smallest that passes the gates (default: at most 0.5 pt accuracy / 0.005 R² lost, zero
label changes for tree ensembles). Every figure in the section comes from the run that wrote
it; latencies are medians (p50) of ``--rounds`` x ``--rows`` single-row runs per model.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.utils import Bunch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekit.convert import to_onnx  # noqa: E402
from edgekit.data import load_table  # noqa: E402
from edgekit.quantize import QuantizeReport, quantize  # noqa: E402
from edgekit.train import train  # noqa: E402

START, END = "<!-- quantization:start -->", "<!-- quantization:end -->"
DATASETS: list[tuple[str, Callable[[], Bunch], str]] = [
    ("breast_cancer", load_breast_cancer, "classification"),
    ("wine", load_wine, "classification"),
    ("digits", load_digits, "classification"),
    ("diabetes", load_diabetes, "regression"),
]
FAMILIES = {
    "classification": ("logreg", "rf", "hgb", "lgbm", "xgb", "mlp"),
    "regression": ("linear", "rf", "hgb", "lgbm", "xgb", "mlp"),
}
PACKAGES = ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime")


@dataclass
class Case:
    data: str
    family: str
    task: str
    report: QuantizeReport | None
    skipped: str = ""
    seconds: float = 0.0


def write_csv(name: str, bunch: Bunch, folder: Path) -> Path:
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*[f"f{i}" for i in range(bunch.data.shape[1])], "target"])
        out.writerows([*row, t] for row, t in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True))
    return path


def run_case(data: str, path: Path, task: str, family: str, rounds: int, rows: int) -> Case:
    started = time.perf_counter()
    table = load_table(path, "target", task=task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the MLPs
        result = train(table, family, seed=0)
    try:
        model = to_onnx(result)
    except Exception as exc:  # a family the converter does not handle yet: say so in the table
        return Case(data, family, task, None, f"conversion failed: {type(exc).__name__}: {exc}")
    report = quantize(
        model,
        result.X_test,
        result.y_test,
        result.classes,
        task=result.task,
        calibration=result.X_train,
        latency_rounds=rounds,
        latency_rows=rows,
    )
    return Case(data, family, task, report, seconds=time.perf_counter() - started)


def _ratio(after: float | None, before: float | None) -> str:
    return "–" if not after or not before else f"{after / before:.2f}×"


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e4 else f"{n:,} B"


def _metric(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _short(reason: str, limit: int = 150) -> str:
    reason = reason.replace("|", "/")
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def render(cases: list[Case], args: argparse.Namespace, seconds: float, load: tuple[str, str]) -> str:
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    done = [c for c in cases if c.report is not None]
    lines = [
        START,
        "## Quantization per family",
        "",
        "What `edgekit quantize` does to each model family, measured on the real pipeline (train → convert → "
        "quantize); method and reasoning: docstrings of `bench/quantization.py` and `edgekit/quantize/`.",
        "",
        f"- Rerun: `.venv/bin/python bench/quantization.py` ({seconds:.0f} s this time; rewrites only this section).",
        f"- Machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} {platform.release()}); "
        f"load average 1/5/15 min at start {load[0]}, at end {load[1]}.",
        f"- Versions: Python {platform.python_version()}, {versions}.",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"- Protocol: seed 0, 25 % holdout (the gate's rows), training rows for calibration; p50 = median of "
        f"{args.rounds} rounds x {args.rows} single-row `InferenceSession.run` calls per model (1 intra-op thread), "
        "the float model and every candidate interleaved row by row; accuracy and label agreement from every "
        "holdout row run alone. Gates: ≤ 0.5 pt accuracy (≤ 0.005 R²) lost; tree ensembles: 0 label changes; "
        "a candidate must be ≥ 5 % smaller or ≥ 10 % faster and at most 50 % slower; a lossy one must be 5 % "
        "smaller than the best lossless one.",
        "- Regression (diabetes): *accuracy* is R²; *label agreement* is the share of rows whose prediction "
        "moved by at most 1 % of the target's standard deviation.",
        "",
        "### Chosen strategy per model",
        "",
        "| data set | model | chosen | size before → after | ratio | p50 µs before → after | accuracy / R² "
        "before → after | label agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        r = c.report
        if r is None:
            lines.append(f"| {c.data} | {c.family} | skipped: {_short(c.skipped, 90)} | – | – | – | – | – |")
            continue
        lines.append(
            f"| {c.data} | {c.family} | {r.method if r.applied else 'none (float kept)'} "
            f"| {_bytes(r.size_before)} → {_bytes(r.size_after)} | {_ratio(r.size_after, r.size_before)} "
            f"| {r.latency_p50_us_before:.1f} → {r.latency_p50_us_after:.1f} "
            f"| {_metric(r.accuracy_before)} → {_metric(r.accuracy_after)} | {r.label_agreement:.2%} |"
        )
    lines += ["", "### Per family (medians over the data sets)", ""]
    lines += [
        "| family | chosen (count) | size ratio | p50 ratio | accuracy / R² change (pt) | label agreement (min) |",
        "|---|---|---|---|---|---|",
    ]
    for family in ("logreg/linear", "rf", "hgb", "lgbm", "xgb", "mlp"):
        mine = [c.report for c in done if c.family in family.split("/") and c.report is not None]
        if not mine:
            continue
        chosen: dict[str, int] = {}
        for r in mine:
            key = r.method if r.applied else "none"
            chosen[key] = chosen.get(key, 0) + 1
        size = statistics.median(r.size_after / r.size_before for r in mine)
        p50 = statistics.median(
            (r.latency_p50_us_after or 0) / (r.latency_p50_us_before or 1) for r in mine if r.latency_p50_us_before
        )
        delta = statistics.median((r.accuracy_after - r.accuracy_before) * 100 for r in mine)
        lines.append(
            f"| {family} | {', '.join(f'{k} ({v})' for k, v in sorted(chosen.items()))} | {size:.2f}× "
            f"| {p50:.2f}× | {delta:+.2f} | {min(r.label_agreement for r in mine):.2%} |"
        )
    lines += [
        "",
        "### Every strategy tried",
        "",
        "*size* and *zlib* are bytes (zlib -9 is informational: bundles are stored uncompressed and the device "
        "refuses compressed members); *changes* = holdout rows whose label differs from the float model's; "
        "*max |Δ|* = largest change of a probability (or prediction) against the float model.",
        "",
        "| data set / model | strategy | verdict | size (ratio) | zlib | p50 µs | accuracy / R² | changes | max abs Δ "
        "| why |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in done:
        r = c.report
        assert r is not None
        for cand in r.candidates:
            size, zlib_size, p50, diff = cand["size"], cand["size_zlib"], cand["latency_p50_us"], cand["max_abs_diff"]
            changes = cand["label_changes"]
            why = "" if cand["verdict"] == "chosen" else _short(cand["reason"])
            lines.append(
                f"| {c.data} / {c.family} | {cand['strategy']} | {cand['verdict']} "
                f"| {'–' if size is None else f'{size:,} ({size / r.size_before:.2f}×)'} "
                f"| {'–' if zlib_size is None else f'{zlib_size:,}'} "
                f"| {'–' if p50 is None else f'{p50:.1f}'} "
                f"| {_metric(cand['accuracy'])} | {'–' if changes is None else changes} "
                f"| {'–' if diff is None else f'{diff:.2g}'} | {why} |"
            )
    lines += ["", END]
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def write_section(path: Path, section: str) -> None:
    """Replace only our section (between the markers); append it when the markers are absent."""
    text = path.read_text() if path.exists() else ""
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds per model")
    parser.add_argument("--rows", type=int, default=200, help="holdout rows timed per round")
    parser.add_argument("--data", nargs="*", default=[d[0] for d in DATASETS], help="data sets to run")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_start = _load()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-q-") as tmp:
        for name, loader, task in DATASETS:
            if name not in args.data:
                continue
            path = write_csv(name, loader(), Path(tmp))
            for family in FAMILIES[task]:
                case = run_case(name, path, task, family, args.rounds, args.rows)
                cases.append(case)
                r = case.report
                summary = (
                    f"skipped ({case.skipped})"
                    if r is None
                    else f"{r.method if r.applied else 'none'}: {r.size_before} → {r.size_after} bytes, "
                    f"p50 {r.latency_p50_us_before} → {r.latency_p50_us_after} µs, "
                    f"{r.metric} {r.accuracy_before:.4f} → {r.accuracy_after:.4f} ({case.seconds:.1f} s)"
                )
                print(f"{name:14s} {family:7s} {summary}", flush=True)
    section = render(cases, args, time.perf_counter() - started, (load_start, _load()))
    write_section(args.out, section)
    print(f"wrote the quantization section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
