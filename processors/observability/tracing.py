"""OpenTelemetry tracing: a span for each consumed record, each external call and each produced record.

**Off by default, at no cost.**  Tracing is on only when an OTLP endpoint is configured
(``tracing.otlp_endpoint`` / ``PROCESSORS_TRACING__OTLP_ENDPOINT``, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and
``OTEL_SDK_DISABLED`` is not ``true``.  When it is off, :func:`tracer` is ``None`` and every
instrumented place pays one module-attribute read per record or call; records then carry the
``traceparent`` they arrived with unchanged (a pass-through, as W3C Trace Context allows for a
participant that does not trace), and outbound HTTP calls send it on.

**When it is on**, the trace continues across every hop with child spans, never copied values:

* the engine opens a ``CONSUMER`` span per record, a child of the record's ``traceparent``
  header (a root when there is none), current while the app handles it;
* the resilience guard opens a ``CLIENT`` span per attempt of an external call (payment
  gateway, KYC provider, reinsurer, partner webhook), a child of the consume span; the HTTP
  transports send *that* span's ``traceparent`` (:func:`outbound_traceparent`), so the
  provider's own trace hangs under the call that reached it; the SFTP adapter opens one per
  upload;
* every record the app produces — results, retry-tier copies, dead letters, parked records,
  webhook dispatch records — gets a ``PRODUCER`` span, a child of the consume span, and its
  ``traceparent`` header is that span's (:func:`stamp`).  A retry tier's consume span is thus
  the child of the producer span that moved the record there, and a DLQ replay's copy the
  child of the dead letter's;
* an inbound provider callback opens a ``SERVER`` span, a child of the request's
  ``traceparent`` header, and the record it publishes a ``PRODUCER`` span under it.

Spans carry coordinates (topic, partition, offset, consumer group, endpoint, attempt) and the
exception *type* of a failure, never keys, payloads or exception messages: those may hold
personal data.  Sampling and the exporter's own settings follow the standard ``OTEL_*``
environment variables (``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from processors import __version__
from processors import context as record_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from processors.runtime.message import KafkaMessage, OutRecord

__all__ = [
    "SCOPE",
    "client_span",
    "configure",
    "consume_span",
    "continued",
    "install",
    "outbound_traceparent",
    "server_span",
    "shutdown",
    "stamp",
    "tracer",
    "uninstall",
]

log = logging.getLogger(__name__)

SCOPE = "insurance-processors"
"""The instrumentation scope every span of this package carries."""

_TRACER: Tracer | None = None
_PROVIDER: TracerProvider | None = None
_OWNED = False
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"


def tracer() -> Tracer | None:
    """The tracer, or None when tracing is off (the one check every hot path makes)."""
    return _TRACER


def _endpoint_configured(otlp_endpoint: str | None) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        otlp_endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(*, otlp_endpoint: str | None, service_name: str, timeout_s: float = 10.0) -> bool:
    """Turn tracing on with an OTLP/HTTP exporter when an endpoint is configured; True if on.

    ``otlp_endpoint`` is the traces URL (``http://collector:4318/v1/traces``); None leaves the
    choice to the ``OTEL_EXPORTER_OTLP_*`` variables.  Spans leave in batches on a background
    thread; :func:`shutdown` flushes them.
    """
    if not _endpoint_configured(otlp_endpoint):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name, "service.version": __version__}
    )
    provider = TracerProvider(resource=resource)
    exporter = (
        OTLPSpanExporter(endpoint=otlp_endpoint, timeout=timeout_s) if otlp_endpoint else OTLPSpanExporter()
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _set(provider, owned=True)
    log.info("tracing on: spans exported over OTLP/HTTP as service %s", resource.attributes["service.name"])
    return True


def install(provider: TracerProvider) -> None:
    """Trace into ``provider`` (tests: an in-memory exporter); its owner shuts it down."""
    _set(provider, owned=False)


def _set(provider: TracerProvider, *, owned: bool) -> None:
    global _TRACER, _PROVIDER, _OWNED
    _PROVIDER, _OWNED = provider, owned
    _TRACER = provider.get_tracer(SCOPE, __version__)


def uninstall() -> None:
    """Turn tracing off again (spans already ended stay with their provider)."""
    global _TRACER, _PROVIDER, _OWNED
    _TRACER, _PROVIDER, _OWNED = None, None, False


def shutdown() -> None:
    """Flush and close the exporter :func:`configure` created, and turn tracing off."""
    provider, owned = _PROVIDER, _OWNED
    uninstall()
    if provider is not None and owned:
        provider.shutdown()


# --------------------------------------------------------------------------- propagation


def _header(headers: Sequence[tuple[str, Any]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return None


def _parent(headers: Sequence[tuple[str, Any]] | None) -> otel_context.Context | None:
    traceparent = _header(headers, _TRACEPARENT)
    if traceparent is None:
        return None
    carrier = {_TRACEPARENT: traceparent}
    tracestate = _header(headers, "tracestate")
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier)


def _traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(_TRACEPARENT)


def outbound_traceparent() -> str | None:
    """The ``traceparent`` an outbound HTTP call sends: the current span's when tracing is on
    (the guard's call span), else the traceparent of the record being handled (passed on)."""
    if _TRACER is not None:
        span_context = trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return None
        return (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"
        )
    context = record_context.current()
    return context.traceparent if context is not None else None


# --------------------------------------------------------------------------- spans


def consume_span(tracer: Tracer, msg: KafkaMessage, *, app: str, group: str) -> Span:
    """A ``CONSUMER`` span for ``msg``, the child of its ``traceparent`` header (not current yet)."""
    topic = msg.topic()
    return tracer.start_span(
        f"{topic} process",
        context=_parent(msg.headers()),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic or "",
            "messaging.destination.partition.id": str(msg.partition()),
            "messaging.kafka.offset": msg.offset() or 0,
            "messaging.consumer.group.name": group,
            "processors.app": app,
        },
    )


@contextmanager
def current(span: Span) -> Iterator[Span]:
    """Make ``span`` the current one (children nest under it) without ending it."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel_context.detach(token)


def failed(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the exception's type (never its message: it may hold personal data)."""
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute("error.type", type(exc).__name__)


@contextmanager
def client_span(tracer: Tracer, endpoint: str, operation: str, attempt: int) -> Iterator[Span]:
    """A current ``CLIENT`` span for one attempt of an external call; ended on exit."""
    span = tracer.start_span(
        f"{endpoint} {operation}",
        kind=SpanKind.CLIENT,
        attributes={
            "processors.endpoint": endpoint,
            "processors.operation": operation,
            "processors.attempt": attempt,
        },
    )
    with _ended(span):
        yield span


@contextmanager
def server_span(
    tracer: Tracer, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """A current ``SERVER`` span for an inbound request, the child of its ``traceparent``."""
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in (_TRACEPARENT, "tracestate")}
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))
    with _ended(span):
        yield span


