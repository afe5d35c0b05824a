"""``/graphql`` under fuzzing: never a 500, never an untyped error, never an internal detail.

The real runner (``processors run webhooks --api``) on the real broker, its query store on
SQLite, two partners made through the operator REST API with a key each, and data in the
store: the broker's two endpoints (one answering 200, one 500) with really delivered messages,
the reinsurer's bordereau with its delivery result.

* :func:`test_generated_operations_get_typed_answers` — hypothesis-graphql generates operations
  from the published contract (``docs/portal-schema.graphql``, which
  ``tests/unit/test_portal_graphql_schema.py`` keeps equal to the schema the server serves):
  queries with either partner's key, mutations with the broker's key only, aimed at its own
  endpoints and messages or at random ids.  Both of hypothesis-graphql's modes: valid
  operations, and operations that break the schema in one place (a value of the wrong type, a
  missing argument, an ``Int`` out of range, ``null`` where it is not allowed, an unknown enum
  value).  ``ID`` arguments are drawn from the caller's own ids or are random text;
  ``DateTime`` arguments are UTC times, times without an offset, times at the ends of the
  calendar, or random text.
* :func:`test_malformed_requests_get_the_documented_answers` — requests written by hand: a
  body that is not JSON, JSON without a query, a query that is not a string, variables of the
  wrong types, a 1 MB query, a document nested too deeply, too many aliases,
  ``first: 100000``, garbled and tampered cursors, introspection while it is off.

For every answer (:func:`check_answer`): the HTTP status is below 500, the body is a JSON
object, every error in ``errors`` carries ``extensions.code`` from the documented set
(:class:`processors.portal.graphql.errors.ErrorCode`) and never ``INTERNAL`` (the code of an
error nobody foresaw: the untyped error these tests exist to find), and no message holds a
traceback, a source file, SQL, a database driver's name or a Python module path — unless the
request itself held that text (a message may quote the caller's own input back).

The portal's per-key rate limit would answer 429 to a fuzzer that sends a few hundred
requests in a row: this test sets ``portal.graphql.rate_per_s`` and ``rate_burst`` (the
``PROCESSORS_PORTAL__GRAPHQL__RATE_PER_S`` / ``__RATE_BURST`` settings) far above what it
sends, so every request reaches the schema.  The rate limit itself is tested in
``tests/unit/test_portal_graphql_api.py``.

Hypothesis runs derandomized (the same operations on every run, no example database) with a
bounded number of examples and no deadline: the requests go to a real server on a shared
machine.  Each test prints what it sent and the codes it got.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries

from processors.portal.graphql.errors import ErrorCode
from tests import portal_samples as samples
from tests.integration.helpers import publish
from tests.integration.portal_read_env import Member, PortalEnv, eventually, fresh_policy_issued, portal_env

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
CONTRACT: Final = (ROOT / "docs" / "portal-schema.graphql").read_text(encoding="utf-8")

QUERY_EXAMPLES: Final = 150
MUTATION_EXAMPLES: Final = 75

UNLIMITED: Final[dict[str, Any]] = {"rate_per_s": 100_000, "rate_burst": 1_000_000}
"""``portal.graphql`` settings: a budget per key no run of these tests can spend."""

DOCUMENTED: Final = frozenset(str(code) for code in ErrorCode)
UNTYPED: Final = str(ErrorCode.INTERNAL)

_LEAKS: Final = (
    ("a traceback", re.compile(r"Traceback")),
    ("a source file", re.compile(r"File \"|\.py\b")),
    ("SQL", re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|WHERE)\s")),
    ("a database driver", re.compile(r"sqlite|psycopg|sqlalchemy|postgres", re.IGNORECASE)),
    ("a module path", re.compile(r"\b(processors|strawberry|graphql|aiohttp|pydantic)\.[a-z_]")),
)

_T = TypeVar("_T")

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    text: str


class Tally:
    """What the requests got: HTTP statuses and error codes."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.clean = 0
        """Answers with data and no error."""

    def summary(self, what: str) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.codes.items())) or "none"
        return (
            f"{what}: {self.requests} requests, none broke a rule; HTTP {statuses}; "
            f"{self.clean} answered without an error; error codes {codes}"
        )


