"""The trial's verdict: is the new model worse than the one it replaces?

The engine only counts (rows served and rejected, their latency) for the model on trial and,
as the baseline, for the model it replaced since that one started serving; the probe measured
what each model's load and health check added to memory. :func:`judge` compares them, in the
core, with limits from :class:`~device_agent.config.CoreSettings`. Before this, a row error
never counted against a new model: a 4-feature model fed 13-feature rows rejected every row,
passed its trial on the clock and was committed.

Each comparison needs a baseline and a margin, so noise on a few rows cannot fail a good
model: a rejection rate is compared only over ``trial_min_rows`` rows, a latency only when it
is both ``trial_max_latency_ratio`` times and ``trial_latency_slack_s`` above the old one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CoreSettings


@dataclass(frozen=True)
class TrialReport:
    """What the engine saw during a trial, and of the replaced model before it."""

    rows: int  # rows the new model was given (served + rejected by it)
    rejected: int  # of those, rows it could not answer (wrong shape, bad values, its own failures)
    latency_s: float | None  # median time per served row on trial
    base_rows: int = 0  # rows the replaced model was given since it started serving
    base_rejected: int = 0
    base_latency_s: float | None = None

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0

    @property
    def base_reject_rate(self) -> float:
        return self.base_rejected / self.base_rows if self.base_rows else 0.0


def judge(
    report: TrialReport,
    settings: CoreSettings,
    memory: int | None = None,
    base_memory: int | None = None,
) -> str | None:
    """Why the new model regressed against the one it replaces, or None if it did not.
    ``memory`` / ``base_memory``: bytes each model's load and health check added (the probe's)."""
    if report.rows >= settings.trial_min_rows and report.base_rows >= settings.trial_min_rows:
        rise = report.reject_rate - report.base_reject_rate
        if rise > settings.trial_max_reject_increase:
            return (
                f"it rejected {report.rejected} of {report.rows} live rows ({report.reject_rate:.0%}); "
                f"the model it replaces rejected {report.base_reject_rate:.0%}"
            )
    new, old = report.latency_s, report.base_latency_s
    slower = new is not None and old is not None and new > old * settings.trial_max_latency_ratio
    if slower and new is not None and old is not None and new - old > settings.trial_latency_slack_s:
        return f"its median latency is {new * 1e3:.2f} ms per row; the model it replaces took {old * 1e3:.2f} ms"
    if memory is not None and base_memory is not None:
        limit = settings.trial_max_memory_ratio
        if memory > base_memory * limit and memory - base_memory > settings.trial_memory_slack_bytes:
            mib, base_mib = memory / 2**20, base_memory / 2**20
            return f"it needs {mib:.0f} MiB to load and run; the model it replaces needed {base_mib:.0f} MiB"
    return None
