"""The topic catalogue loader: valid files, the real topics.yaml, and every kind of error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from processors.errors import ConfigError
from processors.topics.catalogue import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ENV_TOPICS_FILE,
    FAILURE_HEADROOM_BYTES,
    AppTopics,
    Catalogue,
    CatalogueError,
    RetryTier,
    TopicSpec,
    load_catalogue,
    parse_catalogue,
)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
defaults:
  partitions: 4
  replication_factor: 3
  min_insync_replicas: 2
  retention: 7d
inputs:
  - name: shop.orders
    description: orders placed
    partitions: 8
    retention: 14d
  - name: shop.refunds
    description: refunds requested
outputs:
  - name: shop.results
    description: results
    config:
      compression.type: zstd
      min.cleanable.dirty.ratio: 0.1
state:
  - name: shop.table
    description: a compacted table
    partitions: 1
    cleanup_policy: compact
  - name: shop.history
    description: compacted with a time limit
    cleanup_policy: delete,compact
    retention: 30d
apps:
  billing:
    description: charges orders
    sources: [shop.orders, shop.refunds]
    outputs: [shop.results]
    state: [shop.table]
    retry_tiers: [5s, 1m, 60s, 24h]
    dlq: {partitions: 8, retention: 30d}
    parked: {retention: forever}
"""


def fail(text: str) -> CatalogueError:
    with pytest.raises(CatalogueError) as info:
        parse_catalogue(text, "topics.yaml")
    return info.value


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def with_app(app_yaml: str, topics_yaml: str = "") -> str:
    base = topics_yaml or (
        "inputs:\n"
        "  - name: a.events\n"
        "    description: six partitions\n"
        "    partitions: 6\n"
        "  - name: b.events\n"
        "    description: three partitions\n"
        "    partitions: 3\n"
    )
    return base + "apps:\n" + textwrap.indent(textwrap.dedent(app_yaml), "  ")


# --------------------------------------------------------------------------- valid files


def test_a_valid_file_gives_every_declared_and_generated_topic() -> None:
    catalogue = parse_catalogue(MINIMAL)
    names = [t.name for t in catalogue.topics]
    assert names == [
        "shop.orders",
        "shop.refunds",
        "shop.results",
        "shop.table",
        "shop.history",
        "integrations.billing.retry.0-5s",
        "integrations.billing.retry.1-1m",
        "integrations.billing.retry.2-1m",
        "integrations.billing.retry.3-1d",
        "integrations.billing.dlq",
        "integrations.billing.parked",
    ]
    assert [t.kind for t in catalogue.topics] == [
        "input",
        "input",
        "output",
        "state",
        "state",
        "retry",
        "retry",
        "retry",
        "retry",
        "dlq",
        "parked",
    ]


def test_declared_topics_take_defaults_and_their_own_values() -> None:
    catalogue = parse_catalogue(MINIMAL)
    orders = catalogue.topic("shop.orders")
    assert orders == TopicSpec(
        name="shop.orders",
        partitions=8,
        replication_factor=3,
        config={
            "cleanup.policy": "delete",
            "retention.ms": "1209600000",
            "min.insync.replicas": "2",
            "max.message.bytes": "1048588",
        },
        kind="input",
        app=None,
        description="orders placed",
        min_insync_replicas=2,
    )
    refunds = catalogue.topic("shop.refunds")
    assert refunds.partitions == 4
    assert refunds.retention_ms == 7 * 86_400_000


def test_extra_configs_are_passed_as_strings() -> None:
    results = parse_catalogue(MINIMAL).topic("shop.results")
    assert results.config["compression.type"] == "zstd"
    assert results.config["min.cleanable.dirty.ratio"] == "0.1"


def test_compacted_topics_have_no_retention_and_compact_delete_keeps_it() -> None:
    catalogue = parse_catalogue(MINIMAL)
    table = catalogue.topic("shop.table")
    assert table.config["cleanup.policy"] == "compact"
    assert "retention.ms" not in table.config
    assert table.retention_ms is None
    history = catalogue.topic("shop.history")
    assert history.config["cleanup.policy"] == "compact,delete"
    assert history.retention_ms == 30 * 86_400_000


