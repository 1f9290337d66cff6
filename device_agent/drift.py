"""Reference statistics (the bundle's ``reference.json``) and streaming drift windows.

The host builds the reference from training data (``edgekit.reference``); the device
keeps a :class:`DriftWindow` per active model, feeds it every served batch and publishes
:meth:`DriftWindow.report` once per window. This module is the single definition of both
the file format and the maths, so host and device can never disagree about a bin.

Binning
    One rule everywhere: ``bin = np.searchsorted(edges, x, side="right")``, i.e. the number
    of edges ``<= x``. A value equal to an edge belongs to the bin *above* it. NaN is never
    binned and never dropped: it is counted as ``missing``. Values below the reference
    minimum or above its maximum still land in the end bins *and* are counted in
    ``out_of_range``, so a sensor stuck past its calibrated range is visible even when the
    end bin's share barely moves. ``count``/``mean``/``m2`` cover finite values only:
    +-inf is binned and out of range, but one infinity would poison a window's mean.

Why raw counts
    A report carries counts per bin and Welford (count, mean, M2) per feature. Counts merge
    by addition across windows and devices, and Welford triples merge exactly
    (:func:`welford_merge`); PSI and JS do not merge, so they are only derived views.

Verdict rules (``report``)
    * Fewer than ``min_rows`` rows: verdict ``"insufficient"`` and no feature is flagged;
      a handful of rows says nothing and alert fatigue is how drift monitoring dies.
    * Multiple testing is controlled with Bonferroni over the F features: per-feature
      ``alpha/F`` and a two-sided z threshold ``inv_cdf(1 - alpha/(2F))`` (shipped as
      ``thresholds.z``). Each feature faces two tests (PSI and mean z, three with the
      missing-value test), each at ``alpha/F``, so the family-wise false-alarm rate is up
      to about ``2 * alpha``: measured 1.4-3.1 % (mean 1.9 %) per window at ``alpha = 0.01``
      over ten seeded 2,000-row N(0, 1) references with 5 features.
    * The reference is itself a sample of ``reference.n`` rows, so a window is compared
      with *estimates*; ignoring that pushed the false-alarm rate of 200-row windows against
      a 2,000-row reference from the nominal 1-2 % to ~4.5 %. Both tests account for it:
      the z-score is the two-sample one and PSI thresholds carry the factor
      ``1 + m/reference.n`` (:func:`reference_factor`).
    * A feature drifts when any of these holds:
        - its PSI (over non-missing values) exceeds its PSI threshold;
        - ``|z| > z_threshold`` with
          ``z = (window mean - ref mean) / (ref std * sqrt(1/count + 1/reference.n))``;
        - its missing count is significantly above the reference missing rate: a one-sided
          binomial z ``(missing - n*r) / sqrt(n*r*(1-r)) > z_threshold``. ``r`` is floored
          at half an observation of the reference (``0.5 / reference.n``) so that a
          reference without any NaN does not divide by zero; then a single NaN is already
          significant, which is the honest answer for a column that never had one;
        - the feature was constant in the reference (std 0) and some window value differs
          from that constant (the z-score is infinite; it is reported as ``None``).
      Missing values are never silently dropped before testing (dropping them is how a
      20 % NaN injection goes unnoticed).
    * PSI threshold for a feature whose window has ``m`` non-missing values: the shipped
      threshold when ``m == thresholds.window`` (the host bootstrapped it for exactly that
      size). Otherwise the device redoes the same calibration for ``m``: the
      ``1 - alpha/F`` quantile of PSI over seeded multinomial draws from the reference
      proportions (:func:`null_psi_quantile`, in distribution the host's bootstrap),
      floored by ``psi_threshold(m, bins, alpha/F)`` and times ``1 + m/reference.n``.
      Neither shortcut holds up: n*PSI is not chi-square below ~150 rows, and scaling the
      shipped 200-row threshold by ``200/m`` false-alarmed on 26 % of 50-row windows.
    * Prediction drift: PSI of the predicted-class counts against the reference class
      proportions above ``thresholds.prediction_psi`` (same window-size rule, with
      ``alpha`` rather than ``alpha/F``: it is one test). It is reported but does not by
      itself make the verdict: the prediction mix moves with the input mix, and when the
      inputs did not move it usually means the population of cases changed, not the model.
      Concept drift (the same inputs now deserving other labels) is invisible to every
      statistic here; only labelled feedback can see it.
    * Verdict ``"drift"`` when any feature drifted, else ``"ok"``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError

FORMAT = 1
MAX_EDGES = 9  # per feature: at most 10 bins, enough for deciles, few enough for small windows
MAX_CONFIDENCE_EDGES = 63
MAX_CATEGORIES = 20  # per categorical feature: the top categories by frequency, plus "other"
PROPORTION_TOLERANCE = 1e-6  # proportions written as JSON floats must sum to 1 within this
PSI_EPS = 1e-4  # floor for empty bins; without it one empty bin makes PSI infinite

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
JsonScalar = str | int | float | bool


# ---------------------------------------------------------------------------------------
# Pure statistics


def bin_index(edges: Sequence[float] | FloatArray, x: npt.ArrayLike) -> IntArray:
    """The binning rule, written once: number of edges ``<= x`` (NaN gives the top bin;
    callers mask NaN out first)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(x, dtype=np.float64), side="right")