def check_answer(answer: Answer, request: str, tally: Tally | None = None) -> dict[str, Any]:
    """The answer's document, once every rule of the module docstring held (AssertionError
    naming the first that broke)."""
    if tally is not None:
        tally.requests += 1
        tally.statuses[answer.status] += 1
    assert answer.status < 500, f"HTTP {answer.status} for {request[:300]!r}: {answer.text[:500]}"
    assert answer.content_type == "application/json", (answer.status, answer.content_type, answer.text[:300])
    try:
        document = json.loads(answer.text)
    except ValueError:
        raise AssertionError(f"not JSON (HTTP {answer.status}): {answer.text[:300]!r}") from None
    assert isinstance(document, dict), document
    assert "data" in document or "errors" in document, document
    errors = document.get("errors")
    if answer.status != 200:
        assert errors, f"HTTP {answer.status} without errors: {document}"
    if tally is not None and not errors:
        tally.clean += 1
    for error in errors or ():
        assert isinstance(error, dict), error
        assert isinstance(error.get("message"), str), error
        code = (error.get("extensions") or {}).get("code")
        if tally is not None:
            tally.codes[str(code)] += 1
        assert code in DOCUMENTED, f"an error without a documented code: {error} for {request[:300]!r}"
        assert code != UNTYPED, f"an untyped error for {request[:500]!r}: {error}"
        for what, pattern in _LEAKS:
            found = pattern.search(error["message"])
            if found is not None and found.group(0) not in request:
                message = error["message"]
                raise AssertionError(f"{what} in an error message: {message!r} for {request[:300]!r}")
    return document


async def post(
    env: PortalEnv,
    body: bytes,
    *,
    key: str | None,
    content_type: str = "application/json",
) -> Answer:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    # a stream: aiohttp warns that a large body given as bytes may hold up the event loop
    async with env.session.post(env.url + "/graphql", data=io.BytesIO(body), headers=headers) as response:
        return Answer(response.status, response.content_type, await response.text())


def operation(document: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": document, "variables": variables or {}}).encode("utf-8")


# ------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    broker: Member
    reinsurer: Member
    broker_ids: tuple[str, ...]
    """The broker's endpoint ids and webhook ids."""
    reinsurer_ids: tuple[str, ...]
    """The reinsurer's report id."""
    cursor: str
    """A real cursor of the broker's delivery log."""


def publish_issued(env: PortalEnv, count: int) -> None:
    """``count`` new policy.issued events (fresh ids) on the policy topic."""
    publish(env.bootstrap, f"{env.prefix}insurance.policy.events", fresh_policy_issued(count))


async def make_world(env: PortalEnv) -> World:
    broker = await env.partner("Acme Brokers", "broker", distributor_code="D-1")
    reinsurer = await env.partner("Reinsurance Corp", "reinsurer", reinsurer_code="RE001")
    ok = await env.endpoint(broker, "/acme/ok", ["policy.issued"])
    failing = await env.endpoint(broker, "/fail/acme", ["policy.issued"])
    publish_issued(env, 2)
    env.write_bordereau(samples.TREATY, samples.premium_bordereau())
    env.write_bordereau_result(samples.TREATY, samples.accepted(samples.report_id()))
    lines = await env.deliveries_of(broker, 4, "the broker's four delivery lines")

    async def bordereau_there() -> bool | None:
        found = await env.data(reinsurer.key, "{ bordereaux { edges { node { deliveries { status } } } } }")
        edges = found["bordereaux"]["edges"]
        return True if edges and edges[0]["node"]["deliveries"] else None

    await eventually(bordereau_there, what="the reinsurer's bordereau and its delivery result")
    page = await env.data(broker.key, "{ deliveries(first: 1) { pageInfo { endCursor } } }")
    webhooks = sorted({line["webhookId"] for line in lines})
    return World(
        broker=broker,
        reinsurer=reinsurer,
        broker_ids=(ok, failing, *webhooks),
        reinsurer_ids=(samples.report_id(),),
        cursor=str(page["deliveries"]["pageInfo"]["endCursor"]),
    )


# ------------------------------------------------------------------------------- strategies


def _strings(own: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(own), st.text(max_size=40)).map(nodes.String)


_DATETIMES: Final = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.datetimes().map(datetime.isoformat),  # no offset: refused
    st.sampled_from(["0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59+23:59", "2025-02-30T00:00:00Z"]),
    st.text(max_size=30),
).map(nodes.String)