def test_an_app_lists_its_topics_and_generated_failure_path() -> None:
    app = parse_catalogue(MINIMAL).app("billing")
    assert app == AppTopics(
        name="billing",
        sources=("shop.orders", "shop.refunds"),
        retry_tiers=(
            RetryTier("integrations.billing.retry.0-5s", 5_000, 0),
            RetryTier("integrations.billing.retry.1-1m", 60_000, 1),
            RetryTier("integrations.billing.retry.2-1m", 60_000, 2),
            RetryTier("integrations.billing.retry.3-1d", 86_400_000, 3),
        ),
        dlq="integrations.billing.dlq",
        parked="integrations.billing.parked",
        outputs=("shop.results",),
        state=("shop.table",),
        description="charges orders",
    )


def test_generated_topics_follow_the_widest_source_and_their_own_retention() -> None:
    catalogue = parse_catalogue(MINIMAL)
    retry = catalogue.topic("integrations.billing.retry.0-5s")
    assert (retry.partitions, retry.retention_ms, retry.app) == (8, 7 * 86_400_000, "billing")
    dlq = catalogue.topic("integrations.billing.dlq")
    assert (dlq.partitions, dlq.retention_ms) == (8, 30 * 86_400_000)
    parked = catalogue.topic("integrations.billing.parked")
    assert (parked.partitions, parked.retention_ms) == (8, -1)
    assert all(t.config["cleanup.policy"] == "delete" for t in catalogue.of_kind("retry"))


def test_next_tier_walks_the_tiers_then_says_dlq() -> None:
    app = parse_catalogue(MINIMAL).app("billing")
    first = app.next_tier()
    assert first is not None
    assert first.index == 0
    walked = [first]
    while (step := app.next_tier(walked[-1])) is not None:
        walked.append(step)
    assert [t.index for t in walked] == [0, 1, 2, 3]
    assert app.tier_of("integrations.billing.retry.2-1m") == walked[2]
    assert app.tier_of("integrations.billing.dlq") is None
    assert app.failure_topics[-2:] == ("integrations.billing.dlq", "integrations.billing.parked")


def test_naming_templates_change_the_generated_names() -> None:
    naming = (
        "naming:\n"
        "  retry: dev.{app}.retry-{index}-{delay}\n"
        "  dlq: dev.{app}.dead\n"
        "  parked: dev.{app}.parked\n"
    )
    text = naming + MINIMAL
    app = parse_catalogue(text).app("billing")
    assert app.retry_tiers[0].topic == "dev.billing.retry-0-5s"
    assert app.dlq == "dev.billing.dead"
    assert app.parked == "dev.billing.parked"


def test_lookups_of_unknown_names_raise_config_error_with_a_suggestion() -> None:
    catalogue = parse_catalogue(MINIMAL)
    with pytest.raises(ConfigError, match=r"no topic 'shop\.order' .*did you mean 'shop\.orders'"):
        catalogue.topic("shop.order")
    with pytest.raises(ConfigError, match=r"no app 'biling'.*did you mean 'billing'"):
        catalogue.app("biling")
    assert "shop.orders" in catalogue
    assert len(catalogue) == len(catalogue.topics) == 11


def test_values_are_immutable() -> None:
    spec = parse_catalogue(MINIMAL).topic("shop.orders")
    with pytest.raises(TypeError):
        spec.config["retention.ms"] = "1"  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.partitions = 1  # type: ignore[misc]
    assert hash(spec) == hash(parse_catalogue(MINIMAL).topic("shop.orders"))


# --------------------------------------------------------------------------- replication override


def test_replication_factor_one_drops_min_insync_replicas() -> None:
    catalogue = parse_catalogue(MINIMAL).with_replication_factor(1)
    assert all(t.replication_factor == 1 for t in catalogue.topics)
    assert all("min.insync.replicas" not in t.config for t in catalogue.topics)