@contextmanager
def _ended(span: Span) -> Iterator[None]:
    """``span`` current while the block runs, marked failed if it raises, ended after it."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    except BaseException as exc:
        failed(span, exc)
        raise
    finally:
        otel_context.detach(token)
        span.end()


def stamp(tracer: Tracer, records: Sequence[OutRecord], parent: Span | None = None) -> list[OutRecord]:
    """``records``, each with a ``PRODUCER`` span (child of ``parent``, else of the current span)
    and that span's ``traceparent`` in place of the one it carried."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    stamped: list[OutRecord] = []
    for record in records:
        span = tracer.start_span(
            f"{record.topic} send",
            context=context,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": record.topic,
            },
        )
        traceparent = _traceparent_of(span)
        span.end()
        headers = [(k, v) for k, v in record.headers if k != _TRACEPARENT]
        if traceparent is not None:
            headers.append((_TRACEPARENT, traceparent.encode("ascii")))
        stamped.append(dataclasses.replace(record, headers=headers))
    return stamped


def continued(tracer: Tracer, topic: str, headers: Sequence[tuple[str, Any]], *, operation: str) -> list[Any]:
    """``headers`` of a record copied to ``topic`` by a tool (a DLQ replay): a ``PRODUCER``
    span, the child of the copied record's ``traceparent``, replaces it."""
    span = tracer.start_span(
        f"{topic} {operation}",
        context=_parent(headers),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
        },
    )
    traceparent = _traceparent_of(span)
    span.end()
    out: list[Any] = [(k, v) for k, v in headers if k not in (_TRACEPARENT, "tracestate")]
    if traceparent is not None:
        out.append((_TRACEPARENT, traceparent.encode("ascii")))
    return out
