"""Build the apps named on the command line and run them, each in its own consumer group.

With ``api.enabled`` the HTTP API (:mod:`processors.api`: inbound webhooks, health, status,
metrics) runs alongside the engines and reads their stats and the shared breaker registry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka.admin import AdminClient

from processors.api.health import EngineView, LoopView
from processors.api.server import ApiServer, RejectHook, RouteProvider
from processors.apps.registry import BuildContext, app_spec
from processors.apps.registry import app_names as app_names_known
from processors.contract import Codec, LocalSchemaIds, SchemaRegistryClient
from processors.errors import ConfigError
from processors.kafka import KafkaClients
from processors.observability.audit import KafkaAuditSink, configure_audit_sink
from processors.production import check_production
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import load_resilience
from processors.runtime.collector import collector_tuned
from processors.runtime.engine import Engine, EngineSettings
from processors.runtime.producer import AsyncProducer, TransactionalProducer
from processors.settings import Settings
from processors.streams import TransactionalLoop
from processors.topics.catalogue import AppTopics, Catalogue, load_catalogue

__all__ = ["Runner", "check_exactly_once", "kafka_clients", "make_codec"]


def check_exactly_once(topics: AppTopics) -> None:
    """Refuse ``engine.exactly_once`` for an app that keeps no answered ids: without them, a
    record whose outputs committed before its offset would be answered again after a crash."""
    if topics.dedupe is None:
        raise ConfigError(
            f"app {topics.name}: engine.exactly_once (PROCESSORS_ENGINE__EXACTLY_ONCE) needs the "
            "app's answered event ids: add dedupe: {window: 24h} under the app in topics.yaml"
        )


log = logging.getLogger(__name__)


def output_producer_config(kafka: KafkaClients, engine: EngineSettings, max_bytes: int) -> dict[str, Any]:
    """The configuration of an at-least-once app's output producer: the engine's ``linger_ms``
    unless the operator's client overrides set the producer's linger."""
    return kafka.producer(max_message_bytes=max_bytes, default_linger_ms=engine.linger_ms)


def make_codec(settings: Settings) -> Codec:
    if settings.schema_registry_url:
        registry = SchemaRegistryClient.from_settings(
            settings.schema_registry_url, settings.schema_registry, env=settings.env
        )
        return Codec(registry)
    return Codec(LocalSchemaIds())


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
            raise ConfigError("no app to run; known apps: " + ", ".join(app_names_known()))
        unknown = [n for n in app_names if n not in app_names_known()]
        if unknown:
            raise ConfigError(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(app_names_known())}")
        self.settings = settings
        self.app_names = list(dict.fromkeys(app_names))
        check_production(settings, self.app_names, api=settings.api.enabled)
        self.catalogue = catalogue or load_catalogue(settings.topics_file)
        self.engines: list[Engine] = []
        self.breakers: BreakerRegistry | None = None
        self.api: ApiServer | None = None
        """The HTTP API (``settings.api.enabled``), set once it listens."""
        self.on_inbound_rejected = on_inbound_rejected
        self._producers: list[AsyncProducer] = []
        self.loops: list[TransactionalLoop] = []
        self._audit_producer: AsyncProducer | None = None
        """The exactly-once apps' loops, once built."""

    async def check_topics(self) -> None:
        """Refuse to start when a topic the apps use is missing, or key order cannot hold."""
        needed: set[str] = set()
        for name in self.app_names:
            spec = app_spec(name)
            if spec.transactional:
                continue  # checked by the loop's own builder, with its internal topics
            topics = self.catalogue.app(name)
            needed.update(topics.sources)
            needed.update(topics.failure_topics)
            if topics.dedupe is not None:
                needed.add(topics.dedupe)
            needed.update(spec.outputs(self.settings, self.catalogue))
        audit = self.audit_topic()
        if audit is not None:
            needed.add(audit)
        admin = AdminClient(kafka_clients(self.settings).admin())
        loop = asyncio.get_running_loop()
        try:
            metadata = await loop.run_in_executor(None, lambda: admin.list_topics(timeout=15))
        except Exception as exc:
            raise ConfigError(f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        missing = sorted(needed - set(metadata.topics))
        if missing:
            raise ConfigError(f"missing topic(s): {', '.join(missing)}; run `processors topics apply` first")

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
        # The apps' long-lived state would be walked over and over by CPython's default
        # collector thresholds (see processors.runtime.collector).
        with collector_tuned():
            await self._run(stop, on_ready=on_ready)

    async def _run(self, stop: asyncio.Event, *, on_ready: Callable[[], None] | None) -> None:
        await self.check_topics()
        codec = make_codec(self.settings)
        resilience = load_resilience(self.settings.resilience_file)
        self.breakers = resilience.breakers()
        loop = asyncio.get_running_loop()
        # Register / look up every schema id now, not on the first record.
        await loop.run_in_executor(None, codec.prepare)
        context = BuildContext(self.settings, self.catalogue, codec, resilience, self.breakers)
        for name in self.app_names:
            spec = app_spec(name)
            if spec.build is None:
                continue
            app = spec.build(context)
            kafka = kafka_clients(self.settings)
            engine_settings = spec.engine_settings(self.settings)
            # The producer takes the largest record any topic the app writes accepts (topics.yaml).
            max_bytes = max(
                self.catalogue.largest_record_written(name), getattr(app, "max_message_bytes", 0) or 0
            )
            producer: AsyncProducer
            if engine_settings.exactly_once:
                check_exactly_once(self.catalogue.app(name))
                instance = engine_settings.instance_id or socket.gethostname()
                tid = f"{self.settings.group_prefix}{name}.{instance}"
                producer = TransactionalProducer(kafka.transactional(tid, max_message_bytes=max_bytes))
            else:
                producer = AsyncProducer(output_producer_config(kafka, engine_settings, max_bytes))
            await producer.start()
            self._producers.append(producer)
            if self._audit_producer is None:
                # Audit records are never part of a transaction: the calls they record happened.
                audit = producer
                if isinstance(producer, TransactionalProducer):
                    audit = AsyncProducer(kafka.producer())
                    await audit.start()
                    self._producers.append(audit)
                self._audit_producer = audit
                self._start_audit(audit)
            router = getattr(app, "router", None)
            # The ordering gate needs source partition n and retry partition n together.
            key_ordered = router is not None and router.keep_key_order
            conf = kafka.group_consumer(self.settings.group_prefix + name, key_ordered=key_ordered)
            self.engines.append(Engine(app, consumer_conf=conf, producer=producer, settings=engine_settings))
        tasks = [
            asyncio.create_task(engine.run(), name=f"engine-{engine.processor.name}")
            for engine in self.engines
        ]
        loop_stop = threading.Event()
        for name in self.app_names:
            build_loop = app_spec(name).build_loop
            if build_loop is None:
                continue
            built = await loop.run_in_executor(None, build_loop, self.settings, self.catalogue, codec)
            self.loops.append(built)
            tasks.append(asyncio.create_task(asyncio.to_thread(built.run, loop_stop), name=f"loop-{name}"))
        stopper = asyncio.create_task(stop.wait())
        try:
            if self.settings.api.enabled:
                extra_routes: list[RouteProvider] = []
                for engine in self.engines:
                    routes = app_spec(engine.processor.name).routes
                    if routes is not None:
                        extra_routes.extend(await routes(self.settings, self.catalogue, engine.processor))
                views: list[EngineView] = list(self.engines)
                views.extend(LoopView(built) for built in self.loops)
                api = ApiServer(
                    self.settings,
                    engines=views,
                    breakers=self.breakers,
                    app_endpoints={name: app_spec(name).endpoints(self.settings) for name in self.app_names},
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
