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
    (:func:`welford_merge`); PSI and JS do not merge, so they are only derived views. Every
    test below needs only counts, so a host merges any range of windows
    (:func:`merge_windows`) and judges the sum with the device's own rules (:func:`assess`,
    at any false-alarm rate): a persistent small shift that no single window shows is found
    that way (0.1 sigma: 35 % of 25 merged 200-row windows against a 2,000-row reference).

Verdict rules (``report`` = ``assess(reference, raw())``)
    * Fewer than ``min_rows`` rows: verdict ``"insufficient"`` and no feature is flagged;
      a handful of rows says nothing and alert fatigue is how drift monitoring dies.
    * Multiple testing: Bonferroni over the F features. Every test of a feature runs at
      ``alpha/F``; the two-sided normal limit ``inv_cdf(1 - alpha/(2F))`` is shipped as
      ``thresholds.z``. A feature faces one or two tests in practice (binned and location;
      the missing and constant tests are silent without missing values or a constant), so
      the family-wise rate is up to about ``2 * alpha``, less with correlated features.
      Measured per clean window at ``alpha = 0.01`` (``bench/drift_power.py``, BENCHMARKS.md
      "drift-power", medians over 3 seeds): 0.8-2.3 % on iris, wine, breast_cancer, digits,
      diabetes, friedman1 and a generated loan table (the previous rules: 43.5 % on digits),
      1-2 % for 50-500 rows on a generated gaussian table.
    * The reference is itself a sample of ``reference.n`` rows, so a window is compared
      with *estimates*; ignoring that pushed the false-alarm rate of 200-row windows against
      a 2,000-row reference from the nominal 1-2 % to ~4.5 %. The location test is
      two-sample; PSI thresholds carry the factor ``1 + m/reference.n``
      (:func:`reference_factor`); the exact tests condition on both samples.
    * A feature drifts when any of its tests fires (``fired`` names them):
        - ``psi``: its PSI (over non-missing values) exceeds its threshold ``psi_limit``:
          the ``alpha/F`` null quantile of PSI for that many rows drawn from the reference
          proportions (:func:`psi_null`: simulated windows, an exponential tail fitted to the
          largest 200 of them, :class:`NullTail`), times ``1 + m/reference.n``. The host
          ships it for the policy's window size (20,000 draws, the bundle's seed; across 5
          seeds digits' 64 thresholds spread by 8 % for the median feature, 25 % at worst,
          where 2,000 raw draws spread by up to 2.85x); the device calibrates any other size itself (5,000
          draws, at the nearest point of a 4.4 % grid, :func:`calibration_rows`; cached).
          Neither shortcut holds up: n*PSI is not chi-square below ~150 rows, and scaling the
          shipped 200-row threshold by ``200/m`` false-alarmed on 26 % of 50-row windows;
        - ``location``: a grouped Wilcoxon-Mann-Whitney test on the bins
          (:func:`location_test`): the window's mean ridit against 0.5, ``|location_z| >
          z``. It replaces the z-score of the window mean, which one rare value could push
          past any limit (a digits edge pixel lit once: z ~ 13). Where one bin holds almost
          everything its skewness is corrected (Cornish-Fisher) or, past
          :data:`LOCATION_MAX_SKEW`, the test does not run at that window size
          (``location_z`` None) and PSI alone judges the rare values;
        - ``missing``: more missing values than the reference's rate allows, by the exact
          one-sided two-sample test (:func:`excess_count_p`, ``missing_p < alpha/F``).
          Missing values are never silently dropped before testing (dropping them is how a
          20 % NaN injection goes unnoticed), but against a reference without any NaN one
          or two are not drift: it takes 3 in 200 rows against 2,000 clean ones (4 with 64
          features);
        - ``differs``: the feature was constant in the reference (std 0) and more window
          values differ from that constant (they are ``out_of_range``) than the reference's
          rows allow, by the same exact test (``differs_p``). One value is not enough: a
          column that never varied in 1,300 training rows may still vary once in 2,000.
      ``z``/``shift`` (the mean's two-sample z-score and shift in reference standard
      deviations) and ``missing_z`` are still reported for reading; they decide nothing.
    * ``score``: the feature's largest test statistic over its limit (an exact test's
      p-value as the normal score with that p-value), so 1.0 is the decision boundary;
      with ``fired``, ``psi_limit`` and ``thresholds.feature_alpha`` it is what a
      collector needs to weight features or to ask for k drifting windows out of m.
    * Prediction drift: PSI of the predicted-class counts against the reference class
      proportions above ``thresholds.prediction_psi`` (same calibration, with ``alpha``
      rather than ``alpha/F``: it is one test). It is reported but does not by itself make
      the verdict: the prediction mix moves with the input mix, and when the inputs did not
      move it usually means the population of cases changed, not the model.
    * Verdict ``"drift"`` when any feature drifted, else ``"ok"``.

