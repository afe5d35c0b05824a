"""The audit trail: one event per external interaction, outbound and inbound.

Each call to an external service (the payment gateway, the KYC provider, a partner) and
each request a provider makes to our webhook endpoints becomes an :class:`AuditEvent`.
:class:`AuditLogger` writes it twice: to an :class:`AuditSink` (in production
:class:`KafkaAuditSink`, the ``integrations.audit`` topic) and as one structured log line
on the ``processors.audit`` logger.

An ``AuditEvent`` cannot carry personal data: its summaries go through
:func:`~processors.observability.redact.redact` and its free-text fields through the
pattern scrubber in validators, and every way of building one (the constructor,
``model_validate``, ``model_construct``, ``model_copy``) runs them.

::

    audit = audit_logger("payments")
    audit.record_interaction(
        direction="outbound", endpoint="payment-gateway", operation="charge",
        status="200", outcome="success", latency_ms=41.7, attempt=1,
        idempotency_key=key, breaker_state="closed", correlation_id=event.correlation_id,
        traceparent=headers.get("traceparent"),
        request_summary={"amount": "1185.50", "currency": "USD", "card_token": token},
    )
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Protocol, Self
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from processors.contract import UtcDatetime
from processors.errors import Backpressure, Permanent, Retriable
from processors.observability.logs import EXTRAS_READY, EXTRAS_REDACTED
from processors.observability.redact import _scrub, redact, redact_text

__all__ = [
    "AUDIT_EVENT_TYPE",
    "AUDIT_LOGGER_NAME",
    "Actor",
    "AuditEvent",
    "AuditLogger",
    "AuditSink",
    "Direction",
    "KafkaAuditSink",
    "MemoryAuditSink",
    "Outcome",
    "audit_line",
    "audit_logger",
    "configure_audit_sink",
    "outbound_json",
    "status_for_error",
    "trace_id_from_traceparent",
]

AUDIT_EVENT_TYPE: Final = "integration.interaction"
"""``event_type`` of interaction records on ``integrations.audit`` (the topic also carries
other audit records, such as ``dlq.replayed``)."""

AUDIT_LOGGER_NAME: Final = "processors.audit"

ERROR_MAX_CHARS: Final = 1000

Direction = Literal["outbound", "inbound"]
Outcome = Literal["success", "failure", "rejected"]
"""``success``: the interaction did what it was for.  ``failure``: it was attempted and failed
(timeout, 5xx, a decline counts as ``success`` of the call: the answer is in ``status``).
``rejected``: refused before it happened (circuit open, invalid signature, bad request)."""

log = logging.getLogger(__name__)
_audit_log = logging.getLogger(AUDIT_LOGGER_NAME)


# -- trace context --------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_PARENT: Final = "0" * 16


def trace_id_from_traceparent(traceparent: str | bytes | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), or ``None``
    when the value is missing or invalid (version ``ff``, all-zero ids, upper-case hex, extra
    fields on version ``00``)."""
    if traceparent is None:
        return None
    if isinstance(traceparent, bytes):
        try:
            traceparent = traceparent.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return trace_id


# -- the event ------------------------------------------------------------------------------


def _scrubbed(value: str) -> str:
    return _scrub(value, digit_runs=False)


def _error_text(value: str) -> str:
    text = redact_text(value)
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


Label = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_scrubbed)]
"""A short text field (an id, a name of an endpoint or status), scrubbed by pattern."""

ErrorText = Annotated[str, AfterValidator(_error_text)]


def _trace_id(value: Any) -> Any:
    if value is None or (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value)):
        return value
    raise ValueError("trace_id must be 32 lower-case hex digits (use trace_id_from_traceparent)")


def _new_audit_id() -> UUID:
    """A random (version 4) UUID without a system call per event: audit ids are unique, not secret."""
    return UUID(int=_ids.getrandbits(128), version=4)


_ids = random.Random()
# A forked child would otherwise draw the same ids as its parent (and as its siblings).
os.register_at_fork(after_in_child=_ids.seed)


