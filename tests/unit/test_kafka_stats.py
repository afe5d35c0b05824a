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


def test_a_partition_the_group_never_committed_lags_by_everything_since_the_log_start() -> None:
    """A retry tier whose records are not due yet has no commit: its lag is what the log holds."""
    partitions = {
        # fetching from the start (auto.offset.reset=earliest), nothing committed: 7 records wait
        "0": {"fetch_state": "active", "committed_offset": -1001, "lo_offset": 2, "ls_offset": 9,
              "hi_offset": 9, "consumer_lag": -1},
        # empty and never committed: nothing waits
        "1": {"fetch_state": "active", "committed_offset": -1001, "lo_offset": 0, "ls_offset": 0,
              "hi_offset": 0, "consumer_lag": -1},
        # committed: librdkafka's own figure
        "2": {"fetch_state": "active", "committed_offset": 5, "lo_offset": 0, "ls_offset": 8,
              "hi_offset": 8, "consumer_lag": 3},
        # still looking up where to start: not known yet
        "3": {"fetch_state": "offset-query", "committed_offset": -1001, "lo_offset": -1001,
              "ls_offset": -1001, "hi_offset": -1001, "consumer_lag": -1},
        # the log start is not known yet
        "4": {"fetch_state": "active", "committed_offset": -1001, "lo_offset": -1001,
              "ls_offset": 4, "hi_offset": 4, "consumer_lag": -1},
    }  # fmt: skip
    document = {"topics": {"integrations.payments.retry.3-30m": {"partitions": partitions}}}
    tier = "integrations.payments.retry.3-30m"
    assert lag_from_stats(json.dumps(document)) == {
        (tier, 0): 7,
        (tier, 1): 0,
        (tier, 2): 3,
        (tier, 3): -1,
        (tier, 4): -1,
    }


def test_a_transactional_consumer_lags_by_what_it_has_not_read() -> None:
    """Offsets committed in a producer's transactions never reach the consumer's own
    ``committed_offset``: the position it reached stands for them (past the trailing marker)."""
    partitions = {
        # read to the end; the consumer still believes the offset it found at assignment
        "0": {"fetch_state": "active", "committed_offset": 3, "app_offset": 8, "lo_offset": 0,
              "ls_offset": 8, "hi_offset": 8, "consumer_lag": 5},
        # nothing read since the assignment: the committed offset found then
        "1": {"fetch_state": "active", "committed_offset": 3, "app_offset": -1001, "lo_offset": 0,
              "ls_offset": 10, "hi_offset": 10, "consumer_lag": 7},
        # never committed and nothing read: from the log start
        "2": {"fetch_state": "active", "committed_offset": -1001, "app_offset": -1001,
              "lo_offset": 1, "ls_offset": 4, "hi_offset": 4, "consumer_lag": -1},
        # an aborted step sought back to 2: six records wait again
        "3": {"fetch_state": "active", "committed_offset": -1001, "app_offset": 2, "lo_offset": 0,
              "ls_offset": 8, "hi_offset": 9, "consumer_lag": -1},
    }  # fmt: skip
    document = json.dumps({"topics": {"integrations.bordereaux.partials": {"partitions": partitions}}})
    topic = "integrations.bordereaux.partials"
    assert lag_from_stats(document, transactional=True) == {
        (topic, 0): 0,
        (topic, 1): 7,
        (topic, 2): 3,
        (topic, 3): 6,
    }
    assert lag_from_stats(document)[(topic, 0)] == 5  # librdkafka's stale view, for comparison
