"""Prometheus metrics of the API server, in a registry of its own (never the global one).

The app, endpoint and broker figures are read from :class:`~processors.api.health.HealthMonitor`
at scrape time, so ``/metrics`` and ``/api/v1/status`` always agree.  Inbound webhook counters
are kept here.

========================================================  =======  ======================================
metric                                                    type     labels
========================================================  =======  ======================================
``processors_ready``                                      gauge    (1 ready, 0 not)
``processors_broker_reachable``                           gauge
``processors_app_assigned_partitions``                    gauge    app
``processors_app_records_processed_total``                counter  app
``processors_app_records_failed_total``                   counter  app
``processors_app_outputs_total``                          counter  app
``processors_app_rebalances_total``                       counter  app
``processors_app_backpressure_pauses_total``              counter  app
``processors_app_duplicates_dropped_total``                counter  app (event ids answered before)
``processors_app_last_success_timestamp_seconds``         gauge    app
``processors_app_failures_total``                         counter  app, error_class, destination
``processors_app_transactions_total``                     counter  app, outcome (committed|aborted)
``processors_consumer_lag``                               gauge    app, group, topic, partition
``processors_retry_tier_depth``                           gauge    app, tier, delay
``processors_bordereaux_period_close_lag_seconds``        gauge    app, calendar
``processors_endpoint_breaker_state``                     gauge    endpoint, state (1 for the current)
``processors_endpoint_calls_total``                       counter  endpoint, outcome (success|failure)
``processors_endpoint_rejections_total``                  counter  endpoint (refused by an open breaker)
``processors_endpoint_breaker_opened_total``              counter  endpoint
``processors_endpoint_breaker_transitions_total``         counter  endpoint, from, to
``processors_endpoint_error_rate``                        gauge    endpoint (over the status window)
``processors_endpoint_last_success_timestamp_seconds``    gauge    endpoint
``processors_endpoint_last_failure_timestamp_seconds``    gauge    endpoint
``processors_inbound_requests_total``                     counter  provider, outcome
``processors_inbound_publish_seconds``                    histo.   provider
``processors_inbound_dedupe_entries``                     gauge
``processors_inbound_dedupe_markers_total``               counter  outcome (written|failed|learned)
``processors_webhook_deliveries_total``                   counter  subscription (capped), outcome
``processors_webhook_deliveries_overflow_total``          counter
``processors_webhook_subscriptions_labelled``             gauge
========================================================  =======  ======================================

The webhook delivery families come from the webhooks app's
:class:`~processors.observability.webhook_metrics.WebhookDeliveryMetrics` and appear only in a
process that runs that app; the transaction and period-close families have samples only for
apps that have transactions (exactly-once) or reporting periods (bordereaux), and the tier
depth only for tiers whose lag is known.

Duplicates refused are ``processors_inbound_requests_total{outcome="duplicate"}``.  The markers
are those of the topic of seen ids shared by the API instances (:mod:`processors.api.dedupe`):
``written`` after a publication, ``failed`` when one could not be written, ``learned`` when a
marker told this instance of an id it did not know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from processors.api.health import HealthMonitor
from processors.observability.webhook_metrics import WebhookDeliveryMetrics
from processors.resilience.breaker import BreakerState

__all__ = ["CONTENT_TYPE", "ApiMetrics", "InboundOutcome"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class InboundOutcome:
    """Values of the ``outcome`` label of ``processors_inbound_requests_total``."""

    ACCEPTED: Final = "accepted"
    DUPLICATE: Final = "duplicate"
    IGNORED: Final = "ignored"
    BAD_SIGNATURE: Final = "bad_signature"
    MALFORMED: Final = "malformed"
    TOO_LARGE: Final = "too_large"
    NOT_CONFIGURED: Final = "not_configured"
    NOT_IMPLEMENTED: Final = "not_implemented"
    UNAVAILABLE: Final = "unavailable"


class ApiMetrics:
    """The registry, the inbound instruments and (with ``health``) the status collector."""

    def __init__(
        self,
        health: HealthMonitor | None = None,
        *,
        dedupe_size: Callable[[], int] | None = None,
        dedupe_markers: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._inbound = Counter(
            "processors_inbound_requests",
            "Inbound webhook requests by provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self._publish_s = Histogram(
            "processors_inbound_publish_seconds",
            "Time from a verified inbound request to the broker's acknowledgement of its record.",
            ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self._counts: dict[str, dict[str, int]] = {}
        if dedupe_size is not None:
            gauge = Gauge(
                "processors_inbound_dedupe_entries",
                "Provider event ids remembered for de-duplication.",
                registry=self.registry,
            )
            gauge.set_function(lambda: float(dedupe_size()))
        if dedupe_markers is not None:
            self.registry.register(_MarkersCollector(dedupe_markers))
        if health is not None:
            self.registry.register(_StatusCollector(health))

    def inbound(self, provider: str, outcome: str) -> None:
        self._inbound.labels(provider=provider, outcome=outcome).inc()
        by_outcome = self._counts.setdefault(provider, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1

    def publish_seconds(self, provider: str, seconds: float) -> None:
        self._publish_s.labels(provider=provider).observe(seconds)

    def inbound_counts(self) -> dict[str, dict[str, int]]:
        """Inbound requests by provider and outcome (for the status document)."""
        return {provider: dict(sorted(counts.items())) for provider, counts in sorted(self._counts.items())}

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _MarkersCollector(Collector):
    """``processors_inbound_dedupe_markers_total``, read from the topic of seen ids' counters."""

    OUTCOMES: Final = ("written", "failed", "learned")

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterable[Metric]:
        counts = self._counts()
        family = CounterMetricFamily(
            "processors_inbound_dedupe_markers",
            "Markers of the topic of seen inbound ids: written after a publication, failed (not "
            "written), learned (an id published by another instance, or before a restart).",
            labels=["outcome"],
        )
        for outcome in self.OUTCOMES:
            family.add_metric([outcome], float(counts.get(outcome, 0)))
        yield family