def test_replication_override_keeps_min_insync_replicas_when_it_fits() -> None:
    spec = parse_catalogue(MINIMAL).with_replication_factor(2).topic("shop.orders")
    assert (spec.replication_factor, spec.config["min.insync.replicas"]) == (2, "2")


def test_replication_override_below_min_insync_replicas_is_refused() -> None:
    text = MINIMAL.replace("min_insync_replicas: 2", "min_insync_replicas: 3")
    catalogue = parse_catalogue(text)
    with pytest.raises(
        ConfigError, match=r"min_insync_replicas 3 exceeds replication factor 2.*--replication"
    ):
        catalogue.with_replication_factor(2)


def test_no_override_returns_the_same_catalogue() -> None:
    catalogue = parse_catalogue(MINIMAL)
    assert catalogue.with_replication_factor(None) is catalogue


# --------------------------------------------------------------------------- the real file


def test_the_real_topics_yaml_loads_with_every_design_topic() -> None:
    catalogue = load_catalogue(ROOT / "topics.yaml")
    for name in (
        "insurance.policy.events",
        "insurance.billing.events",
        "insurance.customer.events",
        "insurance.claim.events",
        "integrations.payment.results",
        "integrations.kyc.results",
        "integrations.webhook.deliveries",
        "reinsurance.bordereaux",
        "regulatory.reports",
        "integrations.audit",
        "integrations.webhook.subscriptions",
        "integrations.webhooks.dispatch",
        "integrations.webhook.endpoint-events",
        "integrations.bordereaux.ledger-changelog",
        "integrations.regulatory.files",
    ):
        assert name in catalogue, name
    assert set(catalogue.apps) == {
        "payments",
        "kyc",
        "webhooks",
        "bordereaux",
        "bordereaux-delivery",
        "regulatory",
    }
    for state in catalogue.of_kind("state"):
        assert state.config["cleanup.policy"] == "compact", state.name
    assert all(t.partitions == 6 for t in catalogue.of_kind("input"))


def test_the_real_topics_yaml_has_the_seed_retry_tiers() -> None:
    catalogue = load_catalogue(ROOT / "topics.yaml")
    payments = catalogue.app("payments")
    assert [t.topic for t in payments.retry_tiers] == [
        "integrations.payments.retry.0-5s",
        "integrations.payments.retry.1-30s",
        "integrations.payments.retry.2-5m",
        "integrations.payments.retry.3-30m",
    ]
    webhooks = catalogue.app("webhooks")
    assert [t.delay_ms // 1000 for t in webhooks.retry_tiers] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert webhooks.dlq == "integrations.webhooks.dlq"
    assert webhooks.parked == "integrations.webhooks.parked"


def test_every_dlq_is_at_least_as_wide_as_its_sources_in_the_real_file() -> None:
    catalogue = load_catalogue(ROOT / "topics.yaml")
    for app in catalogue.apps.values():
        widest = max(catalogue.topic(s).partitions for s in app.sources)
        assert catalogue.topic(app.dlq).partitions >= widest, app.name


# --------------------------------------------------------------------------- errors with lines


def test_partitions_below_one_names_file_line_and_topic() -> None:
    text = MINIMAL.replace("    partitions: 8\n", "    partitions: 0\n", 1)
    error = fail(text)
    expected = line_of(text, "partitions: 0")
    assert str(error) == f"topics.yaml:{expected}: topic 'shop.orders': partitions must be ≥ 1 (got 0)"
    assert error.problems[0].line == expected


def test_yaml_syntax_errors_carry_their_line() -> None:
    text = "inputs:\n  - name: a\n    description: [unclosed\n  - name: b\n"
    error = fail(text)
    assert error.problems[0].line in (3, 4)
    assert "invalid YAML" in str(error)
    assert str(error).startswith("topics.yaml:")


def test_an_empty_file_is_refused() -> None:
    assert "empty" in str(fail("# nothing\n"))


def test_the_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in str(fail("- a\n- b\n"))


def test_unknown_keys_are_refused_with_a_suggestion() -> None:
    text = MINIMAL.replace("    retention: 14d\n", "    retension: 14d\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "retension")
    assert "unknown key 'retension' (did you mean 'retention'?)" in str(error)


def test_unknown_keys_in_nested_blocks_are_refused() -> None:
    text = MINIMAL.replace("dlq: {partitions: 8, retention: 30d}", "dlq: {partition: 8}")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "partition: 8")
    assert "app 'billing': unknown key 'partition' in dlq (did you mean 'partitions'?)" in str(error)


def test_duplicate_yaml_keys_are_refused() -> None:
    text = MINIMAL.replace("    partitions: 8\n", "    partitions: 8\n    partitions: 9\n", 1)
    error = fail(text)
    assert error.problems[0].line == line_of(text, "partitions: 9")
    assert "duplicate key 'partitions'" in str(error)


def test_duplicate_topic_names_point_at_both_lines() -> None:
    text = MINIMAL.replace("name: shop.refunds", "name: shop.orders")
    error = fail(text)
    first = line_of(text, "name: shop.orders", 1)
    second = line_of(text, "name: shop.orders", 2)
    assert error.problems[0].line == second
    assert f"topic 'shop.orders' is already defined on line {first}" in str(error)


def test_names_differing_only_by_dot_and_underscore_collide() -> None:
    text = MINIMAL.replace("name: shop.refunds", "name: shop_orders")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "name: shop_orders")
    assert "collides with 'shop.orders'" in str(error)


