"""KYC app wiring: pre-checks, the provider adapter behind its endpoint guard, the results.

``customer.kyc_requested`` → :func:`mapping.precheck` → either ``kyc.refused`` (no call is
made) or one guarded call to the provider → ``kyc.approved`` / ``kyc.review`` /
``kyc.rejected``, or ``kyc.pending`` when the provider answers later (its callback reaches the
results topic through the inbound webhook endpoint).  ``customer.created`` is not handled.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters.kyc_provider import KycOutcome, KycProvider, KycProviderSettings
from processors.apps.kyc import mapping
from processors.contract import Codec, ContentType, Event
from processors.resilience.guard import CallContext, EndpointGuard
from processors.runtime.app import Emit, EventApp, PendingReader, RecentReader
from processors.topics.catalogue import AppTopics

__all__ = ["KycApp", "KycSettings"]


class KycSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: KycProviderSettings = Field(default_factory=KycProviderSettings)
    results_topic: str = "integrations.kyc.results"
    replay_limit: int = Field(default=3, ge=0)


class KycApp(EventApp):
    name = mapping.APP
    handles = frozenset({"customer.kyc_requested"})

    def __init__(
        self,
        *,
        codec: Codec,
        provider: KycProvider,
        guard: EndpointGuard,
        settings: KycSettings,
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
        self.provider = provider
        self.guard = guard
        self.settings = settings

    async def start(self) -> None:
        await self.provider.start()

    async def stop(self) -> None:
        await self.provider.close()

    async def handle(self, event: Event) -> Sequence[Emit]:
        topic = self.settings.results_topic
        request_data = mapping.requested(event)
        refusal = mapping.precheck(request_data, today=event.occurred_at.date())
        if refusal is not None:
            return [(topic, mapping.refused_event(event, refusal, source=self.source))]
        request = mapping.kyc_request(event)
        key = mapping.idempotency_key(event.event_id, self.name, mapping.OPERATION)

        async def verify() -> KycOutcome:
            return await self.provider.verify(request_data.customer_id, request, key)

        context = CallContext(
            app=self.name,
            operation="verify",
            idempotency_key=key,
            correlation_id=event.correlation_id or str(event.event_id),
            request_summary={"customer_id": request_data.customer_id, "request": request},
            describe=lambda outcome: (type(outcome).__name__, outcome),
        )
        outcome = await self.guard.call(verify, context=context)
        return [(topic, mapping.result_event(event, key, outcome, source=self.source))]
