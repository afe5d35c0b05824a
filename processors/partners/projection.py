"""What a partner receives of an event: the partner-facing projection of each event type.

Pure code: no Kafka, no HTTP.  Every field of every payload model (nested models too) is
classified here, in :data:`CLASSIFICATION`, as one of:

* ``safe``: business data every subscriber receives (ids, amounts as strings, currencies,
  statuses, the dates of the business event);
* a :class:`DataClass` of personal data, sent only to a subscriber *granted* that class:

  ======================  ===================================================================
  ``contact``             how to reach a person: e-mail address, phone number, postal address
  ``identity``            who a person is: names, date of birth, national id / passport /
                          document numbers and everything about an identity document (its
                          issuing country, expiry, images), a customer's country, and free
                          text written by people upstream (a cancellation or refund reason),
                          which may name or describe someone
  ``payment_instrument``  how a person pays: card tokens, IBAN / account numbers (masked or
                          not), and what a payment provider says about the instrument (its
                          decline text, the receipt link that shows the card)
  ======================  ===================================================================

* ``nested``: the field holds a model (or a list of models) whose own fields are classified.

The classification is an allow-list: a field is sent only when it is classified ``safe`` or
its class is granted.  A field nobody classified (a new field, or an event type of a future
schema version this build does not know) is never sent: the projection fails closed.  A
unit test fails when a model gains a field that is not classified here.

A projection *plan* (field → ``None`` to copy the value, or the plan of the nested model) is
compiled once per (event type, grant set) and cached; applying it to the JSON-ready payload
(``event.data.model_dump(mode="json")``) is one pass over the kept fields::

    plan = plan_for("premium.due", frozenset({DataClass.CONTACT}))
    data = project("premium.due", event.data.model_dump(mode="json"), grants)

A nested model of which nothing would be left (a billing address without the ``contact``
grant) is left out entirely rather than sent as ``{}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import cache
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel

from processors.contract.events import (
    EVENT_TYPES,
    Address,
    ClaimData,
    CustomerCreated,
    KycCheck,
    KycConsent,
    KycDecision,
    KycDocument,
    KycMatch,
    KycPending,
    KycRefused,
    KycRequested,
    PaymentCompleted,
    PaymentConfirmed,
    PaymentFailed,
    PaymentMethod,
    PaymentPending,
    PaymentResultData,
    PolicyCancelled,
    PolicyChangeData,
    PolicyData,
    PolicyRenewed,
    PremiumDue,
    RefundRequested,
)

__all__ = [
    "ALL_GRANTS",
    "CLASSIFICATION",
    "DATA_CLASSES",
    "NESTED",
    "NO_GRANTS",
    "SAFE",
    "DataClass",
    "FieldClass",
    "Grants",
    "Plan",
    "classification_of",
    "classified_paths",
    "grant_list",
    "nested_model",
    "parse_grants",
    "plan_for",
    "project",
    "unclassified_fields",
]

log = logging.getLogger(__name__)


class DataClass(StrEnum):
    """A class of personal data a partner may be granted (see the module docstring)."""

    CONTACT = "contact"
    IDENTITY = "identity"
    PAYMENT_INSTRUMENT = "payment_instrument"


DATA_CLASSES: Final = tuple(DataClass)
"""Every data class, in the order they are listed and stored."""

Grants = frozenset[DataClass]
NO_GRANTS: Final[Grants] = frozenset()
ALL_GRANTS: Final[Grants] = frozenset(DataClass)

SAFE: Final = "safe"
NESTED: Final = "nested"
FieldClass = DataClass | Literal["safe", "nested"]

Plan = Mapping[str, "Plan | None"]
"""Field → ``None`` (send the value as it is) or the plan of the nested model; a field that is
not a key is not sent."""

_C, _I, _P = DataClass.CONTACT, DataClass.IDENTITY, DataClass.PAYMENT_INSTRUMENT


def _safe(names: str) -> dict[str, FieldClass]:
    """``{name: "safe"}`` for each space-separated name."""
    return dict.fromkeys(names.split(), SAFE)


# Per model, the fields it declares itself; a model inherits its bases' classification.
CLASSIFICATION: Final[Mapping[type[BaseModel], Mapping[str, FieldClass]]] = MappingProxyType(
    {
        # policy.issued, .renewed, .endorsed, .cancelled.  customer_id is the insurer's opaque
        # reference (also the subject of customer events): it names nobody without the CRM.
        PolicyData: _safe(
            "policy_id policy_number customer_id line_of_business territory inception_date "
            "expiry_date currency gross_premium sum_insured"
        ),
        PolicyRenewed: _safe("previous_policy_number"),
        PolicyChangeData: _safe("effective_date premium_change"),
        PolicyCancelled: {"cancellation_reason": _I},  # free text typed upstream
        # premium.due, refund.requested
        Address: dict.fromkeys(("line1", "line2", "city", "state", "postal_code", "country"), _C),
        PaymentMethod: {"type": SAFE, "card_token": _P, "billing_address": NESTED},
        PremiumDue: {
            **_safe("policy_id policy_number instalment_id due_date currency amount"),
            "payment_method": NESTED,
        },
        RefundRequested: {
            **_safe("policy_id policy_number refund_id currency amount original_payment_id"),
            "reason": _I,  # free text typed upstream
            "payment_method": NESTED,
        },
        # customer.created, customer.kyc_requested
        CustomerCreated: {
            "customer_id": SAFE,
            "full_name": _I,
            "date_of_birth": _I,
            "email": _C,
            "country": _I,  # nationality or residence: not sure which, so personal
        },
        KycDocument: {
            "type": SAFE,
            "document_number": _I,
            "issuing_country": _I,  # a passport's issuing country is a nationality
            "expiry_date": _I,
            "front_image_url": _I,
            "back_image_url": _I,
        },
        KycConsent: _safe("terms_accepted data_processing_accepted timestamp"),
        KycRequested: {
            **_safe("customer_id verification_type"),
            "documents": NESTED,
            "consent": NESTED,
        },
        # claim.*
        ClaimData: _safe(
            "claim_id policy_id policy_number date_of_loss currency reserve_amount paid_amount "
            "paid_to_date settled_amount status"
        ),
        # payment.* (the payments app's results)
        PaymentResultData: _safe(
            "policy_id operation reference_id currency amount idempotency_key source_event_id"
        ),
        PaymentCompleted: {**_safe("payment_id gateway_reference processed_at"), "receipt_url": _P},
        PaymentPending: _safe("payment_id"),
        PaymentFailed: {**_safe("decline_code failed_at"), "decline_reason": _P},  # the gateway's text
        PaymentConfirmed: {**_safe("payment_id gateway_reference processed_at"), "receipt_url": _P},
        # kyc.* (the kyc app's results)
        KycMatch: {"name": _I, "list_name": SAFE, "score": SAFE},
        KycCheck: {**_safe("type status confidence"), "matches": NESTED},
        KycDecision: {
            **_safe(
                "customer_id verification_id status risk_score risk_level verified_at idempotency_key "
                "source_event_id"
            ),
            "checks": NESTED,
        },
        KycPending: _safe("customer_id verification_id idempotency_key source_event_id"),
        # message: written by the kyc app from a fixed template, without personal data
        KycRefused: _safe("customer_id reason_code message refused_at source_event_id"),
    }
)
"""Every payload model's own fields, classified (see the module docstring)."""


