"""The KYC app's handler with a fake provider: refusals make no call, everything else makes one."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from processors.adapters.kyc_provider import KycOutcome, KycProviderSettings, KycRequest, ProviderDecision
from processors.apps.kyc import KycApp, KycSettings, mapping
from processors.contract import Codec, Event, KycConsent, KycDocument, KycRequested
from processors.errors import Permanent
from processors.resilience.config import EndpointPolicy
from processors.resilience.guard import EndpointGuard
from processors.topics.catalogue import load_catalogue

WHEN = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)


class FakeProvider:
    """Stands in for ``KycProvider``: records calls, answers with ``outcome`` or raises ``error``."""

    endpoint = "kyc-provider"

    def __init__(self, outcome: KycOutcome | None = None, error: Exception | None = None) -> None:
        self.outcome = outcome or KycOutcome.pending("VRF-1")
        self.error = error
        self.calls: list[tuple[str, KycRequest, str]] = []
        self.settings = KycProviderSettings()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def verify(self, customer_id: str, request: KycRequest, idempotency_key: str) -> KycOutcome:
        self.calls.append((customer_id, request, idempotency_key))
        if self.error is not None:
            raise self.error
        return self.outcome


def make_app(provider: FakeProvider) -> KycApp:
    return KycApp(
        codec=Codec(),
        provider=provider,  # type: ignore[arg-type]
        guard=EndpointGuard("kyc-provider", EndpointPolicy()),
        settings=KycSettings(results_topic="results"),
        topics=load_catalogue().app("kyc"),
    )


def kyc_requested(*, terms: bool = True, expiry: date = date(2035, 1, 1)) -> Event:
    data = KycRequested(
        customer_id="CUST-000001",
        verification_type="IDENTITY",
        documents=[
            KycDocument(
                type="PASSPORT",
                document_number="AB123456",
                issuing_country="US",
                expiry_date=expiry,
                front_image_url="https://storage.example.com/f.jpg",
            )
        ],
        consent=KycConsent(terms_accepted=terms, data_processing_accepted=True, timestamp=WHEN),
    )
    return Event.create("customer.kyc_requested", subject="CUST-000001", data=data, source="crm")


def test_the_app_handles_kyc_requests_only() -> None:
    assert KycApp.handles == frozenset({"customer.kyc_requested"})
    assert KycApp.name == "kyc"


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (kyc_requested(terms=False), "consent_missing"),
        (kyc_requested(expiry=date(2020, 1, 1)), "document_expired"),
    ],
)
async def test_a_refused_request_is_published_and_never_sent(event: Event, code: str) -> None:
    provider = FakeProvider()
    ((topic, result),) = await make_app(provider).handle(event)
    assert provider.calls == []
    assert topic == "results"
    assert result.event_type == "kyc.refused"
    assert result.data.reason_code == code  # type: ignore[attr-defined]


async def test_a_valid_request_is_sent_once_with_the_derived_key() -> None:
    decision = ProviderDecision("VRF-9", "APPROVED", 12, "LOW", (), WHEN)
    provider = FakeProvider(KycOutcome.decided(decision))
    event = kyc_requested()
    ((topic, result),) = await make_app(provider).handle(event)
    ((customer_id, request, key),) = provider.calls
    assert customer_id == "CUST-000001"
    assert key == mapping.idempotency_key(event.event_id)
    assert request.client_reference == str(event.event_id)
    assert (topic, result.event_type) == ("results", "kyc.approved")


async def test_a_pending_answer_is_published_as_kyc_pending() -> None:
    provider = FakeProvider(KycOutcome.pending("VRF-LATER"))
    ((_, result),) = await make_app(provider).handle(kyc_requested())
    assert result.event_type == "kyc.pending"
    assert result.data.verification_id == "VRF-LATER"  # type: ignore[attr-defined]


async def test_a_permanent_refusal_by_the_provider_propagates_after_one_call() -> None:
    provider = FakeProvider(error=Permanent("kyc-provider: HTTP 422"))
    with pytest.raises(Permanent):
        await make_app(provider).handle(kyc_requested())
    assert len(provider.calls) == 1
