"""Resilience for calls to external services: circuit breaker, retry, timeouts, classification.

* :mod:`processors.resilience.breaker`: :class:`CircuitBreaker` per endpoint,
  :class:`BreakerRegistry`, :class:`CircuitOpen`;
* :mod:`processors.resilience.retry`: in-place :class:`RetryPolicy` with full jitter;
* :mod:`processors.resilience.config`: ``resilience.yaml`` → :class:`EndpointPolicy` per endpoint;
* :mod:`processors.resilience.classify`: HTTP status → ``Retriable`` / ``Permanent``, and what
  counts as a failure for the breaker.

Nothing here imports Kafka or an HTTP library (:meth:`TimeoutPolicy.http` imports the HTTP seam
when called).
"""

from __future__ import annotations

from processors.resilience.breaker import (
    HALF_OPEN_BUSY_RETRY_S,
    BreakerListener,
    BreakerRegistry,
    BreakerSettings,
    BreakerState,
    BreakerStats,
    CircuitBreaker,
    CircuitOpen,
    EndpointListener,
    OperationTimedOut,
)
from processors.resilience.classify import (
    BreakerOutcome,
    PermanentHttpStatus,
    RetriableHttpStatus,
    breaker_outcome,
    classify_status,
    is_counted_failure,
)
from processors.resilience.config import (
    ENV_RESILIENCE_FILE,
    EndpointPolicy,
    ResilienceConfig,
    ResilienceConfigError,
    TimeoutPolicy,
    load_resilience,
    parse_resilience,
)
from processors.resilience.retry import RetriesExhausted, RetryPolicy

__all__ = [
    "ENV_RESILIENCE_FILE",
    "HALF_OPEN_BUSY_RETRY_S",
    "BreakerListener",
    "BreakerOutcome",
    "BreakerRegistry",
    "BreakerSettings",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpen",
    "EndpointListener",
    "EndpointPolicy",
    "OperationTimedOut",
    "PermanentHttpStatus",
    "ResilienceConfig",
    "ResilienceConfigError",
    "RetriableHttpStatus",
    "RetriesExhausted",
    "RetryPolicy",
    "TimeoutPolicy",
    "breaker_outcome",
    "classify_status",
    "is_counted_failure",
    "load_resilience",
    "parse_resilience",
]
