"""A circuit breaker per external endpoint.

Independent of Kafka and of any HTTP library; one breaker is used from one asyncio event loop.

**States** (seed defaults in brackets)::

    CLOSED ──(failure_threshold [5] consecutive counted failures)──► OPEN
    OPEN ──(timeout_duration_s [30] elapsed; checked lazily)──► HALF_OPEN
    HALF_OPEN ──(success_threshold [3] probe successes)──► CLOSED
    HALF_OPEN ──(any probe failure)──► OPEN (a fresh timeout)

* **CLOSED**: every call goes through.  A counted failure extends the run of consecutive
  failures; a success ends it.
* **OPEN**: every call is refused with :class:`CircuitOpen` without calling the operation.
  ``retry_after_s`` is the time left until the breaker admits probes.
* **HALF_OPEN**: at most ``half_open_requests`` [3] probes run at once; each holds a permit
  until it returns, fails or is cancelled.  Other callers get :class:`CircuitOpen` with
  ``retry_after_s`` = :data:`HALF_OPEN_BUSY_RETRY_S`.

**What counts** is decided by :func:`processors.resilience.classify.breaker_outcome`:
``Retriable`` errors, ``TimeoutError`` and unexpected exceptions are failures; a normal return
(business declines and KYC rejections are return values) and ``Permanent`` errors (a 4xx: the
endpoint answered, the request was at fault) are successes; cancellation and ``ContractError``
count as neither.  A cancelled probe gives its permit back.

**Generations.**  Every state change starts a new generation, and only calls admitted in the
current generation change the state: a slow call admitted while CLOSED that ends after the
breaker opened, or a probe still running when its siblings already closed (or reopened) the
breaker, is recorded in the totals of :meth:`CircuitBreaker.snapshot` but moves nothing.

**Clock.**  The breaker reads an injectable monotonic clock in seconds (``time.monotonic`` by
default).  OPEN turns into HALF_OPEN when the breaker is next consulted (:attr:`~CircuitBreaker.state`,
:meth:`~CircuitBreaker.call`, :meth:`~CircuitBreaker.next_admission_in_s`, ...).
:meth:`~CircuitBreaker.wait_admitting` sleeps on an event-loop timer for the time the clock says
is left and wakes early on every state change or released permit.  With a fake clock, advance
it and read :attr:`~CircuitBreaker.state`: the transition happens and wakes the waiters.

**Composition.**  Put the breaker around each attempt, inside the retry policy, so every
attempt that reaches the endpoint is counted.  ``CircuitOpen`` is a ``Retriable``; an app that
sees it should pause the partitions that need the endpoint and resume them when
:meth:`~CircuitBreaker.wait_admitting` returns, rather than burn retries while the breaker is open
(:class:`processors.resilience.guard.EndpointGuard` does both).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors.errors import Retriable
from processors.resilience.classify import BreakerOutcome, breaker_outcome

__all__ = [
    "HALF_OPEN_BUSY_RETRY_S",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerSettings",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpen",
    "EndpointListener",
    "OperationTimedOut",
]

T = TypeVar("T")

_log = logging.getLogger(__name__)

HALF_OPEN_BUSY_RETRY_S = 0.05
"""The retry hint (seconds) given while HALF_OPEN with every probe permit taken.

