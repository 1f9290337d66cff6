"""``edgekit compare CHAMPION CHALLENGER --on FILE``: is the challenger better, by enough to tell?

Both models answer every row of each evaluation file through the device's own runtime (the
bytes a bundle ships, fed as a device feeds them), so what is compared is what would serve.
Per file: each model's metrics; the challenger's deltas with 95 % paired bootstrap intervals
(rows resampled together, 1,000 draws, seeded); for a classifier McNemar's exact test on the
rows exactly one model gets right, per-class recall and precision, and the expected
calibration error (10 bins of the top probability); for a regressor the Wilcoxon signed-rank
test on the paired absolute errors; the rows whose prediction changes; and model size and
single-row latency.

The verdict per file, on its primary metric (accuracy; r2 for a regressor): **better** when
the interval of the delta lies above zero and the paired test says p < 0.05, **worse** when
it lies below zero with p < 0.05, otherwise **not distinguishable**. Over all files: worse if
any file says worse, better if at least one says better, else not distinguishable — a model
that wins on the field rows but loses on the holdout is not promoted on the strength of one.

:mod:`edgekit.runs`' ``runs compare`` lines up two runs' *records*; this module measures two
*models* on the same rows. Run records are read through :mod:`edgekit.compare`'s helpers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.bundle import MODEL, ModelSpec, VerifiedBundle, verify
from device_agent.errors import RowError
from device_agent.runtime import LoadedModel

from .. import keys, registry
from ..errors import DataError, UsageError
from ..runs import load_run
from ..workspace import Workspace
from . import labels

BOOTSTRAP = 1000
ALPHA = 0.05
ECE_BINS = 10
LATENCY_ROWS = 200
SHOWN_CHANGES = 20
BETTER, SAME, WORSE = "better", "not distinguishable", "worse"


@dataclass
class Contender:
    """One model as a device would run it, and where it came from."""

    spec: str
    label: str  # "run <id>" or "NAME vV"
    run_id: str | None
    model: LoadedModel
    size: int  # bytes of the ONNX model

    @property
    def task(self) -> str:
        return self.model.spec.task


def contender(ws: Workspace, spec: str) -> Contender:
    """A run id (or ``latest``), or a registered bundle: ``NAME@V``."""
    name, sep, version = spec.partition("@")
    if sep and version.isdigit():
        mv = registry.get(ws, name, int(version))
        # Verified as a device verifies it: what is measured is what would serve.
        vb = verify(mv.path.read_bytes(), keys.trust_file(ws), now=time.time())
        return Contender(spec, f"{name} v{version}", mv.run_id, LoadedModel(vb), len(vb.files[MODEL]))
    run = load_run(ws, spec)
    model_bytes = run.shipped_model.read_bytes()
    section = {"model": {**run.record["model"], "classes": run.record["model"].get("classes") or []}}
    vb = VerifiedBundle(
        "run", 1, "", len(model_bytes), "", section, b"", {MODEL: model_bytes}, ModelSpec.from_manifest(section)
    )
    return Contender(spec, f"run {run.id}", run.id, LoadedModel(vb), len(model_bytes))


# ── rows ─────────────────────────────────────────────────────────────────────────────


def device_rows(schema: labels.Schema, rows: list[list[str]]) -> list[list[Any]]:
    """Checked text cells as a device receives them: numbers, strings, None for missing."""
    out = []
    for row in rows:
        cells: list[Any] = []
        for f, text in zip(schema.features, row, strict=True):
            if text == "":
                cells.append(None)
            elif f.get("type") == "numeric":
                cells.append(float(text))
            else:
                cells.append(text)
        out.append(cells)
    return out


def answers(model: LoadedModel, rows: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(class index or value, probabilities (n, C) or empty) for every row; a row the model
    cannot serve is a usage error naming it."""
    _, results = model.predict_rows(rows)
    preds: list[float] = []
    probas: list[np.ndarray] = []
    for i, r in enumerate(results):
        if isinstance(r, RowError):
            raise DataError(f"row {i + 1} cannot be served by the model: {r.code}: {r.detail}")
        if model.spec.task == "classification":
            preds.append(r.class_index)
            probas.append(np.asarray(r.probabilities, dtype=np.float64))
        else:
            preds.append(float(r.label))
    kind = np.int64 if model.spec.task == "classification" else np.float64
    return np.asarray(preds, dtype=kind), (np.vstack(probas) if probas else np.empty((len(preds), 0)))


def latency_us(model: LoadedModel, rows: list[list[Any]]) -> float:
    """Median single-row time through the device runtime, microseconds."""
    sample = rows[:LATENCY_ROWS]
    for row in sample[:10]:
        model.predict_row(row)
    times = []
    for row in sample:
        t0 = time.perf_counter_ns()
        model.predict_row(row)
        times.append(time.perf_counter_ns() - t0)
    return round(float(np.median(times)) / 1000.0, 1)


# ── statistics ───────────────────────────────────────────────────────────────────────