What it cannot see
    Concept drift (the same inputs now deserving other labels) is invisible to every
    statistic here; only labelled feedback can see it. Each feature is tested on its own
    margins: a change in how features move together, with every margin intact, passes.
    Within a bin nothing is seen: an offset of a near-constant column by less than half the
    gap to its next value, or a change confined to one decile. Small shifts take rows:
    0.25 sigma on one normal feature is flagged in about half of the 200-row windows and
    nearly all 500-row ones; 0.5 sigma in half of the 50-row windows and every 200-row one.
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


NULL_DRAWS = 20_000  # simulated windows behind a shipped threshold: ~30 ms per feature (10 bins)
DEVICE_DRAWS = 5_000  # behind one the device calibrates itself for another window size
TAIL_DRAWS = 200  # the largest draws fit the exponential tail (1 % of NULL_DRAWS)
LOCATION_MAX_SKEW = 0.3  # the location test runs only where its statistic is this close to normal
LOCATION_CAP = 40.0  # |location_z| beyond this carries no more information (p < 1e-300)
_KNOTS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)  # exceedance probabilities read off the draws directly


@dataclass(frozen=True)
class NullTail:
    """Upper tail of a statistic's null distribution, from simulated draws: read off the
    draws where they are dense and, beyond the largest :data:`TAIL_DRAWS`, an exponential
    tail fitted to those of them lying strictly above their lower end (peaks over threshold
    with the shape fixed at 0, which chi-square-like statistics have).

    Why not the plain quantile: thresholds sit at ``alpha/F`` (1.6e-4 for 64 features at
    ``alpha`` 0.01), which 2,000 draws cannot resolve: their 1 - 1.6e-4 quantile is their
    maximum, so the threshold was both low (4-6x the promised false alarms per test) and
    erratic (up to 2.85x between seeds). Where at least 5 draws lie beyond the asked
    quantile the empirical value is a floor, so a lattice (a bin rarer than a few rows per
    window takes only a few values) is never interpolated into. With 20,000 draws, against
    10^6: 0.6-1.3x the nominal false-alarm rate for 50-200 rows at 1e-3 and 2e-4 and
    within 16 % between seeds, with two exceptions: 10 even bins at 50 rows and 2e-4,
    where two empty bins make a second, heavier tail (4x), and a bin rarer than one row
    per window, where the lattice makes it conservative (0.03-0.6x).
    """

    n: int  # number of draws
    knots: tuple[float, ...]  # exceedance probabilities of the body, decreasing, all above the tail's share
    x: tuple[float, ...]  # the draws' values at those probabilities, increasing
    top: tuple[float, ...]  # the largest TAIL_DRAWS + 1 draws, increasing

    @classmethod
    def fit(cls, draws: npt.ArrayLike) -> NullTail:
        s = np.sort(np.asarray(draws, dtype=np.float64))
        n = s.size
        k = min(n - 1, TAIL_DRAWS)
        knots = tuple(p for p in _KNOTS if p > k / n)
        x = [float(s[min(n - 1, max(0, math.ceil(n * (1.0 - p)) - 1))]) for p in knots]
        return cls(n=n, knots=knots, x=tuple(np.maximum.accumulate(x).tolist()), top=tuple(s[n - k - 1 :].tolist()))

    def quantile(self, a: float) -> float:
        """A value the statistic exceeds with probability at most about ``a`` under the null."""
        if not 0.0 < a < 1.0:
            raise ValueError(f"a must be in (0, 1), got {a}")
        top = np.asarray(self.top)
        u = float(top[0])
        share = (top.size - 1) / self.n
        if a >= share:
            probs = [-math.log(p) for p in self.knots] + [-math.log(share)]
            return float(np.interp(-math.log(a), probs, [*self.x, u]))
        # The tail starts strictly above u: on a lattice, ties at u would shrink the scale.
        above = top[top > u]
        out = u
        if above.size and a < above.size / self.n:
            out = u + (float(above.mean()) - u) * math.log(above.size / self.n / a)
        beyond = math.floor(a * self.n)
        if 5 <= beyond < top.size:
            out = max(out, float(top[top.size - 1 - beyond]))
        return out