def psi_rows(ref_props: npt.ArrayLike, counts: npt.ArrayLike, eps: float = PSI_EPS) -> FloatArray:
    """:func:`psi` of every row of a (k, bins) count matrix at once (bootstrap and null
    simulation use it, so the calibrated thresholds and the reported values share one formula)."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n = c.sum(axis=1, keepdims=True)
    q = np.maximum(c / np.maximum(n, 1.0), eps)
    p = np.maximum(np.asarray(ref_props, dtype=np.float64), eps)
    out: FloatArray = np.where(n[:, 0] > 0, np.sum((q - p) * np.log(q / p), axis=1), 0.0)
    return out


def psi(ref_props: npt.ArrayLike, counts: npt.ArrayLike, eps: float = PSI_EPS) -> float:
    """Population stability index of observed ``counts`` against reference proportions.

    ``q = max(counts/n, eps)``, ``p = max(ref, eps)``, ``PSI = sum((q - p) * ln(q / p))``.
    The floor keeps empty bins finite; it is applied without renormalising, which is the
    common convention and what the thresholds were calibrated with. No rows give 0.0
    (no evidence of drift, and the verdict rules require ``min_rows`` anyway).
    """
    return float(psi_rows(ref_props, np.asarray(counts, dtype=np.float64).reshape(1, -1), eps)[0])


def _js_terms(a: FloatArray, b: FloatArray) -> FloatArray:
    """Elementwise ``a * ln(a/m)`` with ``m = (a+b)/2`` and ``0 * log 0 = 0``.

    Near agreement it uses ``a/m = 1 + (a-b)/(a+b)`` and ``log1p``: the textbook
    ``log(a/m)`` rounds to noise of ~1e-16 there, which the square root of the divergence
    turns into a spurious distance of ~1e-8 (this form gives exactly 0 for identical
    distributions). Far from agreement ``log1p`` would lose ``a`` against ``b`` entirely, so
    it uses ``log(2a) - log(a+b)``, which also never halves a subnormal ``a`` to zero.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        s = a + b
        r = (a - b) / s
        log_ratio = np.where(np.abs(r) < 0.5, np.log1p(r), np.log(2.0 * a) - np.log(s))
        out: FloatArray = np.where(a > 0.0, a * log_ratio, 0.0)
    return out


def js_rows(ref_props: npt.ArrayLike, counts: npt.ArrayLike) -> FloatArray:
    """:func:`js_distance` of every row of a (k, bins) count matrix at once."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n = c.sum(axis=1, keepdims=True)
    p = np.asarray(ref_props, dtype=np.float64)
    total = p.sum(axis=-1, keepdims=True)
    q = c / np.maximum(n, 1.0)
    p = p / np.where(total > 0.0, total, 1.0)
    jsd = 0.5 * (_js_terms(p, q).sum(axis=-1) + _js_terms(q, p).sum(axis=-1)) / math.log(2.0)
    ok = (n[:, 0] > 0.0) & (total.reshape(-1) > 0.0)
    out: FloatArray = np.where(ok, np.sqrt(np.clip(jsd, 0.0, 1.0)), 0.0)
    return out


def js_distance(ref_props: npt.ArrayLike, counts: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (square root of the base-2 divergence, so in [0, 1]).

    Unlike PSI it needs no floor (``0 * log 0 = 0``) and is bounded, which makes it the
    easier number to put on a dashboard. Both inputs are normalised to sum to 1; no rows
    give 0.0.
    """
    return float(js_rows(ref_props, np.asarray(counts, dtype=np.float64).reshape(1, -1))[0])


