"""Plans complete plain object values exactly as graphql-core does (``processors.portal.graphql.plans``).

Every document here runs on two schemas of the same types: one completing plain values by
plan (the portal's), one with strawberry's own execution (no plans).  Their answers — data,
errors with their messages and paths — must be equal, including where a plan must give way
to graphql-core (a null in a non-null field, an attribute that raises, a scalar that refuses
its value, a directive that depends on the variables).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from functools import partial
from typing import Any

import pytest
import strawberry
from graphql import GraphQLError
from graphql.execution import executor as graphql_executor
from strawberry.schema.config import StrawberryConfig

from processors.portal.graphql.plans import PlannedExecutionContext, plan_count
from processors.portal.graphql.scalars import SCALAR_MAP
from processors.portal.graphql.schema import DocumentCache, PortalSchema, PreparedDocuments


@strawberry.enum
class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.type
class Leaf:
    name: str
    size: int | None
    colour: Colour
    at: datetime
    amount: Decimal | None


@strawberry.type
class Item:
    id: strawberry.ID
    must: str
    leaves: list[Leaf]
    best: Leaf | None
    tags: list[str | None]
    ratio: float | None

    @strawberry.field
    def shout(self, times: int = 1) -> str:
        return self.must.upper() * times


@strawberry.type
class Page:
    items: list[Item]
    total: int


AT = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


def _leaf(index: int, **changes: Any) -> Leaf:
    values: dict[str, Any] = {
        "name": f"leaf-{index}",
        "size": index if index % 2 else None,
        "colour": Colour.RED if index % 3 else Colour.BLUE,
        "at": AT + timedelta(minutes=index),
        "amount": Decimal("1234.50") if index % 2 else None,
    }
    values.update(changes)
    return Leaf(**values)


def _item(index: int, **changes: Any) -> Item:
    values: dict[str, Any] = {
        "id": strawberry.ID(f"item-{index}"),
        "must": f"must-{index}",
        "leaves": [_leaf(index * 10 + n) for n in range(3)],
        "best": _leaf(index) if index % 2 else None,
        "tags": ["a", None, "c"],
        "ratio": index / 7 if index % 2 else None,
    }
    values.update(changes)
    return Item(**values)


class Raising:
    """Duck-typed ``Leaf`` whose ``name`` raises when read."""

    size = 1
    colour = Colour.RED
    at = AT
    amount = None

    @property
    def name(self) -> str:
        raise ValueError("the name cannot be read")


PAGES: dict[str, Page] = {
    "plain": Page(items=[_item(n) for n in range(4)], total=4),
    "null-in-non-null": Page(items=[_item(0), _item(1, must=None), _item(2)], total=3),
    "null-in-non-null-list-item": Page(items=[_item(0, leaves=[_leaf(1), None])], total=1),
    "raising-attribute": Page(items=[_item(0, best=Raising())], total=1),
    "refused-scalar": Page(items=[_item(0, leaves=[_leaf(1, size="not a number")])], total=1),
    "naive-time": Page(items=[_item(1, best=_leaf(1, at=datetime(2026, 1, 1)))], total=1),
    "offset-time": Page(
        items=[_item(1, best=_leaf(1, at=datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=2)))))],
        total=1,
    ),
    "not-a-list": Page(items=[_item(0, tags="abc")], total=1),
    "empty": Page(items=[], total=0),
}


@strawberry.type
class Query:
    @strawberry.field
    def page(self, name: str) -> Page:
        return PAGES[name]

    @strawberry.field
    def maybe_page(self, name: str) -> Page | None:
        return PAGES[name]


def _schema(*, planned: bool) -> strawberry.Schema:
    config = StrawberryConfig(scalar_map=SCALAR_MAP)
    if planned:
        # as the portal's: a repeated text is parsed once, so its field nodes are the same objects
        documents = DocumentCache([], max_tokens=10_000, maxsize=100)
        return PortalSchema(
            query=Query,
            config=config,
            extensions=[partial(PreparedDocuments, documents)],
            execution_context_class=PlannedExecutionContext,
        )
    return strawberry.Schema(query=Query, config=config)


PLANNED = _schema(planned=True)
GENERAL = _schema(planned=False)

EVERY_FIELD = """
query Q($name: String!) {
  page(name: $name) {
    total
    items {
      id must tags ratio
      leaves { name size colour at amount }
      best { name size colour at amount }
    }
  }
}"""

DOCUMENTS: dict[str, str] = {
    "every field": EVERY_FIELD,
    "aliases and repeats": """
