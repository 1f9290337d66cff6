"""Drift statistics: false alarms on clean windows and detection power, against baselines.

What a device's drift verdict is worth, measured on the real code path: ``build_reference``
(the host, at bundle time) → ``DriftWindow.update`` in 64-row batches → ``report()`` (the
device), and ``merge_windows`` → ``assess`` (the host, over merged windows).

1. **False alarms on every bundled data set.** scikit-learn's iris, wine, breast_cancer,
   digits and diabetes (features only; california_housing is a download and is skipped),
   ``make_friedman1`` (the generated regression set of ``bench/auto_vs_default.py``) and a
   generated loan table with skewed, near-constant, categorical and missing values. Each split
   shuffles the rows, builds the reference from one half (window policy 200 rows) and draws
   clean windows from the other half: random subsets without replacement, each of which is an
   i.i.d. sample of the population — windows of one split overlap, so they are not independent,
   which is why many splits are used. Window size: 200 rows where the held-out half holds
   them, else 50 (iris, wine). Baselines on the same windows: the rules this release replaces
   (2,000-draw quantile PSI thresholds, mean z-test, "a constant column changed", binomial
   missing test), a fixed "PSI > 0.1" rule and a per-feature Welch t-test against the
   reference rows at ``alpha/F`` (numpy).

2. **Detection power** on populations with unlimited rows (a 10-feature standard normal table
   and the generated loan table), reference of 2,000 rows: windows of 50, 100, 200 and 500
   rows with one feature shifted by 0, 0.25, 0.5 or 1 of its standard deviations. Chance of a
   ``drift`` verdict per window and the expected delay (1/chance windows: windows are
   independent and the verdict has no memory), same baselines.

3. **Merged windows** (host): 1, 5 and 25 consecutive 200-row windows merged and judged by
   ``assess``, for shifts single windows cannot see.

4. **Cost**: ``DriftWindow.update`` (per batch; unchanged by this release) and ``report()``
   per window for digits' 64 features, at the shipped window and at other sizes.

Every rate is the median over seeds (each seed is its own set of splits or references);
``alpha`` is the default 0.01. Rerun: ``.venv/bin/python bench/drift_power.py`` (15-30
minutes on 2 shared cores); it rewrites only its own section of BENCHMARKS.md (``drift-power``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist, median
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import log, machine, now_utc, versions, write_section
from device_agent.drift import (
    DriftWindow,
    FeatureRef,
    Reference,
    assess,
    merge_windows,
    psi_rows,
    psi_threshold,
    reference_factor,
)
from edgekit.reference import build_reference

WINDOW_POLICY = 200
ALPHA = 0.01
BATCH = 64  # rows per update, as the agent's worker sends them
SIZES = (50, 100, 200, 500)
SHIFTS = (0.0, 0.25, 0.5, 1.0)
METHODS = ("edgekit", "previous rules", "PSI > 0.1", "Welch t")


# ---------------------------------------------------------------------------------------
# Data


@dataclass
class Table:
    name: str
    x: np.ndarray  # float matrix, or object matrix when there are categorical columns
    types: list[str]
    note: str = ""

    @property
    def names(self) -> list[str]:
        return [f"c{j}" for j in range(self.x.shape[1])]


def loan_rows(rows: int, rng: np.random.Generator) -> np.ndarray:
    """A generated car-loan table: income (lognormal, skewed), age (integers), amount (gamma),
    term (4 levels), prior defaults (almost always 0), down-payment share (3 % missing),
    vehicle, region (1 % missing) and employment (categorical)."""
    x = np.empty((rows, 9), dtype=object)
    x[:, 0] = rng.lognormal(10.8, 0.5, rows)
    x[:, 1] = rng.integers(21, 71, rows).astype(float)
    x[:, 2] = rng.gamma(4.0, 5000.0, rows)
    x[:, 3] = rng.choice([36.0, 48.0, 60.0, 72.0], rows, p=[0.2, 0.3, 0.35, 0.15])
    x[:, 4] = rng.poisson(0.03, rows).astype(float)
    down = rng.beta(2.0, 5.0, rows)
    down[rng.random(rows) < 0.03] = np.nan
    x[:, 5] = down
    x[:, 6] = rng.choice(["new", "used", "certified"], rows, p=[0.35, 0.55, 0.10])
    regions = [f"r{k}" for k in range(8)]
    region = rng.choice(regions, rows, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03]).astype(object)
    region[rng.random(rows) < 0.01] = ""
    x[:, 7] = region
    x[:, 8] = rng.choice(["salaried", "self-employed", "retired", "other"], rows, p=[0.6, 0.2, 0.15, 0.05])
    return x


LOAN_TYPES = ["numeric"] * 6 + ["categorical"] * 3


def gaussian_rows(rows: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((rows, 10))


def bundled_tables() -> list[Table]:
    from sklearn import datasets

    out = []
    for name in ("iris", "wine", "breast_cancer", "digits", "diabetes"):
        x = getattr(datasets, f"load_{name}")().data.astype(float)
        out.append(Table(name, x, ["numeric"] * x.shape[1]))
    x, _ = datasets.make_friedman1(n_samples=1000, noise=1.0, random_state=0)
    out.append(Table("friedman1", x, ["numeric"] * x.shape[1], "generated, 1,000 rows"))
    out.append(Table("loan", loan_rows(2000, np.random.default_rng(7)), LOAN_TYPES, "generated, 2,000 rows"))
    return out


def reference_for(train: np.ndarray, types: list[str], seed: int) -> Reference:
    names = [f"c{j}" for j in range(train.shape[1])]
    oof = np.full((train.shape[0], 2), 0.5)  # the verdict never uses the prediction mix
    obj = build_reference(train, names, [0, 1], oof, window=WINDOW_POLICY, alpha=ALPHA, seed=seed, feature_types=types)
    return Reference.from_json(obj)


def as_codes(ref: Reference, x: np.ndarray) -> np.ndarray:
    """Rows as the agent's float matrix: categorical values become reference codes."""
    out = np.empty(x.shape, dtype=np.float64)
    for j, codes in enumerate(ref.category_codes()):
        col = x[:, j]
        if codes is None:
            out[:, j] = np.asarray(col, dtype=np.float64)
        else:
            other = float(len(codes))
            out[:, j] = [math.nan if v is None or v == "" else codes.get(v, other) for v in col]
    return out


