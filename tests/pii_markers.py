"""Events of every type whose personal-data fields hold distinctive marker values.

Each payload starts from the contract's example and has every field the projection classifies
as personal data (nested ones too, optional ones filled in, empty lists of models given one
item) set to a marker of its own, then is validated by the contract's model.  A field
classified as personal data without a marker here raises :class:`MissingMarker`: adding one
is the test's way of forcing a look at the new field.

Markers are searched for as JSON strings (with their quotes), so short ones such as country
codes cannot match inside another value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from processors.contract import EVENT_TYPES, Event
from processors.contract.examples import example_event
from processors.partners.projection import NESTED, SAFE, DataClass, classification_of, nested_model

_C, _I, _P = DataClass.CONTACT, DataClass.IDENTITY, DataClass.PAYMENT_INSTRUMENT

MARKERS: Mapping[tuple[str, str], tuple[DataClass, str]] = {
    ("Address", "line1"): (_C, "Zqx1 Contact Street"),
    ("Address", "line2"): (_C, "Zqx2 Contact Flat"),
    ("Address", "city"): (_C, "Zqx3 Contact City"),
    ("Address", "state"): (_C, "Zqx4 Contact State"),
    ("Address", "postal_code"): (_C, "ZQX5 C55"),
    ("Address", "country"): (_C, "LI"),
    ("PaymentMethod", "card_token"): (_P, "tok_zqx6_payment"),
    ("PolicyCancelled", "cancellation_reason"): (_I, "Zqx7 identity cancellation text"),
    ("RefundRequested", "reason"): (_I, "Zqx8 identity refund text"),
    ("CustomerCreated", "full_name"): (_I, "Zqx9 Identity Fullname"),
    ("CustomerCreated", "date_of_birth"): (_I, "1931-02-03"),
    ("CustomerCreated", "email"): (_C, "zqx10.contact@example.org"),
    ("CustomerCreated", "country"): (_I, "SM"),
    ("KycDocument", "document_number"): (_I, "ZQX11DOC"),
    ("KycDocument", "issuing_country"): (_I, "MC"),
    ("KycDocument", "expiry_date"): (_I, "2039-09-19"),
    ("KycDocument", "front_image_url"): (_I, "https://docs.example/zqx12-front.jpg"),
    ("KycDocument", "back_image_url"): (_I, "https://docs.example/zqx13-back.jpg"),
    ("PaymentCompleted", "receipt_url"): (_P, "https://receipts.example/zqx14-completed"),
    ("PaymentConfirmed", "receipt_url"): (_P, "https://receipts.example/zqx15-confirmed"),
    ("PaymentFailed", "decline_reason"): (_P, "Zqx16 payment decline text"),
    ("KycMatch", "name"): (_I, "Zqx17 Identity Listed Name"),
}
"""(model, field) → (its data class, its marker value)."""

BASES: Mapping[str, dict[str, Any]] = {
    "Address": {"line1": "x", "city": "x", "postal_code": "00000", "country": "US"},
    "KycMatch": {"list_name": "OFAC-SDN", "score": "0.9"},
}
"""A valid object of a nested model, for an example that has none (an empty list, a None)."""


class MissingMarker(AssertionError):
    """A field is classified as personal data but has no marker in :data:`MARKERS`."""


@dataclass(frozen=True)
class MarkedEvent:
    event: Event
    markers: dict[DataClass, set[str]]
    """Data class → the markers (as JSON strings, quotes included) this event carries."""
    fields: set[tuple[str, str]]
    """The (model, field) pairs that hold a marker."""

    def data_json(self) -> str:
        return json.dumps(self.event.data.model_dump(mode="json"))

    def all_markers(self) -> set[str]:
        return set().union(*self.markers.values()) if self.markers else set()


def _marker(model: type[BaseModel], name: str) -> tuple[DataClass, str] | None:
    for cls in model.__mro__:
        entry = MARKERS.get((cls.__name__, name))
        if entry is not None:
            return entry
    return None


def _mark(model: type[BaseModel], document: dict[str, Any], found: MarkedEvent) -> None:
    # Markers go wherever this file says a field is personal, whatever the projection says
    # (a personal field reclassified as safe must show up as a leak); a field the projection
    # calls personal must have a marker.
    classes = classification_of(model)
    for name in model.model_fields:
        entry = _marker(model, name)
        nested = nested_model(model, name)
        if entry is not None:
            data_class, marker = entry
            document[name] = marker
            found.markers.setdefault(data_class, set()).add(json.dumps(marker))
            found.fields.add((model.__name__, name))
        elif nested is not None:
            value = document.get(name)
            if value is None or value == []:
                if nested.__name__ not in BASES:
                    raise MissingMarker(f"no base object for {nested.__name__} ({model.__name__}.{name})")
                base = dict(BASES[nested.__name__])
                value = [base] if _is_list_field(model, name) else base
                document[name] = value
            for item in value if isinstance(value, list) else [value]:
                _mark(nested, item, found)
        elif classes.get(name, SAFE) not in (SAFE, NESTED):
            raise MissingMarker(f"{model.__name__}.{name} is classified {classes[name]} but has no marker")


def _is_list_field(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return getattr(annotation, "__origin__", None) is list


def marked_event(event_type: str) -> MarkedEvent:
    """The example ``event_type`` event with every personal-data field holding its marker."""
    example = example_event(event_type)
    model = EVENT_TYPES[event_type]
    document = example.data.model_dump(mode="json")
    found = MarkedEvent(example, {}, set())
    _mark(model, document, found)
    data = model.model_validate_json(json.dumps(document))
    event = example.model_copy(update={"data": data})
    return MarkedEvent(Event.model_validate(event.model_dump()), found.markers, found.fields)


def marked_events() -> dict[str, MarkedEvent]:
    return {event_type: marked_event(event_type) for event_type in sorted(EVENT_TYPES)}