query Q($name: String!) {
  p: page(name: $name) {
    n: total
    items { first: id id again: id best { a: name b: name } }
    items { must best { size } }
  }
}""",
    "fragments": """
query Q($name: String!) {
  page(name: $name) { ...P }
}
fragment P on Page { total items { ...I ... on Item { tags } } }
fragment I on Item { id leaves { ...L } }
fragment L on Leaf { name colour }
""",
    "typename": """
query Q($name: String!) {
  page(name: $name) { __typename items { __typename id best { __typename name } } }
}""",
    "a field with a resolver inside": """
query Q($name: String!) {
  page(name: $name) { items { id shout(times: 2) leaves { name } } }
}""",
    "nullable root": """
query Q($name: String!) {
  maybePage(name: $name) { total items { must leaves { name size } } }
}""",
}


def _answer(schema: strawberry.Schema, document: str, variables: dict[str, Any]) -> tuple[Any, Any]:
    result = schema.execute_sync(document, variable_values=variables)
    errors = sorted(
        (error.message, tuple(error.path or ()))
        for error in (result.errors or [])
        if isinstance(error, GraphQLError)
    )
    return result.data, errors


@pytest.mark.parametrize("page", sorted(PAGES))
@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_a_planned_answer_is_graphql_cores_answer(document: str, page: str) -> None:
    variables = {"name": page}
    assert _answer(PLANNED, DOCUMENTS[document], variables) == _answer(
        GENERAL, DOCUMENTS[document], variables
    )


def test_surprises_are_reported_as_graphql_core_reports_them() -> None:
    """Not only equal: the cases where a plan gives way really are errors, with paths."""
    data, errors = _answer(PLANNED, EVERY_FIELD, {"name": "null-in-non-null"})
    assert data is None  # page is non-null, items[1].must is non-null: the null goes up to the root
    assert errors == [("Cannot return null for non-nullable field Item.must.", ("page", "items", 1, "must"))]

    data, errors = _answer(PLANNED, EVERY_FIELD, {"name": "raising-attribute"})
    assert errors == [("the name cannot be read", ("page", "items", 0, "best", "name"))]
    assert data["page"]["items"][0]["best"] is None
    assert data["page"]["items"][0]["leaves"][0]["name"] == "leaf-0"


@pytest.mark.parametrize("include", [True, False])
def test_a_selection_with_a_directive_follows_its_variables(include: bool) -> None:
    document = """
query Q($name: String!, $more: Boolean!) {
  page(name: $name) { items { id leaves { name size @include(if: $more) } } }
}"""
    variables = {"name": "plain", "more": include}
    planned = _answer(PLANNED, document, variables)
    assert planned == _answer(GENERAL, document, variables)
    assert ("size" in planned[0]["page"]["items"][0]["leaves"][0]) is include


def test_a_plain_page_is_completed_without_a_field_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of a plan: graphql-core executes the root field, not each field of the page."""
    calls: list[str] = []
    original = graphql_executor.Executor.execute_field

    def counting(self: Any, parent_type: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(parent_type.name)
        return original(self, parent_type, *args, **kwargs)

    monkeypatch.setattr(graphql_executor.Executor, "execute_field", counting)
    planned = _answer(PLANNED, EVERY_FIELD, {"name": "plain"})
    assert calls == ["Query"]
    calls.clear()
    assert _answer(GENERAL, EVERY_FIELD, {"name": "plain"}) == planned
    assert len(calls) > 90  # the general way: every field of every item (97 here)


def test_a_plan_is_made_once_per_document() -> None:
    unique = EVERY_FIELD.replace("total", "total   ")  # a new text: a new parse, new nodes
    _answer(PLANNED, unique, {"name": "plain"})
    after_first = plan_count()
    for page in ("plain", "empty", "null-in-non-null"):
        _answer(PLANNED, unique, {"name": page})
    assert plan_count() == after_first
