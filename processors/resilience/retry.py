"""In-place retry with exponential backoff and full jitter.

``max_attempts`` counts the first attempt.  When the service asks (``Retry-After``) for a
longer delay than ``max_delay_ms``, no in-place attempt is made: the error propagates so the
record moves to a retry topic.  The delay before attempt *n+1* is drawn uniformly
from ``[0, min(max_delay_ms, initial_delay_ms * multiplier**(n-1))]`` ("full jitter"); when the
service said ``Retry-After`` the delay is that value, capped at ``max_delay_ms``.  Only
``Retriable`` errors are retried; ``Permanent`` ones and anything else propagate at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from processors.errors import Backpressure, Retriable

__all__ = ["RetriesExhausted", "RetryPolicy"]

T = TypeVar("T")


class RetriesExhausted(Retriable):
    """Every in-place attempt failed with a retriable error; ``__cause__`` is the last one."""

    def __init__(self, message: str, *, attempts: int, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.attempts = attempts


class RetryPolicy(BaseModel):
    """Seed defaults: 3 attempts, 100 ms initial, ×2, capped at 5000 ms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_delay_ms: int = Field(default=100, ge=0)
    max_delay_ms: int = Field(default=5_000, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)

    def backoff_ms(
        self, attempt: int, *, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> int:
        """Delay before the attempt after ``attempt`` (1-based)."""
        if retry_after_s is not None:
            return min(int(retry_after_s * 1000), self.max_delay_ms)
        ceiling = min(self.max_delay_ms, self.initial_delay_ms * self.multiplier ** (attempt - 1))
        return int((rng or random).uniform(0, ceiling))

    def after_failure(self, attempt: int, exc: Retriable, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after ``attempt`` failed with ``exc``.

        Raises :class:`RetriesExhausted` (from ``exc``) when no in-place attempt is left: out of
        attempts, or the service wants a longer pause than ``max_delay_ms`` (the record moves to
        a retry topic instead of sleeping here).
        """
        wanted_ms = None if exc.retry_after_s is None else exc.retry_after_s * 1000
        if attempt >= self.max_attempts or (wanted_ms is not None and wanted_ms > self.max_delay_ms):
            raise RetriesExhausted(
                f"{attempt} attempts failed; last: {exc}",
                attempts=attempt,
                retry_after_s=exc.retry_after_s,
            ) from exc
        return self.backoff_ms(attempt, retry_after_s=exc.retry_after_s, rng=rng) / 1000

    async def call(
        self,
        operation: Callable[[int], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> T:
        """Run ``operation(attempt)`` until it succeeds, fails permanently or attempts run out."""
        attempt = 1
        while True:
            try:
                return await operation(attempt)
            except Backpressure:
                raise  # the caller waits for the endpoint; no attempt is spent
            except Retriable as exc:
                await sleep(self.after_failure(attempt, exc, rng=rng))
                attempt += 1
