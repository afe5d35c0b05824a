"""The inbound de-duplicator: TTL with an injected clock, size bound, one publication per id."""

from __future__ import annotations

import asyncio

import pytest

from processors.api.dedupe import Deduplicator, Outcome
from processors.errors import BrokerError, ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_an_id_is_remembered_for_the_ttl_and_forgotten_after() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)

    dedupe.remember("evt_1")
    clock.now += 59.9
    assert "evt_1" in dedupe
    clock.now += 0.1
    assert "evt_1" not in dedupe
    assert len(dedupe) == 0


def test_remembering_again_restarts_the_ttl() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    dedupe.remember("a")
    clock.now += 50
    dedupe.remember("b")
    dedupe.remember("a")
    clock.now += 20

    assert "a" in dedupe
    assert "b" in dedupe
    clock.now += 45
    assert "a" not in dedupe


def test_the_map_is_bounded_oldest_first() -> None:
    dedupe = Deduplicator(ttl_s=3600, max_entries=3, clock=Clock())
    for key in ("a", "b", "c", "d"):
        dedupe.remember(key)

    assert "a" not in dedupe
    assert all(key in dedupe for key in ("b", "c", "d"))
    assert len(dedupe) == 3
    assert dedupe.evicted_early == 1


@pytest.mark.parametrize(("ttl_s", "max_entries"), [(0, 10), (-1, 10), (10, 0)])
def test_nonsense_settings_are_refused(ttl_s: float, max_entries: int) -> None:
    with pytest.raises(ConfigError):
        Deduplicator(ttl_s=ttl_s, max_entries=max_entries)


class Publisher:
    """Counts publications; each waits for ``release`` when ``hold`` is set."""

    def __init__(self, *, hold: bool = False, fail: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail = fail
        self.started = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail


async def test_a_replayed_id_is_published_once() -> None:
    dedupe = Deduplicator()
    publish = Publisher()

    outcomes = [await dedupe.once(("gw", "evt_1"), publish, wait_s=5) for _ in range(3)]

    assert outcomes == [Outcome.PUBLISHED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert publish.calls == 1
    assert ("gw", "evt_1") in dedupe


async def test_after_the_ttl_the_id_is_published_again() -> None:
    clock = Clock()
    dedupe = Deduplicator(ttl_s=60, clock=clock)
    publish = Publisher()
    await dedupe.once("evt_1", publish, wait_s=5)
    clock.now += 61

    assert await dedupe.once("evt_1", publish, wait_s=5) is Outcome.PUBLISHED
    assert publish.calls == 2


async def test_concurrent_deliveries_of_one_id_wait_for_the_first_publication() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)
    first = asyncio.create_task(dedupe.once("evt_1", publish, wait_s=5))
    await publish.started.wait()
    second = asyncio.create_task(dedupe.once("evt_1", publish, wait_s=5))
    await asyncio.sleep(0)  # let the second delivery find the first in flight
    assert dedupe.in_flight == 1

    publish.release.set()

    assert await first is Outcome.PUBLISHED
    assert await second is Outcome.DUPLICATE
    assert publish.calls == 1


async def test_a_failed_publication_is_not_remembered_and_the_retry_publishes() -> None:
    dedupe = Deduplicator()
    failing = Publisher(fail=BrokerError("delivery failed"))

    with pytest.raises(BrokerError):
        await dedupe.once("evt_1", failing, wait_s=5)
    assert "evt_1" not in dedupe
    assert dedupe.in_flight == 0

    working = Publisher()
    assert await dedupe.once("evt_1", working, wait_s=5) is Outcome.PUBLISHED
    assert working.calls == 1


async def test_a_waiting_delivery_publishes_itself_when_the_first_fails() -> None:
    dedupe = Deduplicator()
    failing = Publisher(hold=True, fail=BrokerError("delivery failed"))
    first = asyncio.create_task(dedupe.once("evt_1", failing, wait_s=5))
    await failing.started.wait()
    working = Publisher()
    second = asyncio.create_task(dedupe.once("evt_1", working, wait_s=5))
    await asyncio.sleep(0)

    failing.release.set()

    with pytest.raises(BrokerError):
        await first
    assert await second is Outcome.PUBLISHED
    assert working.calls == 1


async def test_a_slow_acknowledgement_times_out_but_the_publication_goes_on() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)

    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)
    assert dedupe.in_flight == 1
    # A retry while the first publication still waits for the broker does not start another one.
    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)
    assert publish.calls == 1

    publish.release.set()
    retry = await dedupe.once("evt_1", publish, wait_s=5)

    assert retry is Outcome.DUPLICATE
    assert publish.calls == 1
    assert "evt_1" in dedupe


async def test_aclose_cancels_publications_in_flight_without_remembering_them() -> None:
    dedupe = Deduplicator()
    publish = Publisher(hold=True)
    with pytest.raises(TimeoutError):
        await dedupe.once("evt_1", publish, wait_s=0.01)

    await dedupe.aclose()

    assert dedupe.in_flight == 0
    assert "evt_1" not in dedupe
