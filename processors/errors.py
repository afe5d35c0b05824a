"""The project's exception tree.

::

    ProcessorsError
    ├── ConfigError                 invalid configuration; raised at start-up, never mid-stream
    ├── ContractError               an input that breaks the event contract (poison input)
    │   ├── DecodeError             bytes that cannot be decoded (framing, Avro, JSON)
    │   ├── UnknownEventType        an ``event_type`` this project does not know
    │   └── ValidationFailed        decoded but invalid fields
    ├── IntegrationError            a call to an external service failed
    │   ├── Retriable               worth trying again (timeouts, connection errors, 5xx, 429, 409 in flight)
    │   │   │                       ``retry_after_s`` carries a delay the service asked for
    │   │   └── Backpressure        the endpoint refuses calls for now (circuit open): wait, do not
    │   │                           burn attempts; ``wait_ready()`` returns when it admits calls again
    │   └── Permanent               never worth retrying (4xx validation, 422, schema errors)
    └── BrokerError                 the Kafka cluster failed an operation
        └── RestartNeeded           this process cannot go on, a new one resumes from what
                                    Kafka holds (``processors run`` exits with ``EXIT_RESTART``)

Third-party exceptions (confluent_kafka, fastavro, aiohttp, pydantic) are translated where
they enter the project and chained with ``raise ... from exc``.  The retry decision is
the exception's type.
"""

from __future__ import annotations

__all__ = [
    "EXIT_RESTART",
    "Backpressure",
    "BrokerError",
    "ConfigError",
    "ContractError",
    "DecodeError",
    "IntegrationError",
    "Permanent",
    "ProcessorsError",
    "RestartNeeded",
    "Retriable",
    "UnknownEventType",
    "ValidationFailed",
]


class ProcessorsError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(ProcessorsError):
    """Configuration is invalid; the message says where and why."""


class ContractError(ProcessorsError):
    """An input message breaks the event contract.  ``reason`` is safe to log (no PII)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(ContractError):
    """The bytes cannot be decoded."""


class UnknownEventType(ContractError):
    """The envelope names an event type this project does not know."""


class ValidationFailed(ContractError):
    """The event decoded but its fields are invalid."""


class DuplicateEventId(ContractError):
    """The event's id was answered before with different content: an upstream bug (an id
    reused for another event), never a retry of the same one."""


class IntegrationError(ProcessorsError):
    """A call to an external service failed."""


class Retriable(IntegrationError):
    """A transient failure: trying again later may succeed."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Backpressure(Retriable):
    """The endpoint refuses calls for now (its circuit breaker is open).

    The runtime pauses the partitions whose work needs ``endpoint`` and retries the record
    once ``wait_ready()`` returns, without counting an attempt.
    """

    endpoint: str = ""

    async def wait_ready(self) -> None:
        """Return when the endpoint admits calls again."""
        raise NotImplementedError


class Permanent(IntegrationError):
    """A failure that will not go away by retrying."""


class BrokerError(ProcessorsError):
    """The Kafka cluster failed an operation."""


EXIT_RESTART = 75
"""The exit code of a process that stopped so that a restart resumes its work (EX_TEMPFAIL)."""


class RestartNeeded(BrokerError):
    """The process cannot go on but a new incarnation can: its clients are unusable (a fatal
    librdkafka error that replacing the client did not cure, a transaction call that never
    returned), while every committed step is safe in Kafka.  ``processors run`` exits with
    :data:`EXIT_RESTART` so a supervisor starts it again."""
