"""Payments app wiring: the gateway adapter behind retry, the mapping, the results topic."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters.payment_gateway import GatewaySettings, PaymentGateway, PaymentOutcome
from processors.apps.payments import mapping
from processors.contract import Codec, ContentType, Event
from processors.resilience.retry import RetryPolicy
from processors.runtime.app import Emit, EventApp

__all__ = ["PaymentsApp", "PaymentsSettings"]


class PaymentsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    results_topic: str = "integrations.payment.results"


class PaymentsApp(EventApp):
    name = "payments"
    handles = frozenset({"premium.due", "refund.requested"})

    def __init__(
        self,
        *,
        codec: Codec,
        gateway: PaymentGateway,
        settings: PaymentsSettings,
        sources: Sequence[str],
        dlq_topic: str,
        output_content_type: ContentType = ContentType.AVRO,
    ) -> None:
        super().__init__(
            codec=codec, sources=sources, dlq_topic=dlq_topic, output_content_type=output_content_type
        )
        self.gateway = gateway
        self.settings = settings

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.close()

    async def handle(self, event: Event) -> Sequence[Emit]:
        request = mapping.payment_request(event, app=self.name)

        async def attempt(_n: int) -> PaymentOutcome:
            return await self.gateway.submit(request)

        outcome = await self.settings.retry.call(attempt)
        result = mapping.result_event(event, request, outcome, source=self.source)
        return [(self.settings.results_topic, result)]