A permit frees as soon as a probe ends, which the breaker cannot predict; a short positive
value tells the caller "soon, not now".  :meth:`CircuitBreaker.wait_admitting` does not poll
with it: it wakes when a permit is released."""

BreakerListener = Callable[["BreakerState", "BreakerState"], None]
"""Called with ``(old, new)`` on every transition, synchronously, after the state changed."""

EndpointListener = Callable[[str, "BreakerState", "BreakerState"], None]
"""A :class:`BreakerRegistry` listener: ``(endpoint, old, new)``."""


class BreakerSettings(BaseModel):
    """Seed defaults: open after 5 consecutive failures, for 30 s; 3 probes; 3 successes close.

    ``success_threshold`` may not exceed ``half_open_requests``, so that one round of
    concurrent probes can close the breaker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=3, ge=1)
    timeout_duration_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    half_open_requests: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _one_round_can_close(self) -> BreakerSettings:
        if self.success_threshold > self.half_open_requests:
            raise ValueError(
                f"success_threshold ({self.success_threshold}) must not exceed half_open_requests "
                f"({self.half_open_requests}): the breaker admits at most half_open_requests probes "
                "at once, and that many successes must be able to close it"
            )
        return self


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Retriable):
    """The breaker refused the call; the operation was not called.

    ``retry_after_s`` is when the breaker expects to admit a call again (see
    :meth:`CircuitBreaker.next_admission_in_s`).
    """

    def __init__(
        self, endpoint: str, *, retry_after_s: float, state: BreakerState = BreakerState.OPEN
    ) -> None:
        if state is BreakerState.HALF_OPEN:
            why = f"circuit for '{endpoint}' is half-open and every probe permit is taken"
        else:
            why = f"circuit for '{endpoint}' is open"
        super().__init__(f"{why}; retry in {retry_after_s:.2f} s", retry_after_s=retry_after_s)
        self.endpoint = endpoint
        self.state = state
        self.retry_after_s: float = retry_after_s


class OperationTimedOut(Retriable):
    """The operation ran past the ``timeout_s`` given to :meth:`CircuitBreaker.call`."""

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A breaker's counters at one moment.

    Times (``*_at``) are readings of the breaker's clock (monotonic seconds), not wall-clock
    times; ``None`` until the event first happened.  Totals include calls that ended after the
    breaker had moved on (see the module doc on generations); ``total_successes`` includes
    ``Permanent`` errors; ``rejections`` counts :class:`CircuitOpen` refusals.
    """

    endpoint: str
    state: BreakerState
    consecutive_failures: int
    total_failures: int
    total_successes: int
    rejections: int
    opened_count: int
    probes_in_flight: int
    probe_successes: int
    last_failure_at: float | None
    last_success_at: float | None
    last_state_change_at: float | None
    transitions: tuple[tuple[BreakerState, BreakerState, int], ...] = ()
    """(from, to, times) for every transition that happened (``opened_count`` counts ``-> OPEN``)."""


LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the call-latency histogram (seconds): from a local stub to the read timeout."""


