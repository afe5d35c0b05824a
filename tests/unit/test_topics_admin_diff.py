"""How one topic's observed state turns into changes and drift (no broker needed)."""

from __future__ import annotations

from processors.topics.admin import Change, Drift, _diff, _Observed, _same
from processors.topics.catalogue import TopicSpec

SPEC = TopicSpec(
    name="shop.orders",
    partitions=6,
    replication_factor=3,
    config={"cleanup.policy": "delete", "retention.ms": "604800000", "min.insync.replicas": "2"},
    kind="input",
    app=None,
    description="orders",
    min_insync_replicas=2,
)


def observed(partitions: int = 6, rf: int = 3, **config: str) -> _Observed:
    base = {"cleanup.policy": "delete", "retention.ms": "604800000", "min.insync.replicas": "2"}
    base.update({k.replace("_", "."): v for k, v in config.items()})
    return _Observed(partitions, rf, base)


def test_a_matching_topic_has_no_change_and_no_drift() -> None:
    assert _diff(SPEC, observed()) == ([], [])


def test_a_missing_topic_is_created_with_its_configs() -> None:
    changes, drift = _diff(SPEC, None)
    assert changes == [
        Change(
            "shop.orders",
            "create",
            "6 partitions, replication factor 3, cleanup.policy=delete, min.insync.replicas=2, "
            "retention.ms=604800000",
        )
    ]
    assert drift == [Drift("shop.orders", "missing (apply creates it)")]
    assert drift[0].fixable


def test_fewer_partitions_are_added() -> None:
    changes, drift = _diff(SPEC, observed(partitions=3))
    assert changes == [Change("shop.orders", "add_partitions", "3 → 6 partitions")]
    assert [d.fixable for d in drift] == [True]


def test_more_partitions_are_unfixable_drift_and_no_change() -> None:
    changes, drift = _diff(SPEC, observed(partitions=12))
    assert changes == []
    assert len(drift) == 1
    assert not drift[0].fixable
    assert "has 12 partitions, catalogue says 6" in drift[0].problem
    assert "cannot remove partitions" in drift[0].problem


def test_a_different_replication_factor_is_unfixable_drift() -> None:
    changes, drift = _diff(SPEC, observed(rf=1))
    assert changes == []
    assert [(d.fixable, "replication factor is 1, catalogue says 3" in d.problem) for d in drift] == [
        (False, True)
    ]


def test_differing_configs_are_altered_in_one_change() -> None:
    changes, drift = _diff(SPEC, observed(retention_ms="86400000", cleanup_policy="compact"))
    assert changes == [
        Change(
            "shop.orders",
            "alter_config",
            "cleanup.policy: compact → delete; retention.ms: 86400000 → 604800000",
        )
    ]
    assert drift == [Drift("shop.orders", f"config differs: {changes[0].detail}")]


def test_a_config_the_broker_did_not_report_counts_as_different() -> None:
    have = observed()
    del have.config["min.insync.replicas"]
    changes, _ = _diff(SPEC, have)
    assert changes == [Change("shop.orders", "alter_config", "min.insync.replicas: None → 2")]


def test_configs_the_catalogue_does_not_set_are_ignored() -> None:
    assert _diff(SPEC, observed(segment_ms="1000")) == ([], [])


def test_value_comparison_tolerates_order_and_number_spelling() -> None:
    assert _same("cleanup.policy", "delete,compact", "compact,delete")
    assert _same("min.cleanable.dirty.ratio", "0.10", "0.1")
    assert not _same("retention.ms", "1000", "2000")
    assert not _same("compression.type", "lz4", "zstd")
    assert not _same("retention.ms", None, "1000")


def test_changes_and_drift_read_well() -> None:
    assert str(Change("t", "add_partitions", "3 → 6 partitions")) == "add_partitions t: 3 → 6 partitions"
    assert str(Drift("t", "missing")) == "t: missing"
