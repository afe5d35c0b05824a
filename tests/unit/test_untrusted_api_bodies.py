"""Every API route that reads a body answers with one of its documented statuses, never a 5xx.

Property-based, like :mod:`tests.unit.test_untrusted_input`: at least ``EXAMPLES`` bodies per
route (10,000; ``HYPOTHESIS_EXAMPLES`` changes it).  Most bodies are JSON documents with the
route's own keys, each holding a value of its kind or any JSON (times at the edges of the
calendar and with odd offsets where the route reads a time); some are raw bytes, 4,000 ``[``,
a key given twice, any JSON at all or too long.  The path's id is one the server knows, one of
the right shape that it does not, or any text (the redelivery route reads no body: its two ids
are what varies).  Every answer must be a status the route documents (the stores are in memory
and never fail, so never 503), and every 4xx a JSON error document naming its code.

Each route's test has an API server of its own with the partner, webhook subscription and
delivery operator routes over in-memory stores, on an event loop on a thread of its own
(hypothesis calls are synchronous), and calls it over one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, cast
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.api import webhook_ops
from processors.api.partners import KEYS_PATH, PARTNER_PATH, PARTNERS_PATH, PartnerRoutes
from processors.api.webhook_ops import RECOVER_PATH, REDELIVER_PATH, WebhookOpsRoutes
from processors.api.webhooks import ROTATE_PATH, WEBHOOK_PATH, WEBHOOKS_PATH, WebhookRoutes
from processors.partners.model import KINDS, STATUSES
from processors.partners.projection import DATA_CLASSES
from processors.partners.registry import PartnerRegistry
from processors.webhooks.attempts import AttemptsView
from processors.webhooks.secrets import SecretBox
from processors.webhooks.ssrf import SsrfPolicy, check_registration_url
from processors.webhooks.subscriptions import MAX_GRACE_S
from tests.unit.api_fakes import Clock, FakePartnerStore, FakeSubscriptionStore, api_server
from tests.unit.test_untrusted_input import MANY, json_leaves, json_values
from tests.unit.test_webhooks_attempts import (
    DISPATCH,
    T0,
    FakeLog,
    FakeProducer,
    FeedLog,
    feed_over,
    record,
    redeliverer,
)

#: 10,000 examples of a route take up to half a minute on a loaded two-core machine
pytestmark = pytest.mark.timeout(900)

BODIES = settings(MANY, suppress_health_check=list(HealthCheck))
"""``MANY``; the server is a function-scoped fixture, made once per test, not per example, on purpose."""

TOKEN = "t" * 40
URL = "https://partner.example/hook"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()

# --------------------------------------------------------------------------- the server


async def _resolve(host: str, port: int) -> list[str]:
    """Two names, one public and one private; no other name resolves."""
    addresses = {"partner.example": ["93.184.216.34"], "internal.example": ["10.0.0.7"]}
    try:
        return addresses[host.lower().rstrip(".")]
    except KeyError as exc:
        raise OSError(f"{host}: no such name") from exc


async def _url_check(url: str) -> None:
    await check_registration_url(url, SsrfPolicy(), resolver=_resolve)


#: the delivery log's attempts (endpoint ``sub_1``) and the dispatch records they point at
FAILED_MESSAGES = ("msg_a", "msg_b")


def _operator_routes() -> WebhookOpsRoutes:
    """The delivery operator routes over a delivery log whose two messages failed, and a
    dispatch topic that still holds them."""
    deliveries, dispatch = FeedLog("deliveries", 2), FakeLog()
    for offset, webhook_id in enumerate(FAILED_MESSAGES):
        deliveries.records[offset].append(
            record(webhook_id, offset=offset, at=T0 + timedelta(minutes=offset))
        )
        dispatch.write(DISPATCH, 0, offset, "sub_1", webhook_id)
    view = AttemptsView()
    feed, _ = feed_over(deliveries, view)
    return WebhookOpsRoutes(view, feed, redeliverer(dispatch, FakeProducer(), []))


def _routes() -> list[Any]:
    """The partner, webhook subscription and delivery operator routes over in-memory stores."""
    clock = Clock()
    partners = FakePartnerStore()
    return [
        PartnerRoutes(PartnerRegistry(partners, clock=clock)),
        WebhookRoutes(
            FakeSubscriptionStore(), SecretBox.ephemeral(), _url_check, clock=clock, partners=partners.table
        ),
        _operator_routes(),
    ]


@dataclass
class LiveApi:
    """An API server on ``host:port`` called over one keep-alive connection, and what the
    fixture stored in it: partners (two reinsurers, ``RE001`` and ``RE002``, and two brokers,
    ``DIST-1`` and ``DIST-2``), subscriptions (the operator's and the first broker's), and the
    partner keys are made for (a new one each time the last one holds all the keys it may)."""

    host: str
    port: int
    partners: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    key_holder: str = ""
    _connection: http.client.HTTPConnection | None = field(default=None, init=False, repr=False)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """The status and the JSON document answered (None when the answer is not JSON).

        A request that fails on the connection already open is sent once more on a new one
        (the server may close a connection after an answer that left the body unread).
        """
        try:
            return self._send(method, path, body)
        except (http.client.HTTPException, OSError):
            self.close()
            return self._send(method, path, body)

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        self._connection.request(
            method,
            path,
            body=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        response = self._connection.getresponse()
        text = response.read()
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return response.status, json.loads(text) if is_json and text else None

    def create(self, path: str, document: Mapping[str, Any]) -> str:
        """The id of what POSTing ``document`` to ``path`` created."""
        status, answer = self.call("POST", path, json.dumps(document).encode())
        assert status == 201, answer
        return cast(str, answer["id"])

    def new_key_holder(self) -> None:
        self.key_holder = self.create(PARTNERS_PATH, {"name": "Key holder", "kind": "broker"})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _seed(api: LiveApi) -> None:
    for name, kind, code in (
        ("Reinsurer one", "reinsurer", {"reinsurer_code": "RE001"}),
        ("Reinsurer two", "reinsurer", {"reinsurer_code": "RE002"}),
        ("Broker one", "broker", {"distributor_code": "DIST-1"}),
        ("Broker two", "broker", {"distributor_code": "DIST-2"}),
    ):
        api.partners.append(api.create(PARTNERS_PATH, {"name": name, "kind": kind, **code}))
    api.subscriptions.append(api.create(WEBHOOKS_PATH, {"url": URL, "events": ["policy.*"]}))
    owned = {"url": URL, "events": ["claim.settled"], "partner_id": api.partners[2]}
    api.subscriptions.append(api.create(WEBHOOKS_PATH, owned))
    api.new_key_holder()


@pytest.fixture
def api() -> Iterator[LiveApi]:
    """A server of the test's own (see the module docstring), with its partners and subscriptions."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    urls: list[str] = []

    async def serve() -> None:
        async with api_server(TOKEN, _routes()) as server:
            urls.append(server.url)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    host, port = urls[0].removeprefix("http://").split(":")
    live = LiveApi(host, int(port))
    try:
        _seed(live)
        yield live
    finally:
        live.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def _path(template: str, **ids: str) -> str:
    return template.format(**{name: quote(value, safe="") for name, value in ids.items()})


