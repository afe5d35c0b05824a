"""Consumer lag read from librdkafka's statistics document."""

from __future__ import annotations

import json

from processors.kafka.stats import STATS_INTERVAL_MS, lag_from_stats, with_lag_statistics

STATS = {
    "name": "rdkafka#consumer-1",
    "type": "consumer",
    "topics": {
        "insurance.billing.events": {
            "topic": "insurance.billing.events",
            "partitions": {
                "0": {"partition": 0, "fetch_state": "active", "consumer_lag": 12, "hi_offset": 40},
                "1": {"partition": 1, "fetch_state": "active", "consumer_lag": 0, "hi_offset": 7},
                "2": {"partition": 2, "fetch_state": "none", "consumer_lag": -1},
                "-1": {"partition": -1, "fetch_state": "none", "consumer_lag": -1},
            },
        },
        "integrations.payments.retry.0-5s": {
            "partitions": {"0": {"partition": 0, "fetch_state": "offset-query", "consumer_lag": -1}},
        },
    },
}


def test_the_lag_of_each_partition_the_consumer_holds() -> None:
    assert lag_from_stats(json.dumps(STATS)) == {
        ("insurance.billing.events", 0): 12,
        ("insurance.billing.events", 1): 0,
        ("integrations.payments.retry.0-5s", 0): -1,  # held, not known yet
    }


def test_a_document_that_is_not_statistics_gives_nothing() -> None:
    assert lag_from_stats("not json") == {}
    assert lag_from_stats("{}") == {}


def test_statistics_reach_the_store_and_a_bad_one_never_raises() -> None:
    seen: list[dict[tuple[str, int], int]] = []
    conf = with_lag_statistics({"group.id": "g"}, seen.append)
    assert conf["statistics.interval.ms"] == STATS_INTERVAL_MS
    conf["stats_cb"](json.dumps(STATS))
    assert seen[0][("insurance.billing.events", 0)] == 12

    def broken(_lag: dict[tuple[str, int], int]) -> None:
        raise RuntimeError("store failed")

    with_lag_statistics({}, broken)["stats_cb"](json.dumps(STATS))  # logged, not raised
