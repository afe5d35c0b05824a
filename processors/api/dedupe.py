"""De-duplication of inbound provider events: publish each provider event id once.

Providers retry and sometimes send one event twice.  :class:`Deduplicator` remembers the ids
whose record the broker acknowledged, for ``ttl_s`` (24 h by default), in a bounded in-memory
map, and runs at most one publication per id at a time::

    outcome = await dedupe.once(("payment-gateway", event_id), publish, wait_s=10)

* the id was published within the TTL → ``DUPLICATE`` (``publish`` is not called);
* a publication of the id is running (a retry that overtook the first delivery) → wait for it:
  acknowledged → ``DUPLICATE``; failed → this caller publishes;
* otherwise ``publish()`` runs as a task of its own; when the broker acknowledges it the id is
  remembered and ``PUBLISHED`` is returned.

If the acknowledgement takes longer than ``wait_s``, ``once`` raises :class:`TimeoutError` but
the publication keeps running: a retry of the same id waits for that same publication instead
of starting a second one, and the id is remembered once it is acknowledged.

**Limits.**  The map is per process: two instances behind a load balancer, or a restart, can
each publish an id once.  Entries beyond ``max_entries`` are dropped oldest first before their
TTL ends (logged).  Consumers of the published events de-duplicate on the envelope's
``event_id``, which is derived from the provider event id, so such a second copy is harmless.
A compacted topic of seen ids could make the memory durable; it is not needed for correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from enum import StrEnum

from processors.errors import ConfigError

__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL_S", "Deduplicator", "Outcome"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 500_000


class Outcome(StrEnum):
    PUBLISHED = "published"
    DUPLICATE = "duplicate"


class Deduplicator:
    """Seen ids with a TTL, bounded in size, plus the publications in flight.

    ``clock`` is monotonic seconds (injectable for tests).  All methods are called from one
    event loop.
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s > 0:
            raise ConfigError("dedupe ttl_s must be positive")
        if max_entries < 1:
            raise ConfigError("dedupe max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        # The TTL is the same for every entry, so insertion order is expiry order.
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._in_flight: dict[Hashable, asyncio.Task[None]] = {}
        self.evicted_early = 0
        """Entries dropped for room before their TTL ended (each may let a duplicate through)."""

    def __len__(self) -> int:
        self._expire()
        return len(self._seen)

    def __contains__(self, key: Hashable) -> bool:
        self._expire()
        return key in self._seen

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def remember(self, key: Hashable) -> None:
        """Mark ``key`` as published now (for ``ttl_s``)."""
        self._expire()
        self._seen.pop(key, None)
        self._seen[key] = self._clock() + self.ttl_s
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted_early += 1
            if self.evicted_early == 1 or self.evicted_early % 10_000 == 0:
                log.warning(
                    "dedupe map full (%d entries): dropped ids before their TTL (%d so far)",
                    self.max_entries,
                    self.evicted_early,
                )

    def _expire(self) -> None:
        now = self._clock()
        seen = self._seen
        while seen:
            key, expires_at = next(iter(seen.items()))
            if expires_at > now:
                break
            del seen[key]

    async def once(self, key: Hashable, publish: Callable[[], Awaitable[None]], *, wait_s: float) -> Outcome:
        """Publish for ``key`` unless it was published (or is being published); see the module doc.

        Raises :class:`TimeoutError` when the publication (this caller's or the one it waits
        for) is not acknowledged within ``wait_s``; re-raises the publication's own error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if key in self:
                return Outcome.DUPLICATE
            running = self._in_flight.get(key)
            if running is None:
                break
            # Another delivery of this id is being published: its outcome decides.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({running}, timeout=remaining)
            if not done:
                raise TimeoutError

        async def run() -> None:
            await publish()

        task = asyncio.create_task(run())
        self._in_flight[key] = task
        task.add_done_callback(lambda t: self._settled(key, t))
        remaining = max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done:
            raise TimeoutError
        task.result()  # the publication's error, if any
        return Outcome.PUBLISHED

    def _settled(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled() and task.exception() is None:
            self.remember(key)

    async def aclose(self) -> None:
        """Cancel the publications still in flight (their ids are not remembered)."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