def _answers(
    api: LiveApi, method: str, path: str, body: bytes | None, documented: Collection[int]
) -> tuple[int, Any]:
    """The route's answer, which must be one it documents; a 4xx must name its error."""
    status, document = api.call(method, path, body)
    assert status < 500, (status, document)
    assert status in documented, (status, document)
    if status >= 400:
        assert isinstance(document, dict), document
        assert isinstance(document.get("error"), str), document
        assert document["error"], document
    return status, document


# --------------------------------------------------------------------------- strategies

#: times at the edges of the calendar, with odd offsets, in odd spellings, or not times at all
EDGE_TIMES = (
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T00:00:00-00:01",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-14:00",
    "2025-03-01T12:00:00Z",
    "2025-03-01T12:00:00.000001Z",
    "2030-01-01T00:00:00",
    "2030-01-01",
    "2030-01-01T00:00:00+24:00",
    "2030-01-01T00:00:00+23:59:59.999999",
    "2030-01-01T00:00:00-00:00:00.000001",
    "2030-01-01T24:00:00Z",
    "2030-01-01T00:00:60Z",
    "2030-02-29T00:00:00Z",
    "2028-02-29T00:00:00Z",
    "2030-01-01T00:00:00z",
    "2030-01-01 00:00:00Z",
    "2030-W01-1T00:00Z",
    "20300101T000000Z",
    "+2030-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "2030-01-01T00:00:00+00:00\x00",
    "1700000000",
    "",
)
_MINUTE_OFFSETS = st.integers(-1_439, 1_439).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_MAX_OFFSET = timedelta(hours=24) - timedelta(microseconds=1)
_ODD_OFFSETS = st.timedeltas(min_value=-_MAX_OFFSET, max_value=_MAX_OFFSET).map(timezone)
_EDGE_DAYS = timedelta(days=2)
_SPANS = (
    (datetime.min, datetime.max),
    (datetime.min, datetime.min + _EDGE_DAYS),
    (datetime.max - _EDGE_DAYS, datetime.max),
    (datetime(2020, 1, 1), datetime(2100, 1, 1)),
)
"""Where times spelled the usual way are drawn from: the calendar, two days at either end of it,
and years around the tests' clock (hypothesis favours the early centuries)."""
# The strategies composites draw from (here and in bodies()) are made once: made on each draw,
# they cost a quarter of the time of an example.
_IN_SPANS = [st.datetimes(min_value=low, max_value=high, timezones=_MINUTE_OFFSETS) for low, high in _SPANS]
_ODD_TIMES = st.datetimes(timezones=st.none() | _ODD_OFFSETS)
_TIME_KINDS = st.integers(0, len(_SPANS) + 1)
_EDGE_TIMES = st.sampled_from(EDGE_TIMES)
_PRECISIONS = st.sampled_from(["auto", "seconds", "milliseconds"])
_ODD_PRECISIONS = st.sampled_from(["hours", "minutes", "microseconds"])
_ODD_SEPARATORS = st.sampled_from("Tt _")


