"""A Kafka consumer that lives on one thread of its own.

librdkafka's consumer is not for concurrent use, and its blocking calls must stay off the event
loop.  The feeds that tail a topic beside an app (the portal's live feed, the webhook attempts
view) each create their consumer, poll it and close it on a single worker thread: this is that
thread, with the consumer it owns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ThreadBoundConsumer"]

T = TypeVar("T")
C = TypeVar("C")


class ThreadBoundConsumer:
    """Creates, uses and closes one consumer on a worker thread named ``name``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.consumer: Any = None
        """The consumer, for code that runs on the thread (through :meth:`call`); None when closed."""

    async def open(self, factory: Callable[[C], Any], conf: C) -> None:
        """Start the thread and create the consumer on it; on an error, the thread is stopped
        again and the error raised."""
        if self._executor is not None:
            raise RuntimeError(f"{self._name}: the consumer is already open")
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self._name)
        try:
            self.consumer = await asyncio.get_running_loop().run_in_executor(self._executor, factory, conf)
        except BaseException:
            await self.close()
            raise

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the consumer's thread."""
        if self._executor is None:
            raise RuntimeError(f"{self._name}: the consumer is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        """Close the consumer on its thread (leaving its group), then stop the thread; idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        consumer, self.consumer = self.consumer, None
        try:
            if consumer is not None:
                await asyncio.get_running_loop().run_in_executor(executor, consumer.close)
        finally:
            executor.shutdown(wait=True)
