"""Answered event ids: the window, the bound, the markers, restore and the app template."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from processors.runtime.dedupe import AnsweredIds
from processors.runtime.message import KafkaMessage, OutRecord, StaticMessage
from processors.topics.catalogue import CatalogueError, parse_catalogue

TOPIC = "integrations.payments.dedupe"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_id_is_answered_within_its_window_and_only_in_its_partition() -> None:
    clock = Clock()
    ids = AnsweredIds(TOPIC, 60, None, clock=clock)
    ids.remember(2, b"e1")
    assert ids.answered(2, b"e1") is not None
    assert ids.answered(3, b"e1") is None
    assert ids.answered(2, b"e2") is None
    clock.now += 59
    assert ids.answered(2, b"e1") is not None
    clock.now += 2
    assert ids.answered(2, b"e1") is None
    assert len(ids) == 0


def test_the_bound_drops_the_oldest_and_counts_it() -> None:
    ids = AnsweredIds(TOPIC, 3600, None, max_per_partition=3, clock=Clock())
    for n in range(5):
        ids.remember(0, f"e{n}".encode())
    assert len(ids) == 3
    assert ids.evicted_early == 2
    assert ids.answered(0, b"e0") is None
    assert ids.answered(0, b"e4") is not None


def test_only_acknowledged_markers_become_answered() -> None:
    ids = AnsweredIds(TOPIC, 3600, None, clock=Clock())
    marker = ids.marker(4, b"e1")
    assert (marker.topic, marker.key, marker.value, marker.partition) == (TOPIC, b"e1", b"", 4)
    with_digest = ids.marker(4, b"e2", b"d" * 16)
    assert with_digest.value == b"d" * 16
    assert ids.answered(4, b"e1") is None
    ids.acknowledged([OutRecord("integrations.payment.results", b"POL-1", b"x"), marker, with_digest])
    assert ids.answered(4, b"e1") == b""
    assert ids.answered(4, b"e2") == b"d" * 16
    assert len(ids) == 2


async def test_restore_reads_each_partition_once_and_keeps_the_record_time() -> None:
    clock = Clock()
    asked: list[Sequence[tuple[str, int]]] = []
    now_ms = int(clock.now * 1000)

    def reader(tps: Sequence[tuple[str, int]]) -> Sequence[KafkaMessage]:
        asked.append(tps)
        return [
            StaticMessage(TOPIC, 1, 0, b"old", b"digest-old", timestamp_ms=now_ms - 50_000),
            StaticMessage(TOPIC, 1, 1, b"new", b"", timestamp_ms=now_ms - 1_000),
            StaticMessage(TOPIC, 2, 0, b"tomb", None, timestamp_ms=now_ms),
        ]

    ids = AnsweredIds(TOPIC, 60, reader, clock=clock)
    assert await ids.restore([1, 2]) == 2
    assert await ids.restore([1, 2]) == 0  # held already: not read again
    assert asked == [[(TOPIC, 1), (TOPIC, 2)]]
    assert ids.answered(1, b"old") == b"digest-old"
    assert ids.answered(1, b"new") is not None
    assert ids.answered(2, b"tomb") is None
    clock.now += 15  # "old" was answered 50 s ago: its 60 s window ends now
    assert ids.answered(1, b"old") is None
    assert ids.answered(1, b"new") is not None
    ids.drop([1])
    assert ids.answered(1, b"new") is None


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="window"):
        AnsweredIds(TOPIC, 0, None, clock=Clock())
    with pytest.raises(ValueError, match="max_per_partition"):
        AnsweredIds(TOPIC, 1, None, max_per_partition=0, clock=Clock())


CATALOGUE = """
version: 1
inputs:
  - name: shop.orders
    description: orders placed
    partitions: 8
apps:
  billing:
    sources: [shop.orders]
    dedupe: {window: 2h}
  other:
    sources: [shop.orders]
"""


def test_the_catalogue_generates_the_dedupe_topic_of_an_app_that_declares_it() -> None:
    catalogue = parse_catalogue(CATALOGUE)
    billing = catalogue.app("billing")
    assert billing.dedupe == "integrations.billing.dedupe"
    assert billing.dedupe_window_ms == 7_200_000
    spec = catalogue.topic("integrations.billing.dedupe")
    assert spec.kind == "dedupe"
    assert spec.partitions == 8
    assert spec.config["cleanup.policy"] == "compact,delete"
    assert spec.config["retention.ms"] == "7200000"
    assert catalogue.app("other").dedupe is None


def test_a_dedupe_window_must_be_a_duration() -> None:
    with pytest.raises(CatalogueError, match="window"):
        parse_catalogue(CATALOGUE.replace("window: 2h", "window: soon"))