# --- grants -----------------------------------------------------------------------------------


def parse_grants(values: Iterable[str]) -> Grants:
    """The grant set named by ``values``; ``ValueError`` naming the known classes otherwise."""
    grants: set[DataClass] = set()
    for value in values:
        try:
            grants.add(DataClass(value))
        except ValueError:
            known = ", ".join(DATA_CLASSES)
            raise ValueError(f"unknown data class {str(value)[:40]!r} (known: {known})") from None
    return frozenset(grants)


def grant_list(grants: Iterable[DataClass]) -> list[str]:
    """``grants`` in the documented order, as strings (for views and records)."""
    given = set(grants)
    return [str(c) for c in DATA_CLASSES if c in given]


# --- classification -----------------------------------------------------------------------------


def classification_of(model: type[BaseModel]) -> dict[str, FieldClass]:
    """Field → class for ``model``: its own entry over its bases' (no entry: nothing known)."""
    merged: dict[str, FieldClass] = {}
    for base in reversed(model.__mro__):
        entry = CLASSIFICATION.get(base)
        if entry is not None:
            merged.update(entry)
    return merged


def nested_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model a field holds (itself, optional, or a list of it); None for plain values."""
    found = _models_in(model.model_fields[name].annotation)
    return found[0] if len(found) == 1 else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def unclassified_fields(models: Iterable[type[BaseModel]] | None = None) -> list[str]:
    """``Model.field: problem`` for every field of every model reachable from ``models`` (the
    contract's payload models by default) that is not classified, or classified wrongly (a
    model field marked ``safe`` would send a whole nested object unchecked; ``nested`` on a
    plain value means nothing), and for every classification of a field that does not exist.
    Empty when all is well."""
    problems: list[str] = []
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = list(EVENT_TYPES.values() if models is None else models)
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        classes = classification_of(model)
        for name, field in model.model_fields.items():
            found = _models_in(field.annotation)
            pending.extend(found)
            kind = classes.get(name)
            where = f"{model.__name__}.{name}"
            if kind is None:
                problems.append(f"{where}: not classified")
            elif found and kind == SAFE:
                problems.append(f"{where}: holds a model; classify it nested or as a data class")
            elif kind == NESTED and len(found) != 1:
                problems.append(f"{where}: classified nested but holds no single model")
    for model, entry in CLASSIFICATION.items():
        for name in entry:
            if name not in model.model_fields:
                problems.append(f"{model.__name__}.{name}: classified but not a field")
    return sorted(problems)


def classified_paths(event_type: str) -> dict[str, DataClass | Literal["safe"]]:
    """Every leaf of ``event_type``'s payload with its class: ``payment_method.card_token``,
    ``documents[].document_number``...  Unknown event type: empty."""
    model = EVENT_TYPES.get(event_type)
    paths: dict[str, DataClass | Literal["safe"]] = {}
    if model is not None:
        _collect_paths(model, "", paths)
    return paths


def _collect_paths(model: type[BaseModel], prefix: str, out: dict[str, DataClass | Literal["safe"]]) -> None:
    classes = classification_of(model)
    for name, field in model.model_fields.items():
        kind = classes.get(name)
        if kind is None:
            continue
        if kind == NESTED:
            nested = nested_model(model, name)
            if nested is not None:
                suffix = "[]" if _is_list(field.annotation) else ""
                _collect_paths(nested, f"{prefix}{name}{suffix}.", out)
            continue
        out[f"{prefix}{name}"] = kind


def _is_list(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return True
    return any(_is_list(arg) for arg in get_args(annotation))


# --- plans ----------------------------------------------------------------------------------------


@cache
def _model_plan(model: type[BaseModel], grants: Grants) -> Plan:
    classes = classification_of(model)
    plan: dict[str, Plan | None] = {}
    for name in model.model_fields:
        kind = classes.get(name)
        if kind is None:
            log.warning("projection: %s.%s is not classified; it is never sent", model.__name__, name)
        elif kind == SAFE or kind in grants:
            plan[name] = None
        elif kind == NESTED:
            nested = nested_model(model, name)
            sub = _model_plan(nested, grants) if nested is not None else {}
            if sub:  # nothing left of it: the field goes, not an empty object
                plan[name] = sub
    return MappingProxyType(plan)


_NOTHING: Final[Plan] = MappingProxyType({})


@cache
def plan_for(event_type: str, grants: Grants) -> Plan:
    """The projection plan of ``event_type`` for ``grants`` (compiled once, then cached).

    An event type this build does not know gets the empty plan: nothing of its payload is sent.
    """
    model = EVENT_TYPES.get(event_type)
    if model is None:
        log.warning("projection: unknown event type %r; its payload is never sent", event_type[:80])
        return _NOTHING
    return _model_plan(model, grants)


def project(event_type: str, data: Mapping[str, Any], grants: Grants) -> dict[str, Any]:
    """The payload ``data`` (JSON-ready) as a subscriber granted ``grants`` receives it."""
    return _apply(plan_for(event_type, grants), data)


def _apply(plan: Plan, document: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sub in plan.items():
        if key not in document:
            continue
        value = document[key]
        if sub is None or value is None:
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = _apply(sub, value)
        elif isinstance(value, list):
            out[key] = [_apply(sub, item) for item in value if isinstance(item, Mapping)]
        # anything else where a model belongs is not sent
    return out
