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
* strawberry's ``MaxTokensLimiter``, the validation rules of its ``QueryDepthLimiter`` and
  ``MaxAliasesLimiter``, the cost rule (:func:`~processors.portal.graphql.limits.cost_rule`),
  and graphql's ``NoSchemaIntrospectionCustomRule`` (what ``DisableIntrospection`` adds) unless
  ``introspection`` is on;
* a parse cache (:class:`ParseCache`) and strawberry's validation cache (a repeated document is
  parsed and validated once; every rule here depends on the document only, never on
  variables).

Batching (a list of operations in one request) is off: strawberry answers it 400.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import lru_cache, partial
from typing import Final

import strawberry
from graphql import ASTValidationRule, DocumentNode, GraphQLError, parse
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from processors.portal.config import GraphqlSettings
from processors.portal.graphql.errors import ErrorCodes
from processors.portal.graphql.limits import cost_rule
from processors.portal.graphql.mutation import Mutation
from processors.portal.graphql.query import Query
from processors.portal.graphql.scalars import SCALAR_MAP
from processors.portal.graphql.subscription import Subscription

__all__ = ["ParseCache", "PortalSchema", "build_schema"]

_CACHE_SIZE: Final = 1_000


class PortalSchema(strawberry.Schema):
    """strawberry's schema without its error log: strawberry logs every error of a result with
    its traceback, whose messages may hold the caller's input or an exception's text.  Here the
    errors a caller made are answered, not logged, and an unexpected one is logged by
    :class:`~processors.portal.graphql.errors.ErrorCodes` with where it happened only."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


@lru_cache(maxsize=_CACHE_SIZE)
def _parse(query: str, max_tokens: int | None) -> DocumentNode:
    return parse(query, max_tokens=max_tokens)


class ParseCache(SchemaExtension):
    """Parses a document once for every request that sends it again.

    Unlike strawberry's ``ParserCache``, a document that does not parse is left to strawberry's
    own parse step, which reports the error inside the operation (where
    :class:`~processors.portal.graphql.errors.ErrorCodes` codes it) instead of raising out of
    it."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is None:
            # a document that does not parse is parsed again by strawberry, which reports it
            with contextlib.suppress(GraphQLError, RecursionError):
                context.graphql_document = _parse(context.query, context.parse_options.get("max_tokens"))
        yield


def build_schema(settings: GraphqlSettings | None = None) -> strawberry.Schema:
    """The schema with the limits of ``settings`` (default: the defaults)."""
    limits = settings if settings is not None else GraphqlSettings()
    # The rules are made once: the validation cache keys on them, so a document validated for
    # one request is not validated again for the next.
    rules: list[type[ASTValidationRule]] = [
        depth_rule(limits.max_depth, None),
        aliases_rule(limits.max_aliases),
        cost_rule(max_cost=limits.max_cost, max_page_size=limits.max_page_size, list_size=limits.list_size),
    ]
    if not limits.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        ErrorCodes,
        partial(MaxTokensLimiter, max_token_count=limits.max_tokens),
        partial(AddValidationRules, rules),
        ParseCache,
        partial(ValidationCache, maxsize=_CACHE_SIZE),
    ]
    return PortalSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        # without introspection, no "did you mean" naming fields the caller did not ask for
        config=StrawberryConfig(scalar_map=SCALAR_MAP, disable_field_suggestions=not limits.introspection),
    )