def chi2_quantile(p: float, df: float) -> float:
    """Chi-square quantile by the Wilson-Hilferty cube approximation: stdlib only (no scipy
    on the device), within 2.5 % of the exact value for df >= 2 at the 0.99-0.999 quantiles
    (0.2 % at df = 9, p = 0.99) and erring high, i.e. towards fewer false alarms."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        return 0.0
    z = NormalDist().inv_cdf(p)
    k = 2.0 / (9.0 * df)
    return float(df * max(1.0 - k + z * math.sqrt(k), 0.0) ** 3)


def psi_threshold(n: int, bins: int, alpha: float) -> float:
    """Null (1 - alpha) quantile of PSI over ``bins`` bins for ``n`` rows: with no drift,
    n*PSI is roughly chi-square(bins - 1). Good for n >= 150; use bootstrap below."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return chi2_quantile(1.0 - alpha, bins - 1) / n


def reference_factor(n: int, n_ref: int) -> float:
    """How much the reference's own sampling error inflates the null spread of a window
    statistic: the window is compared with proportions and a mean *estimated* from
    ``n_ref`` rows, so squared deviations grow by ``1 + n/n_ref`` (about 10 % for a
    200-row window against 2,000 reference rows, which otherwise pushes the false-alarm
    rate well past the nominal one)."""
    return 1.0 + n / n_ref


@functools.lru_cache(maxsize=256)
def null_psi_quantile(props: tuple[float, ...], n: int, q: float, draws: int = 2000) -> float:
    """The ``q`` quantile of PSI for ``n`` rows drawn from the reference proportions
    themselves, by seeded simulation (deterministic per ``n``).

    Below ~150 rows n*PSI is far from chi-square: the eps floor makes every empty bin cost
    ~0.7, so the tail is heavy (at 50 rows the 99.8 % point is about twice the chi-square
    one). Multinomial draws from the reference proportions are in distribution exactly the
    host's bootstrap from the training rows, so the device can calibrate a window size the
    bundle did not ship. Cached: a report pays ~1 ms per distinct (proportions, n).
    """
    p = np.asarray(props, dtype=np.float64)
    rng = np.random.default_rng(n)
    counts = rng.multinomial(n, p / p.sum(), size=draws)
    return float(np.quantile(psi_rows(p, counts), q))


Welford = tuple[int, float, float]


def welford_merge(a: Welford, b: Welford) -> Welford:
    """Merge two (count, mean, M2) summaries exactly (Chan et al.); the variance of the
    union is ``M2 / count``. This is why devices ship M2 rather than a variance."""
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    if n == 0:
        return (0, 0.0, 0.0)
    if na == 0:
        return (nb, mb, m2b)
    if nb == 0:
        return (na, ma, m2a)
    delta = mb - ma
    return (n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)


# ---------------------------------------------------------------------------------------
# The reference format


def _where(what: str, key: str) -> str:
    return f"{what}.{key}" if what else key


def _get(obj: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"reference: {_where(what, key)} is missing")
    return obj[key]


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"reference: {what} must be an object")
    return value


