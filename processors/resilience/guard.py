"""One external endpoint behind its circuit breaker, retry policy and deadline.

``EndpointGuard.call(operation)`` runs ``operation`` (one attempt = one call) under:

* the per-message **deadline** (``timeout.deadline_s``): running out is ``Retriable``;
* the **retry policy**: in-place attempts with jittered backoff, ``Retry-After`` honoured up
  to the cap; longer waits and exhausted attempts propagate so the record moves to a retry
  topic instead of sleeping;
* the **circuit breaker**: when it refuses a call, ``EndpointUnavailable`` (a
  ``Backpressure``) propagates at once — no attempt is spent, and the runtime pauses the
  partitions until the breaker admits calls again.

Connect and read timeouts per attempt belong to the transport (``TimeoutPolicy.http()``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from processors import context as record_context
from processors.errors import Backpressure, Retriable
from processors.observability import tracing
from processors.observability.audit import AuditLogger, audit_logger, status_for_error
from processors.resilience.breaker import CircuitBreaker, CircuitOpen
from processors.resilience.config import EndpointPolicy

__all__ = [
    "CallContext",
    "DeadlineExceeded",
    "EndpointGuard",
    "EndpointUnavailable",
    "Unguarded",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who calls and why: what the audit record of each attempt says besides the outcome.

    ``request_summary`` may hold personal data: the audit event redacts it before anything
    is logged or published.  ``describe`` turns a result into (status, response summary).
    """

    app: str
    operation: str
    idempotency_key: str | None = None
    correlation_id: str | None = None
    request_summary: Any = None
    describe: Callable[[Any], tuple[str, Any]] | None = None


class EndpointUnavailable(Backpressure):
    """The endpoint's circuit is open: wait for it instead of failing the record."""

    def __init__(self, breaker: CircuitBreaker, cause: CircuitOpen) -> None:
        super().__init__(str(cause), retry_after_s=cause.retry_after_s)
        self.endpoint = breaker.endpoint
        self._breaker = breaker

    async def wait_ready(self) -> None:
        await self._breaker.wait_admitting()


class DeadlineExceeded(Retriable):
    """The message's overall deadline passed before the endpoint answered."""


class EndpointGuard:
    def __init__(self, endpoint: str, policy: EndpointPolicy, breaker: CircuitBreaker | None = None) -> None:
        self.endpoint = endpoint
        self.policy = policy
        self.breaker = breaker or CircuitBreaker(endpoint, policy.breaker)
        self._auditors: dict[str, AuditLogger] = {}

    async def call(self, operation: Callable[[], Awaitable[T]], *, context: CallContext | None = None) -> T:
        # One frame for the deadline, the attempts and the breaker (the layers of
        # RetryPolicy.call and CircuitBreaker.call, with their rules shared through
        # ``after_failure``, ``admit`` and ``settle``): this runs once per external call.
        breaker = self.breaker
        retry = self.policy.retry
        deadline_s = self.policy.timeout.deadline_s
        n = 1
        try:
            async with asyncio.timeout(deadline_s):
                while True:
                    try:
                        ticket = breaker.admit()
                    except CircuitOpen as exc:
                        raise EndpointUnavailable(breaker, exc) from exc
                    started = time.perf_counter()
                    try:
                        result = await self._attempt(operation, context, started)
                    except Retriable as exc:
                        breaker.settle(ticket, started, exc)
                        if isinstance(exc, Backpressure):
                            raise  # the caller waits for the endpoint; no attempt is spent
                        await asyncio.sleep(retry.after_failure(n, exc))
                        n += 1
                        continue
                    except BaseException as exc:
                        breaker.settle(ticket, started, exc)
                        raise
                    breaker.settle(ticket, started)
                    return result
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"{self.endpoint}: no answer within the {deadline_s:g} s deadline"
            ) from exc

    def _attempt(
        self, operation: Callable[[], Awaitable[T]], context: CallContext | None, started: float
    ) -> Awaitable[T]:
        """One call (to await): counted, traced when tracing is on, audited when there is a context.

        A plain function handing back the awaitable, so an untraced call adds no frame of its own.
        """
        attempt = record_context.count_call()
        tracer = tracing.tracer()
        if tracer is not None:
            return self._traced(tracer, operation, context, attempt, started)
        if context is None:
            return operation()
        return self._audited(operation, context, attempt, started)

    async def _traced(
        self,
        tracer: Any,
        operation: Callable[[], Awaitable[T]],
        context: CallContext | None,
        attempt: int,
        started: float,
    ) -> T:
        operation_name = context.operation if context is not None else "call"
        with tracing.client_span(tracer, self.endpoint, operation_name, attempt):
            if context is None:
                return await operation()
            return await self._audited(operation, context, attempt, started)

    async def _audited(
        self, operation: Callable[[], Awaitable[T]], context: CallContext, attempt: int, started: float
    ) -> T:
        try:
            result = await operation()
        except Exception as exc:
            status, outcome = status_for_error(exc)
            self._audit(context, attempt, status, outcome, started, error=exc)
            raise
        status, response = context.describe(result) if context.describe else ("ok", None)
        self._audit(context, attempt, status, "success", started, response=response)
        return result

    def _audit(
        self,
        context: CallContext,
        attempt: int,
        status: str,
        outcome: Any,
        started: float,
        *,
        response: Any = None,
        error: BaseException | None = None,
    ) -> None:
        logger = self._auditors.get(context.app)
        if logger is None:
            logger = self._auditors[context.app] = audit_logger(context.app)
        logger.record_outbound(
            endpoint=self.endpoint,
            operation=context.operation,
            status=status,
            outcome=outcome,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempt=attempt,
            idempotency_key=context.idempotency_key,
            breaker_state=self.breaker.state.value,
            correlation_id=context.correlation_id,
            traceparent=tracing.outbound_traceparent(),
            request_summary=context.request_summary,
            response_summary=response,
            error=error,
        )


class Unguarded(EndpointGuard):
    """Calls the operation once, with no breaker, retry or deadline; the call is still counted,
    traced and audited (the audit trail is not part of the resilience layer).

    Only for measuring what the resilience layer costs (``bench/``); production refuses it
    (``resilience_enabled``, :mod:`processors.production`).
    """

    async def call(self, operation: Callable[[], Awaitable[T]], *, context: CallContext | None = None) -> T:
        return await self._attempt(operation, context, time.perf_counter())
