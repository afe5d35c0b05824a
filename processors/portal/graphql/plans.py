"""Completing plain object values with a plan made once per document.

graphql-core completes every field of every object the same general way: build the field's
resolve info, call its resolver, look at the return type, coerce or recurse, and wrap each
step for errors and awaitables.  For a page of the delivery log that is about 350 fields per
request, and it costs more than the store query the page needs.  Most of those fields are
*plain*: the resolver reads one attribute (:func:`attribute_resolver`), the type is a scalar,
an enum, a list of them or an object type whose fields are plain in turn.

:class:`PlannedExecutionContext` completes such an object value with a **plan**: for each
response key in the order graphql-core collects them, read the attribute and complete it with
a function chosen when the plan was made (non-null check, list, the type's own
``coerce_output_value``, a nested plan).  The answer is the same dictionary graphql-core would
build.  A plan is made from graphql-core's own collection of the selection set
(``collect_subfields``: fragments, aliases and merged fields as it sees them) and kept per
(object type, field nodes) of the parsed document, which :class:`~.schema.DocumentCache`
keeps for every request that sends the same text.

What a plan does not cover is left to graphql-core, unchanged:

* a field with a resolver of its own (``deliveries``, ``health``, ``download``, ...), with
  arguments, or of an interface or union type, or an object type with ``is_type_of``;
* any directive in the selection set (``@skip``/``@include`` depend on the variables;
  ``@defer``/``@stream`` change how the answer is delivered);
* **any surprise while following a plan**: an attribute that raises, a null where the type
  says non-null, a value its scalar refuses, a list that is not a list.  The plan's partial
  answer is dropped and graphql-core completes the whole object again, reporting the error
  with its path as it always does.  Reading an attribute twice is harmless: plain fields
  read data, they never act.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

from graphql import (
    FieldNode,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    SelectionSetNode,
    Undefined,
)
from graphql.language import FragmentSpreadNode, InlineFragmentNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

__all__ = ["PLAIN_ATTRIBUTE", "PlannedExecutionContext", "attribute_resolver", "plan_count"]

PLAIN_ATTRIBUTE: Final = "_portal_attribute"
"""The attribute a plain resolver (:func:`attribute_resolver`) carries: the name it reads."""

_MAX_PLANS: Final = 4_000

Complete = Callable[[Any], Any]
Plan = Callable[[Any], dict[str, Any]]


class _NotPlain(Exception):
    """Following a plan met something only graphql-core's general completion may answer."""


def attribute_resolver(name: str) -> Callable[..., Any]:
    """A resolver that reads ``name`` from its source; a plan reads it the same way."""

    def resolve(source: Any, _info: Any) -> Any:
        return getattr(source, name)

    resolve._is_default = True  # type: ignore[attr-defined]  # as strawberry marks its own
    setattr(resolve, PLAIN_ATTRIBUTE, name)
    return resolve


class _Plans:
    """Plans by (object type, the ids of the field nodes); each entry holds the nodes, so no
    id is reused while its plan is kept.  ``None`` records "no plan" for that selection."""

    def __init__(self, maxsize: int) -> None:
        self._plans: OrderedDict[tuple[Any, ...], tuple[Sequence[FieldNode], Plan | None]] = OrderedDict()
        self._maxsize = maxsize
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> tuple[bool, Plan | None]:
        with self._lock:
            found = self._plans.get(key)
            if found is None:
                return False, None
            self._plans.move_to_end(key)
            return True, found[1]

    def put(self, key: tuple[Any, ...], nodes: Sequence[FieldNode], plan: Plan | None) -> None:
        with self._lock:
            self._plans[key] = (tuple(nodes), plan)
            while len(self._plans) > self._maxsize:
                self._plans.popitem(last=False)

    def __len__(self) -> int:
        return len(self._plans)


_PLANS: Final = _Plans(_MAX_PLANS)


def plan_count() -> int:
    """How many selections have a plan (or are known to have none); for tests."""
    return len(_PLANS)


class PlannedExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's execution context, completing plain object values by plan (module doc)."""

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        plan = self._plan_of(return_type, field_details_list)
        if plan is not None:
            with contextlib.suppress(Exception):  # any surprise: graphql-core answers, errors and all
                return plan(result)
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _plan_of(self, return_type: GraphQLObjectType, field_details_list: Any) -> Plan | None:
        nodes = [details.node for details in field_details_list]
        key = (return_type, *map(id, nodes))
        known, plan = _PLANS.get(key)
        if known:
            return plan
        plan = self._make_plan(return_type, field_details_list)
        _PLANS.put(key, nodes, plan)
        return plan

    def _make_plan(self, return_type: GraphQLObjectType, field_details_list: Any) -> Plan | None:
        if return_type.is_type_of is not None:
            return None
        if any(
            details.defer_usage is not None
            or details.fragment_variable_values is not None
            or not _directive_free(details.node.selection_set, self.fragment_definitions)
            for details in field_details_list
        ):
            return None
        grouped, new_defer_usages, forbidden = self.collect_subfields(return_type, field_details_list)
        if new_defer_usages or forbidden:
            return None
        steps: list[tuple[str, str | None, Complete]] = []
        for response_key, sub_details in grouped.items():
            name = sub_details[0].node.name.value
            if name == "__typename":
                steps.append((response_key, None, _constant(return_type.name)))
                continue
            field = return_type.fields.get(name)
            attribute = getattr(field.resolve, PLAIN_ATTRIBUTE, None) if field is not None else None
            if field is None or attribute is None or field.args or sub_details[0].node.arguments:
                return None
            complete = self._completer(field.type, sub_details)
            if complete is None:
                return None
            steps.append((response_key, attribute, complete))
        return _object_plan(steps)

    def _completer(self, type_: GraphQLOutputType, field_details_list: Any) -> Complete | None:
        if isinstance(type_, GraphQLNonNull):
            inner = self._completer(type_.of_type, field_details_list)
            return None if inner is None else _non_null(inner)
        if isinstance(type_, GraphQLList):
            inner = self._completer(type_.of_type, field_details_list)
            return None if inner is None else _list_of(inner)
        if isinstance(type_, GraphQLLeafType):
            return _leaf(type_)
        if isinstance(type_, GraphQLObjectType):
            plan = self._plan_of(type_, field_details_list)
            return None if plan is None else _nullable_object(plan)
        return None  # an interface or a union: the runtime type is graphql-core's to find


def _directive_free(selection_set: SelectionSetNode | None, fragments: dict[str, Any]) -> bool:
    """True when nothing under ``selection_set`` (fragments included) carries a directive."""
    if selection_set is None:
        return True
    for selection in selection_set.selections:
        if selection.directives:
            return False
        if isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is None or fragment.directives:
                return False
            if not _directive_free(fragment.selection_set, fragments):
                return False
        elif isinstance(selection, InlineFragmentNode | FieldNode) and not _directive_free(
            selection.selection_set, fragments
        ):
            return False
    return True


def _object_plan(steps: list[tuple[str, str | None, Complete]]) -> Plan:
    frozen = tuple(steps)

    def plan(source: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for response_key, attribute, complete in frozen:
            out[response_key] = complete(source if attribute is None else getattr(source, attribute))
        return out

    return plan


def _constant(value: str) -> Complete:
    def complete(_source: Any) -> str:
        return value

    return complete


def _non_null(inner: Complete) -> Complete:
    def complete(value: Any) -> Any:
        completed = inner(value)
        if completed is None:
            raise _NotPlain
        return completed

    return complete


def _list_of(inner: Complete) -> Complete:
    def complete(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise _NotPlain
        return [inner(item) for item in value]

    return complete


def _leaf(type_: GraphQLLeafType) -> Complete:
    coerce = type_.coerce_output_value

    def complete(value: Any) -> Any:
        if value is None:
            return None
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _NotPlain
        return coerced

    return complete


def _nullable_object(plan: Plan) -> Complete:
    def complete(value: Any) -> Any:
        return None if value is None else plan(value)

    return complete
