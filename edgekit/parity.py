"""The parity gate: whether the ONNX model is the same model as the fitted estimator.

The device runs only onnxruntime, so the ONNX graph *is* the product: a model whose outputs
differ from the estimator we measured would ship metrics that are not its own.

The parity gate (:func:`check_parity`) runs two sets of rows through both models:

* the holdout rows;
* *boundary* rows: pairs of holdout rows the model labels differently, bisected along the
  segment between them to where the predicted class flips (both sides of the flip), plus
  copies with small noise (1e-3 of each feature's standard deviation). Holdout rows are mostly
  far from any decision boundary; a conversion that moves a boundary shows up here first.
  Regression has no boundary: its extra rows are random points on segments between holdout
  rows, with the same noise.

Classification is judged on the probabilities (max |Δp|, default tolerance 1e-4: on the
bundled data sets a correct float32 conversion differs by at most ~1.4e-6) and the labels; a
label difference on a row whose top two probabilities are within the tolerance is a *tie*
(either label is right there). Regression is judged on max |Δy| divided by the training
target's standard deviation (same tolerance).

Float32
    Devices feed float32 (or float64 where the manifest says so). A row whose *own* sklearn
    output changes when its inputs are rounded to the input dtype, or moved one representable
    step up or down from there, sits within rounding of a decision boundary: a model fed that
    dtype cannot be held to scikit-learn's float64 answer there, so such rows are counted apart
    (``precision_rows``) and excused — on the boundary rows always (they sit on a boundary by
    construction: HistGradientBoosting's float64 thresholds, rounded to float32 by skl2onnx,
    flip 2-7 of 256 of them on breast_cancer and wine), on the holdout while they are rare
    (≤ 1 %). Rounding HGB thresholds down instead of to nearest makes float32-exact inputs
    exact but was worse on real rows (5 of 111 diabetes holdout rows flipped, 0 with nearest),
    so the converter's rounding is kept. More than 1 % of the holdout means the data need
    more precision than float32 gives (epoch timestamps, large offsets):
    :func:`edgekit.convert.convert_checked` then converts again with a float64 input where
    it can, and keeps it if it passes. Tree ensembles are never put behind a scaler (see
    :mod:`edgekit.train`), which is where float32 bites hardest: the float32 graph rounds the
    scaled value differently from scikit-learn's float64 scaler and rows near a split change
    branch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import ConversionError
from edgekit.onnx_model import OnnxModel, feeds, session
from edgekit.train import TrainResult

DEFAULT_TOLERANCE = 1e-4
BOUNDARY_PAIRS = 64  # pairs of holdout rows bisected per parity check
BISECT_STEPS = 20  # the flip is located to 2**-20 of the segment
NOISE = 1e-3  # jitter, in feature standard deviations
MAX_PRECISION_SHARE = 0.01  # precision rows excused up to this share of all rows checked
WORST_ROWS = 5


@dataclass
class ParityReport:
    """The ONNX model (fed as a device feeds it) against the fitted estimator.

    ``max_abs_dp``, ``label_agreement`` and ``ties`` are about the holdout rows, ``boundary_*``
    about the boundary rows (module docstring). For regression ``max_abs_dp`` is max |Δy| divided
    by ``target_scale`` (the training target's std), ``max_abs_dy`` the absolute value, and the
    label fields are 1.0 / 0. ``f32_rows_*``: the estimator on the rows rounded to the input
    dtype vs the ONNX model (reported, not gated: HistGradientBoosting keeps float64 thresholds,
    so rounding only the input moves rows across splits with no conversion fault at all).
    """

    rows: int
    max_abs_dp: float
    label_agreement: float
    tolerance: float
    ok: bool
    ties: int = 0
    f32_rows_max_abs_dp: float = 0.0
    f32_rows_label_agreement: float = 1.0
    task: str = "classification"
    input_dtype: str = "float32"
    layout: str = "tensor"
    boundary_rows: int = 0
    boundary_max_abs_dp: float = 0.0
    boundary_label_agreement: float = 1.0
    boundary_ties: int = 0
    precision_rows: int = 0  # rows whose own sklearn output moves when rounded to the input dtype
    max_abs_dy: float | None = None
    target_scale: float | None = None
    divergent_rows: int = 0
    worst: list[dict[str, Any]] = field(default_factory=list)
    explanation: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a regressor's report has no label fields (they would only say 1.0 / 0)."""
        d = asdict(self)
        if self.task == "regression":
            for key in (
                "label_agreement",
                "ties",
                "f32_rows_label_agreement",
                "boundary_label_agreement",
                "boundary_ties",
            ):
                d.pop(key, None)
        return d


def _round_to_input(X: np.ndarray, model: OnnxModel, step: int = 0) -> np.ndarray:
    """Rows as the model receives them: numeric values rounded to the input dtype, then moved
    ``step`` representable values up (+1) or down (-1)."""
    dtype = np.float32 if model.layout == "columns" or model.input_dtype == "float32" else np.float64

    def rounded(col: np.ndarray) -> np.ndarray:
        r = np.asarray(col, dtype=np.float64).astype(dtype)
        if step:
            r = np.nextafter(r, dtype(np.inf) if step > 0 else dtype(-np.inf))
        return r.astype(np.float64)

    if X.dtype != object:
        return rounded(X)
    out = X.copy()
    for j, kind in enumerate(model.feature_types):
        if kind == "numeric":
            out[:, j] = rounded(X[:, j])
    return out


def _numeric_std(result: TrainResult) -> np.ndarray:
    X = result.X_train
    stds = np.zeros(X.shape[1])
    for j, f in enumerate(result.features or []):
        if f.type == "numeric":
            col = np.asarray(X[:, j], dtype=np.float64)
            s = float(np.nanstd(col)) if np.isfinite(col).any() else 0.0
            stds[j] = s if s > 0 else 1.0
    if not result.features:
        stds = np.nanstd(np.asarray(X, dtype=np.float64), axis=0)
        stds[~(stds > 0)] = 1.0
    return stds


def _interpolate(a: np.ndarray, b: np.ndarray, t: np.ndarray, numeric: list[int]) -> np.ndarray:
    """Rows a + t (b - a) on the numeric columns; every other column (categorical) from ``a``.
    A column missing at either end stays as in ``a``."""
    out = a.copy()
    for j in numeric:
        aj = np.asarray(a[:, j], dtype=np.float64)
        bj = np.asarray(b[:, j], dtype=np.float64)
        val = aj + t * (bj - aj)
        out[:, j] = np.where(np.isnan(bj), aj, val)
    return out


def boundary_rows(result: TrainResult, pairs: int = BOUNDARY_PAIRS, seed: int = 0) -> np.ndarray:
    """Rows near the model's decision boundaries (see the module docstring); shaped like X_test."""
    X = result.X_test
    n = X.shape[0]
    if n < 2:
        return X[:0]
    rng = np.random.default_rng(seed)
    numeric = (
        [j for j, f in enumerate(result.features) if f.type == "numeric"]
        if result.features
        else list(range(X.shape[1]))
    )
    std = _numeric_std(result)
    est = result.estimator
    i = rng.integers(0, n, size=pairs * 8)
    j = rng.integers(0, n, size=pairs * 8)
    a, b = X[i], X[j]
    if result.task == "classification":
        la = est.predict(a)
        lb = est.predict(_interpolate(a, b, np.ones(len(a)), numeric))
        keep = np.flatnonzero(la != lb)[:pairs]
        if keep.size == 0:
            return X[:0]
        a, b, la = a[keep], b[keep], la[keep]
        lo = np.zeros(len(a))
        hi = np.ones(len(a))
        for _ in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            same = est.predict(_interpolate(a, b, mid, numeric)) == la
            lo = np.where(same, mid, lo)
            hi = np.where(same, hi, mid)
        anchors = [_interpolate(a, b, lo, numeric), _interpolate(a, b, hi, numeric)]
        centre = _interpolate(a, b, (lo + hi) / 2, numeric)
    else:
        keep = np.arange(min(pairs, len(a)))
        a, b = a[keep], b[keep]
        anchors = [_interpolate(a, b, rng.uniform(0, 1, len(a)), numeric)]
        centre = _interpolate(a, b, rng.uniform(0, 1, len(a)), numeric)
    noisy = []
    for _ in range(2):
        row = centre.copy()
        for c in numeric:
            col = np.asarray(row[:, c], dtype=np.float64)
            row[:, c] = col + rng.normal(0.0, NOISE * std[c], size=len(col))
        noisy.append(row)
    return np.concatenate([*anchors, *noisy])


@dataclass
class _Comparison:
    rows: int
    max_abs: float
    agreement: float
    ties: int
    precision: int
    divergent: np.ndarray  # row indices
    abs_diff: np.ndarray
    expected: list[Any]
    got: list[Any]
    f32_max_abs: float
    f32_agreement: float
    max_abs_dy: float | None = None


def _compare(result: TrainResult, model: OnnxModel, X: np.ndarray, tolerance: float) -> _Comparison:
    sess = session(model.data)
    est = result.estimator
    X_in = _round_to_input(X, model)
    inputs = feeds(model, X)
    if result.task == "classification":
        assert model.proba_output is not None
        labels, proba = sess.run([model.label_output, model.proba_output], inputs)
        onnx_labels = np.asarray(labels).reshape(-1).tolist()
        got_p = np.asarray(proba, dtype=np.float64)
        ref_p = est.predict_proba(X)
        ref_l = est.predict(X).tolist()
        ref32_p = est.predict_proba(X_in)
        ref32_l = est.predict(X_in).tolist()
        # A row within one input-dtype step of a decision boundary: no model fed that dtype
        # can be held to scikit-learn's float64 answer there.
        moved = np.zeros(len(ref_l), dtype=bool)
        for step in (0, 1, -1):
            near_p = ref32_p if step == 0 else est.predict_proba(_round_to_input(X, model, step))
            near_l = est.predict(X_in).tolist() if step == 0 else est.classes_[np.argmax(near_p, axis=1)].tolist()
            moved |= (np.abs(near_p - ref_p).max(axis=1) > tolerance) | np.array(
                [x != y for x, y in zip(near_l, ref_l, strict=True)], dtype=bool
            )
        diff = np.abs(got_p - ref_p).max(axis=1)
        differs = np.array([x != y for x, y in zip(onnx_labels, ref_l, strict=True)], dtype=bool)
        top2 = np.sort(ref_p, axis=1)[:, -2:]
        tie = differs & ((top2[:, 1] - top2[:, 0]) <= tolerance)
        bad = (diff > tolerance) | (differs & ~tie)
        divergent = np.flatnonzero(bad & ~moved)
        precision = int(np.sum(bad & moved))
        clean = ~(bad & moved)
        f32_agree = float(np.mean([x == y for x, y in zip(onnx_labels, ref32_l, strict=True)])) if X.shape[0] else 1.0
        return _Comparison(
            rows=X.shape[0],
            max_abs=float(diff[clean].max()) if clean.any() else 0.0,
            agreement=1.0 - float(np.mean(differs)) if X.shape[0] else 1.0,
            ties=int(np.sum(tie & clean)),
            precision=precision,
            divergent=divergent,
            abs_diff=diff,
            expected=[_pair(ref_l[k], ref_p[k]) for k in range(len(ref_l))],
            got=[_pair(onnx_labels[k], got_p[k]) for k in range(len(onnx_labels))],
            f32_max_abs=float(np.abs(got_p - ref32_p).max()) if X.shape[0] else 0.0,
            f32_agreement=f32_agree,
        )
    (out,) = sess.run([model.label_output], inputs)
    got = np.asarray(out, dtype=np.float64).reshape(-1)
    ref = np.asarray(est.predict(X), dtype=np.float64).reshape(-1)
    ref32 = np.asarray(est.predict(X_in), dtype=np.float64).reshape(-1)
    scale = result.target_scale
    dy = np.abs(got - ref)
    rel = dy / scale
    bad = rel > tolerance
    moved = np.abs(ref32 - ref) / scale > tolerance
    for step in (1, -1):
        near = np.asarray(est.predict(_round_to_input(X, model, step)), dtype=np.float64).reshape(-1)
        moved |= np.abs(near - ref) / scale > tolerance
    clean = ~(bad & moved)
    return _Comparison(
        rows=X.shape[0],
        max_abs=float(rel[clean].max()) if clean.any() else 0.0,
        agreement=1.0,
        ties=0,
        precision=int(np.sum(bad & moved)),
        divergent=np.flatnonzero(bad & ~moved),
        abs_diff=rel,
        expected=[float(v) for v in ref],
        got=[float(v) for v in got],
        f32_max_abs=float((np.abs(got - ref32) / scale).max()) if X.shape[0] else 0.0,
        f32_agreement=1.0,
        max_abs_dy=float(dy[clean].max()) if clean.any() else 0.0,
    )


def _pair(label: Any, proba: np.ndarray) -> dict[str, Any]:
    value = label.item() if isinstance(label, np.generic) else label
    return {"label": value, "p_max": round(float(np.max(proba)), 6)}


def check_parity(
    result: TrainResult, model: OnnxModel, tolerance: float = DEFAULT_TOLERANCE, boundary: bool = True
) -> ParityReport:
    """Run the holdout rows and the boundary rows through onnxruntime (fed as a device feeds
    the model) and through the estimator; see the module docstring for the rules."""
    hold = _compare(result, model, result.X_test, tolerance)
    extra = boundary_rows(result, seed=result.seed) if boundary else result.X_test[:0]
    bnd = _compare(result, model, extra, tolerance) if extra.shape[0] else None
    precision = hold.precision + (bnd.precision if bnd else 0)
    divergent = len(hold.divergent) + (len(bnd.divergent) if bnd else 0)
    # Boundary rows sit at a boundary by construction, so their precision rows are expected;
    # the share that matters is the holdout's (rows like the ones a device will see).
    ok = divergent == 0 and hold.precision <= MAX_PRECISION_SHARE * hold.rows
    worst = _worst("holdout", hold) + (_worst("boundary", bnd) if bnd else [])
    worst = sorted(worst, key=lambda w: -w["diff"])[:WORST_ROWS]
    report = ParityReport(
        rows=hold.rows,
        max_abs_dp=hold.max_abs,
        label_agreement=hold.agreement,
        tolerance=tolerance,
        ok=ok,
        ties=hold.ties,
        f32_rows_max_abs_dp=hold.f32_max_abs,
        f32_rows_label_agreement=hold.f32_agreement,
        task=result.task,
        input_dtype=model.input_dtype,
        layout=model.layout,
        boundary_rows=bnd.rows if bnd else 0,
        boundary_max_abs_dp=bnd.max_abs if bnd else 0.0,
        boundary_label_agreement=bnd.agreement if bnd else 1.0,
        boundary_ties=bnd.ties if bnd else 0,
        precision_rows=precision,
        max_abs_dy=hold.max_abs_dy if result.task == "regression" else None,
        target_scale=result.target_scale if result.task == "regression" else None,
        divergent_rows=divergent,
        worst=worst,
    )
    if not ok:
        report.explanation = _explain(result, model, report, hold, bnd)
    return report


def _worst(kind: str, cmp: _Comparison | None) -> list[dict[str, Any]]:
    if cmp is None or not cmp.rows:
        return []
    idx = np.argsort(-cmp.abs_diff)[:WORST_ROWS]
    return [
        {
            "set": kind,
            "row": int(k),
            "diff": float(cmp.abs_diff[k]),
            "expected": cmp.expected[k],
            "got": cmp.got[k],
            "divergent": bool(k in set(cmp.divergent.tolist())),
        }
        for k in idx
        if cmp.abs_diff[k] > 0
    ]


def precision_loss(result: TrainResult, dtype: str = "float32") -> dict[str, float]:
    """Per numeric feature: the largest change rounding its training values to ``dtype`` makes,
    in units of the feature's standard deviation (only features where it exceeds 1e-6)."""
    if dtype == "float64":
        return {}
    X = result.X_train
    out: dict[str, float] = {}
    std = _numeric_std(result)
    feats = result.features or []
    for j in range(X.shape[1]):
        if feats and feats[j].type != "numeric":
            continue
        col = np.asarray(X[:, j], dtype=np.float64)
        col = col[np.isfinite(col)]
        if not col.size:
            continue
        loss = float(np.max(np.abs(col.astype(np.float32).astype(np.float64) - col)) / std[j])
        if loss > 1e-6:
            out[feats[j].name if feats else f"column {j}"] = loss
    return out


def _explain(
    result: TrainResult, model: OnnxModel, report: ParityReport, hold: _Comparison, bnd: _Comparison | None
) -> str:
    what = "max |Δp|" if result.task == "classification" else "max |Δy| / target std"
    parts = [
        f"{len(hold.divergent)} of {hold.rows} holdout rows"
        + (f" and {len(bnd.divergent)} of {bnd.rows} boundary rows" if bnd else "")
        + f" diverge ({what} {max(report.max_abs_dp, report.boundary_max_abs_dp):.3g}, "
        f"tolerance {report.tolerance:g})"
    ]
    if hold.precision > MAX_PRECISION_SHARE * hold.rows:
        parts.append(
            f"{hold.precision} of {hold.rows} holdout rows sit within {model.input_dtype} rounding of a decision "
            f"boundary (more than {MAX_PRECISION_SHARE:.0%}): the data need more precision than the input gives"
        )
    shown = [w for w in report.worst if w["divergent"]][:3] or report.worst[:3]
    if shown:
        parts.append(
            "worst: "
            + "; ".join(f"{w['set']} row {w['row']}: sklearn {w['expected']} vs onnx {w['got']}" for w in shown)
        )
    steps = [type(step).__name__ for _, step in result.estimator.steps]
    if "StandardScaler" in steps and result.model in ("rf", "et", "hgb"):
        parts.append(
            "a scaler sits in front of a tree ensemble: the float32 graph rounds the scaled values differently "
            "from scikit-learn's float64 scaler and rows near a split change branch; trees need no scaler, drop it"
        )
    lossy = precision_loss(result, model.input_dtype)
    if lossy:
        top = sorted(lossy.items(), key=lambda kv: -kv[1])[:3]
        parts.append(
            f"{model.input_dtype} inputs lose precision on "
            + ", ".join(f"'{name}' ({loss:.2g} std)" for name, loss in top)
            + ": subtract an offset or rescale those columns"
        )
    if result.task == "regression":
        y = np.asarray(result.y_train, dtype=np.float64)
        if abs(float(y.mean())) > 1e4 * result.target_scale:
            parts.append("the target's offset is large next to its spread: float32 outputs cannot resolve it")
    return "; ".join(parts)


def require_parity(report: ParityReport) -> None:
    """The parity gate: refuse to go on with an ONNX model that is not the measured model."""
    if report.ok:
        return
    what = "max |Δp|" if report.task == "classification" else "max |Δy|/std"
    detail = report.explanation or (
        f"{what} {report.max_abs_dp:.3g} (tolerance {report.tolerance:g}), "
        f"label agreement {report.label_agreement:.2%} ({report.ties} at near-ties)"
    )
    raise ConversionError(
        f"the ONNX model diverges from the scikit-learn model on {report.rows} holdout rows"
        + (f" and {report.boundary_rows} boundary rows" if report.boundary_rows else "")
        + f": {detail}",
        "this is a conversion bug, do not ship the model: try another model family, "
        "or report it with the skl2onnx and onnxruntime versions",
    )
