"""The consumer that lives on one thread: created, used and closed there, closed once."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from processors.kafka.threaded import ThreadBoundConsumer


class _Consumer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.threads = {"created": threading.get_ident()}
        self.closes = 0

    def poll(self) -> int:
        self.threads["used"] = threading.get_ident()
        return 7

    def close(self) -> None:
        self.threads["closed"] = threading.get_ident()
        self.closes += 1


async def test_created_used_and_closed_on_one_thread_that_is_not_the_loops() -> None:
    bound = ThreadBoundConsumer("t-feed")
    await bound.open(_Consumer, {"group.id": "g"})
    consumer = bound.consumer
    assert isinstance(consumer, _Consumer)
    assert consumer.conf == {"group.id": "g"}
    assert await bound.call(consumer.poll) == 7
    await bound.close()
    await bound.close()  # a second close is a no-op
    assert consumer.closes == 1
    assert len(set(consumer.threads.values())) == 1
    assert consumer.threads["used"] != threading.get_ident()
    assert bound.consumer is None
    with pytest.raises(RuntimeError, match="closed"):
        await bound.call(consumer.poll)


async def test_a_factory_error_is_raised_and_leaves_nothing_running() -> None:
    def refuse(_conf: dict[str, Any]) -> Any:
        raise ValueError("bad conf")

    bound = ThreadBoundConsumer("t-feed")
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="bad conf"):
        await bound.open(refuse, {})
    assert bound.consumer is None
    assert not {t.name for t in threading.enumerate() if t.name.startswith("t-feed")} - before
    with pytest.raises(RuntimeError, match="closed"):
        await bound.call(lambda: None)


async def test_opened_twice_is_refused() -> None:
    bound = ThreadBoundConsumer("t-feed")
    await bound.open(_Consumer, {})
    try:
        with pytest.raises(RuntimeError, match="already open"):
            await bound.open(_Consumer, {})
    finally:
        await bound.close()
