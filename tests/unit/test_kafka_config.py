"""KafkaClients: one place renders every client configuration, and guarantees cannot be overridden."""

from __future__ import annotations

import pytest

from processors.errors import ConfigError
from processors.kafka import KafkaClients
from processors.kafka.consume import fetch

SECURITY = {"client.security.protocol": "SASL_SSL", "client.sasl.mechanism": "PLAIN"}


def test_every_role_carries_the_operators_common_settings() -> None:
    kafka = KafkaClients("b:9092", SECURITY)
    confs = [
        kafka.group_consumer("g"),
        kafka.reader("r"),
        kafka.member("lock", client_id="me", session_timeout_ms=10_000),
        kafka.producer(),
        kafka.transactional("t.1"),
        kafka.admin(),
    ]
    for conf in confs:
        assert conf["bootstrap.servers"] == "b:9092"
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "PLAIN"


def test_role_overrides_reach_only_their_role() -> None:
    kafka = KafkaClients("b:9092", {"consumer.fetch.min.bytes": "1000", "producer.linger.ms": "50"})
    assert kafka.group_consumer("g")["fetch.min.bytes"] == "1000"
    assert "fetch.min.bytes" not in kafka.producer()
    assert kafka.producer()["linger.ms"] == "50"
    assert "linger.ms" not in kafka.group_consumer("g")
    assert "fetch.min.bytes" not in kafka.admin()


def test_group_consumers_commit_only_through_the_engine() -> None:
    conf = KafkaClients("b:9092").group_consumer("integrations.payments")
    assert conf["group.id"] == "integrations.payments"
    assert conf["enable.auto.commit"] is False
    assert conf["enable.auto.offset.store"] is False
    assert conf["isolation.level"] == "read_committed"
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"


def test_key_ordered_apps_get_the_range_assignor_even_against_an_override() -> None:
    kafka = KafkaClients("b:9092", {"consumer.partition.assignment.strategy": "roundrobin"})
    assert kafka.group_consumer("g")["partition.assignment.strategy"] == "roundrobin"
    assert kafka.group_consumer("g", key_ordered=True)["partition.assignment.strategy"] == "range"


def test_app_defaults_stay_overridable() -> None:
    plain = KafkaClients("b:9092").group_consumer("g", max_poll_interval_s=600, max_fetch_bytes=1 << 26)
    assert plain["max.poll.interval.ms"] == 600_000
    assert plain["fetch.max.bytes"] == 1 << 26
    tuned = KafkaClients("b:9092", {"consumer.max.poll.interval.ms": "900000"})
    assert tuned.group_consumer("g", max_poll_interval_s=600)["max.poll.interval.ms"] == "900000"


@pytest.mark.parametrize(
    ("override", "role"),
    [
        ({"consumer.enable.auto.commit": "true"}, "group_consumer"),
        ({"client.enable.auto.offset.store": "true"}, "group_consumer"),
        ({"consumer.isolation.level": "read_uncommitted"}, "reader"),
        ({"consumer.group.id": "someone-else"}, "group_consumer"),
        ({"producer.enable.idempotence": "false"}, "producer"),
        ({"producer.acks": "1"}, "producer"),
        ({"producer.transactional.id": "stolen"}, "transactional"),
        ({"client.bootstrap.servers": "elsewhere:9092"}, "admin"),
    ],
)
def test_overrides_that_would_break_a_guarantee_are_refused(override: dict[str, str], role: str) -> None:
    kafka = KafkaClients("b:9092", override)
    render = {
        "group_consumer": lambda: kafka.group_consumer("g"),
        "reader": lambda: kafka.reader("r"),
        "producer": lambda: kafka.producer(),
        "transactional": lambda: kafka.transactional("t"),
        "admin": lambda: kafka.admin(),
    }[role]
    with pytest.raises(ConfigError, match=next(iter(override)).replace(".", r"\.")):
        render()


def test_an_override_equal_to_the_invariant_is_accepted() -> None:
    kafka = KafkaClients("b:9092", {"consumer.enable.auto.commit": "False", "producer.acks": "all"})
    assert kafka.group_consumer("g")["enable.auto.commit"] is False
    assert kafka.producer()["acks"] == "all"


@pytest.mark.parametrize("key", ["linger.ms", "consumr.fetch.min.bytes", "consumer.", ".x"])
def test_overrides_must_name_their_role(key: str) -> None:
    with pytest.raises(ConfigError, match=r"consumer\.<key>, producer\.<key>"):
        KafkaClients("b:9092", {key: "1"})


@pytest.mark.parametrize("servers", ["", "   "])
def test_a_cluster_must_be_named(servers: str) -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaClients(servers)


def test_readers_never_share_a_group_unless_asked() -> None:
    kafka = KafkaClients("b:9092")
    first, second = kafka.reader("tail"), kafka.reader("tail")
    assert first["group.id"] != second["group.id"]
    assert first["group.id"].startswith("tail-")
    assert kafka.reader("pending", group_id="integrations.payments")["group.id"] == "integrations.payments"
    assert kafka.reader("tail", eof=True)["enable.partition.eof"] is True
    assert kafka.reader("tail", fetch_wait_ms=100)["fetch.wait.max.ms"] == 100