def test_a_generated_name_may_not_clash_with_a_declared_topic() -> None:
    text = MINIMAL.replace("name: shop.history", "name: integrations.billing.dlq")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "dlq: {")
    assert "app 'billing' generates topic 'integrations.billing.dlq'" in str(error)
    assert f"already defined on line {line_of(text, 'name: integrations.billing.dlq')}" in str(error)


def test_invalid_topic_names_are_refused() -> None:
    text = MINIMAL.replace("name: shop.refunds", "name: shop/refunds")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "shop/refunds")
    assert "invalid topic name 'shop/refunds'" in str(error)


def test_unknown_app_source_topic_points_at_the_list_item() -> None:
    text = with_app(
        """\
        pay:
          sources:
            - a.events
            - a.event
        """
    )
    error = fail(text)
    assert error.problems[0].line == line_of(text, "- a.event", 2)
    assert "app 'pay': unknown source topic 'a.event' (did you mean 'a.events'?)" in str(error)


def test_a_source_listed_twice_is_refused() -> None:
    error = fail(with_app("pay:\n  sources: [a.events, a.events]\n"))
    assert "source topic 'a.events' is listed twice" in str(error)


def test_an_app_needs_at_least_one_source() -> None:
    text = with_app("pay:\n  sources: []\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "sources: []")
    assert "app 'pay': sources must not be empty" in str(error)


def test_dlq_partitions_below_the_widest_source_are_refused() -> None:
    text = with_app("pay:\n  sources: [b.events, a.events]\n  dlq: {partitions: 3}\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "dlq: {partitions: 3}")
    assert "dlq partitions (3) must be ≥ the partitions of its source 'a.events' (6)" in str(error)


def test_dlq_partitions_equal_to_the_widest_source_are_fine() -> None:
    catalogue = parse_catalogue(with_app("pay:\n  sources: [b.events, a.events]\n  dlq: {partitions: 6}\n"))
    assert catalogue.topic("integrations.pay.dlq").partitions == 6


def test_retry_partitions_below_the_widest_source_are_refused() -> None:
    text = with_app("pay:\n  sources: [a.events]\n  retry_tiers: [5s]\n  retry:\n    partitions: 2\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "partitions: 2")
    assert "retry partitions (2) must be ≥" in str(error)


BIG_SOURCE = (
    "inputs:\n"
    "  - name: a.events\n"
    "    description: default size\n"
    "  - name: big.events\n"
    "    description: large records\n"
    "    max_message_bytes: 8388608\n"
)


def test_every_topic_states_its_largest_record_and_failures_carry_the_largest_source_whole() -> None:
    catalogue = parse_catalogue(
        with_app(
            "pay:\n  sources: [a.events, big.events]\n  retry_tiers: [5s]\n  dedupe: {window: 1h}\n",
            BIG_SOURCE,
        )
    )
    assert catalogue.topic("a.events").config["max.message.bytes"] == str(DEFAULT_MAX_MESSAGE_BYTES)
    assert catalogue.topic("big.events").max_message_bytes == 8_388_608
    carried = 8_388_608 + FAILURE_HEADROOM_BYTES
    for name in ("integrations.pay.retry.0-5s", "integrations.pay.dlq", "integrations.pay.parked"):
        assert catalogue.topic(name).config["max.message.bytes"] == str(carried), name
    assert catalogue.topic("integrations.pay.dedupe").max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert catalogue.largest_record_written("pay") == carried


def test_the_defaults_set_every_topics_largest_record() -> None:
    text = "defaults:\n  max_message_bytes: 2097152\n" + with_app("pay:\n  sources: [a.events]\n")
    catalogue = parse_catalogue(text)
    assert catalogue.topic("a.events").max_message_bytes == 2_097_152
    assert catalogue.topic("integrations.pay.dlq").max_message_bytes == 2_097_152 + FAILURE_HEADROOM_BYTES


@pytest.mark.parametrize("block", ["retry", "dlq"])
def test_a_retry_tier_or_dlq_smaller_than_a_source_is_refused(block: str) -> None:
    text = with_app(
        "pay:\n  sources: [a.events, big.events]\n  retry_tiers: [5s]\n"
        f"  {block}: {{max_message_bytes: 1048588}}\n",
        BIG_SOURCE,
    )
    error = fail(text)
    assert error.problems[0].line == line_of(text, f"{block}: {{max_message_bytes: 1048588}}")
    assert (
        f"app 'pay': {block} max_message_bytes (1048588) must be ≥ that of its source 'big.events' "
        "(8388608): a record it accepted could not be moved on whole"
    ) in str(error)


def test_parked_smaller_than_the_dlq_is_refused_and_larger_ones_are_kept() -> None:
    text = with_app("pay:\n  sources: [a.events]\n  parked: {max_message_bytes: 1048588}\n")
    assert "parked max_message_bytes (1048588) must be ≥ the dlq's (1114124)" in str(fail(text))
    roomy = parse_catalogue(with_app("pay:\n  sources: [a.events]\n  dlq: {max_message_bytes: 4194304}\n"))
    assert roomy.topic("integrations.pay.dlq").max_message_bytes == 4_194_304
    assert roomy.topic("integrations.pay.parked").max_message_bytes == 4_194_304


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1000, "topic 'shop.orders': max_message_bytes must be ≥ 65536 (got 1000)"),
        ("1MB", "topic 'shop.orders': max_message_bytes must be a whole number (got '1MB')"),
    ],
)
def test_a_largest_record_below_an_excerpt_or_not_a_number_is_refused(value: object, reason: str) -> None:
    text = MINIMAL.replace("    retention: 14d\n", f"    retention: 14d\n    max_message_bytes: {value}\n", 1)
    assert reason in str(fail(text))


