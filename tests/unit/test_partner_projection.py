"""The partner-facing projection: every field classified, no personal data without a grant.

The PII corpus gives every personal-data field of every event type a marker of its own
(``tests/pii_markers.py``), proves the markers are in the unprojected payload, then fans the
event out with :func:`dispatch_records` (the pure fan-out the webhooks app runs) and looks
for the markers in the bodies' bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from processors.contract import EVENT_TYPES
from processors.contract.events import PolicyIssued
from processors.contract.examples import example_event
from processors.contract.published import json_schema
from processors.partners import projection
from processors.partners.catalogue import catalogue_json, event_catalogue, projected_schema
from processors.partners.projection import (
    ALL_GRANTS,
    CLASSIFICATION,
    DATA_CLASSES,
    NO_GRANTS,
    SAFE,
    DataClass,
    Grants,
    classification_of,
    classified_paths,
    parse_grants,
    plan_for,
    project,
    unclassified_fields,
)
from processors.webhooks import delivery
from processors.webhooks.delivery import TEST_EVENT_TYPE, Target, dispatch_records
from tests.pii_markers import MARKERS, MarkedEvent, marked_event, marked_events

EVENTS = sorted(EVENT_TYPES)
SINGLE_GRANTS = [frozenset({c}) for c in DATA_CLASSES]


def body_of(event: MarkedEvent, grants: Grants) -> bytes:
    (record,) = dispatch_records(event.event, [Target("ep_" + "a" * 24, False, grants)], topic="d")
    assert record.value is not None
    return record.value


def value_at(document: Any, path: str) -> list[Any]:
    """Every value at ``path`` (``a.b[].c``); missing keys give nothing."""
    values = [document]
    for part in path.split("."):
        is_list = part.endswith("[]")
        name = part.removesuffix("[]")
        found = []
        for value in values:
            if isinstance(value, dict) and name in value:
                item = value[name]
                if is_list:
                    found.extend(item or [])
                else:
                    found.append(item)
        values = found
    return values


# -- classification ------------------------------------------------------------------------------


def test_every_field_of_every_model_is_classified() -> None:
    assert unclassified_fields() == []


def test_a_field_added_without_a_classification_is_found() -> None:
    class PolicyIssuedV2(PolicyIssued):
        loyalty_tier: str = "gold"

    class Holder(BaseModel):
        policy: PolicyIssued

    assert unclassified_fields([PolicyIssuedV2]) == ["PolicyIssuedV2.loyalty_tier: not classified"]
    # a model nobody classified: every one of its fields is reported
    assert unclassified_fields([Holder]) == ["Holder.policy: not classified"]


def reachable_models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = list(EVENT_TYPES.values())
    while pending:
        model = pending.pop()
        if model not in seen:
            seen.add(model)
            pending.extend(
                nested for name in model.model_fields if (nested := projection.nested_model(model, name))
            )
    return seen


def test_the_contracts_personal_fields_are_never_safe() -> None:
    """Every field the contract keeps out of reprs (``repr=False``) is personal here too."""
    checked = 0
    for model in reachable_models():
        classes = classification_of(model)
        for name, field in model.model_fields.items():
            if not field.repr:
                assert classes[name] != SAFE, f"{model.__name__}.{name}"
                checked += 1
    assert checked >= 12  # addresses, card tokens, names, birth dates, e-mail, documents


def test_every_classification_names_a_model_of_the_contract() -> None:
    reachable = reachable_models()
    for model in CLASSIFICATION:
        assert any(issubclass(r, model) for r in reachable), model.__name__


def test_grants_parse_and_unknown_classes_are_refused() -> None:
    assert parse_grants(["contact", "identity", "contact"]) == {DataClass.CONTACT, DataClass.IDENTITY}
    assert parse_grants([]) == NO_GRANTS
    with pytest.raises(ValueError, match="unknown data class 'biometric' \\(known: contact, identity"):
        parse_grants(["biometric"])


# -- the PII corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENTS)
def test_the_markers_are_in_the_unprojected_event_and_cover_every_personal_field(event_type: str) -> None:
    marked = marked_event(event_type)
    unprojected = marked.data_json()
    for marker in marked.all_markers():
        assert marker in unprojected
    personal = {kind for kind in classified_paths(event_type).values() if kind != SAFE}
    assert set(marked.markers) == personal
    # full bodies (the behaviour before projection) would have carried all of them
    full = delivery.delivery_body("msg_x", marked.event, unprojected.replace(" ", "").encode())
    assert all(m.replace(" ", "") in full.decode() for m in marked.all_markers())


def test_the_corpus_exercises_every_data_class() -> None:
    classes = {c for m in marked_events().values() for c in m.markers}
    assert classes == set(DATA_CLASSES)
    assert {c for c, _ in MARKERS.values()} == set(DATA_CLASSES)


@pytest.mark.parametrize("event_type", EVENTS)
def test_no_grant_no_personal_data(event_type: str) -> None:
    marked = marked_event(event_type)
    body = body_of(marked, NO_GRANTS).decode()
    assert [m for m in marked.all_markers() if m in body] == []
    # and every safe field is there, with its value
    sent = json.loads(body)["data"]
    original = marked.event.data.model_dump(mode="json")
    for path, kind in classified_paths(event_type).items():
        if kind == SAFE:
            assert value_at(sent, path) == value_at(original, path), path
        else:
            assert value_at(sent, path) == [], path


@pytest.mark.parametrize("grants", SINGLE_GRANTS, ids=[str(c) for c in DATA_CLASSES])
@pytest.mark.parametrize("event_type", EVENTS)
def test_one_grant_lets_exactly_its_class_through(event_type: str, grants: Grants) -> None:
    marked = marked_event(event_type)
    body = body_of(marked, grants).decode()
    (granted,) = grants
    for data_class, markers in marked.markers.items():
        for marker in markers:
            assert (marker in body) == (data_class == granted), (data_class, marker)


@pytest.mark.parametrize("event_type", EVENTS)
def test_every_grant_sends_everything(event_type: str) -> None:
    marked = marked_event(event_type)
    body = body_of(marked, ALL_GRANTS)
    assert json.loads(body)["data"] == marked.event.data.model_dump(mode="json")


# -- failing closed ------------------------------------------------------------------------------


def test_an_unknown_event_type_sends_no_payload() -> None:
    data = example_event("policy.issued").data.model_dump(mode="json")
    assert project("policy.issued_v2", data, ALL_GRANTS) == {}
    assert plan_for("policy.issued_v2", ALL_GRANTS) == {}


def test_a_key_nobody_classified_is_never_sent() -> None:
    data = marked_event("premium.due").event.data.model_dump(mode="json")
    data["ssn"] = "078-05-1120"
    data["payment_method"]["iban"] = "DE89370400440532013000"
    data["payment_method"]["billing_address"]["phone"] = "+44 20 7946 0958"
    sent = json.dumps(project("premium.due", data, ALL_GRANTS))
    for value in ("078-05-1120", "DE89370400440532013000", "+44 20 7946 0958"):
        assert value not in sent


def test_a_nested_model_with_nothing_left_is_left_out() -> None:
    data = marked_event("premium.due").event.data.model_dump(mode="json")
    assert project("premium.due", data, NO_GRANTS)["payment_method"] == {"type": "CREDIT_CARD"}
    payment = project("premium.due", data, frozenset({DataClass.PAYMENT_INSTRUMENT}))["payment_method"]
    assert payment == {"type": "CREDIT_CARD", "card_token": "tok_zqx6_payment"}
    contact = project("premium.due", data, frozenset({DataClass.CONTACT}))["payment_method"]
    assert set(contact) == {"type", "billing_address"}
    assert contact["billing_address"]["line1"] == "Zqx1 Contact Street"


def test_a_value_of_the_wrong_shape_where_a_model_belongs_is_not_sent() -> None:
    data = example_event("customer.kyc_requested").data.model_dump(mode="json")
    data["consent"] = "yes"
    data["documents"] = [{"type": "PASSPORT", "document_number": "X1"}, "PASSPORT X2"]
    sent = project("customer.kyc_requested", data, ALL_GRANTS)
    assert "consent" not in sent
    assert sent["documents"] == [{"type": "PASSPORT", "document_number": "X1"}]


def test_plans_are_compiled_once_per_event_type_and_grant_set() -> None:
    grants = frozenset({DataClass.CONTACT})
    assert plan_for("premium.due", grants) is plan_for("premium.due", frozenset({DataClass.CONTACT}))


# -- fan-out ---------------------------------------------------------------------------------------


def test_fan_out_projects_once_per_grant_set(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Grants] = []
    real = delivery.project

    def counting(event_type: str, data: Any, grants: Grants) -> dict[str, Any]:
        calls.append(grants)
        return real(event_type, data, grants)

    monkeypatch.setattr(delivery, "project", counting)
    event = marked_event("customer.created").event
    contact = frozenset({DataClass.CONTACT})
    targets = [Target(f"ep_{i:024x}", i % 2 == 0) for i in range(11)]
    targets += [Target(f"ep_{100 + i:024x}", False, contact) for i in range(3)]
    records = dispatch_records(event, targets, topic="d")
    assert len(records) == 14
    assert sorted(calls, key=len) == [NO_GRANTS, contact]
    datas = [json.loads(r.value or b"")["data"] for r in records]
    assert all(d == {"customer_id": event.subject} for d in datas[:11])
    assert all(d == {"customer_id": event.subject, "email": "zqx10.contact@example.org"} for d in datas[11:])


def test_the_same_event_and_grants_give_the_same_body_for_redelivery() -> None:
    event = marked_event("refund.requested").event
    target = Target("ep_" + "b" * 24, False, frozenset({DataClass.IDENTITY}))
    once = dispatch_records(event, [target], topic="d")[0]
    again = dispatch_records(event, [target], topic="d")[0]
    assert once.value == again.value
    assert b"Zqx8 identity refund text" in (once.value or b"")


# -- the catalogue ---------------------------------------------------------------------------------

GRANT_SETS = [NO_GRANTS, *SINGLE_GRANTS, ALL_GRANTS]
GRANT_IDS = ["none", *(str(c) for c in DATA_CLASSES), "all"]


@pytest.mark.parametrize("grants", GRANT_SETS, ids=GRANT_IDS)
def test_each_projected_example_and_marked_body_fits_its_projected_schema(grants: Grants) -> None:
    entries = {e["event_type"]: e for e in event_catalogue(grants)}
    test_event = entries.pop(TEST_EVENT_TYPE)  # last, after the contract's types
    assert event_catalogue(grants)[-1]["event_type"] == TEST_EVENT_TYPE
    assert test_event["withheld"] == {}
    assert not list(Draft202012Validator(test_event["schema"]).iter_errors(test_event["example"]))
    assert sorted(entries) == EVENTS
    for event_type, entry in entries.items():
        Draft202012Validator.check_schema(entry["schema"])
        validator = Draft202012Validator(entry["schema"])
        assert not list(validator.iter_errors(entry["example"])), event_type
        marked = json.loads(body_of(marked_event(event_type), grants))
        assert not list(validator.iter_errors(marked)), event_type


@pytest.mark.parametrize("event_type", EVENTS)
def test_the_schema_without_grants_refuses_a_body_with_personal_data(event_type: str) -> None:
    marked = marked_event(event_type)
    full = json.loads(body_of(marked, ALL_GRANTS))
    errors = list(Draft202012Validator(projected_schema(event_type, NO_GRANTS)).iter_errors(full))
    assert bool(errors) == bool(marked.markers), event_type


@pytest.mark.parametrize("event_type", EVENTS)
def test_with_every_grant_the_schema_keeps_the_published_payload(event_type: str) -> None:
    published = json_schema(event_type)
    projected = projected_schema(event_type, ALL_GRANTS)
    assert projected["$defs"] == published["$defs"]


def test_withheld_fields_are_listed_per_class_not_granted() -> None:
    entry = next(
        e for e in event_catalogue(frozenset({DataClass.CONTACT})) if e["event_type"] == "premium.due"
    )
    assert entry["withheld"] == {"payment_instrument": ["payment_method.card_token"]}
    assert entry["example"]["data"]["payment_method"]["billing_address"]["city"] == "Springfield"
    none = next(e for e in event_catalogue(NO_GRANTS) if e["event_type"] == "customer.created")
    assert none["withheld"] == {"contact": ["email"], "identity": ["full_name", "date_of_birth", "country"]}
    assert none["example"]["data"] == {"customer_id": "CUST-000123"}
    assert json.loads(catalogue_json(NO_GRANTS))["grants"] == []
    assert json.loads(catalogue_json(ALL_GRANTS))["grants"] == ["contact", "identity", "payment_instrument"]
