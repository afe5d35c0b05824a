"""Tracing switches: off unless an OTLP endpoint is configured; spans nest; nothing personal in them."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from processors import context as record_context
from processors.errors import ConfigError
from processors.observability import tracing
from processors.runtime.message import OutRecord, StaticMessage
from processors.settings import load_settings

UPSTREAM = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    yield
    tracing.shutdown()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    yield spans
    tracing.uninstall()


def _message(headers: list[tuple[str, bytes]]) -> StaticMessage:
    return StaticMessage("t.source", 2, 40, b"POL-1", b"{}", tuple(headers))


def test_off_by_default() -> None:
    assert tracing.configure(otlp_endpoint=None, service_name="x") is False
    assert tracing.tracer() is None


def test_an_endpoint_turns_it_on_and_sdk_disabled_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.configure(otlp_endpoint="http://127.0.0.1:1/v1/traces", service_name="x") is True
    assert tracing.tracer() is not None
    tracing.shutdown()
    assert tracing.tracer() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure(otlp_endpoint=None, service_name="x") is False
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    assert tracing.configure(otlp_endpoint=None, service_name="x") is True


def test_the_settings_refuse_an_endpoint_that_is_not_a_url() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint"):
        load_settings(tracing={"otlp_endpoint": "collector:4318"})


def test_off_the_record_traceparent_is_passed_on() -> None:
    def in_a_record() -> str | None:
        record_context.enter_new(traceparent=UPSTREAM)
        return tracing.outbound_traceparent()

    assert tracing.outbound_traceparent() is None
    assert contextvars.copy_context().run(in_a_record) == UPSTREAM


def test_consume_call_and_produce_spans_nest(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    msg = _message([("traceparent", UPSTREAM.encode())])
    span = tracing.consume_span(tracer, msg, app="payments", group="g")
    with tracing.current(span):
        with tracing.client_span(tracer, "payment-gateway", "charge", 1):
            sent = tracing.outbound_traceparent()
        out = tracing.stamp(
            tracer, [OutRecord("t.results", b"POL-1", b"{}", [("traceparent", UPSTREAM.encode())], 3)]
        )
    span.end()
    by_kind = {s.kind: s for s in exporter.get_finished_spans()}
    consume, call, produce = by_kind[SpanKind.CONSUMER], by_kind[SpanKind.CLIENT], by_kind[SpanKind.PRODUCER]
    assert consume.context.trace_id == int(UPSTREAM.split("-")[1], 16)
    assert consume.parent is not None
    assert consume.parent.span_id == int(UPSTREAM.split("-")[2], 16)
    assert call.parent is not None
    assert call.parent.span_id == consume.context.span_id
    assert produce.parent is not None
    assert produce.parent.span_id == consume.context.span_id
    assert sent == f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-01"
    headers = dict(out[0].headers)
    assert (
        headers["traceparent"]
        == f"00-{produce.context.trace_id:032x}-{produce.context.span_id:016x}-01".encode()
    )
    assert [k for k, _ in out[0].headers].count("traceparent") == 1
    assert out[0].partition == 3  # the record is otherwise unchanged
    assert consume.attributes is not None
    assert "POL-1" not in repr(dict(consume.attributes))


def test_a_failed_call_is_marked_with_the_type_not_the_message(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    with pytest.raises(ValueError, match="customer"), tracing.client_span(tracer, "kyc", "check", 2):
        raise ValueError("customer Jane Doe, born 1990-01-01")
    (call,) = exporter.get_finished_spans()
    assert call.status.status_code.name == "ERROR"
    assert call.status.description == "ValueError"
    assert "Jane" not in repr(call.events) + repr(dict(call.attributes or {}))


def test_a_record_without_traceparent_starts_a_trace(exporter: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    span = tracing.consume_span(tracer, _message([]), app="payments", group="g")
    span.end()
    (consume,) = exporter.get_finished_spans()
    assert consume.parent is None
