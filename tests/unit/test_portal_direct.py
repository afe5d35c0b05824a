"""Prepared queries answered on graphql-core directly (``processors.portal.graphql.direct``).

The first request of a text goes through strawberry's view, which parses, validates and caches
it; the same text again is answered by :class:`DirectQueries`.  Both answers must be the same
bytes, status and content type — data, coded errors, masking — and what the direct path must
not take (mutations, GET, invalid documents, extensions, batches) must still go to the view.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.test_portal_graphql_api import Portal, PortalFactory, codes
from tests.unit.test_portal_graphql_api import portal_factory as portal_factory  # the fixture

LINE_FIELDS = (
    "id webhookId endpointId eventId eventType attempt status httpStatus latencyMs error "
    "responseBody attemptedAt urlHost nextStep"
)
PAGE = (
    "query D($first: Int, $after: String, $filter: DeliveryFilter) {"
    " deliveries(first: $first, after: $after, filter: $filter) {"
    f" edges {{ cursor node {{ {LINE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
)


async def _raw(portal: Portal, body: Any, *, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    sent = {"Authorization": f"Bearer {portal.key_a}", "Content-Type": "application/json", **(headers or {})}
    data = body if isinstance(body, str) else json.dumps(body)
    async with portal.session.post(portal.url, data=data, headers=sent) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def _cases(portal: Portal) -> dict[str, dict[str, Any]]:
    return {
        "a page": {"query": PAGE, "variables": {"first": 5}},
        "a filtered page": {"query": PAGE, "variables": {"first": 3, "filter": {"status": "FAILED"}}},
        "the next page": {"query": PAGE, "variables": {"first": 2, "after": None}},
        "a garbled cursor": {"query": PAGE, "variables": {"after": "garbage"}},
        "another partner's endpoint": {
            "query": PAGE,
            "variables": {"filter": {"endpointId": portal.subs["b"].id}},
        },
        "a status that does not exist": {"query": PAGE, "variables": {"filter": {"status": "NOPE"}}},
        "a page too large": {"query": PAGE, "variables": {"first": 1000}},
        "me, with an operation name": {
            "query": "query Me { me { id name kind grants } } query Other { me { id } }",
            "operationName": "Me",
        },
    }


async def test_a_prepared_query_is_answered_directly_with_the_views_bytes(
    portal_factory: PortalFactory,
) -> None:
    portal: Portal = await portal_factory()
    direct = portal.routes.direct
    assert direct is not None
    seen_codes: set[str] = set()
    for name, case in _cases(portal).items():
        body = {**case, "query": f"{case['query']}\n# {name}"}  # a text of its own: not prepared yet
        before = direct.answered
        first = await _raw(portal, body)  # strawberry's view: parses, validates, caches
        assert direct.answered == before, name
        second = await _raw(portal, body)
        assert direct.answered == before + 1, f"{name}: not answered directly"
        assert second == first, name
        assert first[0] == 200
        assert first[1].startswith("application/json")
        seen_codes.update(codes(json.loads(first[2])))
    # the cases above really cover answers with errors, not only data
    assert {"BAD_USER_INPUT"} <= seen_codes


async def test_a_page_answered_directly_has_the_lines_and_cursors_of_the_view(
    portal_factory: PortalFactory,
) -> None:
    portal: Portal = await portal_factory()
    first = json.loads((await _raw(portal, {"query": PAGE, "variables": {"first": 4}}))[2])
    edges = first["data"]["deliveries"]["edges"]
    assert len(edges) == 4
    cursor = first["data"]["deliveries"]["pageInfo"]["endCursor"]
    assert cursor == edges[-1]["cursor"]
    before = portal.routes.direct.answered  # type: ignore[union-attr]
    following = json.loads(
        (await _raw(portal, {"query": PAGE, "variables": {"first": 4, "after": cursor}}))[2]
    )
    assert portal.routes.direct.answered == before + 1  # type: ignore[union-attr]
    ids = [edge["node"]["id"] for edge in edges]
    next_ids = [edge["node"]["id"] for edge in following["data"]["deliveries"]["edges"]]
    assert next_ids
    assert not set(ids) & set(next_ids)  # a page further, none twice
    assert {edge["node"]["endpointId"] for edge in edges + following["data"]["deliveries"]["edges"]} == {
        portal.subs["a"].id
    }


@pytest.mark.parametrize(
    "case",
    ["mutation", "invalid document", "extensions", "a batch", "not json", "query as get"],
)
async def test_what_is_not_a_prepared_query_goes_to_the_view(
    portal_factory: PortalFactory, case: str
) -> None:
    portal: Portal = await portal_factory()
    direct = portal.routes.direct
    assert direct is not None
    headers: dict[str, str] = {}
    body: Any
    if case == "mutation":
        body = {"query": 'mutation { disableEndpoint(id: "nope") { id } }'}
    elif case == "invalid document":
        body = {"query": "{ me { id noSuchField } }"}
    elif case == "extensions":
        body = {"query": "{ me { id } }", "extensions": {"persistedQuery": {"version": 1}}}
    elif case == "a batch":
        body = [{"query": "{ me { id } }"}, {"query": "{ me { id } }"}]
    elif case == "not json":
        body = "{ me { id } }"
    else:
        body = None
    answers = []
    for _ in range(2):
        if body is None:
            async with portal.session.get(
                portal.url,
                params={"query": "{ me { id } }"},
                headers={"Authorization": f"Bearer {portal.key_a}"},
            ) as response:
                answers.append((response.status, await response.text()))
        else:
            status, _, text = await _raw(portal, body, headers=headers)
            answers.append((status, text))
    assert direct.answered == 0
    assert answers[0] == answers[1]