@st.composite
def iso_times(draw: st.DrawFn) -> str:
    """A time of :data:`EDGE_TIMES`; or one of a span of :data:`_SPANS` in ISO-8601 with an
    offset of whole minutes; or any time (with any offset or none) in ISO-8601 spelled oddly."""
    kind = draw(_TIME_KINDS)
    if kind == 0:
        return draw(_EDGE_TIMES)
    if kind > len(_SPANS):
        moment: datetime = draw(_ODD_TIMES)
        return moment.isoformat(sep=draw(_ODD_SEPARATORS), timespec=draw(_ODD_PRECISIONS))
    moment = draw(_IN_SPANS[kind - 1])
    return moment.isoformat(timespec=draw(_PRECISIONS)).replace("+00:00", "Z")


_URLS = st.sampled_from(
    [
        URL,
        "https://partner.example:8443/hook?x=1#part",
        "https://PARTNER.example./hook",
        "https://internal.example/hook",  # resolves to a private address
        "https://nowhere.example/hook",  # does not resolve
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://0x7f.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "ftp://partner.example/hook",
        "https://user:pw@partner.example/hook",
        "https://partner.example/" + "a" * 3_000,
        "https://partner.example/\x00",
        "https://bücher.example/hook",
        "https://",
        "not a url",
    ]
)
_EVENTS = st.lists(
    st.sampled_from(
        [
            "policy.issued",
            "policy.*",
            "claim.settled",
            "premium.due",
            "*",
            "policy",
            "policy..x",
            "Policy.Issued",
            "",
        ]
    ),
    max_size=4,
)
_GRANTS = st.lists(st.sampled_from([*DATA_CLASSES, "Contact", "secrets", ""]), max_size=4)
_COUNTS = st.one_of(st.integers(-2, 1_002), st.sampled_from([2**31, 2**63, -(2**63), 2**70]))
_RATES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 0.001, 1e-300, 1e308, -1])
)
_LABELS = st.one_of(st.text(max_size=300), st.sampled_from(["", " ", "x" * 1_001, "line\nbreak", "nul\x00"]))
_NAMES = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "x" * 201, "Acme\x00", "Acme\n"]))
_SECRETS = st.one_of(
    st.sampled_from(
        [
            SECRET,
            SECRET.removeprefix("whsec_"),
            SECRET + "=",
            "whsec_" + base64.b64encode(b"k" * 16).decode(),
            "whsec_" + "!" * 40,
            "whsec_",
            "s" * 24,
            "s" * 257,
            "with spaces " * 3,
            "",
        ]
    ),
    st.text(max_size=80),
)
_GRACES = st.one_of(
    st.floats(min_value=-1, max_value=MAX_GRACE_S + 1),
    st.integers(-1, MAX_GRACE_S + 1),
    st.sampled_from([0, MAX_GRACE_S, MAX_GRACE_S + 1, -0.0, 1e308, 2**70]),
)
_HEX = st.text("0123456789abcdef", max_size=25)
"""The tail of an id's shape (24 digits), often too short or too long (``from_regex`` is slow)."""
_PARTNER_IDS = _HEX.map("prt_".__add__)
_CODES = st.one_of(
    st.sampled_from(
        ["RE001", "re001", "RE002", "DIST-1", "dist-1", "DIST-2", "NEW-1", "", "a" * 65, "RÉ1", "A B"]
    ),
    st.none(),
    st.text(max_size=10),
)
_KINDS = st.sampled_from([*KINDS, "Broker", "partner", ""])
_STATUSES = st.sampled_from([*STATUSES, "Active", "deleted", ""])
_DAYS = st.one_of(st.integers(-1, 3_651), st.sampled_from([0, 3_650, 3_651, 2**70]))