def test_max_message_bytes_is_set_by_its_key_not_through_config() -> None:
    text = MINIMAL.replace("compression.type: zstd", "max.message.bytes: 2000000")
    assert "set 'max_message_bytes' instead of config 'max.message.bytes'" in str(fail(text))


def test_retry_retention_must_outlast_the_longest_delay() -> None:
    text = with_app("pay:\n  sources: [a.events]\n  retry_tiers: [5s, 10h]\n  retry: {retention: 5h}\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "retention: 5h")
    assert "retry retention (5h) must be longer than the longest retry delay (10h)" in str(error)


def test_repeated_delays_get_unique_tier_names() -> None:
    catalogue = parse_catalogue(with_app("pay:\n  sources: [a.events]\n  retry_tiers: [10h, 10h, 10h]\n"))
    names = [t.topic for t in catalogue.app("pay").retry_tiers]
    assert names == [
        "integrations.pay.retry.0-10h",
        "integrations.pay.retry.1-10h",
        "integrations.pay.retry.2-10h",
    ]
    assert len(set(names)) == 3


def test_app_names_must_be_usable_in_topic_names() -> None:
    text = with_app("Pay Ments:\n  sources: [a.events]\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "Pay Ments")
    assert "app 'Pay Ments': app names use lower-case letters" in str(error)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("5x", "bad retry delay '5x'"),
        ("10", "bad retry delay 10: the unit is missing"),
        ("0s", "bad retry delay '0s': must be longer than zero"),
        ("forever", "bad retry delay 'forever'"),
    ],
)
def test_bad_retry_delays_point_at_the_item(bad: str, message: str) -> None:
    text = with_app(f"pay:\n  sources: [a.events]\n  retry_tiers:\n    - 5s\n    - {bad}\n")
    error = fail(text)
    assert error.problems[0].line == line_of(text, f"- {bad}")
    assert message in str(error)


