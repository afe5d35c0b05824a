"""Payments app wiring: the gateway adapter behind its endpoint guard, the mapping, the results."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters.payment_gateway import GatewaySettings, PaymentGateway, PaymentOutcome
from processors.apps.payments import mapping
from processors.contract import Codec, ContentType, Event
from processors.resilience.guard import EndpointGuard
from processors.runtime.app import Emit, EventApp, PendingReader
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
    ) -> None:
        super().__init__(
            codec=codec,
            topics=topics,
            output_content_type=output_content_type,
            replay_limit=settings.replay_limit,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
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

        outcome = await self.guard.call(submit)
        result = mapping.result_event(event, request, outcome, source=self.source)
        return [(self.settings.results_topic, result)]
