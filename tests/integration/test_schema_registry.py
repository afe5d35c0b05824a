"""The codec against a Confluent-compatible Schema Registry served over real HTTP.

The registry is a small aiohttp server implementing the two endpoints the client uses,
with the registry's answers (ids shared by identical schemas, 404 with ``error_code`` for
unknown ids, 409 for incompatible schemas, basic auth).  No Kafka broker is needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
import pytest
from aiohttp import web
from pydantic import SecretStr

from processors.contract import EVENT_TYPES, Codec, ContentType, SchemaRegistryClient, writer_schema_name
from processors.contract.avro import local_schema_ids, writer_schema_text
from processors.contract.examples import example_event
from processors.errors import ConfigError, DecodeError, Retriable

REGISTRY_JSON = "application/vnd.schemaregistry.v1+json"


@dataclass
class Registry:
    """State and behaviour of the test registry."""

    credentials: tuple[str, str] | None = None
    schemas: dict[int, str] = field(default_factory=dict)
    ids_by_schema: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    answer_with: int | None = None  # force this HTTP status on every request
    url: str = ""

    def _refusal(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.method, request.path))
        if self.answer_with is not None:
            return _error(self.answer_with, self.answer_with * 100 + 1, "forced by the test")
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return _error(401, 40101, "Unauthorized")
        return None

    async def register(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.content_type != REGISTRY_JSON:
            return _error(415, 415, f"unsupported media type {request.content_type}")
        body = await request.json()
        subject = request.match_info["subject"]
        try:
            parsed = json.loads(body["schema"])
            fastavro.parse_schema(parsed, named_schemas={})
        except (KeyError, ValueError, fastavro.schema.SchemaParseException):
            return _error(422, 42201, "Invalid schema")
        if parsed.get("doc") == "incompatible":
            return _error(409, 409, "Schema being registered is incompatible with an earlier schema")
        canonical = json.dumps(parsed, sort_keys=True)
        schema_id = self.ids_by_schema.setdefault(canonical, len(self.ids_by_schema) + 1)
        self.schemas[schema_id] = body["schema"]
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return web.json_response({"id": schema_id}, content_type=REGISTRY_JSON)

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

    async def start(**kwargs: Any) -> Registry:
        registry = Registry(**kwargs)
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", registry.register)
        app.router.add_get("/schemas/ids/{id:[0-9]+}", registry.schema_by_id)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        registry.url = f"http://{host}:{port}"
        return registry

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def registry(start_registry: Callable[..., Any]) -> Registry:
    started = await start_registry()
    assert isinstance(started, Registry)
    return started


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


async def test_an_id_the_registry_does_not_know(registry: Registry) -> None:
    with registry.client() as client:
        codec = Codec(client)
        value, headers = Codec().encode(example_event("claim.paid"))
        framed = b"\x00" + (77).to_bytes(4, "big") + value[5:]
        with pytest.raises(DecodeError) as exc:
            await asyncio.to_thread(codec.decode, framed, headers)
        assert exc.value.reason == "unknown schema id 77"
        assert registry.requests == [("GET", "/schemas/ids/77")]


async def test_basic_auth(start_registry: Callable[..., Any]) -> None:
    registry = await start_registry(credentials=("svc-processors", "s3cret-pass"))
    event = example_event("customer.created")
    with registry.client(basic_auth=("svc-processors", SecretStr("wrong"))) as client:
        with pytest.raises(ConfigError, match=r"refused the credentials \(HTTP 401\)"):
            await asyncio.to_thread(Codec(client).encode, event)
        assert "wrong" not in repr(client)
    with registry.client(basic_auth=("svc-processors", SecretStr("s3cret-pass"))) as client:
        codec = Codec(client)
        value, headers = await asyncio.to_thread(codec.encode, event)
        assert await asyncio.to_thread(Codec(client).decode, value, headers) == event
        assert "s3cret-pass" not in repr(client)
        assert "s3cret-pass" not in repr(codec)


async def test_incompatible_schema_is_a_config_error(registry: Registry) -> None:
    with registry.client() as client:
        schema = json.loads(writer_schema_text("premium.due"))
        schema["doc"] = "incompatible"
        with pytest.raises(ConfigError) as exc:
            await asyncio.to_thread(client.id_for, writer_schema_name("premium.due"), json.dumps(schema))
        assert "incompatible with its registered versions" in str(exc.value)
        with pytest.raises(ConfigError, match=r"refused insurance\.events\.PremiumDueEvent as invalid"):
            await asyncio.to_thread(client.id_for, writer_schema_name("premium.due"), "{not avro")


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_failing_registry_is_retriable(registry: Registry, status: int) -> None:
    registry.answer_with = status
    with registry.client() as client:
        with pytest.raises(Retriable, match=f"HTTP {status}"):
            await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
        value, headers = Codec().encode(example_event("premium.due"))
        with pytest.raises(Retriable):
            await asyncio.to_thread(Codec(client).decode, value, headers)
    registry.answer_with = None
    with registry.client() as client:  # and it recovers once the registry does
        value, headers = await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))
        assert value[0] == 0


async def test_an_unreachable_registry_is_retriable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout_s=2.0) as client,
        pytest.raises(Retriable, match="schema registry unreachable"),
    ):
        await asyncio.to_thread(Codec(client).encode, example_event("premium.due"))


def test_client_configuration_is_checked_without_network() -> None:
    with pytest.raises(ConfigError, match="absolute http"):
        SchemaRegistryClient("registry:8081")
    with pytest.raises(ConfigError, match="must not embed credentials"):
        SchemaRegistryClient("http://user:pw@registry:8081")
    with pytest.raises(ConfigError, match="timeout_s"):
        SchemaRegistryClient("http://registry:8081", timeout_s=0)
    client = SchemaRegistryClient("http://registry.invalid:8081", basic_auth=("u", SecretStr("p")))
    assert repr(client) == "SchemaRegistryClient('http://registry.invalid:8081', user='u')"
    client.close()