class CallLatency:
    """A histogram of call durations per outcome (``success``, ``failure``, ``rejected``: a
    business refusal the breaker counts as healthy).  Bounded: three outcomes, fixed buckets."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, outcome: str, seconds: float) -> None:
        counts = self._counts.get(outcome)
        if counts is None:
            counts = self._counts[outcome] = [0] * (len(LATENCY_BUCKETS_S) + 1)
            self._sums[outcome] = 0.0
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self._sums[outcome] += seconds

    def snapshot(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """Per outcome: the cumulative ``(le, count)`` buckets ending with ``+Inf``, and the sum."""
        out: dict[str, tuple[list[tuple[str, int]], float]] = {}
        for outcome, counts in self._counts.items():
            running = 0
            buckets: list[tuple[str, int]] = []
            for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            out[outcome] = (buckets, self._sums[outcome])
        return out


@dataclass(frozen=True, slots=True)
class _Ticket:
    generation: int
    probe: bool


class CircuitBreaker:
    """The breaker of one endpoint; see the module doc for the exact semantics."""

    def __init__(
        self,
        endpoint: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings if settings is not None else BreakerSettings()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._closed_ticket = _Ticket(0, probe=False)
        """The ticket of every call admitted while CLOSED in this generation (tickets are values)."""
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._total_failures = 0
        self.latency = CallLatency()
        """Seconds each call that reached the endpoint took, by outcome (for the metrics)."""
        self._total_successes = 0
        self._rejections = 0
        self._opened_count = 0
        self._last_failure_at: float | None = None
        self._last_success_at: float | None = None
        self._last_state_change_at: float | None = None
        self._transitions: dict[tuple[BreakerState, BreakerState], int] = {}
        self._listeners: list[BreakerListener] = []
        self._waiters: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.endpoint!r} {self._state.value}>"

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker whose timeout elapsed becomes HALF_OPEN here."""
        if self._state is BreakerState.OPEN and self._open_remaining_s() <= 0:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def next_admission_in_s(self) -> float:
        """Seconds until a call would be admitted; ``0.0`` if one would be admitted now.

        OPEN: the time left of the open period.  HALF_OPEN with every permit taken:
        :data:`HALF_OPEN_BUSY_RETRY_S` (a hint; the wait ends when a probe finishes).
        """
        state = self.state
        if state is BreakerState.OPEN:
            return self._open_remaining_s()
        if state is BreakerState.HALF_OPEN and self._probes_in_flight >= self.settings.half_open_requests:
            return HALF_OPEN_BUSY_RETRY_S
        return 0.0

    def snapshot(self) -> BreakerStats:
        return BreakerStats(
            endpoint=self.endpoint,
            state=self.state,
            consecutive_failures=self._consecutive_failures,
            total_failures=self._total_failures,
            total_successes=self._total_successes,
            rejections=self._rejections,
            opened_count=self._opened_count,
            probes_in_flight=self._probes_in_flight,
            probe_successes=self._probe_successes,
            last_failure_at=self._last_failure_at,
            last_success_at=self._last_success_at,
            last_state_change_at=self._last_state_change_at,
            transitions=tuple((old, new, n) for (old, new), n in self._transitions.items()),
        )

    def add_listener(self, callback: BreakerListener) -> None:
        """Call ``callback(old, new)`` on every transition.

        Listeners run synchronously right after the change; an exception in one is logged and
        does not affect the breaker or the other listeners.
        """
        self._listeners.append(callback)

    # ------------------------------------------------------------------ calling

    async def call(self, operation: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        """Run ``operation()`` if the breaker admits it; raise :class:`CircuitOpen` otherwise.

        ``timeout_s`` bounds the operation inside the breaker: running out of time raises
        :class:`OperationTimedOut` (a ``Retriable``) and counts as a failure.  (A timeout placed
        *around* ``call`` cancels it instead, and a cancelled call counts as neither success nor
        failure.)  The operation's own exceptions propagate unchanged.
        """
        ticket = self.admit()
        started = time.perf_counter()
        try:
            if timeout_s is None:
                result = await operation()
            else:
                result = await self._bounded(operation, timeout_s)
        except BaseException as exc:
            self.settle(ticket, started, exc)
            raise
        self.settle(ticket, started)
        return result

    def settle(self, ticket: _Ticket, started: float, exc: BaseException | None = None) -> None:
        """Count the outcome of a call admitted with ``ticket`` (``started``: its ``perf_counter``).

        ``exc`` is what the call raised, None for a success: see :func:`breaker_outcome`.
        """
        if exc is None:
            self._record_success(ticket)
            self.latency.observe("success", time.perf_counter() - started)
            return
        outcome = breaker_outcome(exc)
        if outcome is BreakerOutcome.FAILURE:
            self._record_failure(ticket)
            self.latency.observe("failure", time.perf_counter() - started)
        elif outcome is BreakerOutcome.HEALTHY:
            self._record_success(ticket)
            self.latency.observe("rejected", time.perf_counter() - started)
        else:
            self._release(ticket)

    async def _bounded(self, operation: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        timer = asyncio.timeout(timeout_s)
        try:
            async with timer:
                return await operation()
        except TimeoutError as exc:
            if timer.expired():
                raise OperationTimedOut(
                    f"call to '{self.endpoint}' took longer than {timeout_s:g} s", timeout_s=timeout_s
                ) from exc
            raise

    async def wait_admitting(self) -> None:
        """Return once a call would be admitted (then a call may still lose the race).

        Sleeps on a loop timer for the time the clock says is left of the open period, and
        wakes early on every transition or released permit; it never polls.
        """
        loop = asyncio.get_running_loop()
        while True:
            state = self.state
            delay = self.next_admission_in_s()
            if delay <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            timer = loop.call_later(delay, _wake, waiter) if state is BreakerState.OPEN else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiters.discard(waiter)

    # ------------------------------------------------------------------ the machine

    def admit(self) -> _Ticket:
        """Take a call's permit; raise :class:`CircuitOpen` when the breaker refuses the call.

        Every admitted call is settled exactly once (:meth:`settle`); :meth:`call` does both.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return self._closed_ticket
        if state is BreakerState.HALF_OPEN and self._probes_in_flight < self.settings.half_open_requests:
            self._probes_in_flight += 1
            return _Ticket(self._generation, probe=True)
        self._rejections += 1
        raise CircuitOpen(self.endpoint, retry_after_s=self.next_admission_in_s(), state=state)

    def _current(self, ticket: _Ticket) -> bool:
        """Whether the call was admitted in this generation; a current probe gives its permit back."""
        if ticket.generation != self._generation:
            return False
        if ticket.probe:
            self._probes_in_flight -= 1
            self._notify()
        return True

    def _record_failure(self, ticket: _Ticket) -> None:
        self._total_failures += 1
        self._last_failure_at = self._clock()
        if not self._current(ticket):
            return
        self._consecutive_failures += 1
        if ticket.probe or self._consecutive_failures >= self.settings.failure_threshold:
            self._transition(BreakerState.OPEN)

    def _record_success(self, ticket: _Ticket) -> None:
        self._total_successes += 1
        self._last_success_at = self._clock()
        if not self._current(ticket):
            return
        self._consecutive_failures = 0
        if ticket.probe:
            self._probe_successes += 1
            if self._probe_successes >= self.settings.success_threshold:
                self._transition(BreakerState.CLOSED)

    def _release(self, ticket: _Ticket) -> None:
        self._current(ticket)

    def _open_remaining_s(self) -> float:
        return max(0.0, self._opened_at + self.settings.timeout_duration_s - self._clock())

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        now = self._clock()
        self._state = new
        self._generation += 1
        self._closed_ticket = _Ticket(self._generation, probe=False)
        self._last_state_change_at = now
        self._transitions[(old, new)] = self._transitions.get((old, new), 0) + 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
            self._opened_count += 1
        elif new is BreakerState.CLOSED:
            self._consecutive_failures = 0
        _log.info(
            "circuit breaker %s: %s -> %s",
            self.endpoint,
            old.value,
            new.value,
            extra={"endpoint": self.endpoint, "old_state": old.value, "new_state": new.value},
        )
        self._notify()
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:
                _log.exception("circuit breaker %s: a state listener failed", self.endpoint)

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class BreakerRegistry:
    """One :class:`CircuitBreaker` per endpoint name, created on first use and kept until
    :meth:`discard`.

    ``settings`` maps an endpoint name to its breaker settings (for example
    ``lambda name: config.for_endpoint(name).breaker``, which
    :meth:`processors.resilience.config.ResilienceConfig.breakers` sets up); without it every
    breaker gets the seed defaults.  Listeners added here see every breaker's transitions,
    including breakers created later.
    """

    def __init__(
        self,
        settings: Callable[[str], BreakerSettings] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[EndpointListener] = []

    def get(self, endpoint: str) -> CircuitBreaker:
        """The breaker of ``endpoint``, created with its settings on first use."""
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            settings = self._settings(endpoint) if self._settings is not None else BreakerSettings()
            breaker = CircuitBreaker(endpoint, settings, clock=self._clock)
            for listener in self._listeners:
                breaker.add_listener(_bind(listener, endpoint))
            self._breakers[endpoint] = breaker
        return breaker

    def discard(self, endpoint: str) -> CircuitBreaker | None:
        """Forget the breaker of an endpoint that is gone for good (a deleted webhook
        subscription), so the registry holds only endpoints still in use; returns it, or None.

        Calls already holding the breaker finish with it; a later :meth:`get` creates a new one.
        """
        return self._breakers.pop(endpoint, None)

    def add_listener(self, callback: EndpointListener) -> None:
        """Call ``callback(endpoint, old, new)`` on every transition of every breaker."""
        self._listeners.append(callback)
        for endpoint, breaker in self._breakers.items():
            breaker.add_listener(_bind(callback, endpoint))

    def snapshot(self) -> dict[str, BreakerStats]:
        """Counters of every breaker created so far, by endpoint."""
        return {endpoint: breaker.snapshot() for endpoint, breaker in self._breakers.items()}

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)


def _bind(listener: EndpointListener, endpoint: str) -> BreakerListener:
    def bound(old: BreakerState, new: BreakerState) -> None:
        listener(endpoint, old, new)

    return bound
