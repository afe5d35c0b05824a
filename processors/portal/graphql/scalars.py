"""The portal schema's three scalars: ``Decimal``, ``DateTime`` and ``JSON``.

Resolvers and types annotate fields with the Python types (:class:`~decimal.Decimal`,
:class:`~datetime.datetime`) and :data:`JSON`; :data:`SCALAR_MAP` (given to the schema's
``StrawberryConfig``) maps them to these definitions:

* ``Decimal`` — exact, as a string (``"1234.50"``): a JSON number would be read as a float by
  most clients.  Input: a string or an integer; a float literal is taken from its text (never
  through a float); anything else is a ``BAD_USER_INPUT`` validation error.
* ``DateTime`` — ISO-8601 in UTC (``2026-12-06T17:36:16.123456+00:00``).  Input: ISO-8601 with
  an offset (``Z`` or ``±hh:mm``), converted to UTC; a time without an offset is refused (which
  zone it meant cannot be known).
* ``JSON`` — any JSON value (a projected body, a JSON Schema, a bordereau's rows).  Amounts in
  it stay :class:`~decimal.Decimal`; the view writes them digit for digit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NewType

import strawberry
from graphql import (
    BooleanValueNode,
    FloatValueNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    ObjectValueNode,
    StringValueNode,
    ValueNode,
)
from strawberry.types.scalar import ScalarDefinition

from processors.utc import to_utc

__all__ = [
    "JSON",
    "SCALAR_MAP",
    "DateTimeScalar",
    "DecimalScalar",
    "JsonScalar",
    "parse_datetime",
    "parse_decimal",
    "serialize_datetime",
    "serialize_decimal",
]

JSON = NewType("JSON", object)
"""Annotation of a ``JSON`` field (any JSON value)."""

_MAX_DECIMAL_CHARS: Final = 64
_MAX_DATETIME_CHARS: Final = 64


def serialize_decimal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError("a Decimal field resolved to something that is not a decimal")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError("a Decimal field resolved to a non-finite value")
    return format(amount, "f")


def parse_decimal(value: Any) -> Decimal:
    """A decimal from a variable's value: a string or an integer (a float is refused: it is
    not exact); ``ValueError`` with the rule otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('a Decimal is a string such as "1234.50"')
    text = str(value).strip()
    if len(text) > _MAX_DECIMAL_CHARS:
        raise ValueError(f"a Decimal has at most {_MAX_DECIMAL_CHARS} characters")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError('a Decimal is a string such as "1234.50"') from None
    if not amount.is_finite():
        raise ValueError("a Decimal must be finite")
    return amount


def _parse_decimal_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> Decimal:
    if isinstance(node, StringValueNode | IntValueNode | FloatValueNode):
        return parse_decimal(node.value)
    raise ValueError('a Decimal is a string such as "1234.50"')


def serialize_datetime(value: Any) -> str:
    if not isinstance(value, datetime):
        raise TypeError("a DateTime field resolved to something that is not a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a DateTime field resolved to a time without a zone")
    return value.astimezone(UTC).isoformat()


def parse_datetime(value: Any) -> datetime:
    """A UTC datetime from ISO-8601 text with an offset; ``ValueError`` with the rule otherwise."""
    if not isinstance(value, str):
        raise ValueError("a DateTime is ISO-8601 text with an offset, such as 2026-01-31T12:00:00Z")
    text = value.strip()
    if len(text) > _MAX_DATETIME_CHARS:
        raise ValueError(f"a DateTime has at most {_MAX_DATETIME_CHARS} characters")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("a DateTime is ISO-8601 text with an offset, such as 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a DateTime must carry its offset (Z or +hh:mm): a time without a zone is ambiguous")
    try:
        return to_utc(moment)
    except ValueError as exc:
        raise ValueError(f"a DateTime {exc}") from None


def _parse_datetime_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> datetime:
    if isinstance(node, StringValueNode):
        return parse_datetime(node.value)
    raise ValueError("a DateTime is ISO-8601 text with an offset, such as 2026-01-31T12:00:00Z")


def _serialize_json(value: Any) -> Any:
    return value


def _parse_json(value: Any) -> Any:
    return value


def _parse_json_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, StringValueNode):
        return node.value
    if isinstance(node, BooleanValueNode):
        return node.value
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, FloatValueNode):
        return Decimal(node.value)
    if isinstance(node, ListValueNode):
        return [_parse_json_literal(item, variables) for item in node.values]
    if isinstance(node, ObjectValueNode):
        return {field.name.value: _parse_json_literal(field.value, variables) for field in node.fields}
    raise ValueError("not a JSON value")


DecimalScalar: Final[ScalarDefinition] = strawberry.scalar(
    name="Decimal",
    description='A decimal amount, exact, as a string ("1234.50").',
    serialize=serialize_decimal,
    parse_value=parse_decimal,
    parse_literal=_parse_decimal_literal,
)

DateTimeScalar: Final[ScalarDefinition] = strawberry.scalar(
    name="DateTime",
    description='An ISO-8601 time in UTC ("2026-12-06T17:36:16.123456+00:00").',
    serialize=serialize_datetime,
    parse_value=parse_datetime,
    parse_literal=_parse_datetime_literal,
)

JsonScalar: Final[ScalarDefinition] = strawberry.scalar(
    name="JSON",
    description="A JSON value (a projected event body, a JSON Schema).",
    serialize=_serialize_json,
    parse_value=_parse_json,
    parse_literal=_parse_json_literal,
)

SCALAR_MAP: Final[dict[object, ScalarDefinition]] = {
    Decimal: DecimalScalar,
    datetime: DateTimeScalar,
    JSON: JsonScalar,
}
"""What the schema's ``StrawberryConfig(scalar_map=...)`` maps (see the module docstring)."""
