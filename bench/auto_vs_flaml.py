"""``edgekit train --model auto`` against FLAML at equal time budgets, on the same split.

Data sets: every one that ships with scikit-learn and needs no download (iris, wine,
breast_cancer, digits, diabetes, plus ``make_friedman1``), and generated mixed-type tables
(numbers, strings, booleans, missing values; binary 1k rows, multiclass 10k, regression 50k).
Each is written to CSV and read by ``edgekit.data.load_table``, so both sides see the same cells.

Per data set and budget, back to back (so both share the machine's noise at that moment):

* edgekit: ``edgekit.train.train(table, "auto", time_budget=B)`` in this process — the search
  *and* the final refit on all training rows, timed as a whole; its winner is then converted
  and parity-gated (``convert_checked``) to show it is deployable.
* FLAML: ``flaml.AutoML.fit(time_budget=B, n_jobs=1)`` in ``bench/.venv-flaml`` (created here
  on first use; FLAML is not an edgekit dependency), on exactly the training rows edgekit
  used (the same ``train_test_split`` call, checked), categorical columns as pandas
  categories, missing values as NaN.

Both sides use one thread (edgekit: ``threadpool_limits(1)`` and ``n_jobs=1``; FLAML:
``n_jobs=1``). The holdout (25 %, stratified for classification) is scored by accuracy or r2,
the default declared metrics. Every family's defaults are trained once per data set too, for
the "never below the best default family" check.

Rerun: ``.venv/bin/python bench/auto_vs_flaml.py [--budgets 10 40 120] [--only NAME ...]``.
Results are kept per cell in ``bench/.work/flaml-results.json`` (a rerun of some cells keeps the
others), and the section between ``<!-- auto-vs-flaml:start -->`` and ``<!-- auto-vs-flaml:end -->``
in BENCHMARKS.md is rewritten from all cells.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import log, machine, now_utc, versions, write_section
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from edgekit.convert import convert_checked
from edgekit.data import Table, load_table
from edgekit.train import MODELS, REGRESSION_MODELS, train

SECTION = "auto-vs-flaml"
HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
FLAML_VENV = HERE / ".venv-flaml"
FLAML_PACKAGES = ["flaml[automl]==2.7.0", "lightgbm==4.7.0", "scikit-learn"]
RESULTS = WORK / "flaml-results.json"
BUNDLED = ["iris", "wine", "breast_cancer", "digits", "diabetes", "friedman1"]
GENERATED = {
    "mixed_binary_1k": (1_000, "binary"),
    "mixed_multi_10k": (10_000, "multiclass"),
    "mixed_reg_50k": (50_000, "regression"),
}
TEST_SIZE = 0.25


# ── data ─────────────────────────────────────────────────────────────────────────────────────


def bundled_rows(name: str) -> tuple[list[str], list[list[Any]]]:
    if name == "friedman1":
        X, y = datasets.make_friedman1(n_samples=1000, noise=1.0, random_state=0)
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    header = [f"x{i}" for i in range(X.shape[1])] + ["y"]
    return header, [[*map(float, row), t.item()] for row, t in zip(X, y, strict=True)]


def mixed_rows(n: int, kind: str, seed: int = 0) -> tuple[list[str], list[list[Any]]]:
    """Numbers (one with 10 % missing), an integer count, strings (one with missing values and a
    long tail of rare categories), a boolean; the target depends on interactions between them."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=n), rng.normal(size=n), rng.uniform(0, 10, size=n)
    count = rng.poisson(3, size=n)
    sites = np.array([f"site{i}" for i in range(12)])
    site = sites[np.minimum(rng.geometric(0.25, size=n) - 1, 11)]
    mode = rng.choice(["auto", "manual", "eco"], size=n, p=[0.5, 0.3, 0.2])
    flag = rng.random(n) < 0.4
    site_effect = {s: e for s, e in zip(sites, rng.normal(0, 1, size=12), strict=True)}
    signal = (
        np.sin(a * 2) + 0.8 * b * (mode == "eco") + 0.3 * (c - 5) * flag
        + np.array([site_effect[s] for s in site]) + 0.2 * count - 0.5 * (mode == "manual")
    )  # fmt: skip
    signal = signal + rng.normal(0, 0.6, size=n)
    if kind == "regression":
        target: list[Any] = [round(float(v), 4) for v in signal * 10 + 50]
    elif kind == "binary":
        target = ["yes" if v > np.median(signal) else "no" for v in signal]
    else:
        edges = np.quantile(signal, [0.25, 0.5, 0.75])
        target = [["low", "mid", "high", "peak"][int(np.searchsorted(edges, v))] for v in signal]
    a_cells: list[Any] = [round(float(v), 5) if rng.random() > 0.1 else "" for v in a]
    site_cells = [s if rng.random() > 0.05 else "" for s in site]
    header = ["a", "b", "c", "count", "site", "mode", "flag", "y"]
    rows = [
        [a_cells[i], round(float(b[i]), 5), round(float(c[i]), 4), int(count[i]), site_cells[i], mode[i],
         "true" if flag[i] else "false", target[i]]
        for i in range(n)
    ]  # fmt: skip
    return header, rows


