"""The portal's GraphQL schema: ``Query``, ``Mutation`` and ``Subscription`` with the limits.

Why strawberry-graphql: the schema is written as typed Python (dataclass-like types that mypy
checks, resolvers beside the fields they answer), the SDL is printed from it and compared with
the published contract (``docs/portal-schema.graphql``) by a test, and it ships what the portal
needs — an aiohttp view, the ``graphql-transport-ws`` protocol for subscriptions, validation
extensions for depth, tokens and aliases, and data loaders.  Ariadne is schema-first (the SDL
is the source and resolvers are bound by name), which leaves the link between the contract and
the Python types to runtime.

:func:`build_schema` assembles the three root types with, in this order:

* :class:`~processors.portal.graphql.errors.ErrorCodes` — ``extensions.code`` on every error,
  anything unexpected answered as ``INTERNAL`` (logged, never shown);
* :class:`PreparedDocuments` — the token limit while parsing, the validation rules of
  strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter``, the cost rule
  (:func:`~processors.portal.graphql.limits.cost_rule`), and graphql's
  ``NoSchemaIntrospectionCustomRule`` (what ``DisableIntrospection`` adds) unless
  ``introspection`` is on; a repeated document is parsed and validated once
  (:class:`DocumentCache`: every rule here depends on the document only, never on variables).

Batching (a list of operations in one request) is off: strawberry answers it 400.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from functools import partial
from typing import Any, Final

import strawberry
from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    parse,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import validate_document
from strawberry.schema.schema_converter import CustomGraphQLEnumType, GraphQLCoreConverter
from strawberry.types import ExecutionContext
from strawberry.types.field import StrawberryField

from processors.portal.config import GraphqlSettings
from processors.portal.graphql.errors import ErrorCodes
from processors.portal.graphql.limits import cost_rule
from processors.portal.graphql.mutation import Mutation
from processors.portal.graphql.plans import PlannedExecutionContext, attribute_resolver
from processors.portal.graphql.query import Query
from processors.portal.graphql.scalars import SCALAR_MAP
from processors.portal.graphql.subscription import Subscription

__all__ = ["DocumentCache", "PortalSchema", "PreparedDocuments", "build_schema"]

_CACHE_SIZE: Final = 1_000


class PortalSchema(strawberry.Schema):
    """strawberry's schema without its error log: strawberry logs every error of a result with
    its traceback, whose messages may hold the caller's input or an exception's text.  Here the
    errors a caller made are answered, not logged, and an unexpected one is logged by
    :class:`~processors.portal.graphql.errors.ErrorCodes` with where it happened only."""

    documents: DocumentCache | None = None
    """The schema's prepared documents (set by :func:`build_schema`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _read_attributes_directly(self._schema)
        _name_enum_members_directly(self._schema)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


_BASIC_RESOLVER: Final = "_get_basic_result"
"""What strawberry names the resolver it gives a field without one."""


def _read_attributes_directly(schema: GraphQLSchema) -> None:
    """Every field without a resolver reads its attribute in one call.

    strawberry answers such a field (``DeliveryAttempt.status``) with a resolver that calls
    ``StrawberryField.get_result``, which reads two properties to call the configured default
    resolver, ``getattr(source, python_name)``: three Python calls per field of every item of
    a page.  This gives the field a resolver doing that ``getattr`` itself — the same value,
    the same errors — and changes nothing else (a field with a resolver, extensions,
    permissions or error handlers keeps strawberry's)."""
    for named in schema.type_map.values():
        if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            continue
        for field in named.fields.values():
            definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
            resolver = field.resolve
            if (
                isinstance(definition, StrawberryField)
                and definition.is_basic_field
                and definition.default_resolver is getattr
                and resolver is not None
                and getattr(resolver, "__name__", None) == _BASIC_RESOLVER
            ):
                field.resolve = attribute_resolver(definition.python_name)


def _name_enum_members_directly(schema: GraphQLSchema) -> None:
    """An enum member is written as its GraphQL name with one dictionary read.

    strawberry's enum type finds a member's name by comparing its value with every value of
    the enum, in turn (``DeliveryStatus`` once per line of a page).  The name of each member
    is known when the schema is built; anything that is not one of them (a plain value) goes
    through strawberry's own method, which answers or refuses it as before."""
    for named in schema.type_map.values():
        if isinstance(named, CustomGraphQLEnumType):
            members: list[Enum] = list(named.wrapped_cls)
            names: dict[Any, str] = {
                member: name
                for name, value in named.values.items()
                for member in members
                if member.value == value.value
            }
            named.coerce_output_value = _enum_names(names, named.coerce_output_value)  # type: ignore[method-assign,assignment]


