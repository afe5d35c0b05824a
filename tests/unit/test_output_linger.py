"""An app's output producer waits as long as its engine settings say, unless the operator said otherwise."""

from __future__ import annotations

import pytest

from processors.kafka import KafkaClients
from processors.runner import output_producer_config
from processors.runtime.engine import EngineSettings
from processors.settings import load_settings


def test_webhook_outputs_linger_one_millisecond_and_other_apps_keep_the_client_default() -> None:
    settings = load_settings(bootstrap_servers="127.0.0.1:9092")
    kafka = KafkaClients("127.0.0.1:9092")
    webhooks = output_producer_config(kafka, settings.webhooks.engine, 1_000_000)
    payments = output_producer_config(kafka, settings.engine, 1_000_000)
    assert webhooks["linger.ms"] == 1
    assert payments["linger.ms"] == 5
    assert webhooks["enable.idempotence"] is True  # the invariants still hold


def test_an_operator_override_of_linger_wins_over_the_engine_setting() -> None:
    engine = EngineSettings(linger_ms=1)
    for key in ("producer.linger.ms", "client.linger.ms"):
        kafka = KafkaClients("127.0.0.1:9092", overrides={key: "20"})
        assert output_producer_config(kafka, engine, 1_000_000)["linger.ms"] == "20"


@pytest.mark.parametrize("wrong", [-1, 1_001])
def test_linger_is_bounded(wrong: int) -> None:
    with pytest.raises(ValueError, match="linger_ms"):
        EngineSettings(linger_ms=wrong)