@pytest.mark.parametrize("bad", ["7days", "1.5h", "-5", "0d", "[7d]"])
def test_bad_retention_points_at_the_key(bad: str) -> None:
    text = MINIMAL.replace("retention: 14d", f"retention: {bad}")
    error = fail(text)
    assert error.problems[0].line == line_of(text, f"retention: {bad}")
    assert "topic 'shop.orders': bad retention" in str(error)


def test_retention_on_a_compact_only_topic_is_refused() -> None:
    text = MINIMAL.replace(
        "    cleanup_policy: compact\n", "    cleanup_policy: compact\n    retention: 3d\n"
    )
    error = fail(text)
    assert error.problems[0].line == line_of(text, "retention: 3d")
    assert "retention has no effect with cleanup_policy 'compact'" in str(error)


def test_unknown_cleanup_policy_is_refused() -> None:
    text = MINIMAL.replace("cleanup_policy: compact", "cleanup_policy: compacted")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "cleanup_policy: compacted")
    assert "cleanup_policy must be one of" in str(error)


def test_managed_configs_cannot_be_set_through_config() -> None:
    text = MINIMAL.replace("compression.type: zstd", "retention.ms: 1000")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "retention.ms: 1000")
    assert "set 'retention' instead of config 'retention.ms'" in str(error)


def test_misspelt_kafka_configs_are_refused() -> None:
    text = MINIMAL.replace("compression.type: zstd", "compresion.type: zstd")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "compresion.type")
    assert "unknown Kafka topic config 'compresion.type' (did you mean 'compression.type'?)" in str(error)


def test_vendor_configs_are_passed_through() -> None:
    text = MINIMAL.replace("compression.type: zstd", "confluent.value.schema.validation: true")
    spec = parse_catalogue(text).topic("shop.results")
    assert spec.config["confluent.value.schema.validation"] == "true"


def test_min_insync_replicas_above_replication_factor_is_refused() -> None:
    text = MINIMAL.replace(
        "    partitions: 8\n", "    partitions: 8\n    replication_factor: 2\n    min_insync_replicas: 3\n", 1
    )
    error = fail(text)
    assert error.problems[0].line == line_of(text, "min_insync_replicas: 3")
    assert "min_insync_replicas (3) must not exceed replication_factor (2)" in str(error)


def test_min_insync_replicas_is_not_set_on_unreplicated_topics() -> None:
    text = MINIMAL.replace("    partitions: 8\n", "    partitions: 8\n    replication_factor: 1\n", 1)
    spec = parse_catalogue(text).topic("shop.orders")
    assert spec.replication_factor == 1
    assert "min.insync.replicas" not in spec.config