def write_csv(name: str) -> Path:
    path = WORK / f"{name}.csv"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    if name in GENERATED:
        n, kind = GENERATED[name]
        header, rows = mixed_rows(n, kind)
    else:
        header, rows = bundled_rows(name)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def table_for(name: str) -> Table:
    path = write_csv(name)
    task = "regression" if name in ("diabetes", "friedman1") or name.startswith("mixed_reg") else "classification"
    return load_table(path, "y", task=task)


def split_indices(table: Table, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows edgekit's ``train`` holds out: the same ``train_test_split`` call on row numbers."""
    stratify = table.y if table.task == "classification" else None
    idx = np.arange(len(table.y))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_SIZE, random_state=seed, stratify=stratify)
    return np.asarray(train_idx), np.asarray(test_idx)


# ── the two sides ────────────────────────────────────────────────────────────────────────────


def ensure_flaml_venv() -> Path:
    python = FLAML_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {FLAML_VENV} with {', '.join(FLAML_PACKAGES)} …")
        subprocess.run([sys.executable, "-m", "venv", str(FLAML_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *FLAML_PACKAGES], check=True)
    return python


def run_flaml(python: Path, table: Table, name: str, budget: float, seed: int, train_idx: np.ndarray,
              test_idx: np.ndarray) -> dict[str, Any]:  # fmt: skip
    job = {
        "csv": str(WORK / f"{name}.csv"),
        "target": "y",
        "features": [[f.name, f.type] for f in table.features],
        "train": train_idx.tolist(),
        "test": test_idx.tolist(),
        "task": table.task,
        "budget": budget,
        "seed": seed,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [str(python), str(HERE / "flaml_side.py")], input=json.dumps(job), capture_output=True, text=True, env=env,
        timeout=budget * 4 + 120,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"FLAML failed on {name}: {out.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_edgekit(table: Table, budget: float, seed: int, metric: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = train(table, "auto", seed=seed, time_budget=budget, metric=metric, test_size=TEST_SIZE)
    seconds = time.perf_counter() - t0
    search = result.search or {}
    _, parity = convert_checked(result)
    return {
        "score": float(result.metrics["holdout"][metric]),
        "seconds": seconds,
        "search_s": float(search.get("elapsed_s", 0.0)),
        "learner": result.model,
        "config": search.get("chosen", {}).get("params", {}),
        "evaluated": int(search.get("evaluated", 0)),
        "cross_validated": int(search.get("cross_validated", 0)),
        "parity_ok": bool(parity.ok),
        "y_test": result.y_test.tolist(),
    }


def run_defaults(table: Table, seed: int, metric: str) -> dict[str, float]:
    families = MODELS if table.task == "classification" else REGRESSION_MODELS
    return {f: float(train(table, f, seed=seed, metric=metric, test_size=TEST_SIZE).metrics["holdout"][metric])
            for f in families}  # fmt: skip


# ── results and the section ──────────────────────────────────────────────────────────────────


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}, "defaults": {}, "runs": []}


