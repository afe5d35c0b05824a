"""The app registry: what each integration app is, how it is built, and what it needs.

The runner, the start-up topic check, health (which breakers an app calls), the API's extra
routes and ``processors run --help`` all read this registry; none of them names an app.  An
app is added with one :func:`register` call giving an :class:`AppSpec`: either ``build`` (an
app of the at-least-once engine) or ``build_loop`` (an exactly-once transactional loop).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

from pydantic import SecretStr

from processors.adapters.http import AiohttpTransport
from processors.adapters.kyc_provider import KycProvider
from processors.adapters.payment_gateway import PaymentGateway
from processors.api.inbound import (
    KYC_PROVIDER,
    PAYMENT_GATEWAY,
    InboundHandler,
    KycCallbackHandler,
    PaymentConfirmationHandler,
)
from processors.apps.kyc import KycApp
from processors.apps.kyc.mapping import decision_from_callback
from processors.apps.payments import PaymentsApp
from processors.apps.regulatory import build_regulatory_app
from processors.apps.reinsurance.app import DELIVERIES_TOPIC, build_reinsurance_app
from processors.contract import Codec, ContentType
from processors.errors import ConfigError
from processors.kafka import KafkaClients
from processors.partners.store import PARTNERS_TOPIC, PartnerStore
from processors.production import sandbox_secret, webhook_problems
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import EndpointPolicy, ResilienceConfig
from processors.resilience.guard import EndpointGuard, Unguarded
from processors.runtime.engine import EngineSettings, Ordering, Processor
from processors.runtime.pending import PendingRecordsReader, RecentRecordsReader
from processors.topics.catalogue import AppTopics, Catalogue
from processors.webhooks.secrets import ENCRYPTION_KEY_ENV, SecretBox
from processors.webhooks.ssrf import SsrfPolicy, check_registration_url
from processors.webhooks.store import SubscriptionStore
from processors.webhooks.transport import PinnedTransport

if TYPE_CHECKING:
    from processors.api.partners import PartnerRoutes
    from processors.api.server import RouteProvider
    from processors.api.webhook_ops import WebhookOpsRoutes
    from processors.api.webhooks import WebhookRoutes
    from processors.settings import Settings
    from processors.streams import TransactionalLoop
    from processors.webhooks.app import WebhooksApp

__all__ = [
    "AppSpec",
    "BuildContext",
    "app_names",
    "app_spec",
    "build_webhooks_app",
    "catalogue_topic",
    "inbound_handlers",
    "register",
    "secret_box",
    "ssrf_policy",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildContext:
    """What building an engine app may use; one per process, shared by its apps."""

    settings: Settings
    catalogue: Catalogue
    codec: Codec
    resilience: ResilienceConfig
    breakers: BreakerRegistry

    @property
    def content_type(self) -> ContentType:
        return ContentType.AVRO if self.settings.output_format == "avro" else ContentType.JSON

    def topics(self, app: str) -> AppTopics:
        return self.catalogue.app(app)

    def keeps_key_order(self, app: str) -> bool:
        """Key order across retry tiers: key ordering and an app that has tiers."""
        return self.settings.engine.ordering == Ordering.KEY and bool(self.topics(app).retry_tiers)

    def pending_reader(self, app: str) -> PendingRecordsReader:
        """Reads the records of ``app``'s retry tiers its group has not committed (key order)."""
        kafka = KafkaClients(self.settings.bootstrap_servers, self.settings.client_overrides)
        return PendingRecordsReader(kafka, self.settings.group_prefix + app)

    def recent_reader(self, app: str) -> RecentRecordsReader | None:
        """Reads back ``app``'s answered event ids (None: the app declares no ``dedupe``)."""
        topics = self.topics(app)
        if topics.dedupe is None:
            return None
        kafka = KafkaClients(self.settings.bootstrap_servers, self.settings.client_overrides)
        return RecentRecordsReader(kafka, topics.dedupe_window_ms / 1000)

    def guard(self, endpoint: str) -> EndpointGuard:
        """The endpoint's guard (breaker, retry, deadline), or none when resilience is off."""
        policy = self.resilience.for_endpoint(endpoint)
        guard_class = EndpointGuard if self.settings.resilience_enabled else Unguarded
        return guard_class(endpoint, policy, self.breakers.get(endpoint))


