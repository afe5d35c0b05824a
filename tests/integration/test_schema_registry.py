"""The codec against a Confluent-compatible Schema Registry served over real HTTP.

The registry is a small aiohttp server implementing the endpoints confluent-kafka's client
calls for us, with the registry's answers: ``POST /subjects/{s}/versions`` (register; ids
shared by identical schemas, 409 for incompatible and 422 for invalid schemas),
``POST /subjects/{s}`` (look up; 404 with ``error_code`` 40401 or 40403),
``GET /schemas/ids/{id}`` (404 with 40403), basic auth (401 with 40101), and statuses forced
by the test.  No Kafka broker is needed.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import fastavro
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from processors.contract import (
    EVENT_TYPES,
    Codec,
    ContentType,
    Event,
    SchemaRegistryClient,
    writer_schema_name,
)
from processors.contract.avro import local_schema_ids, writer_schema_text
from processors.contract.examples import example_event
from processors.contract.registry import SchemaNotRegistered, SchemaRegistrySettings
from processors.errors import ConfigError, DecodeError, Retriable
from processors.runner import make_codec
from processors.runtime.app import Emit, EventApp
from processors.runtime.failures import H
from processors.runtime.message import StaticMessage, header_value
from processors.settings import Settings
from processors.topics.catalogue import load_catalogue

REGISTRY_JSON = "application/vnd.schemaregistry.v1+json"
PASSWORD = "s3cret-pass"


@dataclass
class Registry:
    """State and behaviour of the test registry."""

    credentials: tuple[str, str] | None = None
    echo_credentials: bool = False  # a 401 that quotes the credentials it was sent
    schemas: dict[int, str] = field(default_factory=dict)
    ids_by_schema: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    answer_with: int | None = None  # force this HTTP status on every request
    answer_after_s: float = 0.0  # a slow registry: registering answers this late
    url: str = ""

    def _refusal(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.method, request.path))
        if self.answer_with is not None:
            return _error(self.answer_with, self.answer_with * 100 + 1, "forced by the test")
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            offered = request.headers.get("Authorization", "")
            if offered != expected:
                sent = base64.b64decode(offered[6:]).decode() if offered.startswith("Basic ") else ""
                return _error(
                    401, 40101, f"Unauthorized: {sent}" if self.echo_credentials else "Unauthorized"
                )
        return None

    async def _schema(self, request: web.Request) -> tuple[str, dict[str, Any], str] | web.Response:
        """(canonical form, parsed schema, text) of the request's schema, or the registry's 4xx."""
        if request.content_type != REGISTRY_JSON:
            return _error(415, 415, f"unsupported media type {request.content_type}")
        body = await request.json()
        if body.get("schemaType", "AVRO") != "AVRO" or body.get("references"):
            return _error(422, 42201, "Invalid schema: only self-contained Avro")
        try:
            parsed = json.loads(body["schema"])
            fastavro.parse_schema(parsed, named_schemas={})
        except (KeyError, TypeError, ValueError, fastavro.schema.SchemaParseException):
            return _error(422, 42201, "Invalid schema")
        return json.dumps(parsed, sort_keys=True), parsed, body["schema"]

    def add(self, subject: str, schema: str, schema_id: int | None = None) -> int:
        """Register ``schema`` under ``subject`` (the registry's own bookkeeping)."""
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        if schema_id is not None:
            self.ids_by_schema[canonical] = schema_id
        schema_id = self.ids_by_schema.setdefault(canonical, len(self.ids_by_schema) + 1)
        self.schemas.setdefault(schema_id, schema)
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    async def register(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.answer_after_s)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        found = await self._schema(request)
        if isinstance(found, web.Response):
            return found
        _, parsed, text = found
        if parsed.get("doc") == "incompatible":
            return _error(409, 409, "Schema being registered is incompatible with an earlier schema")
        schema_id = self.add(request.match_info["subject"], text)
        return web.json_response({"id": schema_id}, content_type=REGISTRY_JSON)

    async def lookup(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        found = await self._schema(request)
        if isinstance(found, web.Response):
            return found
        canonical, _, _ = found
        subject = request.match_info["subject"]
        versions = self.subjects.get(subject)
        if versions is None:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        schema_id = self.ids_by_schema.get(canonical)
        if schema_id not in versions:
            return _error(404, 40403, "Schema not found")
        answer = {
            "subject": subject,
            "id": schema_id,
            "version": versions.index(schema_id) + 1,
            "schema": self.schemas[schema_id],
        }
        return web.json_response(answer, content_type=REGISTRY_JSON)

    async def schema_by_id(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        schema = self.schemas.get(int(request.match_info["id"]))
        if schema is None:
            return _error(404, 40403, "Schema not found")
        return web.json_response({"schema": schema}, content_type=REGISTRY_JSON)

    def client(self, **kwargs: Any) -> SchemaRegistryClient:
        return SchemaRegistryClient(self.url, **kwargs)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"error_code": code, "message": message}, status=status, content_type=REGISTRY_JSON
    )


@pytest.fixture
async def start_registry() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(*, ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> Registry:
        registry = Registry(**kwargs)
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", registry.register)
        app.router.add_post("/subjects/{subject}", registry.lookup)
        app.router.add_get("/schemas/ids/{id:[0-9]+}", registry.schema_by_id)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        registry.url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        return registry

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def registry(start_registry: Callable[..., Any]) -> Registry:
    started = await start_registry()
    assert isinstance(started, Registry)
    return started


# -- auto-register mode --------------------------------------------------------------------


async def test_encode_registers_and_decode_resolves_through_the_registry(registry: Registry) -> None:
    event = example_event("premium.due")
    with registry.client() as producer_side, registry.client() as consumer_side:
        producer = Codec(producer_side)
        value, headers = await asyncio.to_thread(producer.encode, event)
        subject = writer_schema_name("premium.due")
        assert registry.requests == [("POST", f"/subjects/{subject}/versions")]
        assert registry.subjects == {subject: [1]}
        assert json.loads(registry.schemas[1]) == json.loads(writer_schema_text("premium.due"))
        assert value[0] == 0
        assert int.from_bytes(value[1:5], "big") == 1  # the registry's id, not ids.json's
        assert local_schema_ids()[subject] != 1

        consumer = Codec(consumer_side)
        for _ in range(3):
            decoded = await asyncio.to_thread(consumer.decode, value, headers)
            assert decoded == event
        assert registry.requests[1:] == [("GET", "/schemas/ids/1")]  # fetched once, then cached

        for _ in range(3):
            await asyncio.to_thread(producer.encode, example_event("premium.due"))
        assert len(registry.requests) == 2  # registered once


async def test_every_event_type_round_trips_through_the_registry(registry: Registry) -> None:
    with registry.client() as client:
        ids = await asyncio.to_thread(client.register_all)
        assert set(ids) == {writer_schema_name(t) for t in EVENT_TYPES}
        assert len(set(ids.values())) == len(EVENT_TYPES)
        assert set(registry.subjects) == set(ids)
        posts = len(registry.requests)
        codec = Codec(client)
        for event_type in EVENT_TYPES:
            event = example_event(event_type)
            value, headers = await asyncio.to_thread(codec.encode, event, ContentType.AVRO)
            assert int.from_bytes(value[1:5], "big") == ids[writer_schema_name(event_type)]
            assert await asyncio.to_thread(codec.decode, value, headers) == event
        assert len(registry.requests) == posts  # everything came from the client's cache


async def test_the_client_caches_every_answer_without_the_codec(registry: Registry) -> None:
    subject, schema = writer_schema_name("claim.paid"), writer_schema_text("claim.paid")
    with registry.client() as writer, registry.client(read_only=True) as reader:
        first = await asyncio.to_thread(writer.id_for, subject, schema)
        assert await asyncio.to_thread(writer.id_for, subject, schema) == first
        assert registry.requests == [("POST", f"/subjects/{subject}/versions")]

        assert await asyncio.to_thread(reader.id_for, subject, schema) == first
        assert await asyncio.to_thread(reader.id_for, subject, schema) == first
        assert registry.requests[1:] == [("POST", f"/subjects/{subject}")]

        assert await asyncio.to_thread(reader.schema_for, first) == schema
        assert await asyncio.to_thread(reader.schema_for, first) == schema
        assert registry.requests[2:] == [("GET", f"/schemas/ids/{first}")]
    with registry.client(read_only=True) as reader:  # a new client starts with an empty cache
        await asyncio.to_thread(reader.schema_for, first)
        assert registry.requests[3:] == [("GET", f"/schemas/ids/{first}")]


async def test_an_id_the_registry_does_not_know(registry: Registry) -> None:
    with registry.client() as client:
        codec = Codec(client)
        value, headers = Codec().encode(example_event("claim.paid"))
        framed = b"\x00" + (77).to_bytes(4, "big") + value[5:]
        with pytest.raises(DecodeError) as exc:
            await asyncio.to_thread(codec.decode, framed, headers)
        assert exc.value.reason == "unknown schema id 77"
        assert registry.requests == [("GET", "/schemas/ids/77")]


async def test_an_id_registered_by_someone_else_decodes(registry: Registry) -> None:
    """Another producer registered the writer schema (with its own tooling, over HTTP): a
    read-only consumer that never saw it resolves the id and decodes."""
    subject = writer_schema_name("policy.issued")
    async with (
        aiohttp.ClientSession() as other_team,
        other_team.post(
            f"{registry.url}/subjects/{subject}/versions",
            json={"schema": writer_schema_text("policy.issued")},
            headers={"Content-Type": REGISTRY_JSON},
        ) as answer,
    ):
        assert answer.status == 200
        schema_id = (await answer.json(content_type=None))["id"]
    event = example_event("policy.issued")
    body, headers = Codec().encode(event)
    framed = b"\x00" + schema_id.to_bytes(4, "big") + body[5:]
    registry.requests.clear()
    with registry.client(read_only=True) as client:
        codec = Codec(client)
        assert await asyncio.to_thread(codec.decode, framed, headers) == event
        assert await asyncio.to_thread(codec.decode, framed, headers) == event
    assert registry.requests == [("GET", f"/schemas/ids/{schema_id}")]


# -- read-only mode ------------------------------------------------------------------------


async def test_read_only_refuses_an_unregistered_schema_naming_its_subject(registry: Registry) -> None:
    subject = writer_schema_name("premium.due")
    with registry.client(read_only=True) as client:
        with pytest.raises(SchemaNotRegistered) as refused:
            await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
        assert isinstance(refused.value, ConfigError)
        assert not isinstance(refused.value, Retriable)
        assert refused.value.subject == subject
        assert f"subject {subject} is not registered" in str(refused.value)
        with pytest.raises(SchemaNotRegistered, match=subject):  # the runner's start-up step
            await asyncio.to_thread(Codec(client).prepare, ["premium.due"])
    assert registry.subjects == {}  # nothing was registered
    assert registry.requests == [("POST", f"/subjects/{subject}")] * 2


async def test_read_only_refuses_a_writer_schema_its_subject_does_not_have(registry: Registry) -> None:
    subject = writer_schema_name("premium.due")
    older = json.loads(writer_schema_text("premium.due"))
    older["doc"] = "an earlier version"
    registry.add(subject, json.dumps(older))
    with registry.client(read_only=True) as client, pytest.raises(SchemaNotRegistered) as refused:
        await asyncio.to_thread(client.id_for, subject, writer_schema_text("premium.due"))
    assert f"subject {subject} has no version equal to this processor's writer schema" in str(refused.value)
    assert registry.subjects == {subject: [1]}


async def test_register_all_is_the_explicit_act_that_works_in_read_only_mode(registry: Registry) -> None:
    with registry.client(read_only=True) as operator:
        ids = await asyncio.to_thread(operator.register_all)
    assert set(registry.subjects) == set(ids)
    assert {method for method, _ in registry.requests} == {"POST"}
    assert all(path.endswith("/versions") for _, path in registry.requests)
    registry.requests.clear()
    with registry.client(read_only=True) as producer_side:
        codec = Codec(producer_side)
        await asyncio.to_thread(codec.prepare)
        value, _ = await asyncio.to_thread(codec.encode, example_event("kyc.approved"))
    assert int.from_bytes(value[1:5], "big") == ids[writer_schema_name("kyc.approved")]
    # one look-up per subject, nothing registered
    assert sorted(registry.requests) == sorted(("POST", f"/subjects/{subject}") for subject in ids)


class _ResultsApp(EventApp):
    """An app whose output is a payment result: its output schema goes through the registry."""

    name: ClassVar[str] = "payments"
    handles: ClassVar[frozenset[str]] = frozenset({"premium.due"})

    async def handle(self, item: Event) -> Sequence[Emit]:
        return [("integrations.payment.results", example_event("payment.completed"))]


async def _process_in_a_thread(app: EventApp, msg: StaticMessage) -> object:
    """``app.process(msg)`` on a loop of its own: the codec's registry calls block their thread,
    and this test's registry answers on the test's loop."""
    return await asyncio.to_thread(asyncio.run, app.process(msg))


async def test_a_record_whose_output_schema_is_not_registered_goes_to_the_dead_letter_topic(
    registry: Registry,
) -> None:
    """Mid-stream (the codec was not prepared at start-up), the refusal is not retried and the
    input record moves to the DLQ with the subject in its headers: never dropped."""
    incoming = example_event("premium.due")
    value, headers = Codec().encode(incoming, ContentType.JSON)
    msg = StaticMessage("insurance.billing.events", 0, 5, incoming.subject.encode(), value, tuple(headers))
    topics = dataclasses.replace(load_catalogue(None).app("payments"), dedupe=None)
    with registry.client(read_only=True) as client:
        app = _ResultsApp(codec=Codec(client), topics=topics)
        with pytest.raises(SchemaNotRegistered) as refused:
            await _process_in_a_thread(app, msg)
        (dead,) = app.failure(msg, refused.value, group="integrations.payments")
    assert dead.topic == topics.dlq
    assert dead.value == value
    assert header_value(dead.headers, H.ERROR_CLASS) == "SchemaNotRegistered"
    reason = header_value(dead.headers, H.ERROR_MESSAGE) or ""
    assert "subject insurance.events.PaymentCompletedEvent is not registered" in reason

    registry.answer_with = 503  # an outage is retried: the record goes to the first retry tier
    with registry.client(read_only=True) as client:
        app = _ResultsApp(codec=Codec(client), topics=topics)
        with pytest.raises(Retriable) as outage:
            await _process_in_a_thread(app, msg)
        (moved,) = app.failure(msg, outage.value, group="integrations.payments")
    assert moved.topic == topics.retry_tiers[0].topic


# -- credentials, TLS, failures --------------------------------------------------------------


async def test_basic_auth(start_registry: Callable[..., Any]) -> None:
    registry = await start_registry(credentials=("svc-processors", PASSWORD))
    event = example_event("customer.created")
    with registry.client(basic_auth=("svc-processors", SecretStr(PASSWORD))) as client:
        codec = Codec(client)
        value, headers = await asyncio.to_thread(codec.encode, event)
        assert await asyncio.to_thread(Codec(client).decode, value, headers) == event
        assert PASSWORD not in repr(client)
        assert PASSWORD not in repr(codec)


@pytest.mark.parametrize("read_only", [False, True])
async def test_refused_credentials_are_a_config_error_that_never_shows_the_password(
    start_registry: Callable[..., Any], read_only: bool
) -> None:
    wrong = "wrong-but-still-secret"
    registry = await start_registry(credentials=("svc-processors", PASSWORD), echo_credentials=True)
    with registry.client(basic_auth=("svc-processors", SecretStr(wrong)), read_only=read_only) as client:
        with pytest.raises(ConfigError, match=r"refused the credentials \(HTTP 401") as refused:
            await asyncio.to_thread(Codec(client).encode, example_event("customer.created"))
        value, headers = Codec().encode(example_event("customer.created"))
        with pytest.raises(ConfigError, match=r"refused the credentials \(HTTP 401"):
            await asyncio.to_thread(Codec(client).decode, value, headers)
        assert wrong not in repr(client)
    assert registry.requests  # the registry was asked (and quoted the password back)
    assert wrong not in str(refused.value)
    logged = "".join(traceback.format_exception(refused.value))  # what a log line would show
    assert "refused the credentials" in logged
    assert wrong not in logged


async def test_the_registry_settings_build_the_client(start_registry: Callable[..., Any]) -> None:
    registry = await start_registry(credentials=("svc-processors", PASSWORD))
    subject = writer_schema_name("refund.requested")
    for env, configured, read_only in [
        ("production", None, True),
        ("development", None, False),
        ("production", False, False),
        ("development", True, True),
    ]:
        settings = Settings(
            env=env,
            schema_registry_url=registry.url,
            schema_registry=SchemaRegistrySettings(
                user="svc-processors", password=SecretStr(PASSWORD), read_only=configured
            ),
        )
        mode = ", read_only=True" if read_only else ""
        assert repr(make_codec(settings)) == (
            f"Codec(SchemaRegistryClient({registry.url!r}, user='svc-processors'{mode}))"
        )
        registry.requests.clear()
        registry.subjects.clear()
        with SchemaRegistryClient.from_settings(registry.url, settings.schema_registry, env=env) as client:
            if read_only:
                with pytest.raises(SchemaNotRegistered):
                    await asyncio.to_thread(Codec(client).prepare, ["refund.requested"])
                assert registry.requests == [("POST", f"/subjects/{subject}")]
            else:
                await asyncio.to_thread(Codec(client).prepare, ["refund.requested"])
                assert registry.requests == [("POST", f"/subjects/{subject}/versions")]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "registry.crt", tmp_path / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_is_verified_against_the_configured_ca_file(
    start_registry: Callable[..., Any], tmp_path: Path
) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    registry = await start_registry(ssl_context=server_ctx)
    event = example_event("claim.reported")
    with registry.client(ca_file=cert_path) as client:
        value, headers = await asyncio.to_thread(Codec(client).encode, event)
        assert await asyncio.to_thread(Codec(client).decode, value, headers) == event
    registry.requests.clear()
    with registry.client() as client, pytest.raises(Retriable, match="schema registry unreachable"):
        # without the CA file the certificate is not trusted: no answer was read
        await asyncio.to_thread(Codec(client).encode, event)
    assert registry.requests == []


async def test_incompatible_schema_is_a_config_error(registry: Registry) -> None:
    with registry.client() as client:
        schema = json.loads(writer_schema_text("premium.due"))
        schema["doc"] = "incompatible"
        with pytest.raises(ConfigError) as exc:
            await asyncio.to_thread(client.id_for, writer_schema_name("premium.due"), json.dumps(schema))
        assert "incompatible with its registered versions" in str(exc.value)
        with pytest.raises(ConfigError, match=r"refused insurance\.events\.PremiumDueEvent as invalid"):
            await asyncio.to_thread(client.id_for, writer_schema_name("premium.due"), "{not avro")


@pytest.mark.parametrize("status", [500, 503, 429, 408])
@pytest.mark.parametrize("read_only", [False, True])
async def test_a_failing_registry_is_retriable(registry: Registry, status: int, read_only: bool) -> None:
    registry.answer_with = status
    with registry.client(read_only=read_only) as client:
        with pytest.raises(Retriable, match=f"HTTP {status}"):
            await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
        value, headers = Codec().encode(example_event("premium.due"))
        with pytest.raises(Retriable):
            await asyncio.to_thread(Codec(client).decode, value, headers)
    assert len(registry.requests) == 2  # one request each: no retries inside the client
    registry.answer_with = None
    with registry.client() as client:  # and it recovers once the registry does
        value, headers = await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
        assert value[0] == 0


@pytest.mark.parametrize("status", [400, 404, 405, 302])
async def test_other_answers_are_config_errors(registry: Registry, status: int) -> None:
    registry.answer_with = status
    with registry.client() as client, pytest.raises(ConfigError, match=f"HTTP {status}"):
        await asyncio.to_thread(
            client.id_for, writer_schema_name("premium.due"), writer_schema_text("premium.due")
        )


async def test_an_unreachable_registry_is_retriable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for read_only in (False, True):
        with (
            SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout_s=2.0, read_only=read_only) as client,
            pytest.raises(Retriable, match="schema registry unreachable"),
        ):
            await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))