def operations(
    kind: Callable[..., st.SearchStrategy[str]], ids: tuple[str, ...], strings: tuple[str, ...]
) -> st.SearchStrategy[str]:
    """Operations of ``kind`` (``queries`` or ``mutations``), valid and invalid, whose ``ID``
    and ``String`` arguments are often values of the caller's world (``ids``, ``strings``)."""
    custom = {"ID": _strings(ids), "String": _strings(strings), "DateTime": _DATETIMES}
    return st.one_of(
        kind(CONTRACT, custom_scalars=custom, mode=Mode.POSITIVE),
        kind(CONTRACT, custom_scalars=custom, mode=Mode.NEGATIVE),
    )


# ------------------------------------------------------------------------------- the tests


async def test_generated_operations_get_typed_answers(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'portal.db'}"
    async with portal_env(kafka_bootstrap, isolated_topics, database, **UNLIMITED) as env:
        world = await make_world(env)
        loop = asyncio.get_running_loop()
        tally = Tally()

        def on_loop(call: Coroutine[Any, Any, _T]) -> _T:
            # hypothesis runs on a worker thread; the server and the client live on this loop
            return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=120)

        def send(key: str, document: str) -> None:
            check_answer(on_loop(post(env, operation(document), key=key)), document, tally)

        strings = (
            world.cursor,  # a real cursor of the broker's log (another list's for the reinsurer)
            env.receiver.url("/fuzz"),  # an endpoint URL the server accepts
            "policy.issued",
            "policy.*",
            "*",
            samples.TREATY,
            samples.PERIOD,
        )
        callers = (  # in a fixed order: the same draws pick the same caller on every run
            (world.broker.key, operations(queries, world.broker_ids, strings)),
            (world.reinsurer.key, operations(queries, world.reinsurer_ids, strings)),
        )

        @settings(FUZZ, max_examples=QUERY_EXAMPLES)
        @given(data=st.data())
        def fuzz_queries(data: st.DataObject) -> None:
            key, strategy = data.draw(st.sampled_from(callers), label="caller")
            document = data.draw(strategy, label="query")
            send(key, document)
            # the same text again: a valid query is now prepared and answered on graphql-core
            # directly (processors/portal/graphql/direct.py), which must hold to the same rules
            send(key, document)

        @settings(FUZZ, max_examples=MUTATION_EXAMPLES)
        @given(document=operations(mutations, world.broker_ids, strings))
        def fuzz_mutations(document: str) -> None:
            send(world.broker.key, document)

        await asyncio.to_thread(fuzz_queries)
        queried = tally.requests
        await asyncio.to_thread(fuzz_mutations)
        mutated = tally.requests - queried
        print("\n" + tally.summary(f"fuzz /graphql ({queried} queries, {mutated} mutations)"))
        assert tally.requests >= 2 * QUERY_EXAMPLES + MUTATION_EXAMPLES
        # the fuzz reached the resolvers, not only the validator: operations were answered, and
        # resolvers refused some with their own typed errors
        assert tally.clean > 0
        assert {"BAD_USER_INPUT", "NOT_FOUND", "GRAPHQL_VALIDATION_FAILED"} <= set(tally.codes)


