"""The portal's mutations, executed in process on the real services over in-memory seams.

The schema here is ``Mutation`` with a one-field query and the portal's error codes
(:class:`~processors.portal.graphql.errors.ErrorCodes`); the services are those of
``tests/unit/test_webhooks_service.py`` (a subscription store that keeps its table, a recording
producer and redeliverer, a memory audit sink).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
import strawberry
from pydantic import SecretStr
from strawberry.schema.config import StrawberryConfig

from processors.observability.audit import AuditLogger, MemoryAuditSink
from processors.partners.auth import Caller
from processors.portal.graphql.context import PortalContext, PortalServices
from processors.portal.graphql.errors import ErrorCodes
from processors.portal.graphql.mutation import Mutation
from processors.portal.graphql.scalars import SCALAR_MAP
from processors.webhooks.attempts import AttemptsView
from processors.webhooks.secrets import SecretBox
from processors.webhooks.service import DeliveryService, EndpointService, NewEndpoint
from processors.webhooks.subscriptions import Subscription
from tests.unit.test_webhooks_service import (
    DISPATCH,
    NO_SUCH,
    NOW,
    PARTNER_A,
    PARTNER_B,
    URL,
    Clock,
    Feed,
    Partners,
    Producer,
    Redeliverer,
    Store,
    logged,
    url_check,
)

A = Caller(partner_id=PARTNER_A.id, key_id="akey0001")
B = Caller(partner_id=PARTNER_B.id, key_id="bkey0001")


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        return True


SCHEMA = strawberry.Schema(
    query=Query, mutation=Mutation, extensions=[ErrorCodes], config=StrawberryConfig(scalar_map=SCALAR_MAP)
)


class World:
    def __init__(self) -> None:
        self.store = Store()
        self.sink = MemoryAuditSink()
        self.clock = Clock()
        self.producer = Producer()
        self.redeliverer = Redeliverer()
        self.view = AttemptsView()
        self.endpoints = EndpointService(
            self.store,
            SecretBox.ephemeral(),
            url_check,
            clock=self.clock,
            partners=Partners(),
            audit=AuditLogger("api", self.sink),
        )
        self.deliveries = DeliveryService(
            self.endpoints,
            self.view,
            Feed(),
            self.redeliverer,
            DISPATCH,
            producer=self.producer,
            clock=self.clock,
        )

    def context(self, caller: Caller) -> PortalContext:
        services = PortalServices(
            queries=cast(Any, None),
            partners=cast(Any, Partners()),
            keys=cast(Any, None),
            endpoints=self.endpoints,
            deliveries=self.deliveries,
        )
        return PortalContext(
            caller=caller, key=SecretStr("pk_live_unused"), services=services, request_id="req-7"
        )

    async def run(self, caller: Caller, document: str, **variables: Any) -> tuple[Any, list[dict[str, Any]]]:
        result = await SCHEMA.execute(document, variable_values=variables, context_value=self.context(caller))
        errors = [dict(e.formatted) for e in result.errors or ()]
        return result.data, errors

    async def endpoint(self, caller: Caller, **fields: Any) -> Subscription:
        created = await self.endpoints.create(caller, NewEndpoint(url=URL, events=["policy.*"], **fields))
        return created.endpoint


@pytest.fixture
def world() -> World:
    return World()


CREATE = """
mutation($input: CreateEndpointInput!) {
  createEndpoint(input: $input) {
    secret
    endpoint { id url events active ordered maxConcurrency rateLimitPerS description disabledReason }
  }
}
"""


async def test_create_shows_the_secret_once_and_the_endpoint_as_stored(world: World) -> None:
    data, errors = await world.run(
        A, CREATE, input={"url": URL, "events": ["policy.issued", "claim.*"], "rateLimitPerS": 5.0}
    )
    assert errors == []
    created = data["createEndpoint"]
    stored = world.store.table.get(created["endpoint"]["id"])
    assert stored is not None
    assert stored.partner_id == PARTNER_A.id
    assert created["endpoint"] == {
        "id": stored.id,
        "url": URL,
        "events": ["policy.issued", "claim.*"],
        "active": True,
        "ordered": False,
        "maxConcurrency": 10,
        "rateLimitPerS": 5.0,
        "description": None,
        "disabledReason": None,
    }
    assert created["secret"].startswith("whsec_")
    [event] = world.sink.events
    assert (event.operation, event.correlation_id) == ("portal.createEndpoint", "req-7")
    assert created["secret"] not in b"".join(world.sink.payloads()).decode()


async def test_bad_input_is_bad_user_input_with_the_schemas_field_names(world: World) -> None:
    _, errors = await world.run(
        A, CREATE, input={"url": "gopher://zq-host-value/x", "events": ["policy.issued"], "maxConcurrency": 0}
    )
    [error] = errors
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    reasons = error["extensions"]["reasons"]
    assert sorted(r.split(":")[0] for r in reasons) == ["maxConcurrency", "url"]
    assert "zq-host-value" not in str(error)
    assert world.store.records == []


async def test_reasons_quote_no_value_of_the_input(world: World) -> None:
    _, errors = await world.run(A, CREATE, input={"url": URL, "events": ["policy.zq_typo", "Zq Garbage"]})
    [error] = errors
    reasons = error["extensions"]["reasons"]
    assert [r.split(":")[0] for r in reasons] == ["events"]
    assert reasons[0].startswith("events: unknown event type (known: ")
    assert "zq" not in str(error).lower()


async def test_a_refused_url_is_bad_user_input(world: World) -> None:
    _, errors = await world.run(A, CREATE, input={"url": "https://internal.example/x", "events": ["*"]})
    [error] = errors
    assert error["extensions"] == {
        "code": "BAD_USER_INPUT",
        "reason": "url_refused",
        "reasons": ["url: the host resolves to a private address"],
    }


CHANGES = {
    "updateEndpoint": 'updateEndpoint(id: $id, input: {url: "https://evil.example.com/x"}) { id }',
    "disableEndpoint": 'disableEndpoint(id: $id, reason: "taken") { id }',
    "enableEndpoint": "enableEndpoint(id: $id) { id }",
    "rotateSecret": "rotateSecret(id: $id) { secret }",
    "sendTestEvent": "sendTestEvent(endpointId: $id) { webhookId }",
    "redeliver": 'redeliver(endpointId: $id, webhookId: "msg_theirs") { queued }',
    "recover": "recover(endpointId: $id, since: $since) { queued }",
}


async def test_another_partners_endpoint_is_not_found_exactly_like_a_missing_one(world: World) -> None:
    theirs = await world.endpoint(B)
    world.view.apply(logged(theirs.id, "msg_theirs", 3, "failed", NOW))
    written = len(world.store.records)
    since = (NOW - timedelta(days=1)).isoformat()

    answers: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = {}
    for name, selection in CHANGES.items():
        with_since = "$since" in selection
        document = f"mutation($id: ID!{', $since: DateTime!' if with_since else ''}) {{ {selection} }}"
        extra = {"since": since} if with_since else {}
        answers[name] = [await world.run(A, document, id=target, **extra) for target in (theirs.id, NO_SUCH)]
    # Aliases in one document: mutations run one after the other, and the first refusal ends it.
    aliased = (
        "mutation($id: ID!, $since: DateTime!) {"
        + " ".join(f"m{n}: {selection}" for n, selection in enumerate(CHANGES.values()))
        + "}"
    )
    data, errors = await world.run(A, aliased, id=theirs.id, since=since)

    for name, ((theirs_data, theirs_errors), (missing_data, missing_errors)) in answers.items():
        assert theirs_data is None, name
        assert missing_data is None, name
        assert [e["extensions"] for e in theirs_errors] == [{"code": "NOT_FOUND"}], name
        assert theirs_errors == missing_errors, name  # the same answer, word for word
    assert data is None
    assert [(e["path"], e["extensions"]) for e in errors] == [(["m0"], {"code": "NOT_FOUND"})]
    assert len(world.store.records) == written
    assert world.store.table.get(theirs.id) == theirs
    assert world.producer.sent == []
    assert world.redeliverer.asked == []


async def test_update_leaves_out_what_is_not_given_and_null_clears_only_what_may_be_cleared(
    world: World,
) -> None:
    mine = await world.endpoint(A, description="first", rate_limit_per_s=2.0)
    update = """
    mutation($id: ID!, $input: UpdateEndpointInput!) {
      updateEndpoint(id: $id, input: $input) { description rateLimitPerS maxConcurrency url }
    }"""

    data, errors = await world.run(A, update, id=mine.id, input={"description": None, "maxConcurrency": 4})
    assert errors == []
    assert data["updateEndpoint"] == {
        "description": None,
        "rateLimitPerS": 2.0,
        "maxConcurrency": 4,
        "url": URL,
    }

    _, errors = await world.run(A, update, id=mine.id, input={"url": None, "maxConcurrency": None})
    [error] = errors
    assert error["extensions"]["reasons"] == ["maxConcurrency: must not be null", "url: must not be null"]


async def test_disable_enable_and_rotate(world: World) -> None:
    mine = await world.endpoint(A)
    document = """
    mutation($id: ID!) {
      disableEndpoint(id: $id, reason: "maintenance") { active disabledReason disabledAt }
    }"""
    data, errors = await world.run(A, document, id=mine.id)
    assert errors == []
    assert data["disableEndpoint"] == {
        "active": False,
        "disabledReason": "maintenance",
        "disabledAt": NOW.isoformat(),
    }

    _, errors = await world.run(
        A, "mutation($id: ID!) { sendTestEvent(endpointId: $id) { webhookId } }", id=mine.id
    )
    [error] = errors
    assert error["extensions"] == {"code": "FORBIDDEN", "reason": "endpoint_disabled"}
    assert world.producer.sent == []

    data, errors = await world.run(
        A, "mutation($id: ID!) { enableEndpoint(id: $id) { active disabledReason } }", id=mine.id
    )
    assert data == {"enableEndpoint": {"active": True, "disabledReason": None}}

    rotate = """
    mutation($id: ID!, $g: Int) {
      rotateSecret(id: $id, graceSeconds: $g) {
        secret previousExpiresAt endpoint { secretRotationExpiresAt }
      }
    }"""
    data, errors = await world.run(A, rotate, id=mine.id, g=60)
    assert errors == []
    expires = (NOW + timedelta(seconds=60)).isoformat()
    assert data["rotateSecret"]["previousExpiresAt"] == expires
    assert data["rotateSecret"]["endpoint"]["secretRotationExpiresAt"] == expires
    _, errors = await world.run(A, rotate, id=mine.id, g=-5)
    [error] = errors
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["reasons"][0].startswith("graceSeconds:")


async def test_test_event_redeliver_and_recover(world: World) -> None:
    mine = await world.endpoint(A)
    world.view.apply(logged(mine.id, "msg_failed", 5, "failed", NOW))
    document = """
    mutation($id: ID!, $since: DateTime!) {
      sendTestEvent(endpointId: $id) { endpointId webhookId eventId }
      redeliver(endpointId: $id, webhookId: "msg_failed") { queued webhookIds caughtUp }
      recover(endpointId: $id, since: $since) { queued webhookIds caughtUp }
    }"""
    data, errors = await world.run(A, document, id=mine.id, since="2025-03-01T00:00:00Z")
    assert errors == []
    [record] = world.producer.sent
    assert dict(record.headers)["x-event-type"] == b"webhook.test"
    assert data["sendTestEvent"]["endpointId"] == mine.id
    assert dict(record.headers)["x-webhook-id"] == data["sendTestEvent"]["webhookId"].encode()
    assert data["redeliver"] == {"queued": 1, "webhookIds": ["msg_for_5"], "caughtUp": True}
    assert data["recover"] == {"queued": 1, "webhookIds": ["msg_for_5"], "caughtUp": True}
    assert [e.operation for e in world.sink.events[-3:]] == [
        "portal.sendTestEvent",
        "portal.redeliver",
        "portal.recover",
    ]

    _, errors = await world.run(
        A, 'mutation($id: ID!) { redeliver(endpointId: $id, webhookId: "msg_nope") { queued } }', id=mine.id
    )
    assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"]


async def test_a_broker_that_does_not_answer_is_unavailable(world: World) -> None:
    mine = await world.endpoint(A)
    from processors.errors import BrokerError

    world.store.fail = BrokerError("no leader")
    _, errors = await world.run(A, "mutation($id: ID!) { disableEndpoint(id: $id) { id } }", id=mine.id)
    [error] = errors
    assert error["extensions"] == {"code": "UNAVAILABLE"}
    assert "leader" not in error["message"]