def null_draws(props: npt.ArrayLike, m: int, draws: int, seed: int) -> IntArray:
    """Bin counts of ``draws`` windows of ``m`` rows drawn from the reference proportions:
    in distribution exactly a bootstrap of windows from the training rows (PSI depends
    only on the counts), at a fraction of the cost."""
    p = np.asarray(props, dtype=np.float64)
    rng = np.random.default_rng([seed, m])
    out: IntArray = rng.multinomial(m, p / p.sum(), size=draws)
    return out


@dataclass(frozen=True)
class ExactNull:
    """The exact null distribution of a statistic that takes few values: its distinct
    values (increasing) and the probability of exceeding each, trimmed to where a
    threshold can sit (exceedance between 1e-15 and 0.25)."""

    values: tuple[float, ...]
    exceed: tuple[float, ...]

    def quantile(self, a: float) -> float:
        """The smallest value the statistic exceeds with probability at most ``a``."""
        if not 0.0 < a < 1.0:
            raise ValueError(f"a must be in (0, 1), got {a}")
        i = int(np.searchsorted(-np.asarray(self.exceed), -a, side="left"))
        return self.values[min(i, len(self.values) - 1)]


EXACT_COMPOSITIONS = 250_000  # enumerate the null when a window's bin counts take at most this many values


def _compositions(m: int, bins: int) -> IntArray | None:
    """Every way to spread ``m`` rows over 1-3 bins, or None when there are too many."""
    if bins == 1:
        return np.array([[m]], dtype=np.int64)
    if bins == 2:
        k = np.arange(m + 1, dtype=np.int64)
        return np.column_stack([m - k, k])
    if bins == 3 and (m + 1) * (m + 2) // 2 <= EXACT_COMPOSITIONS:
        a, b = np.triu_indices(m + 1)  # 0 <= a <= b <= m: three parts a, b - a, m - b
        return np.column_stack([a, b - a, m - b]).astype(np.int64)
    return None


def exact_psi_null(props: Sequence[float], m: int) -> ExactNull | None:
    """PSI's exact null for ``m`` rows over at most 3 bins (multinomial probabilities of
    every composition), or None where enumeration is too big. This is where simulation
    fails: a column that is almost always one value has a rare bin whose count takes a few
    values, each a jump in PSI (an empty rare bin alone costs ``p * ln(p / eps)``), and a
    threshold read off draws lands between them differently for every seed (2.5x apart on
    digits' edge pixels)."""
    p = np.asarray(props, dtype=np.float64)
    counts = _compositions(m, p.size)
    if counts is None:
        return None
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, m + 1, dtype=np.float64)))))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.where(p > 0.0, np.log(p / p.sum()), -np.inf)
        terms = np.where(counts > 0, counts * log_p, 0.0)
    prob = np.exp(log_fact[m] - log_fact[counts].sum(axis=1) + terms.sum(axis=1))
    raw = psi_rows(p, counts)
    # Values equal in exact arithmetic differ in the last bits: one value, the largest of them.
    keys, inverse = np.unique(np.round(raw, 12), return_inverse=True)
    uniq = np.full(keys.size, -np.inf)
    np.maximum.at(uniq, inverse, raw)
    mass = np.bincount(inverse, weights=prob, minlength=keys.size)
    exceed = np.clip(1.0 - np.cumsum(mass), 0.0, 1.0)  # P(PSI > value)
    lo = int(np.searchsorted(-exceed, -0.25, side="left"))
    tiny = np.flatnonzero(exceed < 1e-15)
    hi = int(tiny[0]) + 1 if tiny.size else uniq.size
    lo = min(lo, hi - 1)
    return ExactNull(values=tuple(uniq[lo:hi].tolist()), exceed=tuple(exceed[lo:hi].tolist()))