def _nothing(_settings: Settings, _catalogue: Catalogue) -> tuple[str, ...]:
    return ()


def _no_endpoints(_settings: Settings) -> tuple[str, ...]:
    return ()


def _shared_engine(settings: Settings) -> EngineSettings:
    return settings.engine


@dataclass(frozen=True)
class AppSpec:
    name: str
    summary: str
    """One line for ``processors run --help``."""
    build: Callable[[BuildContext], Processor] | None = None
    """An app of the at-least-once engine (consumes its sources and retry tiers)."""
    build_loop: Callable[[Settings, Catalogue, Codec], TransactionalLoop] | None = None
    """An exactly-once app: its loop checks its own topics, internal ones included."""
    endpoints: Callable[[Settings], tuple[str, ...]] = _no_endpoints
    """The external endpoints (breaker names) it calls, for health and status."""
    outputs: Callable[[Settings, Catalogue], Iterable[str]] = _nothing
    """Topics it writes or reads besides its sources and failure topics (checked at start-up)."""
    engine_settings: Callable[[Settings], EngineSettings] = _shared_engine
    routes: Callable[[Settings, Catalogue, Processor], Awaitable[list[RouteProvider]]] | None = None
    """Extra API routes it serves when the API runs beside it."""
    inbound: Callable[[Settings], Mapping[str, InboundHandler]] = lambda _s: {}
    production_problems: Callable[[Settings], list[str]] = lambda _s: []
    """Why the app's settings are unfit for ``PROCESSORS_ENV=production`` (sandbox credentials...)."""
    """Provider callbacks the API accepts for this app (``/api/v1/inbound/<provider>``), by
    provider name; served whether or not the app runs in the same process."""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.build is None) == (self.build_loop is None):
            raise ValueError(f"app {self.name}: give exactly one of build and build_loop")

    @property
    def transactional(self) -> bool:
        return self.build_loop is not None


_REGISTRY: dict[str, AppSpec] = {}


def register(spec: AppSpec) -> AppSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"app {spec.name} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def app_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def inbound_handlers(settings: Settings) -> dict[str, Callable[[], InboundHandler | None]]:
    """Every registered app's provider callbacks, as the API's handler registry."""
    found: dict[str, Callable[[], InboundHandler | None]] = {}
    for spec in _REGISTRY.values():
        for provider, handler in spec.inbound(settings).items():
            if provider in found:
                raise ConfigError(f"two apps handle callbacks of {provider}")
            found[provider] = partial(_same, handler)
    return found


def _same(handler: InboundHandler) -> InboundHandler:
    return handler


def app_spec(name: str) -> AppSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown app {name!r}; known: {', '.join(_REGISTRY)}")
    return spec


# --- shared wiring ---------------------------------------------------------------------------


def catalogue_topic(catalogue: Catalogue, suffix: str) -> str:
    """The catalogue's topic named ``suffix`` (whatever prefix the catalogue uses)."""
    for topic in catalogue.topics:
        if topic.name == suffix or topic.name.endswith("." + suffix):
            return topic.name
    raise ConfigError(f"the topic catalogue has no {suffix} topic")


def _optional_topic(catalogue: Catalogue, suffix: str) -> str | None:
    try:
        return catalogue_topic(catalogue, suffix)
    except ConfigError:
        return None