# ---------------------------------------------------------------------------------------
# The baselines


def ref_to_float(train: np.ndarray, types: list[str]) -> np.ndarray:
    out = np.full(train.shape, np.nan)
    for j, t in enumerate(types):
        if t == "numeric":
            out[:, j] = np.asarray(train[:, j], dtype=np.float64)
    return out


@functools.lru_cache(maxsize=8192)
def _previous_psi_quantile(props: tuple[float, ...], m: int, a: float, seed: int) -> float:
    """The previous calibration: the 1 - a quantile of 2,000 simulated windows (the host's
    bootstrap of training rows is this in distribution), floored by chi-square."""
    p = np.asarray(props)
    counts = np.random.default_rng(seed).multinomial(m, p / p.sum(), size=2000)
    return max(float(np.quantile(psi_rows(p, counts), 1.0 - a)), psi_threshold(m, len(props), a))


class Baselines:
    """The three baselines, computed from a window's report and the reference rows."""

    def __init__(self, ref: Reference, train_float: np.ndarray, seed: int) -> None:
        self.ref = ref
        self.seed = seed
        f = len(ref.features)
        self.alpha_f = ALPHA / f
        self.z = NormalDist().inv_cdf(1.0 - ALPHA / (2 * f))
        self.numeric = [i for i, feat in enumerate(ref.features) if isinstance(feat, FeatureRef)]
        cols = [train_float[:, i][~np.isnan(train_float[:, i])] for i in self.numeric]
        self.r_n = np.array([c.size for c in cols], dtype=float)
        self.r_mean = np.array([c.mean() for c in cols])
        self.r_var = np.array([c.var(ddof=1) for c in cols])

    def previous(self, rep: dict[str, Any]) -> bool:
        ref = self.ref
        for feat in ref.features:
            fr = rep["features"][feat.name]
            m = sum(fr["counts"])
            if m == 0:
                continue
            seed = self.seed if m == WINDOW_POLICY else m
            limit = _previous_psi_quantile(feat.proportions, m, self.alpha_f, seed) * reference_factor(m, ref.n)
            if fr["psi"] > limit:
                return True
            r = min(max(feat.missing_rate, 0.5 / ref.n), 1.0 - 0.5 / ref.n)
            n = rep["n"]
            if (fr["missing"] - n * r) / math.sqrt(n * r * (1.0 - r)) > self.z:
                return True
            if isinstance(feat, FeatureRef):
                if feat.std > 0.0:
                    z = (fr["mean"] - feat.mean) / feat.std / math.sqrt(1.0 / fr["count"] + 1.0 / ref.n)
                    if abs(z) > self.z:
                        return True
                elif fr["out_of_range"] > 0 or fr["mean"] != feat.mean:
                    return True
        return False

    @staticmethod
    def psi_01(rep: dict[str, Any]) -> bool:
        return any(f["psi"] > 0.1 for f in rep["features"].values())

    def welch(self, window_float: np.ndarray) -> bool:
        cols = window_float[:, self.numeric]
        ok = ~np.isnan(cols)
        n = ok.sum(axis=0).astype(float)
        mean = np.where(ok, cols, 0.0).sum(axis=0) / np.maximum(n, 1)
        var = np.where(ok, (cols - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
        se = np.sqrt(var / np.maximum(n, 1) + self.r_var / self.r_n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean - self.r_mean) / se
        # A column constant in both samples has se 0: equal means are no evidence.
        t = np.where(se > 0, t, np.where(np.abs(mean - self.r_mean) > 0, np.inf, 0.0))
        return bool(np.any(t > self.z))


def judge(
    ref: Reference, base: Baselines, window: DriftWindow, rows: np.ndarray
) -> tuple[dict[str, bool], dict[str, Any]]:
    """Feed one window as the agent does; every method's verdict on it, and the report."""
    window.reset()
    for start in range(0, rows.shape[0], BATCH):
        window.update(rows[start : start + BATCH])
    rep = window.report()
    verdicts = {
        "edgekit": rep["verdict"] == "drift",
        "previous rules": base.previous(rep),
        "PSI > 0.1": base.psi_01(rep),
        "Welch t": base.welch(rows),
    }
    return verdicts, rep


# ---------------------------------------------------------------------------------------
# 1. False alarms on the bundled data sets


@dataclass
class FalseAlarms:
    table: Table
    rows: int
    windows: int = 0
    effective: float = 0.0  # splits x held-out rows / window rows: about that many independent windows
    per_seed: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    alarms: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))
    tests: dict[str, int] = field(default_factory=dict)  # which edgekit tests fired