@pytest.mark.parametrize(
    ("value", "message"),
    [("'8'", "partitions must be a whole number (got '8')"), ("true", "got True"), ("2.5", "got 2.5")],
)
def test_partitions_must_be_whole_numbers(value: str, message: str) -> None:
    text = MINIMAL.replace("    partitions: 8\n", f"    partitions: {value}\n", 1)
    error = fail(text)
    assert error.problems[0].line == line_of(text, f"partitions: {value}")
    assert message in str(error)


def test_a_missing_description_points_at_the_entry() -> None:
    text = MINIMAL.replace("    description: refunds requested\n", "")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "name: shop.refunds")
    assert "topic 'shop.refunds': missing required key 'description'" in str(error)


def test_empty_values_are_refused() -> None:
    text = MINIMAL.replace("retention: 14d", "retention:")
    error = fail(text)
    assert error.problems[0].line == line_of(text, "retention:", 2)
    assert "'retention' has no value" in str(error)


def test_merge_keys_are_refused() -> None:
    text = "base: &b {partitions: 3}\ninputs:\n  - <<: *b\n    name: a\n    description: x\n"
    error = fail(text)
    assert error.problems[0].line == 3
    assert "merge keys" in str(error)


def test_all_structural_problems_are_reported_in_line_order() -> None:
    text = with_app(
        "kyc:\n  sources: [a.events]\n  retry_tiers: [5x]\n"
        "pay:\n  sources: [a.events]\n  dlq: {partitions: 0}\n"
    )
    error = fail(text)
    assert [p.line for p in error.problems] == [line_of(text, "[5x]"), line_of(text, "partitions: 0")]
    assert str(error).count("\n") == 1


def test_semantic_problems_are_all_reported() -> None:
    text = with_app("pay:\n  sources: [nope.one]\nkyc:\n  sources: [nope.two]\n")
    error = fail(text)
    assert [p.line for p in error.problems] == [line_of(text, "nope.one"), line_of(text, "nope.two")]


@pytest.mark.parametrize(
    "template",
    ["{app}.retry.{delay}", "{app}.{index}.{tier}", "{app}.{index:02}", "x.{app"],
)
def test_bad_naming_templates_are_refused(template: str) -> None:
    text = f"naming:\n  retry: '{template}'\n" + with_app("pay:\n  sources: [a.events]\n")
    error = fail(text)
    assert error.problems[0].line == 2
    assert "naming: retry template" in str(error)


# --------------------------------------------------------------------------- which file


def test_load_reads_the_given_path_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text("inputs:\n  - name: a\n    description: x\n    partitions: -1\n")
    with pytest.raises(CatalogueError, match=rf"^{path}:4: topic 'a': partitions must be ≥ 1 \(got -1\)$"):
        load_catalogue(path)


def test_load_prefers_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("inputs:\n  - name: only.one\n    description: x\n")
    monkeypatch.setenv(ENV_TOPICS_FILE, str(path))
    catalogue = load_catalogue()
    assert [t.name for t in catalogue.topics] == ["only.one"]
    assert catalogue.path == path


def test_load_falls_back_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "topics.yaml").write_text("inputs:\n  - name: here.only\n    description: x\n")
    monkeypatch.delenv(ENV_TOPICS_FILE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert [t.name for t in load_catalogue().topics] == ["here.only"]


def test_load_falls_back_to_the_source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TOPICS_FILE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_catalogue().path == ROOT / "topics.yaml"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="topic catalogue not found"):
        load_catalogue(tmp_path / "absent.yaml")


def test_catalogue_refuses_apps_that_refer_to_unknown_topics() -> None:
    app = AppTopics("x", ("nowhere",), (), "x.dlq", "x.parked")
    with pytest.raises(ConfigError, match="refers to topic 'nowhere'"):
        Catalogue([], [app])