class Actor(BaseModel):
    """Who asked for an interaction through the API: the operator (the API token), or a
    partner through one of its keys (``key_id`` is the key's visible id, never the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: Literal["operator", "partner"]
    partner_id: Label | None = None
    key_id: Label | None = None


class AuditEvent(BaseModel):
    """One external interaction, redacted.

    ``latency_ms`` is the wall time of the interaction; ``attempt`` the call number for the
    message (``ATTEMPTS`` of the resilience layer; 1 for inbound requests, 0 when no call
    was made because the circuit was open).  ``request_summary`` and ``response_summary``
    are small mappings the caller chooses (amounts, statuses, ids); they are redacted on
    the way in.  ``actor`` says who asked, for a change made through the API (a partner's or
    the operator's); ``None`` for interactions no one asked for (an app's own calls).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    event_type: Literal["integration.interaction"] = AUDIT_EVENT_TYPE
    audit_id: UUID = Field(default_factory=_new_audit_id)
    occurred_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))
    app: Label
    direction: Direction
    endpoint: Label
    operation: Label
    idempotency_key: Label | None = None
    status: Label
    outcome: Outcome
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    attempt: int = Field(default=1, ge=0)
    breaker_state: Label | None = None
    correlation_id: Label | None = None
    trace_id: Annotated[str | None, BeforeValidator(_trace_id)] = None
    request_summary: dict[str, Any] = Field(default_factory=dict)
    response_summary: dict[str, Any] = Field(default_factory=dict)
    error: ErrorText | None = None
    actor: Actor | None = None

    @field_validator("request_summary", "response_summary", mode="before")
    @classmethod
    def _redacted(cls, value: Any) -> Any:
        if value is None:
            return {}
        cleaned = redact(value)
        if not isinstance(cleaned, dict):
            raise ValueError("a summary must be a mapping, a dataclass or a pydantic model")
        return {str(key): item for key, item in cleaned.items()}

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Self:
        """Validates (and so redacts) like the constructor: there is no unchecked way in."""
        return cls.model_validate(values)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; ``update`` is validated and redacted like the constructor's input."""
        if not update:
            return self
        return type(self).model_validate({**self.__dict__, **update})

    def to_json(self) -> bytes:
        """The value written to ``integrations.audit`` (decimals as strings, times ISO 8601)."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> AuditEvent:
        return cls.model_validate_json(data)

    def log_fields(self) -> dict[str, Any]:
        """The fields as JSON-ready values (what the audit log line carries)."""
        fields: dict[str, Any] = self.model_dump(mode="json")
        return fields


# -- the record without the model ---------------------------------------------------------

_OUTCOMES: Final = frozenset(("success", "failure", "rejected"))
_LABEL_MAX: Final = 256
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _label(value: object) -> str | None:
    """``value`` as a ``Label`` field stores it (scrubbed), or None when the field refuses it."""
    if type(value) is not str or not 1 <= len(value) <= _LABEL_MAX:
        return None
    return _scrub(value, digit_runs=False)


def _plain(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is written alike by orjson and by the model's serializer: text, whole
    numbers, finite floats, booleans and None, in dicts with text keys and lists (8 deep)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if depth >= 8:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())  # type: ignore[attr-defined]
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


def _summary(value: Any) -> dict[str, Any] | None:
    """A summary as the model's validator stores it (redacted), or None when the fast writer
    leaves it to the model (not a mapping after redaction, or a value it does not write)."""
    if value is None:
        return {}
    cleaned = redact(value)
    if type(cleaned) is not dict or not _plain(cleaned):
        return None
    return cleaned


def outbound_json(
    *,
    app: str,
    endpoint: str,
    operation: str,
    status: str,
    outcome: str,
    latency_ms: float,
    attempt: int,
    idempotency_key: str | None,
    breaker_state: str | None,
    correlation_id: str | None,
    trace_id: str | None,
    request_summary: Any,
    response_summary: Any,
    error: str | None,
    audit_id: UUID | None = None,
    occurred_at: datetime | None = None,
) -> tuple[str, UUID, bytes] | None:
    """(scrubbed app, audit id, value): the bytes ``AuditEvent(direction="outbound", ...)
    .to_json()`` writes for these fields, without building the model; None when any field is
    one the model would refuse or the fast writer does not handle (the caller then takes the
    model's path).  ``tests/unit/test_audit_json.py`` holds the two to the same bytes."""
    labels = [_label(app), _label(endpoint), _label(operation), _label(status)]
    if None in labels or outcome not in _OUTCOMES:
        return None
    optional = []
    for value in (idempotency_key, breaker_state, correlation_id):
        scrubbed = None if value is None else _label(value)
        if value is not None and scrubbed is None:
            return None
        optional.append(scrubbed)
    if type(latency_ms) is not float or not 0.0 <= latency_ms < float("inf"):
        return None
    if type(attempt) is not int or attempt < 0:
        return None
    if trace_id is not None and (type(trace_id) is not str or _TRACE_ID.fullmatch(trace_id) is None):
        return None
    request, response = _summary(request_summary), _summary(response_summary)
    if request is None or response is None:
        return None
    if error is not None:
        if type(error) is not str:
            return None
        error = _error_text(error)
    audit_id = audit_id or _new_audit_id()
    written = orjson.dumps(
        {
            "event_type": AUDIT_EVENT_TYPE,
            "audit_id": audit_id,
            "occurred_at": occurred_at or datetime.now(UTC),
            "app": labels[0],
            "direction": "outbound",
            "endpoint": labels[1],
            "operation": labels[2],
            "idempotency_key": optional[0],
            "status": labels[3],
            "outcome": outcome,
            "latency_ms": latency_ms,
            "attempt": attempt,
            "breaker_state": optional[1],
            "correlation_id": optional[2],
            "trace_id": trace_id,
            "request_summary": request,
            "response_summary": response,
            "error": error,
            "actor": None,
        },
        option=orjson.OPT_UTC_Z,
    )
    app_label = labels[0]
    assert app_label is not None
    return app_label, audit_id, written


# -- failure vocabulary ---------------------------------------------------------------------


def status_for_error(exc: BaseException) -> tuple[str, Outcome]:
    """The ``status`` and ``outcome`` of an outbound interaction that raised ``exc``.

    ``circuit_open`` (rejected: no call made), ``timeout``, ``connect_failed``,
    ``retriable_error``, ``permanent_error`` or ``error`` (failures).
    """
    if isinstance(exc, Backpressure):
        return "circuit_open", "rejected"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, TimeoutError) or names & {"HttpTimeout", "DeadlineExceeded"}:
        return "timeout", "failure"
    if "ConnectFailed" in names or isinstance(exc, ConnectionError):
        return "connect_failed", "failure"
    if isinstance(exc, Retriable):
        return "retriable_error", "failure"
    if isinstance(exc, Permanent):
        return "permanent_error", "failure"
    return "error", "failure"


