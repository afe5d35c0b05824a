"""Time is UTC: a time at the edge of the calendar, or without a zone, is a refusal with a reason
at every door it can come in by, never an untyped ``OverflowError``."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from processors.adapters import kyc_provider, payment_gateway, reinsurer
from processors.adapters.http import HttpResponse
from processors.errors import DecodeError, Retriable
from processors.partners.cli import _utc_time
from processors.portal.graphql.scalars import parse_datetime
from processors.utc import NAIVE, OUT_OF_RANGE, UtcDatetime, parse_utc, to_utc
from processors.webhooks.secrets import _aware

EDGES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-01:00"]
"""Valid ISO-8601 times whose conversion to UTC leaves the calendar."""


def test_an_aware_time_is_converted_and_a_utc_one_kept_as_it_is() -> None:
    paris = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    assert to_utc(paris) == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    assert to_utc(paris).tzinfo is UTC
    now = datetime.now(UTC)
    assert to_utc(now) is now
    assert parse_utc("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_naive_time_is_refused_unless_it_is_said_to_be_utc() -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware") as caught:
        to_utc(naive)
    assert str(caught.value) == NAIVE
    assert to_utc(naive, naive_is_utc=True) == datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("text", EDGES)
def test_a_time_that_leaves_the_calendar_in_utc_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="outside the representable range") as caught:
        parse_utc(text)
    assert str(caught.value) == OUT_OF_RANGE
    with pytest.raises(OverflowError):  # what Python itself does
        datetime.fromisoformat(text).astimezone(UTC)


def test_text_that_is_not_a_time_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        parse_utc("next tuesday")


class _Body(BaseModel):
    at: UtcDatetime


@pytest.mark.parametrize(
    ("value", "kind"),
    [(EDGES[0], "datetime_range"), (EDGES[1], "datetime_range"), ("2026-03-01T12:00:00", "naive_datetime")],
)
def test_the_field_type_gives_coded_validation_errors(value: str, kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _Body.model_validate({"at": value})
    (error,) = caught.value.errors()
    assert error["type"] == kind
    assert _Body.model_validate({"at": "2026-03-01T13:00:00+01:00"}).at == datetime(
        2026, 3, 1, 12, tzinfo=UTC
    )


@pytest.mark.parametrize("text", EDGES)
def test_every_door_refuses_the_edge_with_its_own_error(text: str) -> None:
    with pytest.raises(ValueError, match="a DateTime is outside the representable range"):
        parse_datetime(text)  # the portal's GraphQL DateTime scalar
    with pytest.raises(argparse.ArgumentTypeError, match="outside the representable range"):
        _utc_time(text)  # processors partners keys create --expires-at
    with pytest.raises(ValueError, match="expires_at is outside"):
        _aware(datetime.fromisoformat(text), "expires_at")  # a secret's stored times


@pytest.mark.parametrize("text", EDGES)
def test_a_provider_answering_an_edge_time_is_retried_not_an_untyped_error(text: str) -> None:
    def answer(document: dict[str, object]) -> HttpResponse:
        return HttpResponse(200, {"Content-Type": "application/json"}, json.dumps(document).encode())

    with pytest.raises(Retriable, match="unreadable"):
        payment_gateway.parse_response(
            answer(
                {"payment_id": "p-1", "gateway_reference": "g-1", "status": "COMPLETED", "processed_at": text}
            )
        )
    with pytest.raises(Retriable, match="unreadable"):
        kyc_provider.parse_response(
            answer({"verification_id": "v-1", "status": "APPROVED", "risk_score": 10, "verified_at": text})
        )
    with pytest.raises(Retriable, match="outside the representable range"):
        reinsurer.parse_response(
            "R-1", answer({"report_id": "R-1", "status": "RECEIVED", "received_at": text})
        )


def test_a_stored_secret_with_an_edge_time_is_a_decode_error() -> None:
    from processors.webhooks import secrets

    with pytest.raises(DecodeError, match="outside the representable range"):
        secrets._parse_time(EDGES[0], "created_at")
