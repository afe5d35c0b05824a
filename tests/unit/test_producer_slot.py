"""The producer a service sends with: a given one is its owner's, an own one is made and closed."""

from __future__ import annotations

from typing import Any

from processors.runtime.message import OutRecord
from processors.runtime.producer import AsyncProducer, ProducerSlot


class _Given:
    async def send_all(self, records: list[OutRecord]) -> None:
        raise AssertionError("not used here")


async def test_a_given_producer_is_used_and_left_to_its_owner() -> None:
    given = _Given()
    made: list[dict[str, Any]] = []

    def config() -> dict[str, Any]:
        made.append({})
        return made[-1]

    slot = ProducerSlot(given, config, stop_timeout_s=1.0)
    await slot.start()
    assert slot.producer is given
    await slot.stop()
    assert slot.producer is given  # still its owner's to stop
    assert made == []  # no producer was made


async def test_an_own_producer_is_made_on_start_and_closed_on_stop() -> None:
    configs: list[dict[str, Any]] = []

    def config() -> dict[str, Any]:
        # nothing is sent, so no broker is contacted
        configs.append({"bootstrap.servers": "127.0.0.1:9", "client.id": "slot-test"})
        return configs[-1]

    slot = ProducerSlot(None, config, stop_timeout_s=1.0)
    assert slot.producer is None
    await slot.start()
    own = slot.producer
    assert isinstance(own, AsyncProducer)
    await slot.start()  # already running: not made again
    assert slot.producer is own
    assert len(configs) == 1
    await slot.stop()
    assert slot.producer is None
    await slot.stop()  # idempotent
    assert slot.producer is None