def secret_box(settings: Settings) -> SecretBox:
    """The key that encrypts partner webhook secrets at rest."""
    hooks = settings.webhooks
    if hooks.encryption_key is not None:
        # the key from the settings, and its previous keys from the settings or, like the key
        # itself would be, from the environment: a rotation works whichever way the key is given
        previous = ",".join(k.get_secret_value() for k in hooks.previous_encryption_keys) or os.environ.get(
            f"{ENCRYPTION_KEY_ENV}_PREVIOUS", ""
        )
        env = {
            ENCRYPTION_KEY_ENV: hooks.encryption_key.get_secret_value(),
            f"{ENCRYPTION_KEY_ENV}_PREVIOUS": previous,
        }
        return SecretBox.from_env(env)
    if hooks.previous_encryption_keys:
        env = dict(os.environ)
        env[f"{ENCRYPTION_KEY_ENV}_PREVIOUS"] = ",".join(
            k.get_secret_value() for k in hooks.previous_encryption_keys
        )
        return SecretBox.from_env(env)
    if settings.webhooks.ephemeral_key:
        return SecretBox.ephemeral()
    return SecretBox.from_env()


def ssrf_policy(settings: Settings) -> SsrfPolicy:
    return SsrfPolicy(allow=settings.webhooks.allow, require_https=settings.webhooks.require_https)


def _sandbox(secret: SecretStr | None, name: str) -> list[str]:
    return [f"{name} is the sandbox default"] if sandbox_secret(secret) else []


def _reinsurer_problems(settings: Settings) -> list[str]:
    insurance = settings.reinsurance
    if not insurance.reinsurers:
        return _sandbox(
            insurance.reinsurer.token,
            "reinsurance.reinsurer.token (PROCESSORS_REINSURANCE__REINSURER__TOKEN)",
        )
    problems: list[str] = []
    for code, reinsurer in insurance.reinsurers.items():
        problems.extend(_sandbox(reinsurer.token, f"reinsurance.reinsurers.{code}.token"))
    return problems


# --- payments ----------------------------------------------------------------------------------


def _build_payments(ctx: BuildContext) -> Processor:
    settings = ctx.settings
    policy = ctx.resilience.for_endpoint("payment-gateway")
    gateway_settings = settings.payments.gateway.model_copy(update={"timeouts": policy.timeout.http()})
    transport = AiohttpTransport(max_connections=settings.engine.max_concurrency)
    return PaymentsApp(
        codec=ctx.codec,
        gateway=PaymentGateway(gateway_settings, transport),
        guard=ctx.guard("payment-gateway"),
        settings=settings.payments,
        topics=ctx.topics("payments"),
        output_content_type=ctx.content_type,
        keep_key_order=ctx.keeps_key_order("payments"),
        pending_reader=ctx.pending_reader("payments"),
        recent_reader=ctx.recent_reader("payments"),
    )


register(
    AppSpec(
        "payments",
        "premium.due and refund.requested → payment gateway → payment results",
        build=_build_payments,
        endpoints=lambda _s: ("payment-gateway",),
        outputs=lambda s, _c: (s.payments.results_topic,),
        inbound=lambda s: {PAYMENT_GATEWAY: PaymentConfirmationHandler(s.payments.results_topic)},
        production_problems=lambda s: _sandbox(
            s.payments.gateway.token, "payments.gateway.token (PROCESSORS_PAYMENTS__GATEWAY__TOKEN)"
        ),
    )
)


# --- kyc ---------------------------------------------------------------------------------------


def _build_kyc(ctx: BuildContext) -> Processor:
    settings = ctx.settings
    policy = ctx.resilience.for_endpoint("kyc-provider")
    provider_settings = settings.kyc.provider.model_copy(update={"timeouts": policy.timeout.http()})
    transport = AiohttpTransport(max_connections=settings.engine.max_concurrency)
    return KycApp(
        codec=ctx.codec,
        provider=KycProvider(provider_settings, transport),
        guard=ctx.guard("kyc-provider"),
        settings=settings.kyc,
        topics=ctx.topics("kyc"),
        output_content_type=ctx.content_type,
        keep_key_order=ctx.keeps_key_order("kyc"),
        pending_reader=ctx.pending_reader("kyc"),
        recent_reader=ctx.recent_reader("kyc"),
    )