_BREAKER_TRANSITIONS: Final = (
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
)
"""The transitions a breaker can make: each is exposed from zero, so a rate is defined at once."""


class _StatusCollector(Collector):
    def __init__(self, health: HealthMonitor) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterable[Metric]:
        health = self._health
        readiness = health.last_readiness
        if readiness is not None:
            ready = GaugeMetricFamily("processors_ready", "1 when the process is ready (see /readyz).")
            ready.add_metric([], 1.0 if readiness.ready else 0.0)
            yield ready
        broker = health.broker.last if health.broker is not None else None
        if broker is not None:
            reachable = GaugeMetricFamily(
                "processors_broker_reachable", "1 when the latest broker metadata request succeeded."
            )
            reachable.add_metric([], 1.0 if broker.reachable else 0.0)
            yield reachable
        yield from self._apps()
        yield from self._endpoints()
        yield from self._latency()
        yield from self._webhook_deliveries()

    def _webhook_deliveries(self) -> Iterable[Metric]:
        """The delivery counters of the webhooks app, when this process runs it."""
        for engine in self._health.engines:
            deliveries = getattr(engine.processor, "deliveries", None)
            if isinstance(deliveries, WebhookDeliveryMetrics):
                yield from deliveries.collect()

    def _latency(self) -> Iterable[Metric]:
        """Call durations per endpoint and outcome.  Partner webhook endpoints (one breaker per
        subscription) are summed into ``partner-webhooks``: the series stay bounded whatever the
        number of partners."""
        breakers = self._health.breakers
        if breakers is None:
            return
        merged: dict[tuple[str, str], tuple[list[tuple[str, int]], float]] = {}
        for breaker in breakers:
            endpoint = "partner-webhooks" if breaker.endpoint.startswith("webhook:") else breaker.endpoint
            for outcome, (buckets, total) in breaker.latency.snapshot().items():
                key = (endpoint, outcome)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = (list(buckets), total)
                else:
                    summed = [(le, a + b) for (le, a), (_, b) in zip(seen[0], buckets, strict=True)]
                    merged[key] = (summed, seen[1] + total)
        family = HistogramMetricFamily(
            "processors_endpoint_call_seconds",
            "Duration of calls that reached the endpoint, by outcome (success, failure, rejected: "
            "a business refusal).",
            labels=["endpoint", "outcome"],
        )
        for (endpoint, outcome), (buckets, total) in sorted(merged.items()):
            family.add_metric([endpoint, outcome], buckets=buckets, sum_value=total)
        yield family

    def _apps(self) -> Iterable[Metric]:
        apps = self._health.apps()
        assigned = GaugeMetricFamily(
            "processors_app_assigned_partitions", "Partitions assigned to the app's consumer.", labels=["app"]
        )
        processed = CounterMetricFamily(
            "processors_app_records_processed", "Records the app processed successfully.", labels=["app"]
        )
        failed = CounterMetricFamily(
            "processors_app_records_failed",
            "Records whose handling failed (sent to a retry tier or the DLQ).",
            labels=["app"],
        )
        outputs = CounterMetricFamily("processors_app_outputs", "Records the app produced.", labels=["app"])
        rebalances = CounterMetricFamily(
            "processors_app_rebalances", "Assignments and revocations seen by the app.", labels=["app"]
        )
        pauses = CounterMetricFamily(
            "processors_app_backpressure_pauses",
            "Times the app paused its partitions because an endpoint refused calls.",
            labels=["app"],
        )
        duplicates = CounterMetricFamily(
            "processors_app_duplicates_dropped",
            "Records dropped because the app had already answered their event id (dedupe window).",
            labels=["app"],
        )
        last_success = GaugeMetricFamily(
            "processors_app_last_success_timestamp_seconds",
            "Unix time of the app's last successfully processed record.",
            labels=["app"],
        )
        lag = GaugeMetricFamily(
            "processors_consumer_lag",
            "Records not yet committed by the app's group, per assigned partition (librdkafka's view).",
            labels=["app", "group", "topic", "partition"],
        )
        failures = CounterMetricFamily(
            "processors_app_failures",
            "Failed records by error class and where the failure route sent them: retry (a retry "
            "tier), dead_letter (the DLQ), parked (the parking topic: failed again after the "
            "replay limit).",
            labels=["app", "error_class", "destination"],
        )
        tier_depth = GaugeMetricFamily(
            "processors_retry_tier_depth",
            "Records waiting in the app's retry tier (tier = index from 0, delay = the tier's "
            "delay): the group's consumer lag summed over the tier topic's partitions this "
            "instance holds (librdkafka's statistics, no extra broker request).  Sum over "
            "instances for the tier's total.  A partition paused until its head record is due "
            "is not fetched: records written to it meanwhile show when it resumes.",
            labels=["app", "tier", "delay"],
        )
        transactions = CounterMetricFamily(
            "processors_app_transactions",
            "Kafka transactions of an exactly-once app: committed (outputs, state and offsets "
            "made visible together) or aborted (nothing of the step visible; the loop reads it "
            "again, the engine stops and a new member resumes).  Only apps that use transactions.",
            labels=["app", "outcome"],
        )
        close_lag = GaugeMetricFamily(
            "processors_bordereaux_period_close_lag_seconds",
            "How many seconds the oldest reporting period still open is past its closing time "
            "(period end + grace) by the wall clock, per calendar (treaty:<number>, regulatory "
            "for the day files); 0 while no open period is past due.  Periods close in event "
            "time, so this grows when event time stalls: no events or a silent source partition, "
            "a stuck loop, late upstream.  Max over this instance's ledger partitions; take the "
            "max over instances.",
            labels=["app", "calendar"],
        )
        for app in apps:
            for index, delay, records in app.retry_tiers:
                tier_depth.add_metric([app.name, str(index), delay], float(records))
            if app.transactions is not None:
                committed, aborted = app.transactions
                transactions.add_metric([app.name, "committed"], float(committed))
                transactions.add_metric([app.name, "aborted"], float(aborted))
            for calendar, seconds in app.period_close_lag:
                close_lag.add_metric([app.name, calendar], seconds)
            for error_class, destination, count in app.failures:
                failures.add_metric([app.name, error_class, destination], float(count))
            for topic, partition, records in app.lag:
                lag.add_metric([app.name, app.group, topic, str(partition)], float(records))
            labels = [app.name]
            assigned.add_metric(labels, float(len(app.partitions)))
            processed.add_metric(labels, float(app.processed))
            failed.add_metric(labels, float(app.failed))
            outputs.add_metric(labels, float(app.outputs))
            rebalances.add_metric(labels, float(app.rebalances))
            pauses.add_metric(labels, float(app.backpressure_pauses))
            duplicates.add_metric(labels, float(app.duplicates_dropped))
            if app.last_success_at is not None:
                last_success.add_metric(labels, app.last_success_at)
        yield from (
            assigned,
            processed,
            failed,
            outputs,
            rebalances,
            pauses,
            duplicates,
            last_success,
            lag,
            failures,
            tier_depth,
            transactions,
            close_lag,
        )

    def _endpoints(self) -> Iterable[Metric]:
        endpoints = self._health.endpoints()
        state = GaugeMetricFamily(
            "processors_endpoint_breaker_state",
            "Circuit breaker state of the endpoint: 1 for the current state, 0 for the others.",
            labels=["endpoint", "state"],
        )
        calls = CounterMetricFamily(
            "processors_endpoint_calls",
            "Calls that reached the endpoint, by outcome as the breaker counts it.",
            labels=["endpoint", "outcome"],
        )
        rejections = CounterMetricFamily(
            "processors_endpoint_rejections", "Calls refused by the open breaker.", labels=["endpoint"]
        )
        opened = CounterMetricFamily(
            "processors_endpoint_breaker_opened", "Times the endpoint's breaker opened.", labels=["endpoint"]
        )
        transitions = CounterMetricFamily(
            "processors_endpoint_breaker_transitions",
            "State changes of the endpoint's breaker, from one state to another: closed->open "
            "(failures reached the threshold), open->half_open (the open period ended), "
            "half_open->closed (the probes succeeded), half_open->open (a probe failed).",
            labels=["endpoint", "from", "to"],
        )
        error_rate = GaugeMetricFamily(
            "processors_endpoint_error_rate",
            "Failures / calls over the status window (absent when no call reached the endpoint).",
            labels=["endpoint"],
        )
        last_success = GaugeMetricFamily(
            "processors_endpoint_last_success_timestamp_seconds",
            "Unix time of the endpoint's last successful call.",
            labels=["endpoint"],
        )
        last_failure = GaugeMetricFamily(
            "processors_endpoint_last_failure_timestamp_seconds",
            "Unix time of the endpoint's last failed call.",
            labels=["endpoint"],
        )
        for status in endpoints:
            name = status.endpoint
            for candidate in BreakerState:
                state.add_metric([name, candidate.value], 1.0 if status.state is candidate else 0.0)
            calls.add_metric([name, "success"], float(status.total_successes))
            calls.add_metric([name, "failure"], float(status.total_failures))
            rejections.add_metric([name], float(status.rejections))
            opened.add_metric([name], float(status.opened_count))
            made = {(old, new): count for old, new, count in status.transitions}
            for old, new in sorted({*_BREAKER_TRANSITIONS, *made}):
                transitions.add_metric([name, old.value, new.value], float(made.get((old, new), 0)))
            if status.error_rate is not None:
                error_rate.add_metric([name], status.error_rate)
            if status.last_success_at is not None:
                last_success.add_metric([name], status.last_success_at)
            if status.last_failure_at is not None:
                last_failure.add_metric([name], status.last_failure_at)
        yield from (state, calls, rejections, opened, transitions, error_rate, last_success, last_failure)
