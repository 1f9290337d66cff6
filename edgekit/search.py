"""``--model auto``: a cost-aware search over the model families and their hyperparameters,
within a time budget, choosing by the declared metric.

The optimiser is Optuna (ask-and-tell): its TPE sampler proposes the family and the
configuration, its successive-halving pruner decides which candidates earn more evaluation.
Optuna was chosen over FLAML's tuner and scikit-learn's halving search because it lets the
caller own the evaluation loop — so every candidate is fitted by edgekit's own pipelines (the
ones that convert to ONNX), the budget is checked before every fit rather than per round, and
the leaderboard records exactly what was evaluated — while keeping the sampler and the
halving schedule in a well-kept library. scikit-learn's halving search cannot mix families or
stop on a wall-clock deadline; FLAML's tuner would put a second AutoML library (and its
own estimators) into the host install.

How the budget is spent
    1. Every family's defaults first, cheapest first (linear, LightGBM, XGBoost, forests, HGB,
       MLP; the optional ones when installed) — on tables whose validation folds hold fewer than
       ``PRECISE_FOLD_ROWS`` rows each cross-validated in full while the budget allows (one
       small fold is too noisy to drop a family on) — then the TPE sampler's proposals.
    2. A candidate is evaluated in stages: on tables of ``ROWS_HALVING_MIN`` rows or more, first
       on a quarter of the first fold's fitting rows; then fold by fold of the 5-fold split of
       the training rows. After each stage the pruner compares it with every candidate that
       reached the same stage and keeps the top third (successive halving, factor 3, at
       stages 1 and 3): a poor configuration costs one cheap fit, and only the finalists are
       cross-validated in full. Leaderboard scores are always full-fold means.
    3. Boosting families (HGB, LightGBM, XGBoost) stop early: a tenth of each fold's fitting
       rows decides when more trees stop paying, and the kept number of rounds becomes the
       configuration's tree count when the winner is refitted on all training rows.
    4. Before every fit its time is predicted from the family's measured seconds per unit of
       cost (trees × leaves, iterations, hidden units) and rows; a fit that would end past the
       budget — less the time the final refit of the current best will take — is not started.
       So the whole of ``train --model auto`` (search and final fit) keeps to the budget, up to
       the error of one prediction. A family's first fit on a larger table is preceded by a
       timed fit on ``PROBE_ROWS`` rows, so no family starts unmeasured. The first candidate
       always completes: there is always a model.

Choosing
    Among the candidates cross-validated in full, the best mean of the declared metric wins;
    equal means go to the smaller model (stored tree nodes / coefficients), then the faster
    one. A tuned configuration must beat the best family default by more than one standard
    error of that default's k-fold mean, or the default is kept: the best of a hundred noisy
    estimates is partly luck (measured: the best of 144 candidates on wine lost a holdout row
    to every family's defaults).

Reproducible: the sampler is seeded and the trials' order does not depend on time, so the same
seed proposes the same candidates in the same order; how many of them fit in the budget
depends on the machine (``max_trials`` fixes it). The run records the chosen family and
parameters, which reproduce the model exactly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from edgekit.boosting import fit_early_stopped, rounds_param
from edgekit.crossval import folds_for
from edgekit.data import FeatureInfo
from edgekit.errors import DataError
from edgekit.families import BOOSTING_FAMILIES, build_pipeline, families_for, model_size
from edgekit.metrics import METRICS, score
from edgekit.space import cost_units, default_point, suggest

DEFAULT_BUDGET_S = 30.0
ROWS_HALVING_MIN = 4000  # tables this large get a first stage on a quarter of the rows
REDUCTION_FACTOR = 3
MAX_CONSECUTIVE_SKIPS = 25  # proposals too costly for the time left, in a row: the search is over
REFIT_FACTOR = 1.25  # the final fit sees 5/4 of a fold's rows
PRECISE_FOLD_ROWS = 2000  # validation folds this large may drop a family's defaults early
PROBE_ROWS = 200  # a family's first fit is timed on this many rows before a full-size fit is risked

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class SearchResult:
    family: str
    params: dict[str, Any]
    oof: np.ndarray
    fold_scores: dict[str, list[float]]
    leaderboard: list[dict[str, Any]]
    metric: str
    greater_is_better: bool
    budget_s: float
    elapsed_s: float
    evaluated: int
    skipped: int = 0
    abandoned: int = 0
    cross_validated: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "time_budget_s": self.budget_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "optimiser": f"optuna {optuna.__version__}: TPE sampler, successive halving (factor {REDUCTION_FACTOR})",
            "evaluated": self.evaluated,
            "cross_validated": self.cross_validated,
            "stopped_early": self.evaluated - self.cross_validated,
            "skipped_over_budget": self.skipped,
            "abandoned_over_budget": self.abandoned,
            "failed": self.failed,
            "chosen": {"model": self.family, "params": self.params},
        }


@dataclass
class _Candidate:
    order: int
    family: str
    params: dict[str, Any]
    status: str = "running"  # complete | stopped (halving) | abandoned (budget) | failed
    scores: list[float] = field(default_factory=list)  # full folds, declared metric
    folds: dict[str, list[float]] = field(default_factory=dict)
    first_stage: float | None = None  # the row-subsample stage's score
    rows: int = 0  # fitting rows of the last stage evaluated
    fit_seconds: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    size: int = 0
    oof: np.ndarray | None = None
    default: bool = False  # the family's defaults (enqueued first)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.scores)) if self.scores else math.nan

    def final_params(self) -> dict[str, Any]:
        """The parameters the model is refitted with: a boosting family's early-stopped rounds
        (the median over the folds) replace its cap."""
        params = dict(self.params)
        if self.family in BOOSTING_FAMILIES and self.rounds:
            params[rounds_param(self.family)] = int(np.median(self.rounds))
            if self.family == "hgb":
                params["early_stopping"] = False
        return params


def search(
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    features: Sequence[FeatureInfo],
    metric: str,
    seed: int = 0,
    time_budget: float = DEFAULT_BUDGET_S,
    progress: ProgressFn | None = None,
    families: Sequence[str] | None = None,
    max_trials: int | None = None,
) -> SearchResult:
    """Search on (X, y) — the training split only. See the module docstring."""
    if not time_budget > 0:
        raise DataError(f"time budget {time_budget} is not positive", "give the search some seconds, e.g. 60")
    # One BLAS/OpenMP thread, as in training: on a busy host, spinning BLAS threads made a
    # logistic regression on iris take 0.3-0.8 s per fit instead of 0.02 s.
    with threadpool_limits(limits=1):
        return _search(X, y, task, features, metric, seed, time_budget, progress, families, max_trials)


def _search(
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    features: Sequence[FeatureInfo],
    metric: str,
    seed: int,
    time_budget: float,
    progress: ProgressFn | None,
    families: Sequence[str] | None,
    max_trials: int | None,
) -> SearchResult:
    spec = METRICS[metric]
    fams = list(families or families_for(task))
    started = time.perf_counter()
    end = started + time_budget
    sign = 1.0 if spec.greater_is_better else -1.0
    classes = np.unique(y) if task == "classification" else None
    stages = _stages(X, y, task, seed)
    n_stages = len(stages)
    protect_defaults = len(stages[-1][1]) < PRECISE_FOLD_ROWS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=len(fams) + 8,
            multivariate=True,
            group=True,
        )
    study = optuna.create_study(
        direction="maximize",
        sampler=sampler,
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR),
    )
    for fam in fams:
        study.enqueue_trial({"family": fam, **default_point(fam, task)})

    candidates: list[_Candidate] = []
    per_unit: dict[str, float] = {}  # family -> seconds per (cost unit × fitting row)
    skipped = consecutive_skips = 0
    seen: dict[str, float] = {}

    def best_complete() -> _Candidate | None:
        done = [c for c in candidates if c.status == "complete"]
        return min(done, key=lambda c: _rank_key(c, sign)) if done else None

    def fold_deadline() -> float:
        best = best_complete()
        reserve = float(np.mean(best.fit_seconds)) * REFIT_FACTOR if best is not None else 0.0
        return end - reserve

    while max_trials is None or len(study.trials) < max_trials:
        if candidates and time.perf_counter() >= fold_deadline():
            break
        trial = study.ask()
        family = trial.suggest_categorical("family", fams)
        params = suggest(trial, family, task)
        key = family + repr(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:  # the sampler proposed a configuration already measured
            study.tell(trial, seen[key])
            continue
        cand = _Candidate(order=len(candidates), family=family, params=params, default=trial.number < len(fams))
        first = not candidates
        for step, (fit_idx, val_idx, full) in enumerate(stages, start=1):
            units = cost_units(family, params) * len(fit_idx)
            if not first and family not in per_unit and time.perf_counter() >= fold_deadline() - 0.1 * time_budget:
                cand.status = "abandoned" if cand.rows else "skipped"  # too little time left to measure a new family
                break
            if not first and family not in per_unit and len(fit_idx) > 2 * PROBE_ROWS:
                # A family never fitted yet: time it on a small sample first (its fixed costs
                # make the rate an overestimate, which errs on the side of the budget).
                probe = _probe(family, params, X, y, fit_idx, task, seed, features)
                if probe is not None:
                    per_unit[family] = probe / max(cost_units(family, params) * PROBE_ROWS, 1.0)
            if not first and family in per_unit:
                if time.perf_counter() + per_unit[family] * units > fold_deadline():
                    cand.status = "abandoned" if cand.rows else "skipped"
                    break
            elif not first and time.perf_counter() >= fold_deadline():
                cand.status = "abandoned" if cand.rows else "skipped"
                break
            try:
                seconds = _evaluate_stage(cand, X, y, fit_idx, val_idx, full, task, seed, features, metric, classes)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
                cand.status = "failed"
                if progress:
                    progress({"event": "failed", "model": family, "params": params, "error": str(exc).splitlines()[0]})
                break
            per_unit[family] = seconds / max(units, 1.0)
            value = cand.mean if full else float(cand.first_stage or 0.0)
            trial.report(sign * value, step)
            # On small tables every family's defaults are cross-validated in full (their rung values
            # still count for the others): one fold of a few hundred rows is too noisy to drop a
            # whole family on. On large ones a fold is precise enough, and full-size fits are dear.
            if step < n_stages and trial.should_prune() and not (cand.default and protect_defaults):
                cand.status = "stopped"
                break
        else:
            cand.status = "complete"

        if cand.status == "skipped":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            skipped += 1
            consecutive_skips += 1
            if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                break
            continue
        consecutive_skips = 0
        if cand.status == "failed":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif cand.status == "complete":
            study.tell(trial, sign * cand.mean)
            seen[key] = sign * cand.mean
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        candidates.append(cand)
        if progress and cand.status != "failed":
            top = best_complete()
            progress(
                {
                    "event": "candidate",
                    "index": len(candidates),
                    "model": family,
                    "params": cand.final_params(),
                    "status": cand.status,
                    "folds": len(cand.scores),
                    "rows": cand.rows,
                    "cv_mean": cand.mean if cand.scores else float(cand.first_stage or math.nan),
                    "cv_std": cand.std if cand.scores else 0.0,
                    "fit_seconds": float(np.mean(cand.fit_seconds)) if cand.fit_seconds else 0.0,
                    "elapsed_s": time.perf_counter() - started,
                    "time_budget_s": time_budget,
                    "best": {"model": top.family, "cv_mean": top.mean} if top else {"model": family, "cv_mean": 0.0},
                    "metric": metric,
                }
            )

    complete = sorted((c for c in candidates if c.status == "complete"), key=lambda c: _rank_key(c, sign))
    if not complete:
        raise DataError(
            "no model could be fitted to this data",
            "check the target column and the features (every candidate failed)",
        )
    best = _choose(complete, sign)
    assert best.oof is not None
    return SearchResult(
        family=best.family,
        params=best.final_params(),
        oof=best.oof,
        fold_scores=best.folds,
        leaderboard=_leaderboard(candidates, best, sign),
        metric=metric,
        greater_is_better=spec.greater_is_better,
        budget_s=float(time_budget),
        elapsed_s=time.perf_counter() - started,
        evaluated=sum(c.status in ("complete", "stopped", "abandoned") for c in candidates),
        skipped=skipped,
        abandoned=sum(c.status == "abandoned" for c in candidates),
        cross_validated=len(complete),
        failed=sum(c.status == "failed" for c in candidates),
    )


Stage = tuple[np.ndarray, np.ndarray, bool]  # fitting rows, scoring rows, a full fold?


def _stages(X: np.ndarray, y: np.ndarray, task: str, seed: int) -> list[Stage]:
    """The evaluation stages: on large tables a quarter of the first fold's fitting rows first,
    then the 5 folds."""
    splits = list(folds_for(task, seed).split(X, y))
    stages: list[Stage] = []
    if len(y) >= ROWS_HALVING_MIN:
        fit_idx, val_idx = splits[0]
        stratify = y[fit_idx] if task == "classification" else None
        try:
            sub, _ = train_test_split(fit_idx, train_size=0.25, random_state=seed, stratify=stratify)
        except ValueError:  # a class too rare to stratify a quarter: plain sample
            sub, _ = train_test_split(fit_idx, train_size=0.25, random_state=seed)
        if task != "classification" or len(np.unique(y[sub])) == len(np.unique(y)):
            stages.append((np.sort(sub), val_idx, False))
    stages.extend((fit_idx, val_idx, True) for fit_idx, val_idx in splits)
    return stages


def _probe(
    family: str,
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    fit_idx: np.ndarray,
    task: str,
    seed: int,
    features: Sequence[FeatureInfo],
) -> float | None:
    """Seconds to fit ``family`` on ``PROBE_ROWS`` of the fitting rows (None if it cannot)."""
    rows = np.random.default_rng(seed).choice(fit_idx, size=PROBE_ROWS, replace=False)
    if task == "classification" and len(np.unique(y[rows])) < len(np.unique(y)):
        return None
    pipeline = build_pipeline(family, seed, task, features, params)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if family in BOOSTING_FAMILIES:
                fit_early_stopped(family, pipeline, X[rows], y[rows], task, seed)
            else:
                clone(pipeline).fit(X[rows], y[rows])
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    return time.perf_counter() - t0


def _evaluate_stage(
    cand: _Candidate,
    X: np.ndarray,
    y: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    full: bool,
    task: str,
    seed: int,
    features: Sequence[FeatureInfo],
    metric: str,
    classes: np.ndarray | None,
) -> float:
    """Fit one stage, score it, record it on ``cand``; returns the fit's seconds."""
    pipeline = build_pipeline(cand.family, seed, task, features, cand.params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Proposals include configurations that stop before converging; their score already
        # says how good they are, and a hundred warnings would bury the progress.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*does not have valid feature names")
        if cand.family in BOOSTING_FAMILIES:
            fitted, rounds = fit_early_stopped(cand.family, pipeline, X[fit_idx], y[fit_idx], task, seed)
        else:
            fitted, rounds = clone(pipeline).fit(X[fit_idx], y[fit_idx]), 0
        output = fitted.predict_proba(X[val_idx]) if classes is not None else fitted.predict(X[val_idx])
    seconds = time.perf_counter() - t0
    if classes is not None and output.shape[1] != len(classes):
        raise ValueError("a class is missing from a fitting split")
    value = score(metric, y[val_idx], output, classes)
    if not math.isfinite(value):
        raise FloatingPointError(f"{metric} is not finite")
    cand.rows = len(fit_idx)
    cand.fit_seconds.append(seconds)
    if not full:
        cand.first_stage = value
        return seconds
    if rounds:
        cand.rounds.append(rounds)
    if not cand.scores:
        cand.size = model_size(fitted)
        cand.oof = np.zeros((len(y), len(classes)) if classes is not None else (len(y),), dtype=np.float64)
    assert cand.oof is not None
    cand.oof[val_idx] = output
    cand.scores.append(value)
    names = dict.fromkeys([metric, "accuracy" if classes is not None else "r2"])
    for name in names:
        fold_value = value if name == metric else score(name, y[val_idx], output, classes)
        cand.folds.setdefault(name, []).append(fold_value)
    return seconds


def _rank_key(c: _Candidate, sign: float) -> tuple[float, int, float, int]:
    """Best mean first; equal means (to 1e-9) to the smaller model, then the faster one."""
    return (round(-sign * c.mean, 9), c.size, float(np.mean(c.fit_seconds)), c.order)


def _choose(ranked: list[_Candidate], sign: float) -> _Candidate:
    """The winner: the best cross-validated candidate, except that a tuned configuration must
    beat the best family default by more than the noise of the comparison (one standard error of
    the default's k-fold mean, ``std / sqrt(k)``); otherwise that default wins."""
    defaults = [c for c in ranked if c.default]
    top = ranked[0]
    if not defaults or top is defaults[0]:
        return top
    best_default = defaults[0]
    margin = best_default.std / math.sqrt(len(best_default.scores))
    return top if sign * (top.mean - best_default.mean) > margin else best_default


def _leaderboard(candidates: list[_Candidate], best: _Candidate, sign: float) -> list[dict[str, Any]]:
    """Every evaluated candidate: the fully cross-validated ones ranked by score, then those the
    halving stopped, by their partial score (``folds`` says how many folds it is a mean of)."""
    shown = [c for c in candidates if c.status in ("complete", "stopped", "abandoned")]
    complete = sorted((c for c in shown if c.status == "complete"), key=lambda c: _rank_key(c, sign))
    partial = sorted(
        (c for c in shown if c.status != "complete"),
        key=lambda c: (len(c.scores) == 0, -sign * (c.mean if c.scores else (c.first_stage or 0.0)), c.order),
    )
    board = []
    for rank, c in enumerate([*complete, *partial], start=1):
        mean = c.mean if c.scores else float(c.first_stage if c.first_stage is not None else math.nan)
        board.append(
            {
                "rank": rank,
                "model": c.family,
                "params": c.final_params(),
                "status": c.status,
                "folds": len(c.scores),
                "rows": c.rows,
                "cv_mean": mean,
                "cv_std": c.std if c.scores else 0.0,
                "fit_seconds": round(float(np.mean(c.fit_seconds)), 4) if c.fit_seconds else 0.0,
                "cv_seconds": round(float(np.sum(c.fit_seconds)), 4),
                "size": c.size,
                "chosen": c is best,
            }
        )
    return board