SUBSCRIPTION_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "partner_id": _PARTNER_IDS,  # refused by PATCH, as is "secret"
    "url": _URLS,
    "events": _EVENTS,
    "secret": _SECRETS,
    "active": st.booleans(),
    "ordered": st.booleans(),
    "max_concurrency": _COUNTS,
    "rate_limit_per_s": _RATES,
    "description": _LABELS,
    "grants": _GRANTS,
}
ROTATION_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {"secret": _SECRETS, "grace_s": _GRACES}
PARTNER_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "name": _NAMES,
    "kind": _KINDS,  # refused by PATCH
    "status": _STATUSES,
    "reinsurer_code": _CODES,
    "distributor_code": _CODES,
    "grants": _GRANTS,
}
KEY_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "name": _LABELS,
    "expires_at": iso_times(),
    "expires_in_days": _DAYS,
}
RECOVERY_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {"since": iso_times()}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


#: a value of the wrong kind: any JSON value but a deep one (:data:`json_values`, slower to draw)
_OTHER_VALUES = st.one_of(
    json_leaves,
    st.lists(json_leaves, max_size=3),
    st.dictionaries(st.text(max_size=8), json_leaves, max_size=3),
)


_TWENTY = st.integers(0, 19)
_HOW = st.integers(0, 9)
_UNKNOWN_KEYS = st.text(max_size=8)
_RAW = st.binary(max_size=200)


