"""One premium.due event through payments and one retry tier: one trace, child spans at every hop.

The payments app runs in-process against a real broker and the sandbox gateway, with the spans
going to an in-memory exporter.  The gateway is down for the first call (503 on every in-place
attempt), so the record passes through the first retry tier before it is charged.  The trace
must read: upstream traceparent → consume (source) → gateway call(s) → produce (retry tier) →
consume (retry tier) → gateway call → produce (result); the gateway must have received each
call span's own traceparent, and the result record must carry its producer span's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from processors.contract import ContentType
from processors.observability import tracing
from processors.topics.catalogue import load_catalogue
from processors_dev.samples import premium_due
from processors_dev.sandbox.gateway import GatewayConfig
from processors_dev.sandbox.server import SandboxServer
from tests.integration.helpers import CODEC, Collector, header, publish
from tests.integration.test_failure_path import FAST_TIERS, _resilience, running_payments

pytestmark = pytest.mark.timeout(180)

UPSTREAM_TRACE = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM_SPAN = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


def _traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_event_through_a_retry_tier_is_one_trace_of_child_spans(
    kafka_bootstrap: str,
    isolated_topics: Callable[..., tuple[Path, str]],
    tmp_path: Path,
    spans: InMemorySpanExporter,
) -> None:
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    tier0 = load_catalogue(topics_file).app("payments").retry_tiers[0].topic
    # the gateway answers 503 to this key's first three requests (all in-place attempts of the
    # first try), then charges: the record goes through the first retry tier exactly once,
    # whatever the timing of the tier's delay
    event = premium_due(901, 1, token="tok_unavailable_3")
    value, headers = CODEC.encode(
        event, ContentType.AVRO, traceparent=f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
    )
    collector = Collector(kafka_bootstrap, [results, tier0])
    async with SandboxServer(gateway=GatewayConfig()) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                publish(kafka_bootstrap, billing, [], raw=[(event.subject.encode(), value, headers)])
                await collector.wait_for(lambda r: len(collector.on(tier0)) >= 1, timeout_s=60)
                await collector.wait_for(lambda r: len(collector.on(results)) >= 1, timeout_s=60)
                # the result's producer span ends before the record is sent; the consume span
                # ends once the engine has it: wait for that span, not for time
                async with asyncio.timeout(30):
                    while not any(
                        s.kind is SpanKind.CONSUMER and s.name == f"{tier0} process"
                        for s in spans.get_finished_spans()
                    ):
                        await asyncio.sleep(0.05)
        finally:
            collector.close()
        sent = list(sandbox.gateway.traceparents)

    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == int(UPSTREAM_TRACE, 16)]
    assert finished, "no span continued the upstream trace"
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {int(UPSTREAM_TRACE, 16)}, (
        "every span of this run belongs to the one trace"
    )
    by_id = {s.context.span_id: s for s in finished}

    consume_source = [s for s in finished if s.kind is SpanKind.CONSUMER and s.name == f"{billing} process"]
    consume_tier = [s for s in finished if s.kind is SpanKind.CONSUMER and s.name == f"{tier0} process"]
    calls = [s for s in finished if s.kind is SpanKind.CLIENT]
    produce_tier = [s for s in finished if s.kind is SpanKind.PRODUCER and s.name == f"{tier0} send"]
    produce_result = [s for s in finished if s.kind is SpanKind.PRODUCER and s.name == f"{results} send"]
    assert len(consume_source) == 1
    assert len(consume_tier) == 1
    assert len(produce_tier) == 1
    assert len(produce_result) == 1

    # upstream → consume(source) → calls (503s) and produce(retry tier)
    source = consume_source[0]
    assert _parent_id(source) == int(UPSTREAM_SPAN, 16)
    first_calls = [c for c in calls if _parent_id(c) == source.context.span_id]
    assert len(first_calls) >= 1
    assert all(c.status.status_code.name == "ERROR" for c in first_calls)
    assert _parent_id(produce_tier[0]) == source.context.span_id
    # produce(retry tier) → consume(retry tier) → call (charged) and produce(result)
    tier = consume_tier[0]
    assert _parent_id(tier) == produce_tier[0].context.span_id
    second_calls = [c for c in calls if _parent_id(c) == tier.context.span_id]
    assert len(second_calls) == 1
    assert second_calls[0].status.status_code.name != "ERROR"
    assert _parent_id(produce_result[0]) == tier.context.span_id
    assert len(calls) == len(first_calls) + len(second_calls)
    assert all(_parent_id(s) in by_id or s is source for s in finished)

    # the gateway received each call span's own traceparent, in call order
    assert sent == [_traceparent_of(c) for c in sorted(calls, key=lambda c: c.start_time or 0)]
    # the retry-tier copy and the result carry their producer spans' traceparents
    assert header(collector.on(tier0)[0], "traceparent") == _traceparent_of(produce_tier[0])
    assert header(collector.on(results)[0], "traceparent") == _traceparent_of(produce_result[0])
    # spans carry coordinates, never the payload or the key
    for span in finished:
        for value_ in (span.attributes or {}).values():
            assert event.subject not in str(value_)


async def test_with_tracing_off_the_traceparent_is_passed_on_unchanged(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    assert tracing.tracer() is None
    topics_file, prefix = isolated_topics(FAST_TIERS)
    billing, results = f"{prefix}insurance.billing.events", f"{prefix}integrations.payment.results"
    event = premium_due(902, 1)
    upstream = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
    value, headers = CODEC.encode(event, ContentType.AVRO, traceparent=upstream)
    collector = Collector(kafka_bootstrap, [results])
    async with SandboxServer(gateway=GatewayConfig()) as sandbox:
        try:
            async with running_payments(
                kafka_bootstrap, topics_file, prefix, sandbox.url, _resilience(tmp_path)
            ):
                publish(kafka_bootstrap, billing, [], raw=[(event.subject.encode(), value, headers)])
                await collector.wait_for(lambda r: len(collector.on(results)) >= 1, timeout_s=60)
        finally:
            collector.close()
        sent = list(sandbox.gateway.traceparents)
    assert sent == [upstream]
    assert header(collector.on(results)[0], "traceparent") == upstream