def false_alarms(table: Table, seeds: int, effective: int, per_split: int) -> FalseAlarms:
    half = table.x.shape[0] // 2
    held_rows = table.x.shape[0] - half
    rows = WINDOW_POLICY if held_rows >= WINDOW_POLICY else 50
    # Windows of one split overlap; the held-out half holds about held_rows/rows independent
    # ones, so small data sets need more splits for the same precision.
    splits = math.ceil(effective / (held_rows / rows))
    out = FalseAlarms(table, rows)
    out.effective = seeds * splits * held_rows / rows
    for seed in range(seeds):
        counts = dict.fromkeys(METHODS, 0)
        total = 0
        for split in range(splits):
            rng = np.random.default_rng([seed, split])
            perm = rng.permutation(table.x.shape[0])
            train, held = table.x[perm[:half]], table.x[perm[half:]]
            ref = reference_for(train, table.types, seed=1000 * seed + split)
            base = Baselines(ref, ref_to_float(train, table.types), 1000 * seed + split)
            held_codes = as_codes(ref, held)
            window = DriftWindow(ref, window=rows, low_confidence=0.5)
            for _ in range(per_split):
                pick = held_codes[rng.choice(held_codes.shape[0], rows, replace=False)]
                verdicts, rep = judge(ref, base, window, pick)
                total += 1
                for name, v in verdicts.items():
                    counts[name] += v
                for fname in rep["drifted"]:
                    for test in rep["features"][fname]["fired"]:
                        out.tests[test] = out.tests.get(test, 0) + 1
        out.windows += total
        for name in METHODS:
            out.per_seed[name].append(counts[name] / total)
            out.alarms[name] += counts[name]
    return out


