"""Observability: redaction, the audit trail and structured logs.

Redaction happens in one place, :mod:`processors.observability.redact`; the audit events
(:class:`AuditEvent`) and the log handler (:func:`configure_logging`) both go through it,
so neither can write personal data or a registered secret.

::

    from processors.observability import audit_logger, configure_logging, register_secret

    configure_logging("INFO")
    register_secret(settings.gateway_token)
    audit = audit_logger("payments")
    audit.record_interaction(direction="outbound", endpoint="payment-gateway", ...)

See ``docs/observability.md``.
"""

from processors.observability.audit import (
    AUDIT_EVENT_TYPE,
    AUDIT_LOGGER_NAME,
    Actor,
    AuditEvent,
    AuditLogger,
    AuditSink,
    Direction,
    KafkaAuditSink,
    MemoryAuditSink,
    Outcome,
    audit_logger,
    configure_audit_sink,
    status_for_error,
    trace_id_from_traceparent,
)
from processors.observability.logs import (
    JsonFormatter,
    RedactingFilter,
    TextFormatter,
    configure_logging,
    log_extras,
)
from processors.observability.redact import (
    MASK,
    clear_secrets,
    is_sensitive_key,
    redact,
    redact_headers,
    redact_text,
    register_secret,
)

__all__ = [
    "AUDIT_EVENT_TYPE",
    "AUDIT_LOGGER_NAME",
    "MASK",
    "Actor",
    "AuditEvent",
    "AuditLogger",
    "AuditSink",
    "Direction",
    "JsonFormatter",
    "KafkaAuditSink",
    "MemoryAuditSink",
    "Outcome",
    "RedactingFilter",
    "TextFormatter",
    "audit_logger",
    "clear_secrets",
    "configure_audit_sink",
    "configure_logging",
    "is_sensitive_key",
    "log_extras",
    "redact",
    "redact_headers",
    "redact_text",
    "register_secret",
    "status_for_error",
    "trace_id_from_traceparent",
]
