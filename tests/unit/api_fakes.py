"""In-memory stand-ins for the API's stores and clock, and an API server over them on real HTTP.

The unit tests of the webhook and partner routes, of the endpoint service and of partner keys
share these: the subscription and partner stores keep their tables in memory (``records`` are
what their compacted topics would hold), a clock the test moves by hand, and an
:class:`~processors.api.server.ApiServer` on an ephemeral port that produces nothing.

A test module uses the fixtures here by importing them by name
(``from tests.unit.api_fakes import clock as clock``); :func:`server` runs what the module's
own ``make_server`` fixture makes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import aiohttp
import pytest

from processors.api.health import BrokerProbe
from processors.api.server import ApiServer
from processors.errors import BrokerError
from processors.partners.model import RegistryEntry
from processors.partners.table import PartnerTable
from processors.runtime.message import OutRecord
from processors.runtime.producer import AsyncProducer
from processors.settings import load_settings
from processors.webhooks.secrets import SecretBox
from processors.webhooks.subscriptions import Subscription, SubscriptionTable

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The time the code under test reads: :data:`NOW` until a test sets ``now``."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class _Table(Protocol):
    def apply(self, key: bytes | None, value: bytes | None) -> bool: ...


TableT = TypeVar("TableT", bound=_Table)


class _InMemoryStore(Generic[TableT]):
    """A compacted-topic store in memory: ``records`` are what its topic would hold, ``table`` the
    state they make.  A test sets ``fail`` or ``catch_up_fail`` to have writes or catch-ups fail."""

    def __init__(self, table: TableT) -> None:
        self._table = table
        self.records: list[tuple[str, bytes | None]] = []
        self.fail: BrokerError | None = None
        self.catch_up_fail: BrokerError | None = None
        self.catch_ups = 0
        self.started = self.stopped = False

    @property
    def table(self) -> TableT:
        return self._table

    def _write(self, key: str, record: bytes | None) -> bool:
        """Appends the record and applies it to the table (False when the table skipped it)."""
        if self.fail is not None:
            raise self.fail
        self.records.append((key, record))
        return self._table.apply(key.encode(), record)

    async def wait_caught_up(self, timeout_s: float = 30) -> None:
        self.catch_ups += 1
        if self.catch_up_fail is not None:
            raise self.catch_up_fail

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class FakeSubscriptionStore(_InMemoryStore[SubscriptionTable]):
    """The webhook subscription store's interface in memory."""

    def __init__(self) -> None:
        super().__init__(SubscriptionTable())

    async def put(self, sub: Subscription) -> None:
        assert self._write(sub.id, sub.to_record())

    async def delete(self, sub_id: str) -> None:
        self._write(sub_id, None)


@pytest.fixture
def store() -> FakeSubscriptionStore:
    """A subscription store in memory."""
    return FakeSubscriptionStore()


@pytest.fixture
def box() -> SecretBox:
    """The box the subscriptions' secrets are encrypted with, its key made for the test."""
    return SecretBox.ephemeral()


class FakePartnerStore(_InMemoryStore[PartnerTable]):
    """The partner store's interface in memory."""

    def __init__(self) -> None:
        super().__init__(PartnerTable())
        self.running = True
        self.on_catch_up: list[RegistryEntry] = []
        """Entries that "arrive from another instance" on the next catch-up."""

    async def put(self, entry: RegistryEntry) -> None:
        assert self._write(entry.record_key, entry.to_record())

    async def wait_caught_up(self, timeout_s: float = 30) -> None:
        await super().wait_caught_up(timeout_s)
        while self.on_catch_up:
            entry = self.on_catch_up.pop(0)
            self._table.apply(entry.record_key.encode(), entry.to_record())


class NoProducer:
    async def send(self, record: OutRecord) -> None:
        raise AssertionError("nothing is produced outside the stores")


def api_server(token: str, routes: list[Any]) -> ApiServer:
    """An API server on an ephemeral port with the route providers ``routes``, the operator token
    ``token``, a broker that is always up and no producer."""
    settings = load_settings(
        bootstrap_servers="unused:9092", output_format="json", api={"port": 0, "auth_token": token}
    )
    server = ApiServer(settings, producer=cast(AsyncProducer, NoProducer()), extra_routes=routes)
    server.health.broker = BrokerProbe("unused:9092", check=lambda: None, cache_s=0.0)
    return server


@pytest.fixture
async def server(make_server: Callable[..., ApiServer]) -> AsyncIterator[ApiServer]:
    async with make_server() as api:
        yield api


class JsonClient:
    """JSON requests to a running API server; ``last_headers`` are the last response's headers."""

    def __init__(self, client: aiohttp.ClientSession, server: ApiServer) -> None:
        self.client = client
        self.server = server
        self.last_headers: Any = None

    async def request(
        self, method: str, path: str, body: Any = None, *, token: str | None, raw: bytes | None = None
    ) -> tuple[int, Any, str]:
        """Sends ``body`` as JSON (or ``raw`` as it is) with ``token`` as the Bearer token, if any.

        Returns the status, the JSON document answered (``None`` for an empty body) and the text.
        """
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.client.request(
            method, self.server.url + path, data=data, headers=headers
        ) as response:
            text = await response.text()
            self.last_headers = response.headers
            return response.status, json.loads(text) if text else None, text


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