register(
    AppSpec(
        "kyc",
        "customer.kyc_requested → KYC/AML provider → KYC decisions",
        build=_build_kyc,
        endpoints=lambda _s: ("kyc-provider",),
        outputs=lambda s, _c: (s.kyc.results_topic,),
        inbound=lambda s: {
            KYC_PROVIDER: KycCallbackHandler(
                decision_from_callback, s.api.kyc_results_topic or s.kyc.results_topic
            )
        },
        production_problems=lambda s: _sandbox(
            s.kyc.provider.token, "kyc.provider.token (PROCESSORS_KYC__PROVIDER__TOKEN)"
        ),
    )
)


# --- webhooks ----------------------------------------------------------------------------------


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
    partners: PartnerStore | None = None,
) -> WebhooksApp:
    """The webhooks app on its subscriptions table and, when the catalogue has the partner
    registry's topic, the registry (the partners' grants; without it no partner is granted
    anything).  ``store`` and ``partners`` default to stores of their own (no I/O here)."""
    from processors.webhooks.app import WebhooksApp

    topics = catalogue.app("webhooks")
    policy = resilience.for_endpoint("partner-webhooks")
    hooks = settings.webhooks
    if store is None:
        store = SubscriptionStore(
            settings.bootstrap_servers,
            catalogue_topic(catalogue, "integrations.webhook.subscriptions"),
            client_overrides=settings.client_overrides,
        )
    partners_topic = _optional_topic(catalogue, PARTNERS_TOPIC)
    if partners is None and partners_topic is not None:
        partners = PartnerStore(
            settings.bootstrap_servers, partners_topic, client_overrides=settings.client_overrides
        )
    elif partners is None:
        log.warning(
            "the topic catalogue has no %s topic: webhook deliveries to partners carry no personal data",
            PARTNERS_TOPIC,
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
        partners=partners,
    )


def _unguarded(endpoint: str, policy: EndpointPolicy, breakers: BreakerRegistry) -> EndpointGuard:
    return Unguarded(endpoint, policy, breakers.get(endpoint))


def _build_webhooks(ctx: BuildContext) -> Processor:
    return build_webhooks_app(
        ctx.settings,
        ctx.catalogue,
        ctx.codec,
        resilience=ctx.resilience,
        breakers=ctx.breakers,
        pending_reader=ctx.pending_reader("webhooks"),
    )


async def webhook_routes(settings: Settings, catalogue: Catalogue, app: Processor) -> list[RouteProvider]:
    """The partner registry, the subscription API and the operator view, on the webhooks app's table.

    Without the partner registry's topic in the catalogue (a catalogue from before partners),
    the subscription routes take the operator token only.
    """
    from processors.api.partners import PartnerRoutes
    from processors.api.webhook_ops import WebhookOpsRoutes
    from processors.api.webhooks import WebhookRoutes
    from processors.partners.auth import PartnerKeys
    from processors.partners.registry import PartnerRegistry
    from processors.webhooks.app import WebhooksApp
    from processors.webhooks.attempts import AttemptsFeed, AttemptsView, Redeliverer

    assert isinstance(app, WebhooksApp)
    await app.start_store()
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
    try:
        partners_topic = catalogue_topic(catalogue, PARTNERS_TOPIC)
    except ConfigError:
        log.warning(
            "the topic catalogue has no %s topic: no partner registry, the webhook routes take "
            "the operator token only",
            PARTNERS_TOPIC,
        )
        return [
            WebhookRoutes(cast(SubscriptionStore, app.store), app.box, url_check),
            WebhookOpsRoutes(view, feed, redeliverer),
        ]
    if isinstance(app.partners, PartnerStore):
        # The app's own registry table: a grant changed here is what the next fan-out reads.
        store = app.partners
        partners = PartnerRoutes(PartnerRegistry(store), partner_keys=PartnerKeys(store))
    else:
        partners = PartnerRoutes.create(
            settings.bootstrap_servers, partners_topic, client_overrides=overrides
        )
    webhooks = WebhookRoutes(cast(SubscriptionStore, app.store), app.box, url_check, partners=partners.table)
    ops = WebhookOpsRoutes(view, feed, redeliverer)
    providers: list[RouteProvider] = [
        partners,  # first: started before, and stopped after, the routes that use its table
        webhooks,
        ops,
    ]
    graphql = _portal_graphql(settings, catalogue, app, partners, webhooks, ops)
    if graphql is not None:
        from processors.portal.page import PortalPage

        providers.append(graphql)  # last: started after, and stopped before, what it reads
        providers.append(PortalPage())  # the page at /portal (public, static; talks to /graphql)
    return providers