# ---------------------------------------------------------------------------------------
# 2. Detection power


@dataclass
class Population:
    name: str
    rows: Callable[[int, np.random.Generator], np.ndarray]
    types: list[str]
    shifted: list[tuple[int, str]]  # (column, label) shifted in turn


POPULATIONS = [
    Population("gaussian", gaussian_rows, ["numeric"] * 10, [(0, "x0 ~ N(0, 1)")]),
    Population("loan", loan_rows, LOAN_TYPES, [(1, "age (integers 21-70)"), (0, "income (lognormal, skew 1.75)")]),
]


@dataclass
class Power:
    pop: Population
    # (column, shift, rows) -> method -> per-seed detection rates
    rates: dict[tuple[int, float, int], dict[str, list[float]]] = field(default_factory=dict)


def power(pop: Population, seeds: int, windows: int, ref_rows: int = 2000) -> Power:
    out = Power(pop)
    for seed in range(seeds):
        rng = np.random.default_rng([7, seed])
        train = pop.rows(ref_rows, rng)
        ref = reference_for(train, pop.types, seed=seed)
        base = Baselines(ref, ref_to_float(train, pop.types), seed)
        for col, _ in pop.shifted:
            feat = ref.features[col]
            assert isinstance(feat, FeatureRef)
            for shift in SHIFTS:
                for rows in SIZES:
                    window = DriftWindow(ref, window=rows, low_confidence=0.5)
                    hits = dict.fromkeys(METHODS, 0)
                    for _ in range(windows):
                        x = as_codes(ref, pop.rows(rows, rng))
                        x[:, col] += shift * feat.std
                        verdicts, _ = judge(ref, base, window, x)
                        for name, v in verdicts.items():
                            hits[name] += v
                    cell = out.rates.setdefault((col, shift, rows), {m: [] for m in METHODS})
                    for name in METHODS:
                        cell[name].append(hits[name] / windows)
        log(f"  {pop.name}: seed {seed} done")
    return out


# ---------------------------------------------------------------------------------------
# 3. Merged windows


MERGED_SHIFTS = (0.0, 0.1, 0.25, 0.5)
MERGED_K = (1, 5, 25)


