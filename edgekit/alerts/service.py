"""The alert rules inside ``edgekit serve``: read what arrived, evaluate, store the changes,
publish them retained on the alerts topic, run ``--on-alert``.

Only the collector that holds the store's leader lock evaluates (with SQLite, the only
one), so several collectors sharing a PostgreSQL raise each alert once. The open alerts are
read back from the store when a collector starts or takes over, so a restart neither
forgets a firing alert nor raises it again.

Topic: ``{prefix}/alerts/{h}``, ``h`` a hash of the alert's key (feature names may hold
characters a topic level cannot), retained, QoS 1; the document is ``edgekit.alert/1``. A
resolved alert stays retained for ``retain_resolved_s``, then its topic is cleared, unless
the same key fires again meanwhile (the new instance took the topic over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..fleet.status import DeviceStatus
from ..telemetry import TelemetryStore
from .alert import RULES, SEVERITIES, severity_rank, topic_key
from .catalog import BundleCatalog
from .config import AlertConfig
from .engine import AlertBook, Change
from .gather import FactsReader
from .notify import OUTCOMES, CommandRunner
from .rules import evaluate

log = logging.getLogger("edgekit.alerts")
Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


def alert_topic(prefix: str, key: str) -> str:
    return f"{prefix}/alerts/{topic_key(key)}"


class AlertService:
    def __init__(
        self,
        config: AlertConfig,
        catalog: BundleCatalog,
        prefix: str,
        publish: Publish | None = None,
        runner: CommandRunner | None = None,
    ) -> None:
        self.config = config
        self.prefix = prefix
        self.publish = publish
        self.runner = runner
        self.reader = FactsReader(config, catalog)
        self.book: AlertBook | None = None
        self.changes = {(rule, kind): 0 for rule in RULES for kind in ("fired", "escalated", "resolved")}
        self.evaluations = 0
        self.seconds = 0.0

    def reset(self) -> None:
        """After a failed step: read everything afresh, and the open alerts from the store."""
        self.book = None
        self.reader.reset()

    def step(
        self, store: TelemetryStore, statuses: Mapping[str, DeviceStatus] | None = None, now: float | None = None
    ) -> list[Change]:
        """One run: ``statuses`` default to the store's latest (fresh, so a Will counts at once)."""
        started = time.perf_counter()
        now = time.time() if now is None else now
        if self.book is None:
            self.book = AlertBook(store.alerts(state="firing"))
        facts = self.reader.read(store, store.latest() if statuses is None else statuses, now)
        findings, ran = evaluate(facts, self.config)
        changes = self.book.apply(findings, ran, now)
        try:
            store.save_alerts([c.alert for c in changes])
        except Exception:
            self.book = None  # what the store holds is the truth: read it again next time
            raise
        for c in changes:
            if not c.told:
                continue
            if (c.alert.rule, c.kind) in self.changes:
                self.changes[(c.alert.rule, c.kind)] += 1
            log.info("alert %s: %s (%s)", c.kind, c.alert.summary, c.alert.severity)
            if self.publish is not None:
                self.publish(alert_topic(self.prefix, c.alert.key), c.alert.encode(), True)
            if self.runner is not None and severity_rank(c.alert.severity) >= severity_rank(self.config.notify):
                self.runner.submit(c.alert)
        self._clear_resolved(store, now)
        self.evaluations += 1
        self.seconds += time.perf_counter() - started
        return changes

    def _clear_resolved(self, store: TelemetryStore, now: float) -> None:
        old = store.resolved_to_clear(now - self.config.retain_resolved_s)
        if not old:
            return
        firing = self.book.open if self.book is not None else {}
        for alert in old:
            if self.publish is not None and alert.key not in firing:
                self.publish(alert_topic(self.prefix, alert.key), b"", True)
        store.mark_cleared([a.id for a in old], now)

    # ── Prometheus (CollectorMetrics.register) ──────────────────────────────────────

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        firing = GaugeMetricFamily(
            "edgekit_alerts", "Alerts firing now, by rule and severity (leader only)", labels=["rule", "severity"]
        )
        counts = {(r, s): 0 for r in RULES for s in SEVERITIES}
        for alert in self.book.open.values() if self.book is not None else []:
            if (alert.rule, alert.severity) in counts:
                counts[(alert.rule, alert.severity)] += 1
        for (rule, severity), n in counts.items():
            firing.add_metric([rule, severity], n)
        yield firing
        changes = CounterMetricFamily(
            "edgekit_alert_changes", "Alerts fired, escalated and resolved by this process", labels=["rule", "kind"]
        )
        for (rule, kind), n in self.changes.items():
            changes.add_metric([rule, kind], n)
        yield changes
        runs = CounterMetricFamily(
            "edgekit_alert_commands", "--on-alert runs by outcome (ok, failed, timeout, dropped)", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            runs.add_metric([outcome], self.runner.counts[outcome] if self.runner is not None else 0)
        yield runs
        spent = CounterMetricFamily("edgekit_alert_evaluation_seconds", "Time spent evaluating alert rules")
        spent.add_metric([], self.seconds)
        yield spent
