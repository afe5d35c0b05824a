"""Build the apps named on the command line and run them, each in its own consumer group.

With ``api.enabled`` the HTTP API (:mod:`processors.api`: inbound webhooks, health, status,
metrics) runs alongside the engines and reads their stats and the shared breaker registry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from confluent_kafka.admin import AdminClient

from processors.adapters.http import AiohttpTransport
from processors.adapters.kyc_provider import KycProvider
from processors.adapters.payment_gateway import PaymentGateway
from processors.api.health import EngineView, LoopView
from processors.api.server import ApiServer, RejectHook, RouteProvider
from processors.api.webhook_ops import WebhookOpsRoutes
from processors.api.webhooks import WebhookRoutes
from processors.apps.kyc import KycApp
from processors.apps.payments import PaymentsApp
from processors.apps.regulatory import build_regulatory_app
from processors.apps.reinsurance.app import build_reinsurance_app
from processors.contract import Codec, ContentType, LocalSchemaIds, SchemaRegistryClient
from processors.errors import ConfigError
from processors.kafka import KafkaClients
from processors.observability.audit import KafkaAuditSink, configure_audit_sink
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import EndpointPolicy, ResilienceConfig, load_resilience
from processors.resilience.guard import EndpointGuard, Unguarded
from processors.runtime.engine import Engine, EngineSettings, Ordering, Processor
from processors.runtime.pending import PendingRecordsReader
from processors.runtime.producer import AsyncProducer
from processors.settings import Settings
from processors.streams import TransactionalLoop
from processors.topics.catalogue import AppTopics, Catalogue, load_catalogue
from processors.webhooks.app import WebhooksApp
from processors.webhooks.attempts import AttemptsFeed, AttemptsView, Redeliverer
from processors.webhooks.secrets import SecretBox
from processors.webhooks.ssrf import SsrfPolicy, check_registration_url
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.transport import PinnedTransport

__all__ = ["APP_ENDPOINTS", "APP_NAMES", "Runner", "build_app", "make_codec"]

log = logging.getLogger(__name__)

APP_NAMES = ("payments", "kyc", "webhooks", "bordereaux", "bordereaux-delivery", "regulatory")
TRANSACTIONAL_APPS = frozenset({"bordereaux"})
"""Apps run by :class:`~processors.streams.TransactionalLoop` (exactly-once) instead of the engine."""

APP_ENDPOINTS: Mapping[str, tuple[str, ...]] = {
    "payments": ("payment-gateway",),
    "kyc": ("kyc-provider",),
    "webhooks": (),
    "bordereaux": (),
    "bordereaux-delivery": ("reinsurer",),
    "regulatory": ("regulator-sftp",),
}
"""The external endpoints (breaker names) each app calls, for health and status (partner
webhook endpoints come and go with subscriptions: ``webhook:<subscription id>``)."""


def make_codec(settings: Settings) -> Codec:
    if settings.schema_registry_url:
        return Codec(SchemaRegistryClient(settings.schema_registry_url))
    return Codec(LocalSchemaIds())


def keeps_key_order(settings: Settings, topics: AppTopics) -> bool:
    return settings.engine.ordering == Ordering.KEY and bool(topics.retry_tiers)


def build_app(
    name: str,
    settings: Settings,
    catalogue: Catalogue,
    codec: Codec,
    *,
    resilience: ResilienceConfig | None = None,
    breakers: BreakerRegistry | None = None,
) -> Processor:
    topics = catalogue.app(name)
    content_type = ContentType.AVRO if settings.output_format == "avro" else ContentType.JSON
    if resilience is None:
        resilience = load_resilience(settings.resilience_file)
    if breakers is None:  # (an empty registry is falsy: compare with None)
        breakers = resilience.breakers()
    group = settings.group_prefix + name
    reader = PendingRecordsReader(kafka_clients(settings), group)
    guard_class = EndpointGuard
    if name == "payments":
        endpoint = "payment-gateway"
        policy = resilience.for_endpoint(endpoint)
        gateway_settings = settings.payments.gateway.model_copy(update={"timeouts": policy.timeout.http()})
        transport = AiohttpTransport(max_connections=settings.engine.max_concurrency)
        gateway = PaymentGateway(gateway_settings, transport)
        return PaymentsApp(
            codec=codec,
            gateway=gateway,
            guard=(guard_class if settings.resilience_enabled else Unguarded)(
                endpoint, policy, breakers.get(endpoint)
            ),
            settings=settings.payments,
            topics=topics,
            output_content_type=content_type,
            keep_key_order=keeps_key_order(settings, topics),
            pending_reader=reader,
        )
    if name == "kyc":
        endpoint = "kyc-provider"
        policy = resilience.for_endpoint(endpoint)
        provider_settings = settings.kyc.provider.model_copy(update={"timeouts": policy.timeout.http()})
        transport = AiohttpTransport(max_connections=settings.engine.max_concurrency)
        return KycApp(
            codec=codec,
            provider=KycProvider(provider_settings, transport),
            guard=(guard_class if settings.resilience_enabled else Unguarded)(
                endpoint, policy, breakers.get(endpoint)
            ),
            settings=settings.kyc,
            topics=topics,
            output_content_type=content_type,
            keep_key_order=keeps_key_order(settings, topics),
            pending_reader=reader,
        )
    if name == "bordereaux-delivery":
        return build_reinsurance_app(
            settings.reinsurance.model_copy(
                update={"deliveries_topic": catalogue_topic(catalogue, "integrations.reinsurance.deliveries")}
            ),
            topics,
            resilience=resilience,
            breakers=breakers,
            resilience_enabled=settings.resilience_enabled,
            max_connections=settings.engine.max_concurrency,
            keep_key_order=keeps_key_order(settings, topics),
            pending_reader=reader,
        )
    if name == "regulatory":
        return build_regulatory_app(
            settings.regulatory.model_copy(
                update={"reports_topic": catalogue_topic(catalogue, "regulatory.reports")}
            ),
            topics,
            codec,
            resilience=resilience,
            breakers=breakers,
            resilience_enabled=settings.resilience_enabled,
            keep_key_order=keeps_key_order(settings, topics),
            pending_reader=reader,
        )
    if name == "webhooks":
        return build_webhooks_app(
            settings, catalogue, codec, resilience=resilience, breakers=breakers, pending_reader=reader
        )
    raise ConfigError(f"unknown app {name!r}; known: {', '.join(APP_NAMES)}")


def catalogue_topic(catalogue: Catalogue, suffix: str) -> str:
    """The catalogue's topic named ``suffix`` (whatever prefix the catalogue uses)."""
    for topic in catalogue.topics:
        if topic.name == suffix or topic.name.endswith("." + suffix):
            return topic.name
    raise ConfigError(f"the topic catalogue has no {suffix} topic")