def ece(proba: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error over ``ECE_BINS`` equal-width bins of the top probability."""
    top = proba.max(axis=1)
    bins = np.minimum((top * ECE_BINS).astype(int), ECE_BINS - 1)
    total = 0.0
    for b in range(ECE_BINS):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(float(correct[mask].mean()) - float(top[mask].mean()))
    return total


def _f1_macro(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _class_metrics(y: np.ndarray, pred: np.ndarray, proba: np.ndarray, n: int) -> dict[str, float]:
    correct = pred == y
    return {"accuracy": float(correct.mean()), "f1_macro": _f1_macro(y, pred, n), "ece": ece(proba, correct)}


def _reg_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    var = float(np.var(y))
    return {
        "r2": 1.0 - float(np.mean(err**2)) / var if var > 0 else 0.0,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err**2))),
    }


def _bootstrap(y: np.ndarray, a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], metrics: Any, seed: int) -> Any:
    """Paired bootstrap of every metric's delta (b - a): {metric: (low, high)}."""
    rng = np.random.default_rng(seed)
    n = len(y)
    draws: dict[str, list[float]] = {}
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, n, n)
        ma = metrics(y[idx], *(x[idx] for x in a))
        mb = metrics(y[idx], *(x[idx] for x in b))
        for k in ma:
            draws.setdefault(k, []).append(mb[k] - ma[k])
    return {k: (float(np.quantile(v, ALPHA / 2)), float(np.quantile(v, 1 - ALPHA / 2))) for k, v in draws.items()}


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: of the rows exactly one model gets right, is the split 50/50?"""
    from scipy.stats import binomtest

    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return {"test": "mcnemar_exact", "champion_only_right": only_a, "challenger_only_right": only_b, "p_value": p}


def wilcoxon(err_a: np.ndarray, err_b: np.ndarray) -> dict[str, Any]:
    from scipy.stats import wilcoxon as signed_rank

    diff = np.abs(err_a) - np.abs(err_b)
    p = 1.0 if not np.any(diff != 0) else float(signed_rank(np.abs(err_a), np.abs(err_b)).pvalue)
    return {"test": "wilcoxon_signed_rank", "p_value": p}


def verdict(delta: float, interval: tuple[float, float], p: float, higher_is_better: bool = True) -> str:
    low, high = interval if higher_is_better else (-interval[1], -interval[0])
    if low > 0 and p < ALPHA:
        return BETTER
    if high < 0 and p < ALPHA:
        return WORSE
    return SAME


def overall(verdicts: list[str]) -> str:
    if WORSE in verdicts:
        return WORSE
    return BETTER if BETTER in verdicts else SAME


# ── the comparison ───────────────────────────────────────────────────────────────────


def compare_models(ws: Workspace, champion: str, challenger: str, on: list[Path], seed: int = 0) -> dict[str, Any]:
    """Measure both models on every file of ``on`` (see the module docstring)."""
    if not on:
        raise UsageError("compare needs rows to compare on", "give --on holdout.csv (and --on field.csv)")
    a, b = contender(ws, champion), contender(ws, challenger)
    if a.task != b.task:
        raise UsageError(f"{a.label} is a {a.task} model, {b.label} a {b.task} one", "compare models of one task")
    run_id = a.run_id or b.run_id
    if run_id is None:
        raise UsageError("neither model was built from a run", "compare runs or bundles made from runs")
    schema = labels.Schema.of_run(load_run(ws, run_id))
    other = labels.Schema.of_run(load_run(ws, b.run_id)) if b.run_id and b.run_id != run_id else schema
    if other.names != schema.names:
        raise UsageError(f"{a.label} and {b.label} take different features", "compare models of one table")
    sets = [_evaluate(a, b, schema, path, seed) for path in on]
    return {
        "champion": {"spec": a.spec, "label": a.label, "run_id": a.run_id, "size_bytes": a.size},
        "challenger": {"spec": b.spec, "label": b.label, "run_id": b.run_id, "size_bytes": b.size},
        "task": a.task,
        "on": sets,
        "verdict": overall([s["verdict"] for s in sets]),
        "size_ratio": round(b.size / a.size, 3) if a.size else None,
        "alpha": ALPHA,
        "bootstrap": BOOTSTRAP,
    }


def _evaluate(a: Contender, b: Contender, schema: labels.Schema, path: Path, seed: int) -> dict[str, Any]:
    found = labels.read_labelled(path, schema)
    rows = device_rows(schema, found.rows)
    pa, proba_a = answers(a.model, rows)
    pb, proba_b = answers(b.model, rows)
    out: dict[str, Any] = {"path": str(path), "rows": len(rows), "unlabelled": found.unlabelled}
    if a.task == "classification":
        classes = list(a.model.spec.classes)
        if list(b.model.spec.classes) != classes:
            raise UsageError(f"{a.label} and {b.label} have different classes", "compare models of one table")
        index = {str(c): i for i, c in enumerate(classes)}
        y = np.array([index[str(v)] for v in found.labels])
        n = len(classes)
        ma, mb = _class_metrics(y, pa, proba_a, n), _class_metrics(y, pb, proba_b, n)
        ci = _bootstrap(y, (pa, proba_a), (pb, proba_b), lambda yy, p, pr: _class_metrics(yy, p, pr, n), seed)
        test = mcnemar(pa == y, pb == y)
        primary, higher = "accuracy", True
        out["per_class"] = _per_class(classes, y, pa, pb)
        changed = np.nonzero(pa != pb)[0]
        out["changed_rows"] = {
            "count": len(changed),
            "fixed": int(np.sum((pa != y) & (pb == y))),
            "broken": int(np.sum((pa == y) & (pb != y))),
            "rows": [
                {"row": int(i) + 1, "label": classes[y[i]], "champion": classes[pa[i]], "challenger": classes[pb[i]]}
                for i in changed[:SHOWN_CHANGES]
            ],
        }
    else:
        y = np.array([float(v) for v in found.labels])
        ma, mb = _reg_metrics(y, pa), _reg_metrics(y, pb)
        ci = _bootstrap(y, (pa,), (pb,), _reg_metrics, seed)
        test = wilcoxon(pa - y, pb - y)
        primary, higher = "r2", True
        changed = np.nonzero(~np.isclose(pa, pb))[0]
        out["changed_rows"] = {"count": len(changed), "rows": []}
    out["metrics"] = {
        k: {
            "champion": round(ma[k], 6),
            "challenger": round(mb[k], 6),
            "delta": round(mb[k] - ma[k], 6),
            "ci95": [round(ci[k][0], 6), round(ci[k][1], 6)],
        }
        for k in ma
    }
    out["test"] = test
    out["primary"] = primary
    out["verdict"] = verdict(mb[primary] - ma[primary], ci[primary], test["p_value"], higher)
    out["latency_p50_us"] = {"champion": latency_us(a.model, rows), "challenger": latency_us(b.model, rows)}
    return out


def _per_class(classes: list[Any], y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for c, label in enumerate(classes):
        support = int(np.sum(y == c))

        def recall(p: np.ndarray, c: int = c, support: int = support) -> float | None:
            return None if support == 0 else float(np.sum((p == c) & (y == c)) / support)

        def precision(p: np.ndarray, c: int = c) -> float | None:
            said = int(np.sum(p == c))
            return None if said == 0 else float(np.sum((p == c) & (y == c)) / said)

        ra, rb, qa, qb = recall(pa), recall(pb), precision(pa), precision(pb)
        out.append(
            {
                "class": label,
                "support": support,
                "recall": {"champion": ra, "challenger": rb},
                "precision": {"champion": qa, "challenger": qb},
                "recall_delta": None if ra is None or rb is None else round(rb - ra, 6),
            }
        )
    return out


def evidence_reason(doc: dict[str, Any]) -> str:
    """One line for the registry's history: the verdict and, per file, the primary delta."""
    parts = []
    for s in doc.get("on") or []:
        m = s["metrics"][s["primary"]]
        parts.append(
            f"{Path(s['path']).name}: {s['primary']} {m['delta']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}], "
            f"p={s['test']['p_value']:.2g} ({s['verdict']})"
        )
    return f"compare vs {doc['champion']['label']}: {doc['verdict']} — " + "; ".join(parts)


