"""The common request answered without strawberry's request pipeline: a query, POSTed as
JSON, whose text the schema has prepared before.

Almost every request the portal serves is one of the portal page's own queries, sent again and
again with new variables.  strawberry answers each through its HTTP view and its schema's
execute: a request adapter, an execution context, a runner for every extension hook, and the
operation checks, for a document whose parse and validation are already cached
(:class:`~.schema.DocumentCache`).  :class:`DirectQueries` runs such a request on graphql-core
itself, with the schema's own types, resolvers and execution context
(:class:`~.plans.PlannedExecutionContext`), codes its errors with the same function as the
schema's :class:`~.errors.ErrorCodes` extension, and writes the response document strawberry
would write.

It answers only when all of these hold, and otherwise returns ``None`` so that strawberry's
view answers (and reports whatever is wrong the usual way):

* ``POST`` with a JSON content type, no streaming ``Accept`` (SSE, multipart);
* a body that is a JSON object with a string ``query``, ``variables`` an object or absent,
  ``operationName`` a string or absent, and no ``extensions``;
* the text is in the document cache without validation errors (its first request went through
  strawberry, which parsed and validated it with every rule and limit);
* the operation it names is a **query** (mutations keep strawberry's path, audit and all;
  subscriptions are WebSocket only);
* nothing outside graphql-core's own error handling is raised while executing.  A query only
  reads, so strawberry's view may run it again from the start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from cross_web import parse_content_type
from graphql import OperationType, execute, get_operation_ast
from strawberry.execution.is_awaitable import optimized_is_awaitable

from processors.portal.graphql.context import PortalContext
from processors.portal.graphql.errors import coded
from processors.portal.graphql.schema import PortalSchema

__all__ = ["DirectQueries"]

log = logging.getLogger(__name__)


class DirectQueries:
    """See the module docstring.  ``stream_transport(headers)`` is the view's own test for an
    ``Accept`` that asks for a streamed answer."""

    def __init__(self, schema: PortalSchema, stream_transport: Any) -> None:
        if schema.documents is None:
            raise ValueError("direct queries need the schema's document cache (build_schema)")
        self._documents = schema.documents
        self._schema = schema._schema
        self._executor_class = schema.execution_context_class
        self._stream_transport = stream_transport
        self.answered = 0
        """Requests answered here (the rest went to strawberry's view)."""

    async def answer(self, request: web.Request, context: PortalContext) -> dict[str, Any] | None:
        """The response document, or ``None``: strawberry's view answers this request."""
        if request.method != "POST":
            return None
        media_type, _ = parse_content_type(request.headers.get("Content-Type", ""))
        if "application/json" not in media_type or self._stream_transport(request.headers) is not None:
            return None
        body = await request.read()  # kept by aiohttp: the view can read it again
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("extensions") is not None:
            return None
        query, variables, name = data.get("query"), data.get("variables"), data.get("operationName")
        if (
            not isinstance(query, str)
            or not (variables is None or isinstance(variables, dict))
            or not (name is None or isinstance(name, str))
        ):
            return None
        prepared = self._documents.lookup(query)
        if prepared is None or prepared[1]:
            return None
        document = prepared[0]
        operation = get_operation_ast(document, name)
        if operation is None or operation.operation != OperationType.QUERY:
            return None
        try:
            result = execute(
                self._schema,
                document,
                root_value=None,
                context_value=context,
                variable_values=variables,
                operation_name=name,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # as strawberry passes it
                executor_class=self._executor_class,
                operation_extensions=None,
            )
            if isinstance(result, Awaitable):
                result = await result
        except Exception as exc:  # strawberry's pipeline answers it, and reports it its way
            log.debug("portal graphql: a direct query gave way to the view (%s)", type(exc).__name__)
            return None
        self.answered += 1
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [coded(error).formatted for error in result.errors]
        return answer
