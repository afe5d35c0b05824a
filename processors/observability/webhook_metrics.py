"""Webhook delivery outcomes per subscription, for ``/metrics``, with bounded label values.

The webhooks app calls :meth:`WebhookDeliveryMetrics.count` once per delivery outcome (the
line it writes to the delivery log); the API's ``/metrics`` collects it.  The module imports no
part of the API or of the webhooks app, so both can depend on it.

**Bounded cardinality.**  The first ``max_subscriptions`` subscriptions seen by this process
(default 500) keep their id as the ``subscription`` label; any later one is counted under
``subscription="other"``, and ``processors_webhook_deliveries_overflow_total`` counts the
deliveries that went there.  Every labelled subscription exposes all five outcomes (zero until
they happen), so a success ratio is defined as soon as the subscription saw one delivery.  A
subscription keeps its label for the life of the process, deleted or not: counters never go
back.

**Cost.**  A count is one dict lookup of ``(subscription, outcome)`` and an increment of a
cached cell; the label decision is taken once per pair.  The counts are plain integers
written on the event loop (one writer); a scrape reads them.

==========================================================  =======  ============================
metric                                                      type     labels
==========================================================  =======  ============================
``processors_webhook_deliveries_total``                     counter  subscription, outcome
``processors_webhook_deliveries_overflow_total``            counter
``processors_webhook_subscriptions_labelled``               gauge
==========================================================  =======  ============================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DEFAULT_MAX_SUBSCRIPTIONS", "OTHER", "OUTCOMES", "WebhookDeliveryMetrics"]

OUTCOMES: Final = ("delivered", "failed", "refused", "skipped", "disabled")
"""The delivery-log statuses: ``delivered`` (2xx), ``failed`` (not delivered: an error answer,
a timeout, an open breaker, a busy endpoint; retried or dead-lettered), ``refused`` (the partner
address resolved to a forbidden network), ``skipped`` (subscription deleted, inactive or
disabled: not sent), ``disabled`` (the endpoint answered 410 and was disabled)."""

OTHER: Final = "other"
"""The ``subscription`` label of every subscription past the cap."""

DEFAULT_MAX_SUBSCRIPTIONS: Final = 500

_CACHED_OVERFLOW_KEYS_PER_LABEL: Final = 20
"""Pairs of unlabelled subscriptions cached (per label slot) before the lookups stop caching
them: memory stays bounded however many subscriptions come and go."""


class WebhookDeliveryMetrics(Collector):
    """Delivery outcomes by subscription (capped) and outcome; see the module doc."""

    def __init__(self, max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS) -> None:
        if max_subscriptions < 0:
            raise ValueError(f"max_subscriptions must be ≥ 0 (got {max_subscriptions})")
        self.max_subscriptions = max_subscriptions
        self._labelled: dict[str, dict[str, list[int]]] = {}
        """Subscription label → outcome → its one-element count cell."""
        self._other: dict[str, list[int]] = {outcome: [0] for outcome in OUTCOMES}
        self._cells: dict[tuple[str, str], list[int]] = {}
        """(subscription id, outcome) → the cell a delivery increments: the cache of the hot path."""
        self._cache_limit = max(1, max_subscriptions) * len(OUTCOMES) * _CACHED_OVERFLOW_KEYS_PER_LABEL

    def count(self, subscription: str, outcome: str) -> None:
        """One delivery of ``subscription`` ended with ``outcome`` (one of :data:`OUTCOMES`)."""
        cell = self._cells.get((subscription, outcome))
        if cell is None:
            cell = self._resolve(subscription, outcome)
        cell[0] += 1

    def _resolve(self, subscription: str, outcome: str) -> list[int]:
        cells = self._labelled.get(subscription)
        if cells is None and len(self._labelled) < self.max_subscriptions:
            cells = self._labelled[subscription] = {name: [0] for name in OUTCOMES}
        if cells is None:
            cells = self._other
        cell = cells.get(outcome)
        if cell is None:  # an outcome outside OUTCOMES: counted, under its own name
            cell = cells[outcome] = [0]
        if subscription in self._labelled or len(self._cells) < self._cache_limit:
            self._cells[(subscription, outcome)] = cell
        return cell

    # -- reading ----------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries by subscription label (``other`` included) and outcome."""
        out = {sub: {o: c[0] for o, c in cells.items()} for sub, cells in self._labelled.items()}
        out[OTHER] = {o: c[0] for o, c in self._other.items()}
        return out

    @property
    def overflow(self) -> int:
        """Deliveries counted under ``subscription="other"``."""
        return sum(cell[0] for cell in self._other.values())

    def describe(self) -> Iterable[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterable[Metric]:
        deliveries = CounterMetricFamily(
            "processors_webhook_deliveries",
            "Webhook deliveries by subscription and outcome: delivered (2xx), failed (an error "
            "answer, timeout, open breaker or busy endpoint; retried or dead-lettered), refused "
            "(forbidden address), skipped (subscription deleted, inactive or disabled), disabled "
            f"(410 Gone).  The first {self.max_subscriptions} subscriptions seen keep their id; "
            f'later ones count under subscription="{OTHER}".',
            labels=["subscription", "outcome"],
        )
        for sub, cells in list(self._labelled.items()):
            for outcome, cell in list(cells.items()):
                deliveries.add_metric([sub, outcome], float(cell[0]))
        for outcome, cell in list(self._other.items()):
            deliveries.add_metric([OTHER, outcome], float(cell[0]))
        overflow = CounterMetricFamily(
            "processors_webhook_deliveries_overflow",
            f'Deliveries counted under subscription="{OTHER}" because {self.max_subscriptions} '
            "subscriptions already had a label of their own (non-zero: per-subscription ratios "
            "are incomplete; see /api/v1/status for every endpoint).",
        )
        overflow.add_metric([], float(self.overflow))
        labelled = GaugeMetricFamily(
            "processors_webhook_subscriptions_labelled",
            f"Subscriptions with a subscription label of their own (at most {self.max_subscriptions}).",
        )
        labelled.add_metric([], float(len(self._labelled)))
        yield from (deliveries, overflow, labelled)