async def test_malformed_requests_get_the_documented_answers(
    kafka_bootstrap: str, isolated_topics: Callable[..., tuple[Path, str]], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'portal.db'}"
    async with portal_env(kafka_bootstrap, isolated_topics, database, **UNLIMITED) as env:
        member = await env.partner("Acme Brokers", "broker")
        await env.endpoint(member, "/acme/ok", ["policy.issued"])
        publish_issued(env, 2)
        await env.deliveries_of(member, 2, "two delivery lines")
        tally = Tally()

        async def send(body: bytes, *, content_type: str = "application/json") -> tuple[int, set[str]]:
            """The HTTP status and the codes of the errors."""
            answer = await post(env, body, key=member.key, content_type=content_type)
            return answer.status, _codes(check_answer(answer, body.decode("utf-8", "replace"), tally))

        async def send_operation(document: str, variables: Any = None) -> tuple[int, set[str]]:
            return await send(operation(document, variables))

        parse_failed = (400, {"GRAPHQL_PARSE_FAILED"})
        validation_failed = (200, {"GRAPHQL_VALIDATION_FAILED"})
        bad_input = (200, {"BAD_USER_INPUT"})

        # not a GraphQL request
        assert await send(b"{not json") == parse_failed
        assert await send(b"") == parse_failed
        assert await send(b"\xff\xfe\x00garbage") == parse_failed
        assert await send(json.dumps({"variables": {}}).encode()) == parse_failed
        assert await send(json.dumps({"query": 12}).encode()) == parse_failed
        assert await send(json.dumps({"query": ["{ me { id } }"]}).encode()) == parse_failed
        assert await send(json.dumps({"query": None}).encode()) == parse_failed
        for scalar in ("{ me { id } }", 12, True, None, [], [1, 2]):  # JSON, but not one operation
            assert await send(json.dumps(scalar).encode()) == parse_failed, scalar
        assert await send(json.dumps([{"query": "{ me { id } }"}] * 2).encode()) == parse_failed  # a batch
        assert await send(b"[" * 100_000 + b"]" * 100_000) == parse_failed

        # variables of the wrong types
        me = "{ me { id } }"
        assert await send(json.dumps({"query": me, "variables": [1]}).encode()) == parse_failed
        assert await send(json.dumps({"query": me, "variables": "x"}).encode()) == parse_failed
        assert await send(json.dumps({"query": me, "operationName": 5}).encode()) == parse_failed
        page = "query($n: Int) { deliveries(first: $n) { edges { cursor } } }"
        assert await send_operation(page, {"n": "twenty"}) == bad_input
        assert await send_operation(page, {"n": 2**40}) == bad_input
        assert await send_operation(page, {"n": 1.5}) == bad_input
        by_filter = "query($f: DeliveryFilter) { deliveries(filter: $f) { edges { cursor } } }"
        assert await send_operation(by_filter, {"f": {"status": "NOPE"}}) == bad_input
        assert await send_operation(by_filter, {"f": {"since": "yesterday"}}) == bad_input
        no_offset = {"f": {"since": "2025-03-01T12:00:00"}}
        assert await send_operation(by_filter, no_offset) == bad_input
        assert await send_operation(by_filter, {"f": {"since": 1_700_000_000}}) == bad_input
        assert await send_operation(by_filter, {"f": ["endpointId"]}) == bad_input
        assert await send_operation(by_filter, {"f": {"nope": 1}}) == bad_input
        one = "query($id: ID!) { endpoint(id: $id) { id } }"
        assert await send_operation(one, {"id": None}) == bad_input
        assert await send_operation(one, {"id": {"$ne": ""}}) == bad_input
        assert await send_operation(one, {}) == bad_input
        recover = "mutation($id: ID!, $s: DateTime!) { recover(endpointId: $id, since: $s) { queued } }"
        assert await send_operation(recover, {"id": "ep_x", "s": "soon"}) == bad_input

        # a 1 MB query: over the API's body limit
        huge = "{ me { " + "id " * 350_000 + "} }"
        status, codes = await send_operation(huge)
        assert status == 413
        assert codes
        # just under the body limit, far over the token limit
        assert await send_operation("{ me { " + "id " * 60_000 + "} }") == (200, {"GRAPHQL_PARSE_FAILED"})

        # nested too deeply: over the depth limit, then over the token limit before any depth counts
        deep = "{ me " + "{ id " * 100 + "}" * 101
        status, codes = await send_operation(deep)
        assert (status, codes) == validation_failed  # the depth limit (and the schema)
        deeper = "{ me " + "{ id " * 5_000 + "}" * 5_001
        assert await send_operation(deeper) == (200, {"GRAPHQL_PARSE_FAILED"})
        for depth, answer in ((500, bad_input), (10_000, parse_failed)):  # a variable nested deeply
            nested = '{"f": {"eventType": ' + "[" * depth + '"x"' + "]" * depth + "}}"
            body = '{"query": ' + json.dumps(by_filter) + ', "variables": ' + nested + "}"
            assert await send(body.encode()) == answer, depth

        # too many aliases
        aliases = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(31)) + " }"
        assert await send_operation(aliases) == validation_failed
        thirty = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(30)) + " }"
        assert await send_operation(thirty) == (200, set())

        # pages too large
        assert await send_operation(page, {"n": 100_000}) == bad_input
        assert await send_operation(page, {"n": -1}) == bad_input
        status, codes = await send_operation("{ deliveries(first: 100000) { edges { cursor } } }")
        assert (status, codes) == validation_failed  # the cost estimate refuses it before it runs
        status, codes = await send_operation("{ deliveries(first: 100000) { pageInfo { hasNextPage } } }")
        assert (status, codes) == validation_failed

        # garbled, tampered and foreign cursors
        first = await env.data(member.key, "{ deliveries(first: 1) { pageInfo { endCursor } } }")
        real = first["deliveries"]["pageInfo"]["endCursor"]
        assert isinstance(real, str)
        assert real
        after = "query($a: String) { deliveries(first: 1, after: $a) { edges { cursor } } }"
        assert (await send_operation(after, {"a": real}))[1] == set()
        flipped = real[:-2] + ("A" if real[-2] != "A" else "B") + real[-1]
        forged = base64.urlsafe_b64encode(b"\x00" * 16 + b"[0,0,0]").rstrip(b"=").decode()
        for cursor in ("garbage", "", "=" * 10, "%%%", flipped, real[:10], real + "A", "A" * 10_000, forged):
            assert await send_operation(after, {"a": cursor}) == bad_input, cursor
        bordereaux = "query($a: String) { bordereaux(after: $a) { edges { cursor } } }"
        assert await send_operation(bordereaux, {"a": real}) == bad_input  # another list's cursor

        # introspection is off by default
        assert await send_operation("{ __schema { types { name } } }") == validation_failed
        assert await send_operation('{ __type(name: "Endpoint") { fields { name } } }') == validation_failed
        assert await send_operation("{ __typename }") == (200, set())

        # other ways to be wrong
        assert await send_operation("{ me { id ") == (200, {"GRAPHQL_PARSE_FAILED"})
        assert await send_operation("{ nothing }") == validation_failed
        assert await send_operation("subscription { feed { __typename } }") == parse_failed
        # two operations and no operationName: strawberry runs the first (graphql-core refuses)
        two = await send_operation("query A { me { id } } query B { me { id } }")
        assert two in ((200, set()), parse_failed, validation_failed)
        unnamed = json.dumps({"query": "query A { me { id } }", "operationName": "B"}).encode()
        assert await send(unnamed) == parse_failed
        assert await send(b"query { me { id } }", content_type="text/plain") == parse_failed

        # over GET: queries only, their variables JSON
        for params in (
            {},
            {"query": me, "variables": "{not json"},
            {"query": me, "variables": "[1]"},
            {"query": 'mutation { enableEndpoint(id: "ep_x") { id } }'},
        ):
            headers = {"Authorization": f"Bearer {member.key}"}
            async with env.session.get(env.url + "/graphql", params=params, headers=headers) as response:
                got = Answer(response.status, response.content_type, await response.text())
            assert (got.status, _codes(check_answer(got, json.dumps(params), tally))) == parse_failed, params

        # who calls
        no_key = await post(env, operation(me), key=None)
        assert (no_key.status, _codes(check_answer(no_key, me, tally))) == (401, {"UNAUTHENTICATED"})
        wrong = await post(env, operation(me), key="pk_live_" + "A" * 40)
        assert (wrong.status, _codes(check_answer(wrong, me, tally))) == (401, {"UNAUTHENTICATED"})

        print("\n" + tally.summary("malformed requests to /graphql"))


def _codes(document: dict[str, Any]) -> set[str]:
    return {e["extensions"]["code"] for e in document.get("errors") or ()}