def test_producers_never_give_up_unless_someone_waits() -> None:
    kafka = KafkaClients("b:9092")
    forever = kafka.producer()
    assert forever["message.timeout.ms"] == 0
    bounded = kafka.producer(delivery_timeout_s=2.5, linger_ms=0)
    assert bounded["message.timeout.ms"] == bounded["delivery.timeout.ms"] == 2_500
    assert bounded["linger.ms"] == 0
    assert kafka.producer(java_partitioner=True)["partitioner"] == "murmur2_random"


def test_transactional_producers_keep_a_bounded_delivery_timeout() -> None:
    conf = KafkaClients("b:9092").transactional("integrations.bordereaux.host-1", max_message_bytes=1 << 24)
    assert conf["transactional.id"] == "integrations.bordereaux.host-1"
    assert conf["enable.idempotence"] is True
    assert "message.timeout.ms" not in conf  # librdkafka: must not exceed transaction.timeout.ms
    assert conf["message.max.bytes"] == 1 << 24


def test_exactly_once_loops_derive_their_restorer_from_the_group_consumer() -> None:
    kafka = KafkaClients("b:9092", SECURITY)
    member = kafka.group_consumer("integrations.bordereaux", static_member="host-1")
    restorer = KafkaClients.restorer_of(member)
    assert restorer["group.id"] == "integrations.bordereaux.restore-unused"
    assert "group.instance.id" not in restorer
    assert "partition.assignment.strategy" not in restorer
    assert restorer["security.protocol"] == "SASL_SSL"
    assert restorer["isolation.level"] == "read_committed"
    # a restore fetches big chunks of its one partition (fetch round trips bound it otherwise)
    assert restorer["max.partition.fetch.bytes"] == 32 * 1024 * 1024
    assert restorer["fetch.max.bytes"] == 64 * 1024 * 1024
    tuned = KafkaClients("b:9092", {"consumer.max.partition.fetch.bytes": "1048576"}).group_consumer("g")
    assert KafkaClients.restorer_of(tuned)["max.partition.fetch.bytes"] == "1048576"  # the operator's
    loose = {"group.id": "g", "isolation.level": "read_uncommitted", "enable.auto.commit": True}
    assert KafkaClients.exactly_once_consumer(loose)["isolation.level"] == "read_committed"
    assert KafkaClients.exactly_once_consumer(loose)["enable.auto.commit"] is False
    assert KafkaClients.is_transactional(kafka.transactional("t"))
    assert not KafkaClients.is_transactional(kafka.producer())


def test_property_sets_as_kafkas_own_tools_read_them() -> None:
    kafka = KafkaClients.from_properties({"bootstrap.servers": "a:9092", "security.protocol": "SSL"})
    assert kafka.admin() == {"bootstrap.servers": "a:9092", "security.protocol": "SSL"}
    replaced = KafkaClients.from_properties({"bootstrap.servers": "a:9092"}, bootstrap_servers="b:9092")
    assert replaced.bootstrap_servers == "b:9092"
    assert KafkaClients.of("c:9092").bootstrap_servers == "c:9092"
    assert KafkaClients.of(kafka) is kafka


class _Arrivals:
    """A consumer whose records arrive over time: ``arrivals`` per call, as librdkafka hands them."""

    def __init__(self, ready: list[int], arriving: list[int]) -> None:
        self.ready = ready
        self.arriving = arriving
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[int]:
        self.calls.append((num_messages, timeout))
        if not self.ready and timeout > 0 and self.arriving:
            self.ready.append(self.arriving.pop(0))  # the first arrival ends a blocking wait
            self.ready.extend(self.arriving)
            self.arriving.clear()
        taken, self.ready = self.ready[:num_messages], self.ready[num_messages:]
        return taken


def test_fetch_takes_what_is_there_without_waiting() -> None:
    consumer = _Arrivals(ready=[1, 2, 3], arriving=[])
    assert fetch(consumer, 500, 0.1) == [1, 2, 3]
    assert consumer.calls == [(500, 0)]


def test_fetch_waits_only_for_the_first_record_then_drains() -> None:
    consumer = _Arrivals(ready=[], arriving=[7, 8, 9])
    assert fetch(consumer, 500, 0.1) == [7, 8, 9]
    assert consumer.calls == [(500, 0), (1, 0.1), (499, 0)]


def test_fetch_returns_nothing_after_the_timeout_when_nothing_came() -> None:
    consumer = _Arrivals(ready=[], arriving=[])
    assert fetch(consumer, 500, 0.1) == []
    assert consumer.calls == [(500, 0), (1, 0.1)]


def test_fetch_keeps_the_batch_bound() -> None:
    consumer = _Arrivals(ready=list(range(10)), arriving=[])
    assert fetch(consumer, 4, 0.1) == [0, 1, 2, 3]


def test_a_session_set_by_the_operator_alone_brings_heartbeats_to_a_third_of_it() -> None:
    kafka = KafkaClients("b:9092", {"consumer.session.timeout.ms": "8000"})
    conf = kafka.group_consumer("g", session_timeout_s=45)
    assert conf["session.timeout.ms"] == "8000"
    assert conf["heartbeat.interval.ms"] == 2666
    both = KafkaClients(
        "b:9092", {"consumer.session.timeout.ms": "8000", "consumer.heartbeat.interval.ms": "1000"}
    )
    assert both.group_consumer("g", session_timeout_s=45)["heartbeat.interval.ms"] == "1000"