def section(results: dict[str, Any], budgets: list[float], names: list[str]) -> str:
    cells, defaults = results["cells"], results["defaults"]
    runs = results["runs"]
    lines = [
        "## Model search: auto vs FLAML at equal budgets",
        "",
        "`edgekit train --model auto` (Optuna TPE + successive halving over linear, LightGBM, XGBoost, random "
        "forest, extra trees, HGB and MLP; early-stopped boosting; see `edgekit/search.py`) against "
        "`flaml.AutoML` with the same time budget, on the same 25 % holdout (same `train_test_split`, "
        "checked), one thread each. Score: holdout accuracy (classification) / r2 (regression). "
        "edgekit's time is the whole `train` call (search and final refit); FLAML's the whole `fit` call. "
        "Both sides of a cell ran back to back, so they shared the machine's load at that moment.",
        "",
        "- Rerun: `.venv/bin/python bench/auto_vs_flaml.py --budgets 10 40 120` (FLAML goes into "
        "`bench/.venv-flaml`, created on first use).",
    ]
    for r in runs:
        lines.append(f"- Run {r['date']}: budgets {r['budgets']}, data sets {', '.join(r['names'])}; {r['machine']}.")
    if runs:
        lines.append(f"- Versions: {runs[-1]['versions']}; FLAML side: {runs[-1]['flaml_versions']}.")
    lines += [
        "- One run per cell (a cell is minutes of wall time; the machine has 2 cores shared with other "
        "work), so single cells carry noise; the summary quotes medians over data sets, and a cell run more "
        "than once shows the median of its runs.",
        "",
    ]
    for budget in budgets:
        lines += [
            f"### {budget:g} s",
            "",
            "| data set | task | rows × features | best default (family) | FLAML (learner) | auto (family) | "
            "auto − FLAML | auto − best default | auto s / FLAML s | candidates (full CV) | parity |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        deltas: list[float] = []
        gaps: list[float] = []
        used: list[float] = []
        for name in names:
            cell = cells.get(f"{name}@{budget:g}")
            if not cell:
                continue
            d = defaults.get(name, {})
            best_family = max(d["scores"], key=d["scores"].get) if d else "?"
            best_default = d["scores"][best_family] if d else float("nan")
            e, f = dict(cell["edgekit"]), dict(cell["flaml"])
            history = cell.get("history") or [{"auto": e["score"], "flaml": f["score"]}]
            e["score"] = float(np.median([h["auto"] for h in history]))
            f["score"] = float(np.median([h["flaml"] for h in history]))
            if len(history) > 1:
                e["seconds"] = float(np.median([h["auto_s"] for h in history]))
                f["seconds"] = float(np.median([h["flaml_s"] for h in history]))
                name_shown = f"{name} (median of {len(history)})"
            else:
                name_shown = name
            delta = e["score"] - f["score"]
            deltas.append(delta)
            gaps.append(e["score"] - best_default)
            used.append(e["seconds"] / budget)
            lines.append(
                f"| {name_shown} | {d.get('task', '')} | {d.get('shape', '')} | {best_default:.4f} ({best_family}) | "
                f"{f['score']:.4f} ({f['learner']}) | {e['score']:.4f} ({e['learner']}) | "
                f"{delta:+.4f}{'' if delta >= -1e-12 else ' **below**'} | {e['score'] - best_default:+.4f} | "
                f"{e['seconds']:.1f} / {f['seconds']:.1f} | {e['evaluated']} ({e['cross_validated']}) | "
                f"{'ok' if e['parity_ok'] else 'FAILED'} |"
            )
        if deltas:
            at_or_above = sum(d >= -1e-12 for d in deltas)
            over_default = sum(g >= -1e-12 for g in gaps)
            lines += [
                "",
                f"auto ≥ FLAML on {at_or_above} of {len(deltas)} data sets at {budget:g} s (median auto − FLAML "
                f"{np.median(deltas):+.4f}, worst {min(deltas):+.4f}); auto ≥ the best default family on "
                f"{over_default} of {len(gaps)} (worst {min(gaps):+.4f}). Time used by the whole `train` call: "
                f"median {np.median(used):.1%} of the budget, at most {max(used):.1%}.",
                "",
            ]
    below = sorted({k.split("@")[0] for k in cells if _median_delta(cells[k]) < -1e-12 and k.endswith("@40")})
    if below:
        lines += ["### Not yet at or above FLAML at 40 s", ""]
        lines += [f"- **{name}**: {WHY_NOT_YET.get(name, 'not analysed yet.')}" for name in below]
        lines.append("")
    under = sorted(
        name for name in names
        if f"{name}@40" in cells and name in defaults
        and cells[f"{name}@40"]["edgekit"]["score"] < max(defaults[name]["scores"].values()) - 1e-12
    )  # fmt: skip
    if under:
        lines += ["### Below the best default family at 40 s", ""]
        lines += [f"- **{name}**: {BELOW_DEFAULT.get(name, 'not analysed yet.')}" for name in under]
    return "\n".join(lines).rstrip() + "\n"


def _median_delta(cell: dict[str, Any]) -> float:
    history = cell.get("history") or [{"auto": cell["edgekit"]["score"], "flaml": cell["flaml"]["score"]}]
    return float(np.median([h["auto"] for h in history]) - np.median([h["flaml"] for h in history]))


BELOW_DEFAULT = {
    "iris": (
        "one holdout row of 38 (0.9737 against extra trees' 1.0000). The search picks by cross-validation on "
        "the 112 training rows and never sees the holdout; one row in 38 is within the noise (FLAML: 0.9474)."
    ),
    "mixed_multi_10k": (
        "0.003 accuracy (8 of 2,500 holdout rows) below the default MLP. At 120 s the search chose that MLP; at "
        "40 s it had cross-validated 6 candidates in full and picked a tuned HGB."
    ),
}

# What was measured where auto is behind (kept with the code that produced the numbers).
WHY_NOT_YET = {
    "mixed_reg_50k": (
        "behind by 0.001-0.002 r2 on 12,500 holdout rows (three 40 s runs: auto 0.7530, 0.7497, 0.7497; FLAML "
        "0.7537, 0.7518, 0.7518; FLAML's own 10 s score moved from 0.7323 to 0.7513 between two runs). In the "
        "runs behind, auto kept LightGBM's defaults (0.7497): a tuned configuration must beat the best default "
        "by one standard error of the default's fold scores. In a traced 40 s run on this table tuned HGB and "
        "LightGBM reached 0.7453-0.7456 in cross-validation against the default's 0.7420, a margin that rule "
        "accepts or refuses with the fold spread; on 30,000-row folds that spread is real variation between "
        "folds, not selection luck. A paired rule (the spread of the per-fold differences on the same folds) "
        "would judge it properly; it changes picks on every data set and needs the whole table rerun, so it is "
        "the next step, not done here. With 18-22 candidates in 40 s on this table (2 cores shared, load "
        "3-18), TPE's random start also costs more than FLAML's local search from cheap configurations."
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 40.0, 120.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="data sets to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    parser.add_argument("--render", action="store_true", help="rewrite the section from the stored cells only")
    parser.add_argument(
        "--repeat", action="store_true", help="add to the stored cells' history (medians) instead of replacing them"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    names = [] if args.render else (args.only or [*BUNDLED, *GENERATED])
    python = ensure_flaml_venv()
    flaml_versions = subprocess.run(
        [str(python), "-c", "import flaml, lightgbm, xgboost, sklearn; "
         "print(f'flaml {flaml.__version__}, lightgbm {lightgbm.__version__}, xgboost {xgboost.__version__}, "
         "scikit-learn {sklearn.__version__}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    results = load_results()
    load0 = os.getloadavg()
    for name in names:
        table = table_for(name)
        metric = "accuracy" if table.task == "classification" else "r2"
        train_idx, test_idx = split_indices(table, args.seed)
        if name not in results["defaults"]:
            results["defaults"][name] = {
                "task": table.task,
                "shape": f"{table.X.shape[0]} × {table.X.shape[1]}",
                "scores": run_defaults(table, args.seed, metric),
            }
        for budget in args.budgets:
            e = run_edgekit(table, budget, args.seed, metric)
            if e.pop("y_test") != table.y[test_idx].tolist():
                raise SystemExit(f"{name}: the holdout edgekit used is not the one FLAML gets")
            f = run_flaml(python, table, name, budget, args.seed, train_idx, test_idx)
            key = f"{name}@{budget:g}"
            history = results["cells"].get(key, {}).get("history", []) if args.repeat else []
            history.append({"auto": e["score"], "flaml": f["score"], "auto_s": e["seconds"], "flaml_s": f["seconds"]})
            results["cells"][key] = {"edgekit": e, "flaml": f, "history": history}
            log(
                f"{name:16s} {budget:5.0f} s  auto {e['score']:.4f} ({e['learner']}, {e['seconds']:.1f} s, "
                f"{e['evaluated']} cand.)  flaml {f['score']:.4f} ({f['learner']}, {f['seconds']:.1f} s)  "
                f"Δ {e['score'] - f['score']:+.4f}"
            )
            RESULTS.write_text(json.dumps(results, indent=1))
    if names:
        results["runs"].append(
            {
                "date": now_utc(),
                "budgets": ", ".join(f"{b:g} s" for b in args.budgets),
                "names": names,
                "machine": machine(load0, os.getloadavg()),
                "versions": versions(["numpy", "scikit-learn", "lightgbm", "xgboost-cpu", "optuna"]),
                "flaml_versions": flaml_versions,
            }
        )
    RESULTS.write_text(json.dumps(results, indent=1))
    budgets = sorted({float(k.split("@")[1]) for k in results["cells"]})
    all_names = [n for n in [*BUNDLED, *GENERATED] if any(k.startswith(n + "@") for k in results["cells"])]
    text = section(results, budgets, all_names)
    if args.no_write:
        print(text)
    else:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