@functools.lru_cache(maxsize=4096)
def psi_null(props: tuple[float, ...], m: int, seed: int = 0, draws: int = NULL_DRAWS) -> NullTail | ExactNull:
    """Null distribution of PSI for windows of ``m`` rows from the reference proportions:
    exact for up to 3 bins (:func:`exact_psi_null`), else by seeded simulation
    (deterministic for a given ``seed``). One definition for the host, which ships
    thresholds for the policy's window, and the device, which calibrates any other window
    size itself. Cached: ~30 ms per distinct (proportions, m) for 10 bins."""
    if m < 1:
        raise ValueError(f"m must be positive, got {m}")
    exact = exact_psi_null(props, m)
    if exact is not None:
        return exact
    return NullTail.fit(psi_rows(props, null_draws(props, m, draws, seed)))


def calibration_rows(m: int) -> int:
    """The window size at which the device calibrates a PSI threshold for ``m`` rows:
    ``m`` itself up to 64, else the nearest point of a grid with 16 steps per doubling
    (4.4 % apart). m*PSI moves by well under 1 % across one step, and the grid bounds the
    simulations a device with partial windows (missing values, time-based flushes) runs."""
    if m <= 64:
        return m
    return round(math.pow(2.0, round(16.0 * math.log2(m)) / 16.0))


def psi_limit(
    props: Sequence[float],
    m: int,
    n_ref: int,
    a: float,
    *,
    seed: int = 0,
    exact: bool = False,
    draws: int = DEVICE_DRAWS,
) -> float:
    """PSI threshold for a window of ``m`` non-missing values compared with proportions
    estimated from ``n_ref`` rows, at false-alarm rate ``a`` per test: the null quantile
    widened by :func:`reference_factor`. ``exact`` simulates ``m`` itself rather than its
    :func:`calibration_rows` point; the host does, with :data:`NULL_DRAWS`, for the
    thresholds it ships. Cached, so a device pays for a calibration once."""
    return _psi_limit(tuple(props), m, n_ref, a, seed, exact, draws)


@functools.lru_cache(maxsize=8192)
def _psi_limit(props: tuple[float, ...], m: int, n_ref: int, a: float, seed: int, exact: bool, draws: int) -> float:
    rows = m if exact else calibration_rows(m)
    return psi_null(props, rows, seed, draws).quantile(a) * rows / m * reference_factor(m, n_ref)


@functools.lru_cache(maxsize=1024)
def ridits(props: tuple[float, ...]) -> tuple[FloatArray, float, float]:
    """Per-bin ridit scores (the reference's mid-CDF: share below the bin plus half the
    bin), their variance under the reference and their skewness. Ridits average 0.5 under
    the reference by construction."""
    p = np.asarray(props, dtype=np.float64)
    p = p / p.sum()
    scores = np.cumsum(p) - p / 2.0
    dev = scores - 0.5
    var = float(np.sum(p * dev * dev))
    skew = float(np.sum(p * dev**3)) / var**1.5 if var > 0.0 else math.inf
    return scores, var, skew


def location_test(props: Sequence[float], counts: npt.ArrayLike, n_ref: int) -> float | None:
    """Two-sample location test on binned values (a grouped Wilcoxon-Mann-Whitney test):
    the window's mean ridit against the reference's 0.5, as a normal score, two-sided.

    Why not the z-score of the mean: scores are bounded, so one extreme value cannot make
    a verdict, and the statistic needs only the bin counts, so merged windows can be tested
    too. Its null is close to normal except where one bin holds almost everything (digits'
    edge pixels): the score's skewness over ``sqrt(m)`` is corrected to first order
    (Cornish-Fisher) up to :data:`LOCATION_MAX_SKEW` and beyond that the test does not run
    (``None``), leaving the binned test to judge the rare values. Against a mean z-test on
    normal data it needs about 10 % more rows for the same power; on skewed data, fewer.
    """
    c = np.asarray(counts, dtype=np.float64)
    m = float(c.sum())
    scores, var, skew = ridits(tuple(props))
    return _location(float(c @ scores) / m if m > 0.0 else 0.5, m, var, skew, n_ref)