def bodies(base: Mapping[str, Any], fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """Bodies for a route that reads ``fields``.

    Mostly ``base`` with one of ``fields`` (and each other with a chance of one in one more
    than twice their number) set to a value of their kind or of another, or left out, and now
    and then a key no route reads; sometimes raw bytes, 4,000 ``[``, one of ``fields`` given
    twice, any JSON document or one of 70,000 bytes.
    """
    keys = sorted(fields)
    some_key = st.sampled_from(keys)
    one_in = st.integers(0, 2 * len(keys))
    either = {key: st.one_of(strategy, _OTHER_VALUES) for key, strategy in fields.items()}

    @st.composite
    def body(draw: st.DrawFn) -> bytes:
        shape = draw(_TWENTY)
        if shape == 0:
            return draw(_RAW)
        if shape == 1:
            return b"[" * 4_000
        if shape == 2:
            key = draw(some_key)
            first, second = (_dumps(draw(either[key])) for _ in range(2))
            return b"{%s: %s, %s: %s}" % (_dumps(key), first, _dumps(key), second)
        if shape == 3:
            return _dumps(draw(json_values))
        if shape == 4:
            return _dumps({draw(some_key): "a" * 70_000})
        document = dict(base)
        chosen = draw(some_key)
        for key in keys:
            if key != chosen and draw(one_in) > 0:
                continue
            how = draw(_HOW)
            if how == 0:
                document.pop(key, None)
            else:
                document[key] = draw(_OTHER_VALUES if how < 3 else fields[key])
        if draw(_TWENTY) == 0:
            document[draw(_UNKNOWN_KEYS)] = draw(_OTHER_VALUES)
        return _dumps(document)

    return body()


_OUTSIDE_A_SEGMENT = frozenset("/{}")
"""Characters an id never has: a path with them (decoded) is no route's (the router's own 404)."""

PATH_IDS: st.SearchStrategy[int | str] = st.one_of(
    st.integers(0, 7),
    st.one_of(
        st.builds(str.__add__, st.sampled_from(["ep_", "prt_", "sub_", "msg_"]), _HEX),
        st.text(min_size=1, max_size=40).filter(
            lambda text: not _OUTSIDE_A_SEGMENT & set(text) and text not in (".", "..")
        ),
    ),
)
"""An id the server knows (a number: see :func:`_id`), one of an id's shape, or any text that
stays one path segment of the route."""


def _id(drawn: int | str, known: Sequence[str]) -> str:
    """The id ``drawn`` of :data:`PATH_IDS`: a number picks one of ``known``."""
    return known[drawn % len(known)] if isinstance(drawn, int) else drawn


# --------------------------------------------------------------------------- the routes


@dataclass(frozen=True)
class Route:
    """A route that reads a body: how it is called, what it documents, the bodies it is sent and
    (for a path with an ``{id}``) the ids the server knows."""

    method: str
    path: str
    documented: tuple[int, ...]
    bodies: st.SearchStrategy[bytes]
    known: Callable[[LiveApi], Sequence[str]] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route(
        "POST",
        WEBHOOKS_PATH,
        (201, 400, 409, 422),
        bodies({"url": URL, "events": ["policy.*"]}, SUBSCRIPTION_FIELDS),
    ),
    Route(
        "PATCH",
        WEBHOOK_PATH,
        (200, 400, 404, 422),
        bodies({}, SUBSCRIPTION_FIELDS),
        lambda api: api.subscriptions,
    ),
    Route("POST", ROTATE_PATH, (200, 400, 404), bodies({}, ROTATION_FIELDS), lambda api: api.subscriptions),
    Route("POST", PARTNERS_PATH, (201, 400, 409), bodies({"name": "Acme", "kind": "broker"}, PARTNER_FIELDS)),
    Route("PATCH", PARTNER_PATH, (200, 400, 404, 409), bodies({}, PARTNER_FIELDS), lambda api: api.partners),
    Route("POST", KEYS_PATH, (201, 400, 404, 409), bodies({}, KEY_FIELDS), lambda api: [api.key_holder]),
    Route(
        "POST",
        RECOVER_PATH,
        (202, 400),
        bodies({"since": "2025-01-01T00:00:00Z"}, RECOVERY_FIELDS),
        lambda _api: ["sub_1"],
    ),
]


@pytest.mark.parametrize("route", ROUTES, ids=str)
@BODIES
@given(data=st.data())
def test_a_route_answers_a_documented_status(api: LiveApi, route: Route, data: st.DataObject) -> None:
    ids = {} if route.known is None else {"id": _id(data.draw(PATH_IDS, label="id"), route.known(api))}
    body = data.draw(route.bodies, label="body")
    status, document = _answers(api, route.method, _path(route.path, **ids), body, route.documented)
    if route.path == KEYS_PATH and status == 409 and document["error"] == "limit_reached":
        api.new_key_holder()  # the partner holds all the keys it may: make the next ones for another


@BODIES
@given(sub_id=PATH_IDS, webhook_id=PATH_IDS)
def test_redelivering_a_message_answers_a_documented_status(
    api: LiveApi, sub_id: int | str, webhook_id: int | str
) -> None:
    """The route reads no body: its two path ids are what the caller controls."""
    path = _path(REDELIVER_PATH, id=_id(sub_id, ["sub_1"]), webhook_id=_id(webhook_id, FAILED_MESSAGES))
    _answers(api, "POST", path, None, (202, 404))


def test_a_recover_body_of_brackets_is_a_400_not_a_500() -> None:
    """``POST /api/v1/webhooks/{id}/recover`` with 4,000 ``[`` answered 500."""

    class Request:
        content_length = 4000

        async def read(self) -> bytes:
            return b"[" * 4000

    with pytest.raises(webhook_ops._BadRequest, match="must be JSON"):
        asyncio.run(webhook_ops._since_from_body(cast(Any, Request())))