def attach_evidence(
    ws: Workspace, name: str, version: int, stage: str, evidence: Path, reason: str | None
) -> tuple[str, Path]:
    """Check a comparison is about ``name`` v``version`` as the challenger, keep a copy in
    ``.edgekit/evidence/NAME/``, and return the reason the registry records with it. A
    challenger the comparison found worse is not promoted to production."""
    try:
        doc = json.loads(evidence.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read the evidence {evidence}: {exc}", "give the output of edgekit compare --json"
        ) from None
    if not isinstance(doc, dict) or doc.get("schema") != "edgekit.model_comparison/1":
        raise UsageError(
            f"{evidence} is not a comparison", "write one with: edgekit compare CHAMPION CHALLENGER --json"
        )
    mv = registry.get(ws, name, version)
    challenger = doc.get("challenger") or {}
    if challenger.get("spec") != f"{name}@{version}" and not (mv.run_id and challenger.get("run_id") == mv.run_id):
        raise UsageError(
            f"{evidence} compares {challenger.get('label')!r}, not {name} v{version}",
            f"compare it: edgekit compare CHAMPION {name}@{version} --on … --json",
        )
    if stage == registry.PRODUCTION and doc.get("verdict") == WORSE:
        raise UsageError(
            f"the comparison found {name} v{version} worse than {doc['champion']['label']}",
            "keep the champion; promote only what compares better or not distinguishable",
        )
    folder = ws.state / "evidence" / name
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"v{version}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    kept.write_text(json.dumps(doc, indent=1, sort_keys=True))
    line = evidence_reason(doc) + f" (evidence: {kept.relative_to(ws.root)})"
    return (f"{reason.strip()} — {line}" if reason and reason.strip() else line), kept
