"""What the portal projector did, for ``/metrics`` (a collector; the API registers it).

================================================================  =======  ======================
metric                                                            type     labels
================================================================  =======  ======================
``processors_portal_records_total``                               counter  topic, outcome
``processors_portal_store_errors_total``                          counter
``processors_portal_caught_up``                                   gauge    (1 caught up, 0 not)
``processors_portal_last_applied_timestamp_seconds``              gauge
================================================================  =======  ======================

``outcome`` is ``applied`` (the row change was written), ``skipped`` (the record could not be
read: bad input, to look at) or ``ignored`` (a valid record the store does not project).  The
five topics are the only ``topic`` values.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from processors.portal.projector import Projector

__all__ = ["PortalMetrics"]


class PortalMetrics(Collector):
    """Reads the projector's counters at scrape time."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    def collect(self) -> Iterable[Metric]:
        stats = self.projector.stats
        records = CounterMetricFamily(
            "processors_portal_records",
            "Records of the portal's source topics, by outcome (skipped: could not be read)",
            labels=["topic", "outcome"],
        )
        for topic in sorted(self.projector.topics.sources()):
            for outcome, counts in (
                ("applied", stats.applied),
                ("skipped", stats.skipped),
                ("ignored", stats.ignored),
            ):
                records.add_metric([topic, outcome], counts.get(topic, 0))
        yield records
        yield CounterMetricFamily(
            "processors_portal_store_errors",
            "Batches the portal store failed to write (read again from the stored offsets)",
            value=stats.store_errors,
        )
        yield GaugeMetricFamily(
            "processors_portal_caught_up",
            "1 when the portal store held every record of its topics at the last check",
            value=1 if self.projector.caught_up() else 0,
        )
        last = GaugeMetricFamily(
            "processors_portal_last_applied_timestamp_seconds",
            "When the portal projector last committed a batch (epoch seconds)",
        )
        if stats.last_applied_at is not None:
            last.add_metric([], stats.last_applied_at)
        yield last