def _location(mean_ridit: float, m: float, var: float, skew: float, n_ref: int) -> float | None:
    if m <= 0.0 or var <= 0.0:
        return None
    inv = 1.0 / m + 1.0 / n_ref
    gamma = skew * (1.0 / m**2 - 1.0 / n_ref**2) / inv**1.5
    if not abs(gamma) <= LOCATION_MAX_SKEW:
        return None
    z = (mean_ridit - 0.5) / math.sqrt(var * inv)
    # Cornish-Fisher: z ~ w + g*(w^2 - 1) with w standard normal; solve for w (stable root).
    g = gamma / 6.0
    disc = 1.0 + 4.0 * g * (z + g)
    w = -math.copysign(math.inf, g) if disc < 0.0 else 2.0 * (z + g) / (1.0 + math.sqrt(disc))
    return min(max(w, -LOCATION_CAP), LOCATION_CAP)


def excess_count_p(k: int, m: int, a: int, n: int) -> float:
    """One-sided exact p-value (Fisher) that ``k`` of ``m`` window values having a property
    is more than ``a`` of ``n`` reference values having it: the chance that a window holds
    at least ``k`` of the ``a + k`` such values when ``m`` are drawn from all ``n + m``.

    For missing values and for values off a constant column's constant. A normal
    approximation around a tiny or zero reference rate calls the first rare value drift
    (one NaN, or one edge pixel lit in a window, against a column that never had one in
    its training rows); this test asks for as many as chance cannot explain: against 2,000
    clean reference rows, 3 of 200 at ``p < 0.001``.
    """
    if k <= 0:
        return 1.0
    total = a + k
    pop = n + m
    hi = min(total, m)
    x = np.arange(k, hi + 1, dtype=np.float64)
    # log pmf at x = k, then the ratio recursion pmf(x+1)/pmf(x) for the rest of the tail.
    lg = math.lgamma
    first = (
        lg(total + 1)
        - lg(k + 1)
        - lg(total - k + 1)
        + lg(pop - total + 1)
        - lg(m - k + 1)
        - lg(pop - total - m + k + 1)
        - (lg(pop + 1) - lg(m + 1) - lg(pop - m + 1))
    )
    steps = np.log((total - x[:-1]) * (m - x[:-1])) - np.log((x[:-1] + 1.0) * (pop - total - m + x[:-1] + 1.0))
    log_pmf = first + np.concatenate(([0.0], np.cumsum(steps)))
    top = float(log_pmf.max())
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


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

    def raw(self) -> dict[str, Any]:
        """The window's raw, mergeable statistics: counts per bin, missing and out-of-range
        counts, Welford (count, mean, M2), prediction and confidence counts. What
        :func:`assess` judges and :func:`merge_windows` adds up."""
        ref = self.reference
        features: dict[str, Any] = {}
        for i, f in enumerate(ref.features):
            entry: dict[str, Any] = {
                "kind": f.kind,
                "counts": [int(c) for c in self._counts[i, : f.bins]],
                "missing": int(self._missing[i]),
            }
            if isinstance(f, FeatureRef):
                m = int(self._wn[i])
                entry["out_of_range"] = int(self._oor[i])
                entry["count"] = m
                entry["mean"] = float(self._wmean[i]) if m > 0 else None
                entry["m2"] = float(self._wm2[i])
            features[f.name] = entry
        pred_n = int(self._pred.sum())
        prediction: dict[str, Any] = {"kind": ref.prediction.kind, "counts": [int(c) for c in self._pred]}
        if self._regression:
            prediction["mean"] = self._pred_sum / pred_n if pred_n else None
        conf_n = int(self._conf.sum())
        return {
            "n": self._n,
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
        }

    def report(self, min_rows: int = 30) -> dict[str, Any]:
        """The window as a JSON-ready dict (plain ints/floats/lists; ``None`` where a value
        is undefined, never NaN): :meth:`raw` judged by :func:`assess` at the reference's
        ``alpha``. See the module docstring for the verdict rules."""
        return assess(self.reference, self.raw(), min_rows=min_rows)


# ---------------------------------------------------------------------------------------
# Judging a window, or many merged


def _counts_of(entry: Mapping[str, Any], bins: int | None, where: str) -> list[int]:
    """The entry's counts, checked: ``bins`` non-negative integers (any length if None)."""
    raw = entry.get("counts")
    if not isinstance(raw, list | tuple) or (bins is not None and len(raw) != bins):
        raise ValueError(f"{where}.counts must be a list of {bins if bins is not None else 'the'} counts")
    if not all(type(c) is int and c >= 0 for c in raw):
        raise ValueError(f"{where}.counts must hold non-negative integers")
    return list(raw)


