"""The portal API's errors: every error a client sees carries ``extensions.code``.

========================  =====================================================================
code                      meaning
========================  =====================================================================
``UNAUTHENTICATED``       no partner key, or a key that is not valid (revoked, expired, unknown)
``FORBIDDEN``             the caller may not do this (an operator token on ``/graphql``; a
                          partner of another kind asking for bordereaux answers an empty list)
``NOT_FOUND``             no such thing *for this caller*: another partner's id is answered
                          exactly like an id that does not exist
``BAD_USER_INPUT``        an argument breaks a rule (page size, a garbled cursor, a bad URL)
``RATE_LIMITED``          the key's request budget is spent; ``extensions.retryAfterS`` says
                          when to try again
``UNAVAILABLE``           a part the answer needs (the query store, the broker) does not answer
                          now; try again
``LAGGED``                a live feed fell too far behind (its client did not read fast
                          enough) and was ended; subscribe again, read the gap from
                          ``deliveries``
``INTERNAL``              anything else: logged on the server, answered with a generic message
``GRAPHQL_PARSE_FAILED``  the document is not GraphQL
``GRAPHQL_VALIDATION_FAILED``  the document does not fit the schema or a limit (depth, cost,
                          tokens, aliases)
========================  =====================================================================

Resolvers raise a :class:`PortalError` subclass; :class:`ErrorCodes` (a schema extension) puts
the code on every error of a result and replaces anything unexpected with ``INTERNAL``.  An
error's message never holds a stack trace, SQL, an internal class name or another partner's data.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, Final

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult as StrawberryExecutionResult

__all__ = [
    "INTERNAL_MESSAGE",
    "BadUserInput",
    "ErrorCode",
    "ErrorCodes",
    "Forbidden",
    "Lagged",
    "NotFound",
    "PortalError",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "coded",
    "error_document",
    "raised_at",
]

log = logging.getLogger(__name__)

INTERNAL_MESSAGE: Final = "internal error; the request was logged"


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    RATE_LIMITED = "RATE_LIMITED"
    UNAVAILABLE = "UNAVAILABLE"
    LAGGED = "LAGGED"
    INTERNAL = "INTERNAL"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"


class PortalError(Exception):
    """An error whose message is safe to show the caller; ``code`` goes in ``extensions.code``."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, extensions: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = dict(extensions or {})


class Unauthenticated(PortalError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(PortalError):
    code = ErrorCode.FORBIDDEN


class NotFound(PortalError):
    """No such thing for this caller (another partner's id reads exactly like a missing one)."""

    code = ErrorCode.NOT_FOUND


class BadUserInput(PortalError):
    code = ErrorCode.BAD_USER_INPUT


class RateLimited(PortalError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(
            f"too many requests for this key; retry in {seconds} s", extensions={"retryAfterS": seconds}
        )
        self.retry_after_s = seconds


class Unavailable(PortalError):
    code = ErrorCode.UNAVAILABLE


class Lagged(PortalError):
    """A live feed whose client fell too far behind (``Subscription.feed``)."""

    code = ErrorCode.LAGGED


def coded(error: GraphQLError) -> GraphQLError:
    """``error`` with ``extensions.code``: its own for a :class:`PortalError`, a GraphQL code for
    a document or argument error, ``INTERNAL`` (generic message, logged here) for anything else."""
    original = error.original_error
    # graphql-core wraps an error once more when it crosses a field: look through the chain.
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    if isinstance(original, PortalError):
        return _with(error, original.message, {**original.extensions, "code": str(original.code)})
    if (
        isinstance(original, GraphQLError)
        and isinstance(original.extensions, dict)
        and original.extensions.get("code")
    ):
        return _with(error, original.message, dict(original.extensions))
    existing = error.extensions.get("code") if isinstance(error.extensions, dict) else None
    if existing in _KNOWN and original is None:
        return error
    if isinstance(error, GraphQLSyntaxError):
        return _with(error, error.message, {"code": str(ErrorCode.GRAPHQL_PARSE_FAILED)})
    if isinstance(original, RecursionError):
        return _with(error, "the document nests too deeply", {"code": str(ErrorCode.GRAPHQL_PARSE_FAILED)})
    if error.path is None and (
        original is None or isinstance(original, ValueError | TypeError | GraphQLError)
    ):
        # Before execution: the document, a limit or a variable's value (its message is about
        # the caller's own input: "Variable '$first' got invalid value ...").
        code = ErrorCode.BAD_USER_INPUT if _about_variables(error) else ErrorCode.GRAPHQL_VALIDATION_FAILED
        return _with(error, error.message, {"code": str(code)})
    if error.path is not None and original is None and _about_arguments(error):
        return _with(error, error.message, {"code": str(ErrorCode.BAD_USER_INPUT)})
    log.error(
        "portal graphql: unexpected error at %s (%s raised at %s)",
        ".".join(str(p) for p in error.path or ()) or "the operation",
        type(original or error).__name__,
        raised_at(original),
    )
    return GraphQLError(
        INTERNAL_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": str(ErrorCode.INTERNAL)},
    )


_KNOWN: Final = frozenset(str(code) for code in ErrorCode)


def raised_at(exc: BaseException | None) -> str:
    """Where ``exc`` was raised (file, line, function) — never its message, which may hold data
    (a statement's parameters, a secret, personal data)."""
    if exc is None or exc.__traceback__ is None:
        return "an unknown place"
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _about_variables(error: GraphQLError) -> bool:
    return error.message.startswith("Variable ")


def _about_arguments(error: GraphQLError) -> bool:
    return error.message.startswith("Argument ")


def _with(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )


def error_document(code: ErrorCode, message: str, **extensions: Any) -> dict[str, Any]:
    """A GraphQL response holding one error (for answers made before execution: 401, 403, 429)."""
    return {"data": None, "errors": [{"message": message, "extensions": {"code": str(code), **extensions}}]}


class ErrorCodes(SchemaExtension):
    """Puts ``extensions.code`` on every error of a result (see :func:`coded`): of a query or
    mutation once it ends, of a subscription on every event it yields."""

    def __init__(self) -> None:
        self._streamed = False

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if not self._streamed:
            _code_result(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        _code_result(result)
        yield None


def _code_result(result: Any) -> None:
    if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult):
        if result.errors:
            result.errors = [coded(error) for error in result.errors]
        return
    initial = getattr(result, "initial_result", None)
    if initial is not None and getattr(initial, "errors", None):
        initial.errors = [coded(error) for error in initial.errors]