def _num(value: Any, what: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"reference: {what} must be a number")
    out = float(value)
    if not math.isfinite(out):
        raise ProtocolError(f"reference: {what} must be finite, got {value!r}")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ProtocolError(f"reference: {what} = {out} is outside [{lo}, {hi}]")
    return out


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(f"reference: {what} must be an integer >= {minimum}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"reference: {what} must be a non-empty string")
    return value


def _nums(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ProtocolError(f"reference: {what} must be a list of numbers")
    return tuple(_num(v, f"{what}[{i}]") for i, v in enumerate(value))


def _edges(value: Any, what: str, max_edges: int) -> tuple[float, ...]:
    edges = _nums(value, what)
    if len(edges) > max_edges:
        raise ProtocolError(f"reference: {what} has {len(edges)} edges, at most {max_edges} allowed")
    for i in range(1, len(edges)):
        if not edges[i] > edges[i - 1]:
            raise ProtocolError(f"reference: {what} must be strictly increasing (at index {i})")
    return edges


def _proportions(value: Any, what: str, length: int) -> tuple[float, ...]:
    props = _nums(value, what)
    if len(props) != length:
        raise ProtocolError(f"reference: {what} has {len(props)} entries, expected {length}")
    if any(p < 0.0 or p > 1.0 for p in props):
        raise ProtocolError(f"reference: {what} entries must be in [0, 1]")
    if abs(math.fsum(props) - 1.0) > PROPORTION_TOLERANCE:
        raise ProtocolError(f"reference: {what} sums to {math.fsum(props)!r}, not 1")
    return props


@dataclass(frozen=True)
class FeatureRef:
    """Reference statistics of one numeric feature (non-missing values only, except
    ``missing_rate``)."""

    name: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    mean: float
    std: float
    min: float
    max: float
    missing_rate: float

    kind = "numeric"

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @classmethod
    def from_json(cls, obj: Any, what: str) -> FeatureRef:
        o = _obj(obj, what)
        name = _str(_get(o, "name", what), f"{what}.name")
        kind = _get(o, "kind", what)
        if kind != "numeric":
            raise ProtocolError(f"reference: {what}.kind {kind!r} is not 'numeric'")
        edges = _edges(_get(o, "edges", what), f"{what}.edges", MAX_EDGES)
        props = _proportions(_get(o, "proportions", what), f"{what}.proportions", len(edges) + 1)
        lo = _num(_get(o, "min", what), f"{what}.min")
        hi = _num(_get(o, "max", what), f"{what}.max")
        if lo > hi:
            raise ProtocolError(f"reference: {what}.min {lo} is above max {hi}")
        return cls(
            name=name,
            edges=edges,
            proportions=props,
            mean=_num(_get(o, "mean", what), f"{what}.mean"),
            std=_num(_get(o, "std", what), f"{what}.std", lo=0.0),
            min=lo,
            max=hi,
            missing_rate=_num(_get(o, "missing_rate", what), f"{what}.missing_rate", 0.0, 1.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "missing_rate": self.missing_rate,
        }


@dataclass(frozen=True)
class CategoricalRef:
    """Reference statistics of one categorical feature: its most frequent categories (at most
    :data:`MAX_CATEGORIES`) and their shares of the non-missing values, plus one last share for
    every other value ("other": rarer training categories, and on the device categories never
    seen in training). Bin ``i`` is ``categories[i]``; bin ``len(categories)`` is "other"."""

    name: str
    categories: tuple[str, ...]
    proportions: tuple[float, ...]
    missing_rate: float

    kind = "categorical"

    @property
    def bins(self) -> int:
        return len(self.categories) + 1

    @classmethod
    def from_json(cls, obj: Any, what: str) -> CategoricalRef:
        o = _obj(obj, what)
        name = _str(_get(o, "name", what), f"{what}.name")
        raw = _get(o, "categories", what)
        if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
            raise ProtocolError(f"reference: {what}.categories must be a list of strings")
        if len(raw) > MAX_CATEGORIES:
            raise ProtocolError(f"reference: {what}.categories has {len(raw)} entries, at most {MAX_CATEGORIES}")
        if len(set(raw)) != len(raw):
            raise ProtocolError(f"reference: {what}.categories has duplicates")
        props = _proportions(_get(o, "proportions", what), f"{what}.proportions", len(raw) + 1)
        return cls(
            name=name,
            categories=tuple(raw),
            proportions=props,
            missing_rate=_num(_get(o, "missing_rate", what), f"{what}.missing_rate", 0.0, 1.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "categories": list(self.categories),
            "proportions": list(self.proportions),
            "missing_rate": self.missing_rate,
        }


AnyFeatureRef = FeatureRef | CategoricalRef


def feature_from_json(obj: Any, what: str) -> AnyFeatureRef:
    """A feature's reference statistics, by its ``kind``."""
    kind = _get(_obj(obj, what), "kind", what)
    if kind == "numeric":
        return FeatureRef.from_json(obj, what)
    if kind == "categorical":
        return CategoricalRef.from_json(obj, what)
    raise ProtocolError(f"reference: {what}.kind {kind!r} is not supported (only 'numeric', 'categorical')")


@dataclass(frozen=True)
class PredictionRef:
    """Distribution of out-of-fold predictions: predicted classes (``kind = "classes"``,
    ``labels``) or, for a regressor, predicted values in bins (``kind = "bins"``, ``edges``
    with the binning rule of the features)."""

    labels: tuple[JsonScalar, ...]
    proportions: tuple[float, ...]
    kind: str = "classes"
    edges: tuple[float, ...] = ()

    @property
    def bins(self) -> int:
        return len(self.proportions)

    @classmethod
    def from_json(cls, obj: Any, what: str = "prediction") -> PredictionRef:
        o = _obj(obj, what)
        kind = _get(o, "kind", what)
        if kind == "bins":
            edges = _edges(_get(o, "edges", what), f"{what}.edges", MAX_EDGES)
            props = _proportions(_get(o, "proportions", what), f"{what}.proportions", len(edges) + 1)
            return cls(labels=(), proportions=props, kind="bins", edges=edges)
        if kind != "classes":
            raise ProtocolError(f"reference: {what}.kind {kind!r} is not supported (only 'classes', 'bins')")
        raw = _get(o, "labels", what)
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(f"reference: {what}.labels must be a non-empty list")
        labels: list[JsonScalar] = []
        for i, label in enumerate(raw):
            if not isinstance(label, str | int | float) or (isinstance(label, float) and not math.isfinite(label)):
                raise ProtocolError(f"reference: {what}.labels[{i}] must be a finite JSON scalar")
            labels.append(label)
        if len({(type(v).__name__, v) for v in labels}) != len(labels):
            raise ProtocolError(f"reference: {what}.labels has duplicates")
        props = _proportions(_get(o, "proportions", what), f"{what}.proportions", len(labels))
        return cls(labels=tuple(labels), proportions=props)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "bins":
            return {"kind": "bins", "edges": list(self.edges), "proportions": list(self.proportions)}
        return {"kind": "classes", "labels": list(self.labels), "proportions": list(self.proportions)}


@dataclass(frozen=True)
class ConfidenceRef:
    """Distribution of the max class probability, from out-of-fold predictions
    (training-set predictions are over-confident and would look like drift)."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    mean: float

    @classmethod
    def from_json(cls, obj: Any, what: str = "confidence") -> ConfidenceRef:
        o = _obj(obj, what)
        edges = _edges(_get(o, "edges", what), f"{what}.edges", MAX_CONFIDENCE_EDGES)
        props = _proportions(_get(o, "proportions", what), f"{what}.proportions", len(edges) + 1)
        return cls(edges=edges, proportions=props, mean=_num(_get(o, "mean", what), f"{what}.mean", 0.0, 1.0))

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "proportions": list(self.proportions), "mean": self.mean}


@dataclass(frozen=True)
class Thresholds:
    """Thresholds calibrated on the host for windows of ``window`` rows."""

    window: int
    psi: Mapping[str, float]
    prediction_psi: float
    z: float

    @classmethod
    def from_json(cls, obj: Any, names: Sequence[str], what: str = "thresholds") -> Thresholds:
        o = _obj(obj, what)
        window = _int(_get(o, "window", what), f"{what}.window", 1)
        raw = _obj(_get(o, "psi", what), f"{what}.psi")
        if set(raw) != set(names):
            missing = sorted(set(names) - set(raw))
            extra = sorted(set(raw) - set(names))
            raise ProtocolError(
                f"reference: {what}.psi must have one entry per feature (missing {missing}, unknown {extra})"
            )
        psi_t = {name: _num(raw[name], f"{what}.psi[{name!r}]", lo=0.0) for name in names}
        return cls(
            window=window,
            psi=psi_t,
            prediction_psi=_num(_get(o, "prediction_psi", what), f"{what}.prediction_psi", lo=0.0),
            z=_num(_get(o, "z", what), f"{what}.z", lo=0.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "psi": dict(self.psi), "prediction_psi": self.prediction_psi, "z": self.z}


@dataclass(frozen=True)
class Reference:
    """The parsed, validated ``reference.json``. Build it only through :meth:`from_json`,
    so every instance on a device has passed the same checks."""

    n: int
    alpha: float
    features: tuple[AnyFeatureRef, ...]
    prediction: PredictionRef
    confidence: ConfidenceRef | None  # None for a regressor (prediction kind "bins")
    thresholds: Thresholds

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def category_codes(self) -> list[dict[str, float] | None]:
        """Per feature, in order: for a categorical one the code of each reference category
        (its index in ``categories``; any other value codes as ``len(categories)``, missing as
        NaN), ``None`` for a numeric one. What :meth:`DriftWindow.update` expects in the
        categorical columns of its float matrix."""
        return [
            {c: float(i) for i, c in enumerate(f.categories)} if isinstance(f, CategoricalRef) else None
            for f in self.features
        ]

    @classmethod
    def from_json(cls, obj: Any) -> Reference:
        """Validate every field or raise :class:`ProtocolError` naming the first bad one.

        Unknown keys are ignored: the file sits inside a signed bundle, and ``format``
        changes whenever a new field would change what the device must do.
        """
        o = _obj(obj, "reference.json")
        fmt = _get(o, "format", "")
        if isinstance(fmt, bool) or fmt != FORMAT:
            raise ProtocolError(f"reference: format {fmt!r} is not supported (expected {FORMAT})")
        n = _int(_get(o, "n", ""), "n", 1)
        alpha = _num(_get(o, "alpha", ""), "alpha")
        if not 0.0 < alpha < 1.0:
            raise ProtocolError(f"reference: alpha must be in (0, 1), got {alpha}")
        raw = _get(o, "features", "")
        if not isinstance(raw, list) or not raw:
            raise ProtocolError("reference: features must be a non-empty list")
        features = tuple(feature_from_json(f, f"features[{i}]") for i, f in enumerate(raw))
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ProtocolError("reference: feature names must be unique")
        prediction = PredictionRef.from_json(_get(o, "prediction", ""))
        raw_conf = _get(o, "confidence", "")
        if prediction.kind == "bins":
            if raw_conf is not None:
                raise ProtocolError("reference: confidence must be null for a regressor (prediction kind 'bins')")
            confidence = None
        else:
            confidence = ConfidenceRef.from_json(raw_conf)
        return cls(
            n=n,
            alpha=alpha,
            features=features,
            prediction=prediction,
            confidence=confidence,
            thresholds=Thresholds.from_json(_get(o, "thresholds", ""), names),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "n": self.n,
            "alpha": self.alpha,
            "features": [f.to_json() for f in self.features],
            "prediction": self.prediction.to_json(),
            "confidence": self.confidence.to_json() if self.confidence is not None else None,
            "thresholds": self.thresholds.to_json(),
        }


# ---------------------------------------------------------------------------------------
# The streaming window


def _opt(value: float) -> float | None:
    return value if math.isfinite(value) else None


class DriftWindow:
    """Accumulates one window of served rows on the device; cheap per batch, derived
    statistics only in :meth:`report`.

    ``update`` is called with batches of a few dozen rows, so it does a fixed number of
    whole-array numpy operations whatever the feature count: binning is one broadcast
    comparison against every feature's edges (padded with +inf to a common width, which
    counts exactly the edges ``<= x`` like :func:`bin_index`) and one ``bincount``.
    """

    def __init__(self, reference: Reference, window: int, low_confidence: float) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 <= low_confidence <= 1.0:
            raise ValueError(f"low_confidence must be in [0, 1], got {low_confidence}")
        self.reference = reference
        self.window = window
        self.low_confidence = low_confidence
        feats = reference.features
        self._f = len(feats)
        # Categorical columns arrive as codes 0..len(categories) (the last is "other"): edges
        # at k + 0.5 bin them with the same broadcast comparison as the numeric columns.
        feat_edges = [
            tuple(k + 0.5 for k in range(len(f.categories))) if isinstance(f, CategoricalRef) else f.edges
            for f in feats
        ]
        n_edges = max([MAX_EDGES, *(len(e) for e in feat_edges)])
        self._width = n_edges + 1
        edges = np.full((self._f, n_edges), np.inf)
        for i, e in enumerate(feat_edges):
            edges[i, : len(e)] = e
        # (edges, 1, F): comparing a batch against it and summing over the leading axis
        # is ~3x faster than reducing over a short trailing axis.
        self._edges = np.ascontiguousarray(edges.T[:, None, :])
        self._nbins = np.array([f.bins for f in feats], dtype=np.int64)
        # Reference proportions padded with zeros to the common width: padded bins hold no
        # counts either, so their PSI and JS terms are exactly zero and report() can compute
        # every feature's statistics in one call.
        self._props = np.zeros((self._f, self._width))
        for i, f in enumerate(feats):
            self._props[i, : f.bins] = f.proportions
        self._top = self._nbins - 1
        self._offsets = np.arange(self._f, dtype=np.int64) * self._width
        self._cat = np.array([i for i, f in enumerate(feats) if isinstance(f, CategoricalRef)], dtype=np.int64)
        self._cat_top = self._top[self._cat].astype(np.float64)
        self._min = np.array([f.min if isinstance(f, FeatureRef) else -np.inf for f in feats])
        self._max = np.array([f.max if isinstance(f, FeatureRef) else np.inf for f in feats])
        conf = reference.confidence
        self._conf_edges = np.array(conf.edges if conf is not None else (), dtype=np.float64)
        self._has_conf = conf is not None
        self._regression = reference.prediction.kind == "bins"
        self._pred_edges = np.array(reference.prediction.edges, dtype=np.float64)
        self._classes = reference.prediction.bins
        self.reset()

    def reset(self) -> None:
        """Start a new window (after publishing a report)."""
        f = self._f
        self._n = 0
        self._counts = np.zeros((f, self._width), dtype=np.int64)
        self._missing = np.zeros(f, dtype=np.int64)
        self._oor = np.zeros(f, dtype=np.int64)
        self._wn = np.zeros(f, dtype=np.int64)
        self._wmean = np.zeros(f, dtype=np.float64)
        self._wm2 = np.zeros(f, dtype=np.float64)
        self._pred = np.zeros(self._classes, dtype=np.int64)
        self._conf = np.zeros(len(self._conf_edges) + 1, dtype=np.int64)
        self._conf_sum = 0.0
        self._low = 0
        self._pred_sum = 0.0

    @property
    def n(self) -> int:
        """Rows seen in this window."""
        return self._n

    @property
    def full(self) -> bool:
        """True once the window holds ``window`` rows: time to report and reset."""
        return self._n >= self.window

    def update(
        self,
        X: npt.ArrayLike,
        label_idx: npt.ArrayLike | None = None,
        confidence: npt.ArrayLike | None = None,
        predicted: npt.ArrayLike | None = None,
    ) -> None:
        """Add a batch: ``X`` (n, F) floats with NaN for missing — for a categorical feature its
        code (:meth:`Reference.category_codes`: the category's index, ``len(categories)`` for any
        other value, NaN for missing); ``label_idx`` (n,) indices into the reference class labels
        and ``confidence`` (n,) max probabilities for a classifier; ``predicted`` (n,) predicted
        values for a regressor.

        Raises ValueError on shapes, codes or label indices that do not fit the reference,
        before changing any state, so a bad batch cannot leave the window half-updated.
        """
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._f:
            raise ValueError(f"X must have shape (n, {self._f}), got {x.shape}")
        rows = x.shape[0]
        if self._cat.size and rows:
            codes = x[:, self._cat]
            bad = ~np.isnan(codes) & ((codes < 0) | (codes > self._cat_top) | (codes != np.floor(codes)))
            if bad.any():
                raise ValueError("categorical columns must hold codes 0..len(categories) or NaN")
        values: FloatArray | None = None
        if predicted is not None:
            if not self._regression:
                raise ValueError("predicted values are for a regressor's reference; pass label_idx")
            values = np.asarray(predicted, dtype=np.float64).reshape(-1)
            if values.shape[0] != rows:
                raise ValueError(f"predicted has {values.shape[0]} entries for {rows} rows")
        if confidence is not None and not self._has_conf:
            raise ValueError("this reference has no confidence distribution (a regressor)")
        labels: IntArray | None = None
        if label_idx is not None:
            if self._regression:
                raise ValueError("a regressor's reference bins predicted values; pass predicted, not label_idx")
            raw = np.asarray(label_idx)
            if raw.size and raw.dtype.kind not in "iu":
                raise ValueError(f"label_idx must hold integers, got dtype {raw.dtype}")
            labels = raw.astype(np.int64, copy=False).reshape(-1)
            if labels.shape[0] != rows:
                raise ValueError(f"label_idx has {labels.shape[0]} entries for {rows} rows")
            if rows and (labels.min() < 0 or labels.max() >= self._classes):
                raise ValueError(f"label_idx must be in [0, {self._classes})")
        conf: FloatArray | None = None
        if confidence is not None:
            conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
            if conf.shape[0] != rows:
                raise ValueError(f"confidence has {conf.shape[0]} entries for {rows} rows")
        if rows == 0:
            return

        finite = np.isfinite(x)
        bins = np.minimum((x[None, :, :] >= self._edges).sum(axis=0), self._top) + self._offsets
        self._oor += np.count_nonzero((x < self._min) | (x > self._max), axis=0)
        if finite.all():  # the common case: no masks needed
            flat = bins.ravel()
            cnt = np.full(self._f, rows, dtype=np.int64)
            bmean = x.mean(axis=0)
            dev = x - bmean
        else:
            # NaN is missing; +-inf is binned (end bins, out of range) but kept out of the
            # moments, where a single infinity would poison the mean for the whole window.
            nan = np.isnan(x)
            flat = bins[~nan]
            self._missing += np.count_nonzero(nan, axis=0)
            cnt = np.count_nonzero(finite, axis=0)
            bmean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(cnt, 1)
            dev = np.where(finite, x - bmean, 0.0)
        self._counts += np.bincount(flat, minlength=self._f * self._width).reshape(self._f, self._width)

        # Welford: the batch's (count, mean, M2) per feature, merged into the window's
        # (Chan et al., vectorised over features).
        bm2 = np.einsum("ij,ij->j", dev, dev)
        total = self._wn + cnt
        tsafe = np.maximum(total, 1)
        delta = bmean - self._wmean
        self._wmean = np.where(cnt > 0, self._wmean + delta * cnt / tsafe, self._wmean)
        self._wm2 = self._wm2 + np.where(cnt > 0, bm2 + delta * delta * self._wn * cnt / tsafe, 0.0)
        self._wn = total
        self._n += rows

        if labels is not None:
            self._pred += np.bincount(labels, minlength=self._classes)
        if values is not None:
            values = values[~np.isnan(values)]
            self._pred += np.bincount(np.searchsorted(self._pred_edges, values, side="right"), minlength=self._classes)
            self._pred_sum += float(values[np.isfinite(values)].sum())
        if conf is not None:
            conf = conf[np.isfinite(conf)]
            self._conf += np.bincount(np.searchsorted(self._conf_edges, conf, side="right"), minlength=len(self._conf))
            self._conf_sum += float(conf.sum())
            self._low += int(np.count_nonzero(conf < self.low_confidence))

    def _psi_limit(self, shipped: float, m: int, props: tuple[float, ...], alpha: float) -> float:
        """PSI threshold for ``m`` rows: the shipped one when ``m`` is the window it was
        calibrated for, else the same calibration redone here (see module docstring)."""
        if m == self.reference.thresholds.window or m <= 0:
            return shipped
        null = max(null_psi_quantile(props, m, 1.0 - alpha), psi_threshold(m, len(props), alpha))
        return null * reference_factor(m, self.reference.n)

    def report(self, min_rows: int = 30) -> dict[str, Any]:
        """The window as a JSON-ready dict (plain ints/floats/lists; ``None`` where a value
        is undefined, never NaN). See the module docstring for the verdict rules."""
        ref = self.reference
        th = ref.thresholds
        f_count = self._f
        alpha_f = ref.alpha / f_count
        z_limit = th.z
        enough = self._n >= min_rows
        n = self._n
        features: dict[str, Any] = {}
        drifted: list[str] = []
        psi_used: dict[str, float] = {}
        psis = psi_rows(self._props, self._counts)
        jss = js_rows(self._props, self._counts)
        for i, f in enumerate(ref.features):
            counts = self._counts[i, : f.bins]
            m = int(self._wn[i])
            missing = int(self._missing[i])
            p = float(psis[i])
            limit = self._psi_limit(th.psi[f.name], int(counts.sum()), f.proportions, alpha_f)
            psi_used[f.name] = limit
            r = min(max(f.missing_rate, 0.5 / ref.n), 1.0 - 0.5 / ref.n)
            missing_z = (missing - n * r) / math.sqrt(n * r * (1.0 - r)) if n > 0 else math.nan
            if isinstance(f, CategoricalRef):
                # No mean or z for categories: PSI over the categories (and "other"), and the
                # missing-value test.
                flag = enough and (p > limit or (math.isfinite(missing_z) and missing_z > z_limit))
                if flag:
                    drifted.append(f.name)
                features[f.name] = {
                    "kind": "categorical",
                    "counts": [int(c) for c in counts],
                    "missing": missing,
                    "unseen": int(counts[-1]),
                    "count": int(counts.sum()),
                    "psi": p,
                    "js": float(jss[i]),
                    "missing_z": _opt(missing_z),
                    "drifted": flag,
                }
                continue
            mean = float(self._wmean[i]) if m > 0 else math.nan
            shift = z = math.nan
            constant_broken = False
            if m > 0 and f.std > 0.0:
                shift = (mean - f.mean) / f.std
                z = shift / math.sqrt(1.0 / m + 1.0 / ref.n)
            elif m > 0:
                constant_broken = bool(self._oor[i] > 0 or mean != f.mean)
                if not constant_broken:
                    shift = z = 0.0
            flag = enough and (
                p > limit
                or (math.isfinite(z) and abs(z) > z_limit)
                or (math.isfinite(missing_z) and missing_z > z_limit)
                or constant_broken
            )
            if flag:
                drifted.append(f.name)
            features[f.name] = {
                "kind": "numeric",
                "counts": [int(c) for c in counts],
                "missing": missing,
                "out_of_range": int(self._oor[i]),
                "count": m,
                "mean": _opt(mean),
                "m2": _opt(float(self._wm2[i])),
                "psi": p,
                "js": float(jss[i]),
                "shift": _opt(shift),
                "z": _opt(z),
                "missing_z": _opt(missing_z),
                "drifted": flag,
            }

        pred_n = int(self._pred.sum())
        pred_psi = psi(ref.prediction.proportions, self._pred)
        pred_limit = self._psi_limit(th.prediction_psi, pred_n, ref.prediction.proportions, ref.alpha)
        conf_n = int(self._conf.sum())
        verdict = "insufficient" if not enough else ("drift" if drifted else "ok")
        prediction: dict[str, Any] = {
            "kind": ref.prediction.kind,
            "counts": [int(c) for c in self._pred],
            "psi": pred_psi,
            "drifted": bool(enough and pred_n > 0 and pred_psi > pred_limit),
        }
        if self._regression:
            prediction["mean"] = self._pred_sum / pred_n if pred_n else None
        return {
            "n": n,
            "features": features,
            "prediction": prediction,
            # A regressor has no confidence: None, and no low-confidence rate.
            "confidence": {
                "counts": [int(c) for c in self._conf],
                "mean": self._conf_sum / conf_n if conf_n else None,
            }
            if self._has_conf
            else None,
            "low_confidence": self._low,
            "low_confidence_rate": (self._low / conf_n if conf_n else 0.0) if self._has_conf else None,
            "drifted": drifted,
            "verdict": verdict,
            "thresholds": {
                "psi": psi_used,
                "prediction_psi": pred_limit,
                "z": z_limit,
                "alpha": ref.alpha,
            },
        }
