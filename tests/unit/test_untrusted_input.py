"""Every parser of untrusted input refuses with a typed, readable error, never anything else.

The regressions first (inputs found by fuzzing), then property-based suites: at least 10,000
examples per entry point (``HYPOTHESIS_EXAMPLES`` changes it), each allowed to end only in the
entry point's own refusal (a ``ContractError`` for the decoder, ``peek`` and the provider
callbacks).  The HTTP API's routes, which answer a 4xx, are fuzzed in
:mod:`tests.unit.test_untrusted_api_bodies` with the JSON values here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.adapters import jsonwire
from processors.api.inbound import PaymentConfirmationHandler
from processors.apps.kyc.mapping import decision_from_callback
from processors.contract import Codec, ContentType, LocalSchemaIds
from processors.contract.examples import example_event
from processors.errors import ContractError, DecodeError, ValidationFailed

CODEC = Codec(LocalSchemaIds())
EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "10000"))
#: 10,000 examples take up to a minute on a loaded two-core machine: a deadline of their own
pytestmark = pytest.mark.timeout(900)

MANY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

EVENT_TYPES = ("policy.issued", "premium.due", "claim.settled", "customer.kyc_requested", "payment.completed")


def _json_event(event_type: str) -> dict[str, Any]:
    value, _ = CODEC.encode(example_event(event_type), ContentType.JSON)
    document: dict[str, Any] = json.loads(value)
    return document


JSON_HEADERS = [("content-type", b"application/json")]

# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    "occurred_at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "1700000000", "2024-01-15"]
)
def test_times_out_of_range_or_not_iso_are_validation_failures(occurred_at: str) -> None:
    document = _json_event("policy.issued") | {"occurred_at": occurred_at}
    with pytest.raises(ValidationFailed, match="occurred_at"):
        CODEC.decode(json.dumps(document).encode(), JSON_HEADERS)


def test_peek_refuses_a_time_out_of_range() -> None:
    document = _json_event("policy.issued") | {"occurred_at": "9999-12-31T23:59:59-23:59"}
    with pytest.raises(DecodeError):
        CODEC.peek(json.dumps(document).encode(), JSON_HEADERS)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_decode_error(depth: int) -> None:
    value = b'{"event_type": "policy.issued", "data": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(DecodeError, match="nested too deeply"):
        CODEC.decode(value, JSON_HEADERS)
    with pytest.raises(DecodeError, match="nested too deeply"):
        CODEC.peek(value, JSON_HEADERS)


def test_a_nul_byte_in_an_identifier_is_refused() -> None:
    document = _json_event("premium.due")
    document["data"]["instalment_id"] = "INS-\x00-1"
    with pytest.raises(ValidationFailed, match="instalment_id"):
        CODEC.decode(json.dumps(document).encode(), JSON_HEADERS)


def test_a_key_given_twice_is_refused_not_last_wins() -> None:
    document = json.dumps(_json_event("premium.due"))
    twice = document.replace('"event_type":', '"event_type": "refund.requested", "event_type":', 1)
    with pytest.raises(DecodeError, match="appears twice"):
        CODEC.decode(twice.encode(), JSON_HEADERS)
    with pytest.raises(DecodeError, match="appears twice"):
        CODEC.peek(twice.encode(), JSON_HEADERS)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_standard_json_constants_are_refused(constant: bytes) -> None:
    with pytest.raises(jsonwire.JsonRejected):
        jsonwire.loads_strict(b'{"amount": ' + constant + b"}")


def test_the_valid_examples_still_decode() -> None:
    for event_type in EVENT_TYPES:
        value, headers = CODEC.encode(example_event(event_type), ContentType.JSON)
        assert CODEC.decode(value, headers).event_type == event_type


# --------------------------------------------------------------------------- strategies

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+14:00",
            "1700000000",
            "2024-02-30T00:00:00Z",
            "POL\x00X",
            "USD",
            "-0.001",
            "1e400",
            "",
            " ",
        ]
    ),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid JSON event with one field, somewhere in it, replaced, removed or added."""
    document = _json_event(draw(st.sampled_from(EVENT_TYPES)))
    target: Any = document
    if draw(st.booleans()) and isinstance(document.get("data"), dict):
        target = document["data"]
    keys = sorted(target)
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "add" or not keys:
        target[draw(st.text(max_size=12))] = draw(json_values)
    elif action == "remove":
        del target[draw(st.sampled_from(keys))]
    else:
        target[draw(st.sampled_from(keys))] = draw(json_values)
    return json.dumps(document, allow_nan=False).encode()