def _portal_graphql(
    settings: Settings,
    catalogue: Catalogue,
    app: WebhooksApp,
    partners: PartnerRoutes,
    webhooks: WebhookRoutes,
    ops: WebhookOpsRoutes,
) -> RouteProvider | None:
    """``/graphql``: the partner portal's API over the query store, the subscription service of
    the REST routes, the operator redelivery machinery and the live feed (no I/O here).

    Its parts start with the server, in this order, and stop in reverse: the query store
    (migrated), its projector, the live feed, the delivery service (test events, redelivery).
    Without the store's source topics in the catalogue there is no ``/graphql`` (logged).
    """
    from processors.portal.graphql.context import PortalServices
    from processors.portal.graphql.view import GraphqlRoutes, StoreParts
    from processors.portal.live import LiveFeed
    from processors.portal.metrics import PortalMetrics
    from processors.portal.projector import PortalTopics, Projector
    from processors.portal.queries import CursorCodec, PortalQueries
    from processors.portal.store import PortalStore
    from processors.webhooks.app import USER_AGENT
    from processors.webhooks.service import DeliveryService

    try:
        topics = PortalTopics.from_catalogue(catalogue)
    except ConfigError as exc:
        log.warning("no /graphql: the portal's query store has no source topic (%s)", exc)
        return None
    portal = settings.portal
    limits = portal.graphql
    kafka = KafkaClients(settings.bootstrap_servers, settings.client_overrides)
    store = PortalStore(portal.database_url, busy_timeout_s=portal.busy_timeout_s)
    secret = limits.cursor_secret
    queries = PortalQueries(
        store,
        threads=limits.query_threads,
        codec=CursorCodec(secret.get_secret_value().encode("utf-8") if secret is not None else None),
    )
    projector = Projector(kafka, topics, store, batch_size=portal.batch_size)
    registry_store = partners.registry.store
    live = LiveFeed(
        kafka,
        dispatch_topic=app.dispatch_topic,
        deliveries_topic=topics.deliveries,
        endpoints=app.store.table,
        partners=registry_store if isinstance(registry_store, PartnerStore) else None,
        settings=portal.live,
    )
    deliveries = DeliveryService.create(
        webhooks.service,
        ops,
        bootstrap_servers=settings.bootstrap_servers,
        client_overrides=settings.client_overrides,
    )
    breakers = app.breakers

    def breaker_state(endpoint_id: str) -> str:
        name = f"webhook:{endpoint_id}"  # the webhooks app's breaker of the endpoint
        return str(breakers.get(name).state) if name in breakers else "unknown"

    keys = partners.partner_keys
    if keys is None:  # pragma: no cover - PartnerRoutes always has keys with a registry
        return None
    services = PortalServices(
        queries=queries,
        partners=partners.table,
        keys=keys,
        endpoints=webhooks.service,
        deliveries=deliveries,
        live=live,
        audit=None,  # the two services record every change on integrations.audit themselves
        dispatch=ops.redeliverer,
        breaker_state=breaker_state,
        health_window_h=limits.health_window_h,
        user_agent=USER_AGENT,
        max_page_size=limits.max_page_size,
    )
    return GraphqlRoutes(
        services,
        limits,
        operator_token=settings.api.auth_token,
        parts=[StoreParts(store, queries), projector, live, deliveries],
        collectors=[PortalMetrics(projector)],
    )