def _count_of(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}.{key} must be a non-negative integer")
    return value


@functools.lru_cache(maxsize=64)
def _layout(all_props: tuple[tuple[float, ...], ...]) -> tuple[FloatArray, FloatArray, list[float], list[float]]:
    """Every feature's proportions and ridit scores padded with zeros to a common width
    (padded bins hold no counts, so they add nothing to PSI, JS or a mean ridit), and the
    ridits' variances and skewnesses: what :func:`assess` needs of a reference, once."""
    width = max(len(p) for p in all_props)
    props = np.zeros((len(all_props), width))
    scores = np.zeros((len(all_props), width))
    var, skew = [], []
    for i, p in enumerate(all_props):
        s, v, g = ridits(p)
        props[i, : len(p)] = p
        scores[i, : len(p)] = s
        var.append(v)
        skew.append(g)
    return props, scores, var, skew


def _ratio_of_p(p: float, z_limit: float) -> float:
    """An exact test's p-value on the scale of the z limit: the two-sided normal score with
    that p-value over the limit, so 1.0 is the decision boundary as for the other tests."""
    if p >= 1.0:
        return 0.0
    return -NormalDist().inv_cdf(max(p, 1e-300) / 2.0) / z_limit


def assess(
    reference: Reference, window: Mapping[str, Any], alpha: float | None = None, min_rows: int = 30
) -> dict[str, Any]:
    """Judge raw window statistics (:meth:`DriftWindow.raw`, or :func:`merge_windows` of
    several) against the reference at family-wise false-alarm rate ``alpha`` (default the
    reference's): every test of a feature runs at ``alpha / F``. Pure and numpy-only, so a
    host that merges windows over any time range judges them exactly as a device judges
    one. Returns the report (raw fields plus the derived ones; the module docstring says
    what each test does). Raises ValueError when ``window`` does not fit the reference.
    """
    ref = reference
    th = ref.thresholds
    a = ref.alpha if alpha is None else float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    shipped = a == ref.alpha
    f_count = len(ref.features)
    alpha_f = a / f_count
    z_limit = th.z if shipped else NormalDist().inv_cdf(1.0 - a / (2.0 * f_count))
    n = window.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("window.n must be a non-negative integer")
    raw_features = window.get("features")
    if not isinstance(raw_features, Mapping) or set(raw_features) != set(ref.names):
        raise ValueError("window.features must have one entry per reference feature")
    enough = n >= min_rows
    features: dict[str, Any] = {}
    drifted: list[str] = []
    psi_used: dict[str, float] = {}
    all_counts = []
    for f in ref.features:
        entry = raw_features[f.name]
        if not isinstance(entry, Mapping):
            raise ValueError(f"window.features[{f.name!r}] must be an object")
        all_counts.append(_counts_of(entry, f.bins, f"window.features[{f.name!r}]"))
    props, scores, ridit_var, ridit_skew = _layout(tuple(f.proportions for f in ref.features))
    width = props.shape[1]
    counts_m = np.array([c + [0] * (width - len(c)) for c in all_counts], dtype=np.int64)
    rows = counts_m.sum(axis=1)
    mean_ridit = (counts_m * scores).sum(axis=1) / np.maximum(rows, 1)
    psis = psi_rows(props, counts_m)
    jss = js_rows(props, counts_m)
    for i, f in enumerate(ref.features):
        entry = raw_features[f.name]
        where = f"window.features[{f.name!r}]"
        counts = all_counts[i]
        m = int(rows[i])
        missing = _count_of(entry, "missing", where)
        p = float(psis[i])
        if shipped and m == th.window:
            limit = th.psi[f.name]
        else:
            limit = psi_limit(f.proportions, m, ref.n, alpha_f) if m > 0 else th.psi[f.name]
        psi_used[f.name] = limit
        # Missing values: the binomial z for display, the exact two-sample test for the verdict.
        r = min(max(f.missing_rate, 0.5 / ref.n), 1.0 - 0.5 / ref.n)
        missing_z = (missing - n * r) / math.sqrt(n * r * (1.0 - r)) if n > 0 else math.nan
        missing_p = excess_count_p(missing, n, round(f.missing_rate * ref.n), ref.n)
        fired: list[str] = []
        if p > limit:
            fired.append("psi")
        if missing_p < alpha_f:
            fired.append("missing")
        score = max(p / limit if limit > 0.0 else 0.0, _ratio_of_p(missing_p, z_limit))
        out: dict[str, Any] = {"kind": f.kind, "counts": counts, "missing": missing}
        if isinstance(f, CategoricalRef):
            # No mean or location for categories: PSI over the categories (and "other"),
            # and the missing-value test.
            out.update(unseen=int(counts[-1]), count=m, psi=p, js=float(jss[i]), missing_z=_opt(missing_z))
        else:
            oor = _count_of(entry, "out_of_range", where)
            count = _count_of(entry, "count", where)
            mean_raw = entry.get("mean")
            mean = float(mean_raw) if isinstance(mean_raw, int | float) and count > 0 else math.nan
            m2_raw = entry.get("m2")
            m2 = float(m2_raw) if isinstance(m2_raw, int | float) else math.nan
            shift = z = math.nan
            differs_p: float | None = None
            location: float | None = None
            if f.std > 0.0:
                if count > 0:
                    shift = (mean - f.mean) / f.std
                    z = shift / math.sqrt(1.0 / count + 1.0 / ref.n)
                location = _location(float(mean_ridit[i]), m, ridit_var[i], ridit_skew[i], ref.n)
                if location is not None:
                    score = max(score, abs(location) / z_limit)
                    if abs(location) > z_limit:
                        fired.append("location")
            else:
                # A constant reference column: values off the constant are out of range;
                # the exact test asks whether there are more than its training rows allow.
                present = max(round(ref.n * (1.0 - f.missing_rate)), 1)
                differs_p = excess_count_p(oor, m, 0, present)
                score = max(score, _ratio_of_p(differs_p, z_limit))
                if differs_p < alpha_f:
                    fired.append("differs")
                if count > 0 and oor == 0 and mean == f.mean:
                    shift = z = 0.0
            out.update(
                out_of_range=oor,
                count=count,
                mean=_opt(mean),
                m2=_opt(m2),
                psi=p,
                js=float(jss[i]),
                shift=_opt(shift),
                z=_opt(z),
                missing_z=_opt(missing_z),
                location_z=location,
                differs_p=differs_p,
            )
        flag = enough and bool(fired)
        if flag:
            drifted.append(f.name)
        out.update(drifted=flag, psi_limit=limit, missing_p=missing_p, score=score, fired=fired if enough else [])
        features[f.name] = out

    pred_in = window.get("prediction")
    if not isinstance(pred_in, Mapping):
        raise ValueError("window.prediction must be an object")
    pred_counts = _counts_of(pred_in, ref.prediction.bins, "window.prediction")
    pred_n = sum(pred_counts)
    pred_psi = psi(ref.prediction.proportions, pred_counts)
    if shipped and pred_n == th.window:
        pred_limit = th.prediction_psi
    elif pred_n > 0:
        pred_limit = psi_limit(ref.prediction.proportions, pred_n, ref.n, a)
    else:
        pred_limit = th.prediction_psi
    prediction: dict[str, Any] = {
        "kind": ref.prediction.kind,
        "counts": pred_counts,
        "psi": pred_psi,
        "drifted": bool(enough and pred_n > 0 and pred_psi > pred_limit),
    }
    if ref.prediction.kind == "bins":
        prediction["mean"] = pred_in.get("mean")
    conf_in = window.get("confidence")
    low = _count_of(window, "low_confidence", "window")
    confidence: dict[str, Any] | None = None
    conf_n = 0
    if ref.confidence is not None and isinstance(conf_in, Mapping):
        conf_counts = _counts_of(conf_in, len(ref.confidence.edges) + 1, "window.confidence")
        conf_n = sum(conf_counts)
        confidence = {"counts": conf_counts, "mean": conf_in.get("mean")}
    verdict = "insufficient" if not enough else ("drift" if drifted else "ok")
    return {
        "n": n,
        "features": features,
        "prediction": prediction,
        "confidence": confidence,
        "low_confidence": low,
        "low_confidence_rate": (low / conf_n if conf_n else 0.0) if ref.confidence is not None else None,
        "drifted": drifted,
        "verdict": verdict,
        "thresholds": {
            "psi": psi_used,
            "prediction_psi": pred_limit,
            "z": z_limit,
            "alpha": a,
            "feature_alpha": alpha_f,
        },
    }