def _enum_names(names: dict[Any, str], otherwise: Callable[[Any], str]) -> Callable[[Any], str]:
    def coerce_output_value(value: Any) -> str:
        try:
            return names[value]
        except (KeyError, TypeError):  # not a member (or not hashable): strawberry's way
            return otherwise(value)

    return coerce_output_value


class DocumentCache:
    """Per schema: a document's text → its parsed document and its validation errors (at most
    ``maxsize`` texts, the least recently used go first).  Parsing keeps the token limit;
    validation runs graphql's rules, strawberry's own and ``rules`` (the limits) — every one
    of them depends on the document only, never on variables, so one result serves every
    request that sends the same text.  A text that does not parse is not kept."""

    def __init__(self, rules: Sequence[type[ASTValidationRule]], *, max_tokens: int, maxsize: int) -> None:
        self.rules = tuple(rules)
        self.max_tokens = max_tokens
        self._prepared: OrderedDict[str, tuple[DocumentNode, list[GraphQLError]]] = OrderedDict()
        self._maxsize = maxsize
        self._lock = threading.Lock()

    def lookup(self, query: str) -> tuple[DocumentNode, list[GraphQLError]] | None:
        """The document of ``query`` and its validation errors if it was prepared before."""
        with self._lock:
            found = self._prepared.get(query)
            if found is not None:
                self._prepared.move_to_end(query)
            return found

    def prepared(self, query: str, context: ExecutionContext) -> tuple[DocumentNode, list[GraphQLError]]:
        """The document of ``query`` and its validation errors (``GraphQLError`` or
        ``RecursionError`` when it does not parse)."""
        found = self.lookup(query)
        if found is not None:
            return found
        document = parse(query, max_tokens=self.max_tokens)
        prepared = (document, validate_document(context.schema._schema, document, context.validation_rules))
        with self._lock:
            self._prepared[query] = prepared
            while len(self._prepared) > self._maxsize:
                self._prepared.popitem(last=False)
        return prepared


class PreparedDocuments(SchemaExtension):
    """Parses and validates a document once for every request that sends it again
    (:class:`DocumentCache`), with the limits' token count and validation rules.

    One extension for what strawberry's ``MaxTokensLimiter``, ``AddValidationRules``,
    ``ParserCache`` and ``ValidationCache`` do together: one hook per step instead of four,
    and a cache keyed by the document's text (strawberry's validation cache keys on the
    parsed document, which hashes every node of it on every request).  A document that
    does not parse is left to strawberry's own parse step, which reports the error inside the
    operation (where :class:`~processors.portal.graphql.errors.ErrorCodes` codes it) instead
    of raising out of it."""

    def __init__(self, cache: DocumentCache) -> None:
        self._cache = cache
        self._errors: list[GraphQLError] | None = None

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self._cache.max_tokens
        context.validation_rules = context.validation_rules + self._cache.rules
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is None:
            # a document that does not parse is parsed again by strawberry, which reports it
            with contextlib.suppress(GraphQLError, RecursionError):
                context.graphql_document, self._errors = self._cache.prepared(context.query, context)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if self._errors is not None and context.pre_execution_errors is None:
            context.pre_execution_errors = self._errors  # strawberry then skips its validation
        yield


def build_schema(settings: GraphqlSettings | None = None) -> PortalSchema:
    """The schema with the limits of ``settings`` (default: the defaults)."""
    limits = settings if settings is not None else GraphqlSettings()
    rules: list[type[ASTValidationRule]] = [
        depth_rule(limits.max_depth, None),
        aliases_rule(limits.max_aliases),
        cost_rule(max_cost=limits.max_cost, max_page_size=limits.max_page_size, list_size=limits.list_size),
    ]
    if not limits.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    documents = DocumentCache(rules, max_tokens=limits.max_tokens, maxsize=_CACHE_SIZE)
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        ErrorCodes,
        partial(PreparedDocuments, documents),
    ]
    schema = PortalSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=PlannedExecutionContext,
        # without introspection, no "did you mean" naming fields the caller did not ask for
        config=StrawberryConfig(scalar_map=SCALAR_MAP, disable_field_suggestions=not limits.introspection),
    )
    schema.documents = documents
    return schema
