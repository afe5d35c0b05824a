"""What the portal API does once instead of per request, and that it answers the same.

* A document's text is parsed and validated once (:class:`DocumentCache`); an invalid
  document is refused the same way every time, and one that does not parse is never kept.
* A field without a resolver reads its attribute in one call: the same value as strawberry's
  own resolver, for every such field of the schema.
* Request ids are cheap and still unique; cursors are the same MAC as hashing the whole
  message, and still refused for another owner or list.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import GraphQLEnumType, GraphQLError, GraphQLObjectType, GraphQLSchema
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from processors.portal.config import GraphqlSettings
from processors.portal.graphql import schema as schema_module
from processors.portal.graphql import view
from processors.portal.graphql.schema import build_schema
from processors.portal.graphql.types import DeliveryAttempt, DeliveryStatus, PartnerKind
from processors.portal.queries import CursorCodec, DeliveryPosition, InvalidCursor
from tests import portal_samples as samples


def _counting_validation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = schema_module.validate_document

    def counted(schema: GraphQLSchema, document: Any, rules: Any) -> Any:
        calls.append(1)
        return real(schema, document, rules)

    monkeypatch.setattr(schema_module, "validate_document", counted)
    return calls


async def test_a_repeated_document_is_parsed_and_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_validation(monkeypatch)
    schema = build_schema()
    for _ in range(3):
        result = await schema.execute("query Name { __typename }")
        assert (result.errors, result.data) == (None, {"__typename": "Query"})
    assert len(calls) == 1
    await schema.execute("query Other { __typename }")  # another text, another entry
    assert len(calls) == 2
    fresh = build_schema().documents  # per schema: its own limits
    assert fresh is not None
    assert not fresh._prepared


async def test_an_invalid_document_is_refused_alike_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_validation(monkeypatch)
    schema = build_schema(GraphqlSettings(max_depth=2))
    deep = "{ deliveries { edges { node { id } } } }"  # deeper than 2
    answers = []
    for _ in range(2):
        result = await schema.execute(deep)
        assert result.data is None
        assert result.errors
        answers.append([(e.message, (e.extensions or {}).get("code")) for e in result.errors])
    assert answers[0] == answers[1]
    assert {code for _, code in answers[0]} == {"GRAPHQL_VALIDATION_FAILED"}
    assert len(calls) == 1
    unknown = await schema.execute("{ nothingHere }")
    assert unknown.errors
    assert unknown.errors[0].extensions == {"code": "GRAPHQL_VALIDATION_FAILED"}


async def test_a_document_that_does_not_parse_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_validation(monkeypatch)
    schema = build_schema(GraphqlSettings(max_tokens=50))
    for text in ("{ me { id ", "{ " + "me { id } " * 30 + "}"):  # broken; over the token limit
        for _ in range(2):
            result = await schema.execute(text)
            assert result.errors
            assert [e.extensions for e in result.errors] == [{"code": "GRAPHQL_PARSE_FAILED"}]
    assert calls == []


def test_the_cache_keeps_at_most_its_size() -> None:
    schema = build_schema()
    cache = schema_module.DocumentCache([], max_tokens=100, maxsize=2)

    class Context:
        validation_rules: tuple[Any, ...] = ()

        class schema:
            _schema = schema._schema

    first = cache.prepared("{ __typename }", Context)  # type: ignore[arg-type]
    cache.prepared("query A { __typename }", Context)  # type: ignore[arg-type]
    assert cache.prepared("{ __typename }", Context) is first  # type: ignore[arg-type]  # most recent now
    cache.prepared("query B { __typename }", Context)  # type: ignore[arg-type]  # "query A" goes
    assert cache.prepared("{ __typename }", Context) is first  # type: ignore[arg-type]
    assert len(cache._prepared) == 2
    assert "query A { __typename }" not in cache._prepared


def test_fields_without_a_resolver_read_their_attribute_in_one_call() -> None:
    core = build_schema()._schema
    replaced = 0
    for named in core.type_map.values():
        if not isinstance(named, GraphQLObjectType) or named.name.startswith("__"):
            continue
        for name, field in named.fields.items():
            definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
            assert isinstance(definition, StrawberryField)
            if definition.is_basic_field:
                assert field.resolve is not None, (named.name, name)
                assert field.resolve.__name__ == "resolve", (named.name, name)
                replaced += 1
            else:  # a resolver of the project's keeps strawberry's wrapper (arguments, errors)
                assert field.resolve is None or field.resolve.__name__ != "resolve", (named.name, name)
    assert replaced >= 50
    attempt = core.type_map["DeliveryAttempt"]
    assert isinstance(attempt, GraphQLObjectType)
    row = _row()
    node = DeliveryAttempt.from_row(row)
    for name, field in attempt.fields.items():
        definition = field.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
        assert field.resolve is not None
        assert field.resolve(node, None) == getattr(node, definition.python_name), name


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "log_partition": 2,
        "log_offset": 41,
        "webhook_id": "msg_1",
        "subscription_id": "sub_1",
        "event_id": "evt_1",
        "event_type": "policy.issued",
        "attempt": 1,
        "status": "failed",
        "http_status": 503,
        "latency_ms": 12.5,
        "error": "HTTP 503",
        "response_excerpt": "x" * 2_000,
        "attempted_at": samples.NOW,
        "url_host": "partner.example.com",
        "next_step": "retry",
        "job_topic": "t.dispatch",
        "job_partition": 0,
        "job_offset": 7,
    }
    row.update(changes)
    return row


def test_a_line_reads_every_status_and_refuses_an_unknown_one() -> None:
    for status in DeliveryStatus:
        assert DeliveryAttempt.from_row(_row(status=status.value)).status is status
    node = DeliveryAttempt.from_row(_row())
    assert (node.id, node.response_body is not None and len(node.response_body)) == ("2:41", 1_024)
    with pytest.raises(ValueError, match="lost"):
        DeliveryAttempt.from_row(_row(status="lost"))


def test_request_ids_are_unique_and_say_nothing() -> None:
    ids = [view._request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    prefixes = {i.split("-")[0] for i in ids}
    assert len(prefixes) == 1
    assert re.fullmatch(r"[0-9a-f]{16}", prefixes.pop())
    assert all(len(i) <= 64 for i in ids)


def test_a_cursor_is_the_mac_of_the_whole_message() -> None:
    key = b"k" * 32
    codec = CursorCodec(key)
    position = DeliveryPosition(datetime(2025, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC), 3, 99)
    for owner in ("prt_a", "prt_b", "prt_a"):  # a kept state serves its owner only
        cursor = codec.delivery(owner, position)
        payload = b"[1740830400123456,3,99]"
        message = b"deliveries\x00" + owner.encode() + b"\x00" + payload
        tag = hashlib.blake2b(message, key=key, digest_size=16).digest()
        assert cursor == base64.urlsafe_b64encode(tag + payload).rstrip(b"=").decode("ascii")
        assert codec.read_delivery(owner, cursor) == position
    with pytest.raises(InvalidCursor):
        codec.read_delivery("prt_b", codec.delivery("prt_a", position))
    with pytest.raises(InvalidCursor):
        codec.read_bordereau("prt_a", codec.delivery("prt_a", position))
    with pytest.raises(InvalidCursor):
        CursorCodec(b"another key").read_delivery("prt_a", codec.delivery("prt_a", position))


def test_enum_members_are_named_as_strawberry_names_them() -> None:
    core = build_schema()._schema
    status = core.type_map["DeliveryStatus"]
    assert isinstance(status, GraphQLEnumType)
    assert [status.coerce_output_value(member) for member in DeliveryStatus] == [
        "DELIVERED",
        "FAILED",
        "REFUSED",
        "SKIPPED",
        "DISABLED",
    ]
    assert status.coerce_output_value("failed") == "FAILED"  # a plain value, as before
    for wrong in (PartnerKind.BROKER, "lost", ["unhashable"]):
        with pytest.raises(GraphQLError):
            status.coerce_output_value(wrong)