def merge_windows(windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up several windows' raw statistics (reports of the same bundle, from one device
    or many, in any order) into one window for :func:`assess`: counts add, Welford triples
    merge exactly (:func:`welford_merge`), prediction and confidence means are weighted by
    their counts. Raises ValueError on windows that do not line up."""
    if not windows:
        raise ValueError("nothing to merge: no windows")
    first = windows[0]
    names = list(first.get("features") or {})
    n = 0
    feats: dict[str, dict[str, Any]] = {}
    pred_counts: IntArray | None = None
    pred_sum = 0.0
    conf_counts: IntArray | None = None
    conf_sum = 0.0
    low = 0
    for k, w in enumerate(windows):
        where = f"windows[{k}]"
        wf = w.get("features")
        if not isinstance(wf, Mapping) or list(wf) != names:
            raise ValueError(f"{where}.features must name the same features as windows[0]")
        n += _count_of(w, "n", where)
        low += _count_of(w, "low_confidence", where)
        for name in names:
            e = wf[name]
            fw = f"{where}.features[{name!r}]"
            c = np.asarray(_counts_of(e, None, fw), dtype=np.int64)
            acc = feats.get(name)
            if acc is None:
                acc = feats[name] = {"kind": e.get("kind"), "counts": np.zeros_like(c), "missing": 0}
                if e.get("kind") == "numeric":
                    acc.update(out_of_range=0, welford=(0, 0.0, 0.0))
            if acc["counts"].shape != c.shape or acc["kind"] != e.get("kind"):
                raise ValueError(f"{fw} does not line up with windows[0]")
            acc["counts"] = acc["counts"] + c
            acc["missing"] += _count_of(e, "missing", fw)
            if acc["kind"] == "numeric":
                acc["out_of_range"] += _count_of(e, "out_of_range", fw)
                count = _count_of(e, "count", fw)
                mean = e.get("mean")
                m2 = e.get("m2")
                if count > 0 and isinstance(mean, int | float) and isinstance(m2, int | float):
                    acc["welford"] = welford_merge(acc["welford"], (count, float(mean), float(m2)))
        pred = w.get("prediction")
        if not isinstance(pred, Mapping):
            raise ValueError(f"{where}.prediction must be an object")
        pc = np.asarray(_counts_of(pred, None, f"{where}.prediction"), dtype=np.int64)
        if pred_counts is None:
            pred_counts = np.zeros_like(pc)
        if pc.shape != pred_counts.shape:
            raise ValueError(f"{where}.prediction does not line up with windows[0]")
        pred_counts = pred_counts + pc
        if isinstance(pred.get("mean"), int | float):
            pred_sum += float(pred["mean"]) * int(pc.sum())
        conf = w.get("confidence")
        if isinstance(conf, Mapping):
            cc = np.asarray(_counts_of(conf, None, f"{where}.confidence"), dtype=np.int64)
            conf_counts = cc if conf_counts is None else conf_counts + cc
            if isinstance(conf.get("mean"), int | float):
                conf_sum += float(conf["mean"]) * int(cc.sum())
    features: dict[str, Any] = {}
    for name, acc in feats.items():
        entry: dict[str, Any] = {
            "kind": acc["kind"],
            "counts": [int(c) for c in acc["counts"]],
            "missing": acc["missing"],
        }
        if acc["kind"] == "numeric":
            count, mean, m2 = acc["welford"]
            entry.update(out_of_range=acc["out_of_range"], count=count, mean=mean if count else None, m2=m2)
        features[name] = entry
    assert pred_counts is not None
    pred_n = int(pred_counts.sum())
    prediction: dict[str, Any] = {"kind": first["prediction"].get("kind"), "counts": [int(c) for c in pred_counts]}
    if "mean" in first["prediction"]:
        prediction["mean"] = pred_sum / pred_n if pred_n else None
    confidence = None
    if conf_counts is not None:
        conf_n = int(conf_counts.sum())
        confidence = {"counts": [int(c) for c in conf_counts], "mean": conf_sum / conf_n if conf_n else None}
    return {
        "n": n,
        "windows": len(windows),
        "features": features,
        "prediction": prediction,
        "confidence": confidence,
        "low_confidence": low,
    }