def secret_box(settings: Settings) -> SecretBox:
    """The key that encrypts partner webhook secrets at rest."""
    key = settings.webhooks.encryption_key
    if key is not None:
        return SecretBox.from_env({"PROCESSORS_WEBHOOK_ENCRYPTION_KEY": key.get_secret_value()})
    if settings.webhooks.ephemeral_key:
        return SecretBox.ephemeral()
    return SecretBox.from_env()


def ssrf_policy(settings: Settings) -> SsrfPolicy:
    return SsrfPolicy(allow=settings.webhooks.allow, require_https=settings.webhooks.require_https)


def build_webhooks_app(
    settings: Settings,
    catalogue: Catalogue,
    codec: Codec,
    *,
    resilience: ResilienceConfig,
    breakers: BreakerRegistry,
    pending_reader: PendingRecordsReader | None = None,
    store: SubscriptionStore | None = None,
    box: SecretBox | None = None,
) -> WebhooksApp:
    topics = catalogue.app("webhooks")
    policy = resilience.for_endpoint("partner-webhooks")
    hooks = settings.webhooks
    if store is None:
        store = SubscriptionStore(
            settings.bootstrap_servers,
            catalogue_topic(catalogue, "integrations.webhook.subscriptions"),
            client_overrides=settings.client_overrides,
        )
    transport = PinnedTransport(
        policy=ssrf_policy(settings),
        timeouts=policy.timeout.http(),
        total_timeout_s=None,  # the endpoint guard's deadline bounds the whole exchange already
        max_response_bytes=hooks.max_response_bytes,
        max_connections=hooks.engine.max_concurrency,
        max_connections_per_host=hooks.max_connections_per_host,
        address_cache_s=hooks.address_cache_s,
    )
    return WebhooksApp(
        codec=codec,
        topics=topics,
        store=store,
        box=box or secret_box(settings),
        transport=transport,
        policy=policy,
        breakers=breakers,
        settings=hooks,
        dispatch_topic=catalogue_topic(catalogue, "integrations.webhooks.dispatch"),
        deliveries_topic=catalogue_topic(catalogue, "integrations.webhook.deliveries"),
        endpoint_events_topic=catalogue_topic(catalogue, "integrations.webhook.endpoint-events"),
        group=settings.group_prefix + "webhooks",
        pending_reader=pending_reader,
        guard_factory=None if settings.resilience_enabled else _unguarded,
    )