def _webhook_topics(_settings: Settings, catalogue: Catalogue) -> tuple[str, ...]:
    topics = catalogue.app("webhooks")
    return (*topics.outputs, *topics.state)


register(
    AppSpec(
        "webhooks",
        "every subscribed event type → signed partner webhooks → delivery log",
        build=_build_webhooks,
        outputs=_webhook_topics,
        engine_settings=lambda s: s.webhooks.engine,
        routes=webhook_routes,
        production_problems=webhook_problems,
    )
)


# --- reinsurance: bordereaux, their delivery, regulatory day files ------------------------------


def _build_bordereaux_loop(settings: Settings, catalogue: Catalogue, codec: Codec) -> TransactionalLoop:
    from processors.bordereaux.topology import BordereauxTopics, build_loop
    from processors.bordereaux.treaties import load_treaty_book

    return build_loop(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_prefix + "bordereaux",
        instance_id=settings.bordereaux.instance_id,
        book=load_treaty_book(settings.bordereaux.treaties_file),
        codec=codec,
        topics=BordereauxTopics.from_catalogue(catalogue),
        client_overrides=settings.client_overrides,
        batch_size=settings.bordereaux.batch_size,
        idle_source_after_s=settings.bordereaux.idle_source_after_s or None,
    )


register(
    AppSpec(
        "bordereaux",
        "policy and claim events → premium and claims bordereaux, regulatory file jobs (exactly once)",
        build_loop=_build_bordereaux_loop,
    )
)


def _build_delivery(ctx: BuildContext) -> Processor:
    settings = ctx.settings
    return build_reinsurance_app(
        settings.reinsurance.model_copy(
            update={"deliveries_topic": catalogue_topic(ctx.catalogue, DELIVERIES_TOPIC)}
        ),
        ctx.topics("bordereaux-delivery"),
        resilience=ctx.resilience,
        breakers=ctx.breakers,
        resilience_enabled=settings.resilience_enabled,
        max_connections=settings.engine.max_concurrency,
        keep_key_order=ctx.keeps_key_order("bordereaux-delivery"),
        pending_reader=ctx.pending_reader("bordereaux-delivery"),
    )


register(
    AppSpec(
        "bordereaux-delivery",
        "bordereaux → each treaty's reinsurer → delivery results",
        build=_build_delivery,
        endpoints=lambda s: s.reinsurance.endpoints(),
        outputs=lambda _s, c: (catalogue_topic(c, DELIVERIES_TOPIC),),
        production_problems=_reinsurer_problems,
    )
)


def _build_regulatory(ctx: BuildContext) -> Processor:
    settings = ctx.settings
    return build_regulatory_app(
        settings.regulatory.model_copy(
            update={"reports_topic": catalogue_topic(ctx.catalogue, "regulatory.reports")}
        ),
        ctx.topics("regulatory"),
        ctx.codec,
        resilience=ctx.resilience,
        breakers=ctx.breakers,
        resilience_enabled=settings.resilience_enabled,
        keep_key_order=ctx.keeps_key_order("regulatory"),
        pending_reader=ctx.pending_reader("regulatory"),
    )


register(
    AppSpec(
        "regulatory",
        "regulatory file jobs → day files with manifest over SFTP → report results",
        build=_build_regulatory,
        endpoints=lambda _s: ("regulator-sftp",),
        outputs=lambda _s, c: (catalogue_topic(c, "regulatory.reports"),),
        production_problems=lambda s: _sandbox(
            s.regulatory.sftp.password, "regulatory.sftp.password (PROCESSORS_REGULATORY__SFTP__PASSWORD)"
        ),
    )
)
