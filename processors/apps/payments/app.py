"""Payments app wiring: the gateway adapter behind its endpoint guard, the mapping, the results."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters.payment_gateway import GatewaySettings, PaymentGateway, PaymentOutcome
from processors.apps.payments import mapping
from processors.contract import Codec, ContentType, Event
from processors.resilience.guard import CallContext, EndpointGuard
from processors.runtime.app import Emit, EventApp, PendingReader, RecentReader
from processors.topics.catalogue import AppTopics

__all__ = ["PaymentsApp", "PaymentsSettings"]


class PaymentsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    results_topic: str = "integrations.payment.results"
    replay_limit: int = Field(default=3, ge=0)


class PaymentsApp(EventApp):
    name = "payments"
    handles = frozenset({"premium.due", "refund.requested"})

    def __init__(
        self,
        *,
        codec: Codec,
        gateway: PaymentGateway,
        guard: EndpointGuard,
        settings: PaymentsSettings,
        topics: AppTopics,
        output_content_type: ContentType = ContentType.AVRO,
        keep_key_order: bool = True,
        pending_reader: PendingReader | None = None,
        recent_reader: RecentReader | None = None,
    ) -> None:
        super().__init__(
            codec=codec,
            topics=topics,
            output_content_type=output_content_type,
            replay_limit=settings.replay_limit,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
            recent_reader=recent_reader,
        )
        self.gateway = gateway
        self.guard = guard
        self.settings = settings

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.close()

    async def handle(self, event: Event) -> Sequence[Emit]:
        request = mapping.payment_request(event, app=self.name)

        async def submit() -> PaymentOutcome:
            return await self.gateway.submit(request)

        context = CallContext(
            app=self.name,
            operation=request.transaction_type.lower(),
            idempotency_key=request.idempotency_key,
            correlation_id=event.correlation_id or str(event.event_id),
            request_summary={
                "policy_id": request.policy_id,
                "reference_id": request.reference_id,
                "amount": str(request.amount),
                "currency": request.currency,
                "payment_method": request.payment_method,
            },
            describe=_describe,
        )
        outcome = await self.guard.call(submit, context=context)
        result = mapping.result_record(event, request, outcome, source=self.source)
        return [(self.settings.results_topic, result)]


def _describe(outcome: PaymentOutcome) -> tuple[str, dict[str, str | None]]:
    return outcome.status, {
        "payment_id": outcome.payment_id,
        "status": outcome.status,
        "decline_code": outcome.decline_code,
    }