def webhook_routes(settings: Settings, catalogue: Catalogue, app: WebhooksApp) -> list[RouteProvider]:
    """The partner subscription API and the operator view, on the webhooks app's table."""
    policy = ssrf_policy(settings)

    async def url_check(url: str) -> None:
        await check_registration_url(url, policy)

    overrides = settings.client_overrides
    view = AttemptsView()
    feed = AttemptsFeed(
        settings.bootstrap_servers,
        catalogue_topic(catalogue, "integrations.webhook.deliveries"),
        view,
        client_overrides=overrides,
    )
    redeliverer = Redeliverer(settings.bootstrap_servers, app.dispatch_topic, client_overrides=overrides)
    return [
        WebhookRoutes(cast(SubscriptionStore, app.store), app.box, url_check),
        WebhookOpsRoutes(view, feed, redeliverer),
    ]


def _unguarded(endpoint: str, policy: EndpointPolicy, breakers: BreakerRegistry) -> EndpointGuard:
    return Unguarded(endpoint, policy, breakers.get(endpoint))


def kafka_clients(settings: Settings) -> KafkaClients:
    """Every Kafka client configuration of this process (``Settings.client_overrides`` applied)."""
    return KafkaClients(settings.bootstrap_servers, settings.client_overrides)


class Runner:
    """Runs several apps in one process; each app is its own consumer group and producer."""

    def __init__(
        self,
        settings: Settings,
        app_names: Sequence[str],
        *,
        catalogue: Catalogue | None = None,
        on_inbound_rejected: RejectHook | None = None,
    ) -> None:
        if not app_names:
            raise ConfigError("no app to run; known apps: " + ", ".join(APP_NAMES))
        unknown = [n for n in app_names if n not in APP_NAMES]
        if unknown:
            raise ConfigError(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(APP_NAMES)}")
        self.settings = settings
        self.app_names = list(dict.fromkeys(app_names))
        self.catalogue = catalogue or load_catalogue(settings.topics_file)
        self.engines: list[Engine] = []
        self.breakers: BreakerRegistry | None = None
        self.api: ApiServer | None = None
        """The HTTP API (``settings.api.enabled``), set once it listens."""
        self.on_inbound_rejected = on_inbound_rejected
        self._producers: list[AsyncProducer] = []
        self.bordereaux: TransactionalLoop | None = None
        """The exactly-once bordereaux app, when it runs."""

    async def check_topics(self) -> None:
        """Refuse to start when a topic the apps use is missing, or key order cannot hold."""
        needed: set[str] = set()
        for name in self.app_names:
            if name in TRANSACTIONAL_APPS:
                continue  # checked by the loop's own builder, with its internal topics
            topics = self.catalogue.app(name)
            needed.update(topics.sources)
            needed.update(topics.failure_topics)
            if name == "webhooks":
                needed.update(topics.outputs)
                needed.update(topics.state)
        if "payments" in self.app_names:
            needed.add(self.settings.payments.results_topic)
        audit = self.audit_topic()
        if audit is not None:
            needed.add(audit)
        if "kyc" in self.app_names:
            needed.add(self.settings.kyc.results_topic)
        if "bordereaux-delivery" in self.app_names:
            needed.add(catalogue_topic(self.catalogue, "integrations.reinsurance.deliveries"))
        if "regulatory" in self.app_names:
            needed.add(catalogue_topic(self.catalogue, "regulatory.reports"))
        admin = AdminClient(kafka_clients(self.settings).admin())
        loop = asyncio.get_running_loop()
        try:
            metadata = await loop.run_in_executor(None, lambda: admin.list_topics(timeout=15))
        except Exception as exc:
            raise ConfigError(f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        missing = sorted(needed - set(metadata.topics))
        if missing:
            raise ConfigError(f"missing topic(s): {', '.join(missing)}; run `processors topics apply` first")

    def _build_bordereaux(self, codec: Codec) -> TransactionalLoop:
        from processors.bordereaux.topology import BordereauxTopics, build_loop
        from processors.bordereaux.treaties import load_treaty_book

        book = load_treaty_book(self.settings.bordereaux.treaties_file)
        return build_loop(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.settings.group_prefix + "bordereaux",
            instance_id=self.settings.bordereaux.instance_id,
            book=book,
            codec=codec,
            topics=BordereauxTopics.from_catalogue(self.catalogue),
            client_overrides=self.settings.client_overrides,
            batch_size=self.settings.bordereaux.batch_size,
            idle_source_after_s=self.settings.bordereaux.idle_source_after_s or None,
        )

    def _endpoints_of(self, app: str) -> tuple[str, ...]:
        if app == "bordereaux-delivery":
            return self.settings.reinsurance.endpoints()
        return tuple(APP_ENDPOINTS.get(app, ()))

    def _engine_settings(self, name: str) -> EngineSettings:
        return self.settings.webhooks.engine if name == "webhooks" else self.settings.engine

    def audit_topic(self) -> str | None:
        """The catalogue's audit topic (``integrations.audit``, whatever prefix the catalogue uses)."""
        for topic in self.catalogue.topics:
            if topic.name.endswith("integrations.audit"):
                return topic.name
        return None

    def _start_audit(self, producer: AsyncProducer) -> None:
        """Every external interaction is published, redacted, on the audit topic (fire and forget)."""
        topic = self.audit_topic()
        if topic is None:
            log.warning("no integrations.audit topic in the catalogue: audit events are only logged")
            return
        raw = producer.raw

        def send(target: str, key: bytes | None, value: bytes) -> None:
            raw.produce(target, key=key, value=value)

        configure_audit_sink(KafkaAuditSink(send, topic))

    async def run(self, stop: asyncio.Event, *, on_ready: Callable[[], None] | None = None) -> None:
        await self.check_topics()
        codec = make_codec(self.settings)
        resilience = load_resilience(self.settings.resilience_file)
        self.breakers = resilience.breakers()
        loop = asyncio.get_running_loop()
        # Register / look up every schema id now, not on the first record.
        await loop.run_in_executor(None, codec.prepare)
        for name in self.app_names:
            if name in TRANSACTIONAL_APPS:
                continue
            app = build_app(
                name, self.settings, self.catalogue, codec, resilience=resilience, breakers=self.breakers
            )
            kafka = kafka_clients(self.settings)
            producer = AsyncProducer(
                kafka.producer(max_message_bytes=getattr(app, "max_message_bytes", None))
            )
            await producer.start()
            self._producers.append(producer)
            if len(self._producers) == 1:
                self._start_audit(producer)
            router = getattr(app, "router", None)
            # The ordering gate needs source partition n and retry partition n together.
            key_ordered = router is not None and router.keep_key_order
            conf = kafka.group_consumer(self.settings.group_prefix + name, key_ordered=key_ordered)
            self.engines.append(
                Engine(app, consumer_conf=conf, producer=producer, settings=self._engine_settings(name))
            )
        tasks = [
            asyncio.create_task(engine.run(), name=f"engine-{engine.processor.name}")
            for engine in self.engines
        ]
        loop_stop = threading.Event()
        if "bordereaux" in self.app_names:
            self.bordereaux = await loop.run_in_executor(None, self._build_bordereaux, codec)
            tasks.append(
                asyncio.create_task(asyncio.to_thread(self.bordereaux.run, loop_stop), name="loop-bordereaux")
            )
        stopper = asyncio.create_task(stop.wait())
        try:
            if self.settings.api.enabled:
                extra_routes: list[RouteProvider] = []
                for engine in self.engines:
                    if isinstance(engine.processor, WebhooksApp):
                        await engine.processor.start_store()
                        extra_routes.extend(webhook_routes(self.settings, self.catalogue, engine.processor))
                views: list[EngineView] = list(self.engines)
                if self.bordereaux is not None:
                    views.append(LoopView(self.bordereaux))
                api = ApiServer(
                    self.settings,
                    engines=views,
                    breakers=self.breakers,
                    app_endpoints={name: self._endpoints_of(name) for name in self.app_names},
                    codec=codec,
                    on_rejected=self.on_inbound_rejected,
                    extra_routes=extra_routes,
                )
                await api.start()
                self.api = api
            if on_ready is not None:
                on_ready()
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    log.error("engine %s failed", task.get_name(), exc_info=task.exception())
        finally:
            if self.api is not None:
                # No new inbound requests; the accepted ones are flushed by the API's producer.
                await self.api.stop()
            for engine in self.engines:
                engine.stop()
            loop_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            stopper.cancel()
            configure_audit_sink(None)
            for producer in self._producers:
                await producer.stop()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
