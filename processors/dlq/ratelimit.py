"""A token bucket: at most ``rate_per_s`` records per second, after a burst of ``capacity``."""

from __future__ import annotations

import time
from collections.abc import Callable

from processors.errors import ConfigError

__all__ = ["TokenBucket"]


class TokenBucket:
    """Tokens refill continuously at ``rate_per_s`` up to ``capacity``; each record takes one.

    :meth:`reserve` takes a token and returns how long to wait before using it (0 when one
    was available); the caller waits (interruptibly) itself.  ``clock`` is a monotonic
    clock in seconds, injectable for tests.  The bucket starts full.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0:
            raise ConfigError(f"rate must be > 0 records per second (got {rate_per_s})")
        self.rate_per_s = float(rate_per_s)
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate_per_s)
        if self.capacity < 1:
            raise ConfigError(f"bucket capacity must be ≥ 1 (got {capacity})")
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._updated = now

    def reserve(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` (possibly into debt); seconds to wait before they may be used."""
        self._refill()
        self._tokens -= tokens
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate_per_s

    @property
    def available(self) -> float:
        """Tokens available now (negative while in debt)."""
        self._refill()
        return self._tokens