headers_strategy = st.one_of(
    st.just(JSON_HEADERS),
    st.just([("content-type", b"application/avro")]),
    st.just([]),
    st.lists(
        st.tuples(st.sampled_from(["content-type", "event-type", "x"]), st.binary(max_size=20)), max_size=3
    ),
)


def _avro_examples() -> list[bytes]:
    return [CODEC.encode(example_event(t), ContentType.AVRO)[0] for t in EVENT_TYPES]


@st.composite
def corrupted_avro(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(st.sampled_from(_avro_examples())))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(value) - 1))
        value[position] = draw(st.integers(min_value=0, max_value=255))
    cut = draw(st.integers(min_value=0, max_value=len(value)))
    return bytes(value[: max(cut, len(value) - draw(st.integers(0, 3)))])


untrusted_values = st.one_of(st.binary(max_size=300), mutated_events(), corrupted_avro())


# --------------------------------------------------------------------------- the decoder and peek


def _refuses_only_with(allowed: type[Exception], call: Callable[[], object]) -> None:
    """``call()`` returns, or raises ``allowed`` with a reason; anything else fails the test."""
    try:
        call()
    except allowed as exc:
        reason = getattr(exc, "reason", None) or str(exc)
    else:
        return
    assert reason


@MANY
@given(value=untrusted_values, headers=headers_strategy)
def test_the_decoder_only_ever_refuses_with_a_contract_error(value: bytes, headers: list[Any]) -> None:
    _refuses_only_with(ContractError, lambda: CODEC.decode(value, headers))


@MANY
@given(value=untrusted_values, headers=headers_strategy)
def test_peek_only_ever_refuses_with_a_decode_error(value: bytes, headers: list[Any]) -> None:
    _refuses_only_with(DecodeError, lambda: CODEC.peek(value, headers))


# --------------------------------------------------------------------------- provider callbacks


def _confirmation() -> dict[str, Any]:
    return {
        "event_id": "evt_1",
        "event_type": "payment.confirmed",
        "created_at": "2024-06-10T06:13:20Z",
        "data": {
            "payment_id": "PMT-1",
            "status": "COMPLETED",
            "gateway_reference": "ch_1",
            "amount": "1185.50",
            "currency": "USD",
            "transaction_type": "CHARGE",
            "policy_id": "POL-1",
            "reference_id": "INS-1",
            "idempotency_key": "idem_1",
            "processed_at": "2024-06-10T06:13:20Z",
        },
    }


@st.composite
def mutated_callbacks(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    document = _confirmation()
    target = document["data"] if draw(st.booleans()) else document
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        target[key] = draw(json_values)
    else:
        del target[key]
    # numbers with a fraction arrive as Decimal, as the API parses them
    return jsonwire.loads_strict(json.dumps(document, allow_nan=False))


@MANY
@given(payload=mutated_callbacks())
def test_payment_confirmations_only_ever_refuse_with_a_contract_error(payload: Any) -> None:
    handler = PaymentConfirmationHandler("integrations.payment.results")
    document = payload if isinstance(payload, dict) else {"data": payload}
    _refuses_only_with(ContractError, lambda: handler(document, provider_event_id="evt_1"))


@MANY
@given(payload=st.one_of(json_values, mutated_callbacks()))
def test_kyc_callbacks_only_ever_refuse_with_a_contract_error(payload: Any) -> None:
    document = payload if isinstance(payload, dict) else {"data": payload}
    _refuses_only_with(ContractError, lambda: decision_from_callback(document))


@MANY
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_the_strict_json_reader_only_ever_refuses_with_its_own_error(raw: bytes) -> None:
    _refuses_only_with(jsonwire.JsonRejected, lambda: jsonwire.loads_strict(raw))