async def test_a_slow_registry_times_out_as_retriable(registry: Registry) -> None:
    registry.answer_after_s = 1.0
    with (
        registry.client(timeout_s=0.2) as client,
        pytest.raises(Retriable, match=r"schema registry timed out after 0\.2 s \(registering"),
    ):
        await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))


async def test_the_next_url_is_tried_when_one_is_unreachable(registry: Registry) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SchemaRegistryClient(f"http://127.0.0.1:{port}, {registry.url}") as client:
        value, _ = await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
    assert int.from_bytes(value[1:5], "big") == 1
    assert registry.requests == [("POST", f"/subjects/{writer_schema_name('premium.due')}/versions")]


def test_client_configuration_is_checked_without_network(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute http"):
        SchemaRegistryClient("registry:8081")
    with pytest.raises(ConfigError, match="absolute http"):
        SchemaRegistryClient("http://registry:8081,")
    with pytest.raises(ConfigError, match="must not embed credentials"):
        SchemaRegistryClient("http://user:pw@registry:8081")
    with pytest.raises(ConfigError, match="timeout_s"):
        SchemaRegistryClient("http://registry:8081", timeout_s=0)
    with pytest.raises(ConfigError, match="contain no ':'"):
        SchemaRegistryClient("http://registry:8081", basic_auth=("a:b", SecretStr("p")))
    with pytest.raises(ConfigError, match="not configured: FileNotFoundError"):
        SchemaRegistryClient("https://registry:8081", ca_file=tmp_path / "missing.pem")
    client = SchemaRegistryClient("http://registry.invalid:8081", basic_auth=("u", SecretStr("p")))
    assert repr(client) == "SchemaRegistryClient('http://registry.invalid:8081', user='u')"
    client.close()
    client = SchemaRegistryClient("http://a.invalid:8081/, http://b.invalid:8081", read_only=True)
    assert (
        repr(client) == "SchemaRegistryClient('http://a.invalid:8081,http://b.invalid:8081', read_only=True)"
    )
    client.close()


def test_registry_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSORS_SCHEMA_REGISTRY_URL", "https://registry.example:8081")
    monkeypatch.setenv("PROCESSORS_SCHEMA_REGISTRY__USER", "svc-processors")
    monkeypatch.setenv("PROCESSORS_SCHEMA_REGISTRY__PASSWORD", PASSWORD)
    settings = Settings()
    assert settings.schema_registry_url == "https://registry.example:8081"
    assert settings.schema_registry.user == "svc-processors"
    assert settings.schema_registry.read_only is None
    assert settings.schema_registry.read_only_in("production") is True
    assert settings.schema_registry.read_only_in("development") is False
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in settings.model_dump_json()
    monkeypatch.setenv("PROCESSORS_SCHEMA_REGISTRY__READ_ONLY", "false")
    assert Settings().schema_registry.read_only_in("production") is False
    monkeypatch.delenv("PROCESSORS_SCHEMA_REGISTRY__PASSWORD")
    with pytest.raises(ValueError, match="user and password are set together"):
        Settings()


async def test_the_register_command_registers_every_writer_schema_in_production(
    start_registry: Callable[..., Any],
) -> None:
    registry = await start_registry(credentials=("svc-registry", "s3cret-registry-password"))
    env = {
        **os.environ,
        "PROCESSORS_ENV": "production",  # read-only by default: registering is still allowed
        "PROCESSORS_SCHEMA_REGISTRY_URL": registry.url,
        "PROCESSORS_SCHEMA_REGISTRY__USER": "svc-registry",
        "PROCESSORS_SCHEMA_REGISTRY__PASSWORD": "s3cret-registry-password",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processors.cli", "schemas", "register",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    printed = dict(line.split("\t") for line in out.decode().splitlines())
    assert set(printed) == set(registry.subjects)
    assert {int(v) for v in printed.values()} == {ids[0] for ids in registry.subjects.values()}
    assert "s3cret" not in out.decode() + err.decode()


async def test_the_register_command_without_a_registry_names_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSORS_SCHEMA_REGISTRY")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processors.cli", "schemas", "register",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode != 0
    assert "PROCESSORS_SCHEMA_REGISTRY_URL" in err.decode()
