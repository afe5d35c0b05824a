"""The bordereaux delivery app with a fake reinsurer client: reading reports, results, failures, audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.adapters.http import HttpRequest, HttpResponse, TimeoutSettings
from processors.adapters.reinsurer import ReinsurerSettings, ReportConflict, SubmitResult
from processors.apps.reinsurance import (
    APP,
    MAX_MESSAGE_BYTES,
    MAX_REPORT_BYTES,
    ReinsuranceApp,
    ReinsuranceSettings,
    ReportRef,
    UnknownReinsurer,
    build_reinsurance_app,
    delivery_result,
    endpoint_of,
    read_report,
)
from processors.errors import ConfigError, ContractError, DecodeError, Retriable, ValidationFailed
from processors.kafka import KafkaClients
from processors.observability.audit import MemoryAuditSink, configure_audit_sink
from processors.resilience.config import EndpointPolicy, parse_resilience
from processors.resilience.guard import EndpointGuard, Unguarded
from processors.resilience.retry import RetryPolicy
from processors.runtime.failures import H
from processors.runtime.message import StaticMessage, header_value
from processors.topics.catalogue import FAILURE_HEADROOM_BYTES, AppTopics, parse_catalogue

SOURCE = "reinsurance.bordereaux"
DELIVERIES = "integrations.reinsurance.deliveries"

# The entry proposed for topics.yaml, parsed by the real catalogue code.
CATALOGUE = """
version: 1
naming:
  retry: integrations.{app}.retry.{index}-{delay}
  dlq: integrations.{app}.dlq
  parked: integrations.{app}.parked
defaults: {partitions: 6, replication_factor: 1, min_insync_replicas: 1, retention: 7d}
outputs:
  - name: reinsurance.bordereaux
    description: premium and claims bordereaux per treaty per period
    retention: 90d
    max_message_bytes: 16777216
  - name: integrations.reinsurance.deliveries
    description: reinsurer acknowledgements of delivered bordereaux (key treaty number)
    retention: 90d
  - name: integrations.audit
    description: audit
apps:
  bordereaux-delivery:
    description: delivery of closed bordereaux to the reinsurer's API
    sources: [reinsurance.bordereaux]
    outputs: [integrations.reinsurance.deliveries, integrations.audit]
    retry_tiers: [5s, 1m, 10m, 1h, 6h]
    dlq: {partitions: 6, retention: 30d}
    parked: {retention: 90d}