def merged_power(seeds: int, groups: int) -> dict[tuple[float, int], list[float]]:
    """(shift, k) -> per-seed chance that k merged 200-row gaussian windows are judged drift."""
    out: dict[tuple[float, int], list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng([11, seed])
        ref = reference_for(gaussian_rows(2000, rng), ["numeric"] * 10, seed=seed)
        window = DriftWindow(ref, window=WINDOW_POLICY, low_confidence=0.5)
        for shift in MERGED_SHIFTS:
            reports = []
            for _ in range(groups * max(MERGED_K)):
                x = gaussian_rows(WINDOW_POLICY, rng)
                x[:, 0] += shift
                window.reset()
                for start in range(0, WINDOW_POLICY, BATCH):
                    window.update(x[start : start + BATCH])
                reports.append(window.report())
            for k in MERGED_K:
                flagged = [
                    assess(ref, merge_windows(reports[i : i + k]))["verdict"] == "drift"
                    for i in range(0, groups * k, k)
                ]
                out.setdefault((shift, k), []).append(float(np.mean(flagged)))
    return out


# ---------------------------------------------------------------------------------------
# 4. Cost


def cost(rounds: int = 100) -> dict[str, float]:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(float)
    ref = reference_for(x[:1300], ["numeric"] * 64, seed=0)
    held = x[1300:]
    out: dict[str, float] = {}
    for rows, label in ((200, "shipped"), (173, "other")):
        window = DriftWindow(ref, window=rows, low_confidence=0.5)
        upd, rep = [], []
        first = None
        for r in range(rounds):
            window.reset()
            t0 = time.perf_counter()
            for start in range(0, rows, BATCH):
                window.update(held[r : r + rows][start : start + BATCH])
            t1 = time.perf_counter()
            window.report()
            t2 = time.perf_counter()
            upd.append(t1 - t0)
            if first is None:
                first = t2 - t1
            else:
                rep.append(t2 - t1)
        out[f"update_{label}"] = median(upd) * 1e3
        out[f"report_{label}"] = median(rep) * 1e3
        out[f"first_{label}"] = (first or 0.0) * 1e3
    return out


# ---------------------------------------------------------------------------------------
# The section


def pct(values: Sequence[float]) -> str:
    return f"{100 * median(values):.1f} %"


def wilson(rate: float, n: float, z: float = 1.96) -> str:
    """95 % interval of a rate seen over about ``n`` independent trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * max(centre - half, 0.0):.1f}-{100 * (centre + half):.1f} %"


def cell(values: Sequence[float], rows: int) -> str:
    p = median(values)
    if p <= 0.0:
        return "0 %"
    return f"{100 * p:.0f} % · {1 / p:.1f} w · {rows / p:,.0f} r"


def render(
    fa: list[FalseAlarms],
    pw: list[Power],
    merged: dict[tuple[float, int], list[float]],
    costs: dict[str, float],
    args: argparse.Namespace,
    took: float,
    loads: Any,
) -> str:
    lines = [
        "## Drift statistics: false alarms and detection power",
        "",
        "A device judges each window of rows against the bundle's reference (`device_agent/drift.py`: PSI over the "
        "reference bins with simulated, tail-fitted thresholds; a rank location test; exact tests for missing values "
        "and for values off a constant column; every test at `alpha/F`, `alpha` = 0.01). Measured on the real path "
        "(`build_reference` → `DriftWindow.update` in 64-row batches → `report()`); how and why: docstring of "
        "`bench/drift_power.py`.",
        "",
        f"- Rerun: `.venv/bin/python bench/drift_power.py` ({took / 60:.0f} min this time; rewrites only this "
        "section).",
        f"- Machine: {machine(*loads)}.",
        f"- Versions: {versions(['numpy', 'scikit-learn'])}.",
        f"- Date: {now_utc()}.",
        f"- Seeds: {args.seeds}; every rate is the median over seeds. Baselines in the same runs: **previous rules** "
        "(what this release replaces: 2,000-draw quantile PSI thresholds floored by chi-square, mean z-test, any value "
        "off a constant column, binomial missing test), **PSI > 0.1** on any feature, **Welch t** (per numeric "
        "feature, window against the reference rows, normal two-sided at `alpha/F`; numpy).",
        "",
        "### False alarms per clean window, every bundled data set",
        "",
        "Reference from a random half of the rows, clean windows drawn from the other half "
        f"({args.per_split} random windows per split; splits per seed so that they add up to about "
        f"{args.effective} independent windows: windows of one split overlap). Target: 1-3 %. The interval is the "
        "95 % Wilson interval of the pooled rate over the independent windows. california_housing is a download and "
        "is skipped.",
        "",
        "| data set | rows × features | window | windows (≈ independent) | edgekit | 95 % interval | previous rules | "
        "PSI > 0.1 | Welch t | edgekit tests that fired |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fa:
        t = r.table
        name = t.name + (f" ({t.note})" if t.note else "")
        fired = ", ".join(f"{k} {v}" for k, v in sorted(r.tests.items(), key=lambda kv: -kv[1])) or "-"
        pooled = r.alarms["edgekit"] / r.windows
        lines.append(
            f"| {name} | {t.x.shape[0]:,} × {t.x.shape[1]} | {r.rows} | {r.windows:,} ({r.effective:,.0f}) | "
            f"**{pct(r.per_seed['edgekit'])}** | {wilson(pooled, r.effective)} | "
            + " | ".join(pct(r.per_seed[m]) for m in METHODS[1:])
            + f" | {fired} |"
        )
    lines += [
        "",
        "### Detection power: chance per window · expected delay (windows · rows)",
        "",
        "Reference of 2,000 rows (policy window 200; other sizes are calibrated on the device), "
        f"{args.windows} windows per cell and seed, one feature shifted by the given share of its reference "
        "standard deviation. "
        "A cell reads: chance of a `drift` verdict per window · expected windows until the first one (1/chance; "
        "windows are independent) · the same in rows. Shift 0 is the false-alarm rate at that size.",
    ]
    for p in pw:
        for col, label in p.pop.shifted:
            lines += [
                "",
                f"**{p.pop.name}**, shifted: {label}",
                "",
                "| method | shift | " + " | ".join(f"{m} rows" for m in SIZES) + " |",
                "|---|---|" + "---|" * len(SIZES),
            ]
            for method in METHODS:
                for shift in SHIFTS:
                    cells = [cell(p.rates[(col, shift, m)][method], m) for m in SIZES]
                    name = f"**{method}**" if method == "edgekit" else method
                    lines.append(f"| {name} | {shift:g}σ | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Merged windows on the host",
        "",
        "`assess(reference, merge_windows(reports))` over k consecutive 200-row windows of the gaussian population "
        f"(x0 shifted; {args.groups} merged ranges per cell and seed): chance of a `drift` verdict per merged range. "
        "The reference's own sampling error (2,000 rows) bounds what merging can add: the tests widen by "
        "`1 + rows/2000`.",
        "",
        "| shift | " + " | ".join(f"{k} × 200 rows" for k in MERGED_K) + " |",
        "|---|" + "---|" * len(MERGED_K),
    ]
    for shift in MERGED_SHIFTS:
        lines.append(f"| {shift:g}σ | " + " | ".join(pct(merged[(shift, k)]) for k in MERGED_K) + " |")
    lines += [
        "",
        "### Cost on the device (digits, 64 features)",
        "",
        f"- `update` for a 200-row window in 64-row batches: {costs['update_shipped']:.2f} ms (this release does not "
        "change it; no per-row work was added).",
        f"- `report()` at the shipped window size: {costs['report_shipped']:.2f} ms per window "
        f"({costs['report_shipped'] / costs['update_shipped']:.2f}× the window's `update` work); at another size "
        f"(173 rows): the first report calibrates every feature, {costs['first_other']:,.0f} ms once per calibration "
        f"point, then {costs['report_other']:.2f} ms (cached).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--effective", type=int, default=150, help="independent clean windows per seed and data set")
    parser.add_argument("--per-split", type=int, default=10, help="clean windows per split")
    parser.add_argument("--windows", type=int, default=300, help="windows per power cell and seed")
    parser.add_argument("--groups", type=int, default=40, help="merged ranges per cell and seed")
    parser.add_argument("--only", nargs="*", help="bundled data sets to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load0 = os.getloadavg()
    fa = []
    for table in bundled_tables():
        if args.only and table.name not in args.only:
            continue
        r = false_alarms(table, args.seeds, args.effective, args.per_split)
        log(
            f"{table.name:14s} {r.rows} rows: "
            + "  ".join(f"{m} {pct(r.per_seed[m])}" for m in METHODS)
            + f"  ({time.perf_counter() - started:.0f} s)"
        )
        fa.append(r)
    pw = []
    for pop in POPULATIONS:
        pw.append(power(pop, args.seeds, args.windows))
        log(f"{pop.name}: power done ({time.perf_counter() - started:.0f} s)")
    merged = merged_power(args.seeds, args.groups)
    log(f"merged windows done ({time.perf_counter() - started:.0f} s)")
    costs = cost()
    text = render(fa, pw, merged, costs, args, time.perf_counter() - started, (load0, os.getloadavg()))
    if args.no_write:
        print(text)
    else:
        write_section("drift-power", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