# -- sinks ----------------------------------------------------------------------------------


class AuditSink(Protocol):
    """Where audit events go.  ``emit`` is synchronous, never blocks and never raises."""

    def emit(self, event: AuditEvent) -> None: ...


ProducerSend = Callable[[str, bytes | None, bytes], None]
"""``(topic, key, value)``: hands a record to a producer without waiting for delivery."""

_FAILURE_LOG_INTERVAL_S: Final = 10.0


class KafkaAuditSink:
    """Hands each event to ``producer_send(topic, key=app, value=json)``.

    ``producer_send`` must not block (the runtime passes a fire-and-forget produce on its
    producer).  An exception from it is counted in ``failed`` and logged (at most once per
    10 s, with the count), never raised into the interaction that is being audited.
    """

    def __init__(self, producer_send: ProducerSend, topic: str) -> None:
        self._send = producer_send
        self.topic = topic
        self.emitted = 0
        self.failed = 0
        self._last_failure_log = float("-inf")
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> None:
        try:
            self._send(self.topic, event.app.encode(), event.to_json())
        except Exception as exc:
            self._failed(event.audit_id, exc)
        else:
            self.emitted += 1

    def emit_json(self, app: str, audit_id: UUID, value: bytes) -> None:
        """Hand over an event already written as ``AuditEvent.to_json()`` writes it
        (:meth:`AuditLogger.record_outbound`); ``app`` is its scrubbed ``app`` field."""
        try:
            self._send(self.topic, app.encode(), value)
        except Exception as exc:
            self._failed(audit_id, exc)
        else:
            self.emitted += 1

    def _failed(self, audit_id: UUID, exc: Exception) -> None:
        with self._lock:
            self.failed += 1
            now = time.monotonic()
            if now - self._last_failure_log < _FAILURE_LOG_INTERVAL_S:
                return
            self._last_failure_log = now
            failed = self.failed
        log.warning(
            "audit event %s could not be handed to the producer for %s (%s: %s); %d lost so far",
            audit_id,
            self.topic,
            type(exc).__name__,
            redact_text(str(exc)),
            failed,
        )


