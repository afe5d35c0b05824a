"""The portal API's limits: the cost of an operation, and a request budget per partner key.

Depth, tokens and aliases are strawberry's own extensions (``QueryDepthLimiter``,
``MaxTokensLimiter``, ``MaxAliasesLimiter``, set up in :mod:`processors.portal.graphql.schema`);
this module adds what strawberry does not have:

* :func:`cost_rule` — a validation rule that estimates an operation's cost before it runs and
  refuses it above a limit.  Every field counts once per item the lists above it may return: a
  list with a ``first`` argument returns at most ``first`` items (a literal's value; the
  maximum page size for a variable, whose value validation does not see; the argument's
  default when absent), the list right under such a field (a connection's ``edges``) adds
  nothing more, and any other list is assumed to return ``list_size`` items.  So
  ``deliveries(first: 100) { edges { node { id status } } }`` costs
  1 + 100 × (1 + 1 + 2) = 401.
* :class:`KeyRateLimiter` — a token bucket per partner key id: ``rate_per_s`` on average,
  ``burst`` at once.  The view takes one token per HTTP request and per operation started on a
  WebSocket; an empty bucket answers ``RATE_LIMITED`` with when to retry.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    get_named_type,
)

__all__ = ["KeyRateLimiter", "RateDecision", "cost_of", "cost_rule"]

_MAX_TRACKED_KEYS: Final = 100_000
"""Buckets kept at most (the least recently used go first; a full bucket is the default)."""


# ----------------------------------------------------------------------------------- cost


def _is_list(output: GraphQLOutputType) -> bool:
    while isinstance(output, GraphQLNonNull):
        output = output.of_type
    return isinstance(output, GraphQLList)


class _Estimate:
    def __init__(self, context: ValidationContext, *, max_page_size: int, list_size: int) -> None:
        self.schema = context.schema
        self.fragments: dict[str, FragmentDefinitionNode] = {
            d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.max_page_size = max_page_size
        self.list_size = list_size

    def _first(self, node: FieldNode, field: GraphQLField) -> int | None:
        """The items a field with a ``first`` argument may return; None without one."""
        if "first" not in field.args:
            return None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            value = argument.value
            if isinstance(value, IntValueNode):
                try:
                    return max(0, int(value.value))
                except ValueError:
                    return self.max_page_size
            if isinstance(value, VariableNode):
                return self.max_page_size
            return self.max_page_size  # null or a wrong type: validation reports it
        default = field.args["first"].default_value
        return default if isinstance(default, int) else self.max_page_size

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType,
        multiplier: int,
        paged: bool,
        seen: frozenset[str],
    ) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, multiplier, paged, seen)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition is not None else parent
                total += self.selections(selection.selection_set, target or parent, multiplier, paged, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:
                    continue  # unknown or cyclic: other rules report it
                target = self.schema.get_type(fragment.type_condition.name.value) or parent
                total += self.selections(fragment.selection_set, target, multiplier, paged, seen | {name})
        return total

    def field(
        self, node: FieldNode, parent: GraphQLNamedType, multiplier: int, paged: bool, seen: frozenset[str]
    ) -> int:
        name = node.name.value
        if name.startswith("__") or not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return 0
        field = parent.fields.get(name)
        if field is None:
            return 0  # other rules report an unknown field
        cost = multiplier
        if node.selection_set is None:
            return cost
        first = self._first(node, field)
        if first is not None:
            factor, child_paged = first, True
        elif _is_list(field.type):
            factor, child_paged = (1 if paged else self.list_size), False
        else:
            factor, child_paged = 1, False
        named = get_named_type(field.type)
        return cost + self.selections(node.selection_set, named, multiplier * factor, child_paged, seen)


def cost_of(
    context: ValidationContext, operation: OperationDefinitionNode, *, max_page_size: int, list_size: int
) -> int:
    """The estimated cost of ``operation`` (see the module docstring)."""
    root = context.schema.get_root_type(operation.operation)
    if root is None:
        return 0
    estimate = _Estimate(context, max_page_size=max_page_size, list_size=list_size)
    return estimate.selections(operation.selection_set, root, 1, False, frozenset())


def cost_rule(*, max_cost: int, max_page_size: int, list_size: int) -> type[ValidationRule]:
    """A validation rule refusing an operation whose estimated cost exceeds ``max_cost``."""

    class CostLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
            cost = cost_of(self.context, node, max_page_size=max_page_size, list_size=list_size)
            if cost > max_cost:
                self.report_error(
                    GraphQLError(
                        f"the operation's estimated cost is {cost}, above the limit of {max_cost}: "
                        "ask for smaller pages (first) or fewer fields",
                        node,
                        extensions={"code": "GRAPHQL_VALIDATION_FAILED", "cost": cost, "maxCost": max_cost},
                    )
                )

    return CostLimit


# ----------------------------------------------------------------------------------- rate


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go on; when not, ``retry_after_s`` says when one token is back."""

    allowed: bool
    retry_after_s: float = 0.0


class KeyRateLimiter:
    """A token bucket per key id (thread-safe).  See the module docstring."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key_id: str) -> RateDecision:
        """Take one token of ``key_id``'s bucket if there is one."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                decision = RateDecision(True)
            else:
                self._buckets[key_id] = (tokens, now)
                decision = RateDecision(False, (1.0 - tokens) / self.rate_per_s)
            while len(self._buckets) > _MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)
        return decision