"""


def app_topics() -> AppTopics:
    return parse_catalogue(CATALOGUE).app(APP)


def report(
    treaty: str = "TRY-2024-001", period_id: str = "2024-01", kind: str = "P", **changes: Any
) -> dict[str, Any]:
    """A report in the shape of docs/bordereaux.md (one premium or claims row)."""
    premium = kind == "P"
    row: dict[str, Any] = (
        {"policy_number": "INS-2024-001234", "transaction_type": "NEW_BUSINESS", "gross_premium": "10000.00"}
        if premium
        else {
            "claim_id": "CLM-2024-000077",
            "policy_number": "INS-2024-001234",
            "paid_this_period": "2500.00",
        }
    )
    value: dict[str, Any] = {
        "report_id": f"BRD-{treaty}-{period_id}-{kind}",
        "report_type": "PREMIUM_BORDEREAUX" if premium else "CLAIMS_BORDEREAUX",
        "treaty_number": treaty,
        "period": {"id": period_id, "from": f"{period_id}-01", "to": f"{period_id}-28"},
        "cedant": {"code": "INS001", "name": "Insurance Company Ltd"},
        "reinsurer": {"code": "RE001", "name": "Reinsurance Corp"},
        "treaty_type": "QUOTA_SHARE",
        "settlement_currency": "USD",
        "policies" if premium else "claims": [row],
        "summary": {"total_policies" if premium else "total_claims": 1, "total_rows": 1},
    }
    value.update(changes)
    return value


def report_bytes(
    treaty: str = "TRY-2024-001", period_id: str = "2024-01", kind: str = "P", **changes: Any
) -> bytes:
    """The report as the bordereaux app writes it: UTF-8 JSON, no insignificant whitespace."""
    return json.dumps(report(treaty, period_id, kind, **changes), separators=(",", ":")).encode()


def message(
    value: bytes | None,
    *,
    key: bytes | None = b"TRY-2024-001",
    topic: str = SOURCE,
    offset: int = 7,
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> StaticMessage:
    return StaticMessage(topic, 2, offset, key, value, headers, timestamp_ms=1_707_177_600_000)


WHEN = datetime(2024, 2, 6, 0, 0, 1, 250_000, tzinfo=UTC)


class FakeClient:
    """Stands in for ``ReinsurerClient``: records submissions, answers from a script."""

    endpoint = "reinsurer"
    url = "http://127.0.0.1:8600/api/v1/bordereaux"

    def __init__(self, *answers: SubmitResult | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, bytes]] = []
        self.settings = ReinsurerSettings()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, report_id: str, body: bytes) -> SubmitResult:
        self.calls.append((report_id, body))
        answer = (
            self.answers.pop(0)
            if self.answers
            else SubmitResult(report_id, "ACCEPTED", WHEN, duplicate=False, http_status=201)
        )
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_app(client: FakeClient, *, max_attempts: int = 3) -> ReinsuranceApp:
    policy = EndpointPolicy(retry=RetryPolicy(max_attempts=max_attempts, initial_delay_ms=0, max_delay_ms=0))
    return ReinsuranceApp(
        client=client,  # type: ignore[arg-type]
        guard=EndpointGuard("reinsurer", policy),
        settings=ReinsuranceSettings(),
        topics=app_topics(),
    )


@pytest.fixture
def sink() -> Iterator[MemoryAuditSink]:
    memory = MemoryAuditSink()
    configure_audit_sink(memory)
    yield memory
    configure_audit_sink(None)


# -- reading a report ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "report_type"), [("P", "PREMIUM_BORDEREAUX"), ("C", "CLAIMS_BORDEREAUX")])
def test_a_report_is_read_by_its_identity(kind: str, report_type: str) -> None:
    ref = read_report(b"TRY-2024-001", report_bytes(kind=kind, period_id="2024-Q1"))
    assert ref == ReportRef(
        f"BRD-TRY-2024-001-2024-Q1-{kind}", report_type, "TRY-2024-001", "2024-Q1", "RE001"
    )


@pytest.mark.parametrize(
    ("key", "value", "error", "reason"),
    [
        (b"TRY-2024-001", None, DecodeError, "no value"),
        (b"TRY-2024-001", b"\xff\xfe garbage", DecodeError, "not UTF-8 JSON"),
        (b"TRY-2024-001", b"[1, 2]", DecodeError, "JSON object"),
        (b"TRY-2024-001", report_bytes(report_id=None), ValidationFailed, "report_id"),
        (b"TRY-2024-001", report_bytes(report_id="BRD TRY"), ValidationFailed, "Idempotency-Key"),
        (b"TRY-2024-001", report_bytes(treaty_number=""), ValidationFailed, "treaty_number"),
        (b"TRY-2024-001", report_bytes(report_type="REPORT"), ValidationFailed, "report_type"),
        (b"TRY-2024-001", report_bytes(period=["2024-01"]), ValidationFailed, "period"),
        (None, report_bytes(), ValidationFailed, "key is missing"),
        (b"TRY-2024-002", report_bytes(), ValidationFailed, "key does not match"),
        (b"TRY-2024-001", report_bytes(kind="C", report_id="BRD-TRY-2024-001-2024-01-P"), ValidationFailed,
         "report_id"),
        (b"TRY-2024-001", report_bytes(report_id="BRD-2024-001"), ValidationFailed, "report_id"),
        (b"TRY-2024-001", report_bytes(reinsurer="RE001"), ValidationFailed, "reinsurer must be"),
        (b"TRY-2024-001", report_bytes(reinsurer={"name": "Re"}), ValidationFailed, "reinsurer.code"),
    ],
)  # fmt: skip
def test_what_is_not_a_readable_report_is_a_contract_error(
    key: bytes | None, value: bytes | None, error: type[ContractError], reason: str
) -> None:
    with pytest.raises(error) as info:
        read_report(key, value)
    assert reason in info.value.reason
    assert "INS-2024-001234" not in info.value.reason


def test_the_delivery_result_is_compact_json_with_the_fields_in_order() -> None:
    result = SubmitResult("BRD-TRY-2024-001-2024-01-P", "ACCEPTED", WHEN, duplicate=True, http_status=200)
    assert delivery_result(result) == (
        b'{"report_id":"BRD-TRY-2024-001-2024-01-P","status":"ACCEPTED",'
        b'"acknowledged_at":"2024-02-06T00:00:01.250000Z","duplicate":true}'
    )


# -- processing ----------------------------------------------------------------------------------


async def test_a_report_is_submitted_once_unchanged_and_its_result_is_keyed_by_treaty() -> None:
    client = FakeClient()
    body = report_bytes()
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    (out,) = await make_app(client).process(message(body, headers=(("traceparent", traceparent),)))
    assert client.calls == [("BRD-TRY-2024-001-2024-01-P", body)]
    assert client.calls[0][1] is body
    assert out.topic == DELIVERIES
    assert out.key == b"TRY-2024-001"
    assert out.partition is None  # by key: one treaty's results stay in order
    assert json.loads(out.value or b"") == {
        "report_id": "BRD-TRY-2024-001-2024-01-P",
        "status": "ACCEPTED",
        "acknowledged_at": "2024-02-06T00:00:01.250000Z",
        "duplicate": False,
    }
    assert header_value(out.headers, "content-type") == "application/json"
    assert header_value(out.headers, "traceparent") == traceparent.decode()
    assert header_value(out.headers, H.ATTEMPTS) == "1"


async def test_a_transient_failure_is_retried_in_place_and_counted_in_the_result_headers() -> None:
    client = FakeClient(Retriable("reinsurer: HTTP 503"))
    (out,) = await make_app(client).process(message(report_bytes()))
    assert len(client.calls) == 2
    assert client.calls[0] == client.calls[1]  # the same key and bytes: the retry is safe
    assert out.topic == DELIVERIES
    assert header_value(out.headers, H.ATTEMPTS) == "2"


async def test_a_duplicate_acknowledgement_is_written_as_a_duplicate_delivery() -> None:
    client = FakeClient(SubmitResult("BRD-TRY-2024-001-2024-01-P", "ACCEPTED", WHEN, True, 200))
    (out,) = await make_app(client).process(message(report_bytes()))
    assert json.loads(out.value or b"")["duplicate"] is True


async def test_a_changed_report_goes_to_the_dlq_at_once_with_the_reason() -> None:
    conflict = ReportConflict("reinsurer: HTTP 409 report BRD-TRY-2024-001-2024-01-P", report_id="x")
    client = FakeClient(conflict)
    app = make_app(client)
    msg = message(report_bytes())
    with pytest.raises(ReportConflict) as info:
        await app.process(msg)
    assert len(client.calls) == 1  # permanent: no in-place retry
    dead, result = app.failure(msg, info.value, group="integrations.bordereaux-delivery")
    assert dead.topic == "integrations.bordereaux-delivery.dlq"
    assert dead.value == msg.value()
    # The deliveries topic answers for the report too: it failed, and where it went.
    assert result.topic == DELIVERIES
    assert result.key == b"TRY-2024-001"
    assert json.loads(result.value or b"") == {
        "report_id": "BRD-TRY-2024-001-2024-01-P",
        "status": "FAILED",
        "acknowledged_at": None,
        "duplicate": False,
        "error_class": "ReportConflict",
        "error": "reinsurer: HTTP 409 report BRD-TRY-2024-001-2024-01-P",
        "dead_letter_topic": "integrations.bordereaux-delivery.dlq",
    }
    assert dead.key == b"TRY-2024-001"
    assert header_value(dead.headers, H.ERROR_CLASS) == "ReportConflict"
    assert header_value(dead.headers, H.APP) == APP
    assert header_value(dead.headers, H.ATTEMPTS) == "1"


async def test_exhausted_retries_move_the_report_to_the_first_tier() -> None:
    client = FakeClient(*(Retriable("reinsurer: HTTP 503") for _ in range(3)))
    app = make_app(client)
    msg = message(report_bytes())
    with pytest.raises(Retriable) as info:
        await app.process(msg)
    (moved,) = app.failure(msg, info.value, group="integrations.bordereaux-delivery")
    assert moved.topic == "integrations.bordereaux-delivery.retry.0-5s"
    assert moved.partition == 2
    assert header_value(moved.headers, H.ATTEMPTS) == "3"
    assert header_value(moved.headers, H.DUE_AT) is not None


async def test_a_later_report_of_the_treaty_waits_behind_one_in_retry() -> None:
    client = FakeClient(*(Retriable("reinsurer: HTTP 503") for _ in range(3)))
    app = make_app(client)
    first = message(report_bytes(period_id="2024-01"), offset=7)
    with pytest.raises(Retriable) as info:
        await app.process(first)
    app.failure(first, info.value, group="g")
    second = message(report_bytes(period_id="2024-02"), offset=8)
    (forward,) = await app.process(second)
    assert forward.topic == "integrations.bordereaux-delivery.retry.0-5s"
    assert header_value(forward.headers, H.ERROR_CLASS) == "WaitingBehind"
    assert len(client.calls) == 3  # the February report was not sent ahead of January's


async def test_poison_input_makes_no_call_and_is_dead_lettered_with_the_reason() -> None:
    client = FakeClient()
    app = make_app(client)
    msg = message(b"{not json")
    with pytest.raises(DecodeError) as info:
        await app.process(msg)
    assert client.calls == []
    (dead,) = app.failure(msg, info.value, group="g")
    assert dead.topic == "integrations.bordereaux-delivery.dlq"
    assert header_value(dead.headers, H.ERROR_CLASS) == "DecodeError"
    assert header_value(dead.headers, H.ATTEMPTS) == "0"


async def test_every_attempt_is_audited_by_report_id_without_the_report(sink: MemoryAuditSink) -> None:
    client = FakeClient(Retriable("reinsurer: HTTP 503"))
    await make_app(client).process(message(report_bytes()))
    assert [(e.status, e.outcome, e.attempt) for e in sink.events] == [
        ("retriable_error", "failure", 1),
        ("201", "success", 2),
    ]
    for event in sink.events:
        assert event.app == APP
        assert event.endpoint == "reinsurer"
        assert event.idempotency_key == "BRD-TRY-2024-001-2024-01-P"
        assert event.request_summary == {"report_id": "BRD-TRY-2024-001-2024-01-P"}
    assert sink.events[1].response_summary == {
        "report_id": "BRD-TRY-2024-001-2024-01-P",
        "status": "ACCEPTED",
        "duplicate": False,
    }
    for payload in sink.payloads():
        assert b"INS-2024-001234" not in payload
        assert b"10000.00" not in payload


# -- wiring ----------------------------------------------------------------------------------------


class SilentTransport:
    """An HTTP seam that must never be used: building the app does no I/O."""

    async def start(self) -> None:
        raise AssertionError("no I/O while building")

    async def close(self) -> None: ...

    async def send(self, request: HttpRequest, *, timeouts: TimeoutSettings) -> HttpResponse:
        raise AssertionError("no I/O while building")


@pytest.mark.parametrize(("enabled", "guard_type"), [(True, EndpointGuard), (False, Unguarded)])
def test_the_builder_takes_the_reinsurer_endpoints_policy(enabled: bool, guard_type: type) -> None:
    resilience = parse_resilience(
        "endpoints:\n  reinsurer:\n    timeout: {connection_timeout_ms: 2000, read_timeout_ms: 45000, "
        "deadline_ms: 90000}\n    retry: {max_attempts: 4}\n"
    )
    breakers = resilience.breakers()
    app = build_reinsurance_app(
        ReinsuranceSettings(reinsurer=ReinsurerSettings(base_url="https://re.example")),
        app_topics(),
        resilience=resilience,
        breakers=breakers,
        resilience_enabled=enabled,
        transport=SilentTransport(),
    )
    assert app.name == APP
    assert app.client.url == "https://re.example/api/v1/bordereaux"
    assert app.client.settings.timeouts == TimeoutSettings(connect_timeout_s=2, read_timeout_s=45)
    assert type(app.guard) is guard_type
    assert app.guard.endpoint == "reinsurer"
    assert app.guard.policy.retry.max_attempts == 4
    assert app.guard.breaker is breakers.get("reinsurer")
    assert list(app.sources) == [
        SOURCE,
        *(f"integrations.bordereaux-delivery.retry.{t}" for t in ("0-5s", "1-1m", "2-10m", "3-1h", "4-6h")),
    ]
    assert app.router.keep_key_order


def test_the_app_reads_committed_reports_only() -> None:
    # Every consumer of the processors reads committed records; an operator override that
    # would weaken it is refused at start-up instead of applied.
    assert KafkaClients("b:9092").group_consumer("g")["isolation.level"] == "read_committed"
    weakened = KafkaClients("b:9092", {"consumer.isolation.level": "read_uncommitted"})
    with pytest.raises(ConfigError, match=r"consumer\.isolation\.level"):
        weakened.group_consumer("g")


def test_a_report_of_the_largest_size_fits_every_topic_it_may_move_to() -> None:
    catalogue = parse_catalogue(CATALOGUE)
    assert MAX_MESSAGE_BYTES == MAX_REPORT_BYTES
    assert ReinsuranceApp.max_message_bytes == MAX_REPORT_BYTES
    conf = KafkaClients("b:9092").producer(max_message_bytes=MAX_MESSAGE_BYTES)
    assert conf["message.max.bytes"] == MAX_REPORT_BYTES
    topics = app_topics()
    assert catalogue.topic(SOURCE).max_message_bytes == MAX_REPORT_BYTES
    for name in topics.failure_topics:  # whole, with the failure headers
        assert catalogue.topic(name).max_message_bytes == MAX_REPORT_BYTES + FAILURE_HEADROOM_BYTES, name
    assert catalogue.largest_record_written("bordereaux-delivery") >= MAX_REPORT_BYTES


# -- one endpoint per reinsurer ----------------------------------------------------------------------


def routed_app(**clients: FakeClient) -> ReinsuranceApp:
    policy = EndpointPolicy(retry=RetryPolicy(max_attempts=1, initial_delay_ms=0, max_delay_ms=0))
    return ReinsuranceApp(
        routes={
            code: (client, EndpointGuard(endpoint_of(code), policy))  # type: ignore[misc]
            for code, client in clients.items()
        },
        settings=ReinsuranceSettings(),
        topics=app_topics(),
    )


async def test_each_report_goes_to_its_own_reinsurer_and_to_no_other(sink: MemoryAuditSink) -> None:
    first, second = FakeClient(), FakeClient()
    app = routed_app(RE001=first, RE002=second)
    to_first = report_bytes()
    to_second = report_bytes(treaty="TRY-2024-002", reinsurer={"code": "RE002", "name": "Surplus Re"})
    await app.process(message(to_first))
    await app.process(message(to_second, key=b"TRY-2024-002"))
    assert first.calls == [("BRD-TRY-2024-001-2024-01-P", to_first)]
    assert second.calls == [("BRD-TRY-2024-002-2024-01-P", to_second)]
    assert [e.endpoint for e in sink.events] == ["reinsurer:RE001", "reinsurer:RE002"]


@pytest.mark.parametrize(
    ("reinsurer", "reason"),
    [({"code": "RE009", "name": "Other Re"}, "is for reinsurer RE009"), (None, "names no reinsurer")],
)
async def test_a_report_for_a_reinsurer_without_an_endpoint_is_dead_lettered_and_sent_nowhere(
    reinsurer: dict[str, str] | None, reason: str
) -> None:
    first = FakeClient()
    app = routed_app(RE001=first)
    value = report(reinsurer=reinsurer)
    if reinsurer is None:
        del value["reinsurer"]
    msg = message(json.dumps(value).encode())
    with pytest.raises(UnknownReinsurer) as info:
        await app.process(msg)
    assert first.calls == []
    assert reason in str(info.value)
    assert "configured: RE001" in str(info.value)
    dead, result = app.failure(msg, info.value, group="g")
    assert dead.topic == "integrations.bordereaux-delivery.dlq"
    assert header_value(dead.headers, H.ERROR_CLASS) == "UnknownReinsurer"
    assert json.loads(result.value or b"")["status"] == "FAILED"


def test_the_builder_gives_each_reinsurer_its_own_breaker_under_the_family_policy() -> None:
    resilience = parse_resilience(
        "endpoints:\n"
        "  reinsurer:\n    retry: {max_attempts: 4}\n"
        "  reinsurer:RE002:\n    retry: {max_attempts: 6}\n"
    )
    breakers = resilience.breakers()
    settings = ReinsuranceSettings(
        reinsurers={
            "RE001": ReinsurerSettings(base_url="https://one.example"),
            "RE002": ReinsurerSettings(base_url="https://two.example/"),
        }
    )
    app = build_reinsurance_app(
        settings, app_topics(), resilience=resilience, breakers=breakers, transport=SilentTransport()
    )
    assert app.client is None
    assert settings.endpoints() == ("reinsurer:RE001", "reinsurer:RE002")
    (one, one_guard), (two, two_guard) = app.routes["RE001"], app.routes["RE002"]
    assert (one.url, two.url) == (
        "https://one.example/api/v1/bordereaux",
        "https://two.example/api/v1/bordereaux",
    )
    assert (one_guard.endpoint, two_guard.endpoint) == ("reinsurer:RE001", "reinsurer:RE002")
    assert (one_guard.policy.retry.max_attempts, two_guard.policy.retry.max_attempts) == (4, 6)
    assert one_guard.breaker is breakers.get("reinsurer:RE001")
    assert one_guard.breaker is not two_guard.breaker


async def test_start_up_says_whether_reports_are_routed_by_reinsurer_or_all_go_to_one_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="processors.apps.reinsurance.app")
    await make_app(FakeClient()).start()
    await routed_app(RE002=FakeClient(), RE001=FakeClient()).start()
    one, routed = (r.getMessage() for r in caplog.records)
    assert "every report goes to one endpoint (http://127.0.0.1:8600)" in one
    assert "sandbox-token" not in one
    assert routed.endswith("reports routed by reinsurer code: RE001, RE002")


def test_reinsurer_codes_ignore_case_as_environment_variables_do() -> None:
    settings = ReinsuranceSettings(reinsurers={"re001": ReinsurerSettings(base_url="https://one.example")})
    assert list(settings.reinsurers) == ["RE001"]
    with pytest.raises(ValueError, match="given twice"):
        ReinsuranceSettings(reinsurers={"re001": ReinsurerSettings(), "RE001": ReinsurerSettings()})


async def test_a_report_finds_its_reinsurer_whatever_the_case_of_the_code() -> None:
    client = FakeClient()
    app = routed_app(re001=client)
    await app.process(message(report_bytes()))
    assert len(client.calls) == 1


@pytest.mark.parametrize("code", ["", "RE 001", "RE001/../x", "R" * 65])
def test_a_reinsurer_code_that_cannot_name_an_endpoint_is_a_configuration_error(code: str) -> None:
    with pytest.raises(ValueError, match="reinsurer code"):
        ReinsuranceSettings(reinsurers={code: ReinsurerSettings()})