class MemoryAuditSink:
    """Keeps the latest ``max_events`` events in memory (tests, local runs)."""

    def __init__(self, max_events: int = 100_000) -> None:
        self.events: list[AuditEvent] = []
        self._max_events = max(1, max_events)

    def emit(self, event: AuditEvent) -> None:
        if len(self.events) >= self._max_events:
            del self.events[: max(1, self._max_events // 10)]  # the oldest tenth, in one move
        self.events.append(event)

    def payloads(self) -> list[bytes]:
        """The values a :class:`KafkaAuditSink` would have written."""
        return [event.to_json() for event in self.events]

    def clear(self) -> None:
        self.events.clear()


_default_sink: AuditSink | None = None


def configure_audit_sink(sink: AuditSink | None) -> None:
    """Set the sink of every :class:`AuditLogger` built without one (``None``: log only)."""
    global _default_sink
    _default_sink = sink


# -- the logger -----------------------------------------------------------------------------


class AuditLogger:
    """Records an app's interactions: to the sink and as a ``processors.audit`` log line.

    Without an explicit ``sink`` it uses the one set by :func:`configure_audit_sink` at the
    time of each record, so apps can be built before the runtime wires the producer.
    """

    def __init__(self, app: str, sink: AuditSink | None = None) -> None:
        self.app = app
        self._sink = sink

    @property
    def sink(self) -> AuditSink | None:
        return self._sink if self._sink is not None else _default_sink

    def record(self, event: AuditEvent) -> None:
        """Emit ``event`` and log it.  Never raises."""
        sink = self.sink
        if sink is not None:
            try:
                sink.emit(event)
            except Exception:  # a sink breaking its contract must not break the caller
                log.exception("audit sink %s raised", type(sink).__name__)
        level = logging.INFO if event.outcome == "success" else logging.WARNING
        if _audit_log.isEnabledFor(level):
            try:
                _log_line(level, event.log_fields())
            except Exception:
                log.exception("audit event %s could not be logged", event.audit_id)

    def record_outbound(
        self,
        *,
        endpoint: str,
        operation: str,
        status: str,
        outcome: Outcome,
        latency_ms: float,
        attempt: int,
        idempotency_key: str | None,
        breaker_state: str | None,
        correlation_id: str | None,
        traceparent: str | bytes | None,
        request_summary: Any,
        response_summary: Any,
        error: BaseException | None,
    ) -> None:
        """:meth:`record_interaction` of an app's own outbound call (no actor), on the hot path.

        When the sink takes JSON (:class:`KafkaAuditSink`), the record is written straight to
        the bytes ``AuditEvent(...).to_json()`` writes, with the checks and redaction of the
        model's validators (:func:`outbound_json`), and the audit log line (when its level is
        on) carries those bytes read back, which are the fields ``log_fields()`` gives; anything
        those checks would not let through, a value the fast writer does not handle or another
        sink takes the model's path, which validates, logs and refuses exactly as before.
        Never raises.
        """
        fields: dict[str, Any] = {
            "endpoint": endpoint,
            "operation": operation,
            "status": status,
            "outcome": outcome,
            "latency_ms": latency_ms,
            "attempt": attempt,
            "idempotency_key": idempotency_key,
            "breaker_state": breaker_state,
            "correlation_id": correlation_id,
            "request_summary": request_summary,
            "response_summary": response_summary,
        }
        sink = self.sink
        emit_json = getattr(sink, "emit_json", None)
        if emit_json is not None:
            text = None if error is None else f"{type(error).__name__}: {error}"
            try:
                written = outbound_json(
                    app=self.app, trace_id=trace_id_from_traceparent(traceparent), error=text, **fields
                )
            except Exception:  # a bug in the fast writer must not lose the record
                log.exception("audit event of %s %s: the JSON writer failed", endpoint, operation)
                written = None
            if written is not None:
                app, audit_id, value = written
                try:
                    emit_json(app, audit_id, value)
                except Exception:
                    log.exception("audit sink %s raised", type(sink).__name__)
                audit_line(value, outcome, audit_id)
                return
        self.record_interaction(direction="outbound", traceparent=traceparent, error=error, **fields)

    def record_interaction(
        self,
        *,
        direction: Direction,
        endpoint: str,
        operation: str,
        status: str,
        outcome: Outcome,
        latency_ms: float,
        attempt: int = 1,
        idempotency_key: str | None = None,
        breaker_state: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | bytes | None = None,
        request_summary: Any = None,
        response_summary: Any = None,
        error: str | BaseException | None = None,
        actor: Actor | None = None,
    ) -> AuditEvent | None:
        """Build an event for this app and :meth:`record` it.

        Returns the event, or ``None`` if the fields were invalid (logged; auditing never
        breaks the interaction it describes).  An exception given as ``error`` is recorded
        as ``"Type: message"``, redacted.
        """
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        try:
            event = AuditEvent(
                app=self.app,
                direction=direction,
                endpoint=endpoint,
                operation=operation,
                status=status,
                outcome=outcome,
                latency_ms=latency_ms,
                attempt=attempt,
                idempotency_key=idempotency_key,
                breaker_state=breaker_state,
                correlation_id=correlation_id,
                trace_id=trace_id_from_traceparent(traceparent),
                request_summary=request_summary,
                response_summary=response_summary,
                error=error,
                actor=actor,
            )
        except ValueError as exc:  # pydantic's ValidationError; inputs are hidden in it
            log.error("audit event of %s %s not recorded: %s", endpoint, operation, exc)
            return None
        self.record(event)
        return event


def audit_line(value: bytes, outcome: str, audit_id: UUID | None = None) -> None:
    """The audit log line of a record :func:`outbound_json` wrote, when its level is on
    (``INFO`` for a success, ``WARNING`` otherwise).  The line carries the record read back: the
    fields the model's ``log_fields()`` gives.  Never raises."""
    level = logging.INFO if outcome == "success" else logging.WARNING
    if _audit_log.isEnabledFor(level):
        try:
            _log_line(level, orjson.loads(value))
        except Exception:
            log.exception("audit event %s could not be logged", audit_id)


_LINE_FORMAT: Final = "%s %s %s: %s (%s) in %.1f ms"


def _log_line(level: int, fields: dict[str, Any]) -> None:
    """The audit log line of one event, from its JSON-ready fields (already redacted).

    The record is made and handed to the logger directly: ``Logger.log`` would also walk the
    stack to find its caller, which is always this function."""
    extra = {**fields, EXTRAS_REDACTED: True, EXTRAS_READY: fields}
    record = _audit_log.makeRecord(
        AUDIT_LOGGER_NAME,
        level,
        __file__,
        _LINE_NUMBER,
        _LINE_FORMAT,
        (
            fields["direction"],
            fields["endpoint"],
            fields["operation"],
            fields["status"],
            fields["outcome"],
            fields["latency_ms"],
        ),
        None,
        "_log_line",
        extra,
    )
    _audit_log.handle(record)


_LINE_NUMBER: Final = _log_line.__code__.co_firstlineno


def audit_logger(app: str, sink: AuditSink | None = None) -> AuditLogger:
    """The audit logger of ``app`` (``sink``: see :class:`AuditLogger`)."""
    return AuditLogger(app, sink)
