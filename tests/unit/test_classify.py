"""The failure classification table: HTTP statuses and exceptions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from processors.adapters.http import ConnectFailed, HttpTimeout
from processors.errors import DecodeError, Permanent, Retriable, ValidationFailed
from processors.resilience.breaker import CircuitOpen, OperationTimedOut
from processors.resilience.classify import (
    BreakerOutcome,
    PermanentHttpStatus,
    RetriableHttpStatus,
    breaker_outcome,
    classify_status,
    is_counted_failure,
)
from processors.resilience.retry import RetriesExhausted

CONTEXT = "kyc-provider POST /api/v1/customers/{id}/kyc"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_not_a_failure(status: int) -> None:
    assert classify_status(status, context=CONTEXT) is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 507, 599])
def test_retriable_statuses(status: int) -> None:
    error = classify_status(status, 2.5, context=CONTEXT)
    assert isinstance(error, RetriableHttpStatus)
    assert isinstance(error, Retriable)
    assert error.status == status
    assert error.retry_after_s == 2.5
    assert str(error).startswith(f"{CONTEXT}: HTTP {status}")


def test_409_is_retriable_because_the_same_key_is_in_flight() -> None:
    error = classify_status(409, context=CONTEXT)
    assert isinstance(error, Retriable)
    assert "idempotency key is in progress" in str(error)
    assert error.retry_after_s is None


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 406, 410, 413, 415, 418, 422, 451, 499])
def test_permanent_statuses(status: int) -> None:
    error = classify_status(status, 3.0, context=CONTEXT)
    assert isinstance(error, PermanentHttpStatus)
    assert isinstance(error, Permanent)
    assert error.status == status
    assert str(error).startswith(f"{CONTEXT}: HTTP {status}")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_permanent_because_they_are_not_followed(status: int) -> None:
    error = classify_status(status, context=CONTEXT)
    assert isinstance(error, Permanent)
    assert "endpoint URL" in str(error)


@pytest.mark.parametrize("status", [100, 0, 600, 999])
def test_statuses_outside_the_standard_ranges_are_retriable(status: int) -> None:
    error = classify_status(status, context=CONTEXT)
    assert isinstance(error, Retriable)
    assert "unexpected HTTP status" in str(error)


@pytest.mark.parametrize("retry_after_s", [-1.0, float("nan"), float("inf")])
def test_unusable_retry_after_is_ignored(retry_after_s: float) -> None:
    error = classify_status(503, retry_after_s, context=CONTEXT)
    assert isinstance(error, Retriable)
    assert error.retry_after_s is None


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (Retriable("503"), BreakerOutcome.FAILURE),
        (HttpTimeout("read timed out"), BreakerOutcome.FAILURE),
        (ConnectFailed("refused"), BreakerOutcome.FAILURE),
        (RetriesExhausted("3 attempts", attempts=3), BreakerOutcome.FAILURE),
        (CircuitOpen("downstream", retry_after_s=1.0), BreakerOutcome.FAILURE),
        (OperationTimedOut("slow", timeout_s=1.0), BreakerOutcome.FAILURE),
        (TimeoutError(), BreakerOutcome.FAILURE),
        (ValueError("unexpected"), BreakerOutcome.FAILURE),
        (Permanent("422"), BreakerOutcome.HEALTHY),
        (PermanentHttpStatus("404", status=404), BreakerOutcome.HEALTHY),
        (ValidationFailed("bad field"), BreakerOutcome.NEUTRAL),
        (DecodeError("bad bytes"), BreakerOutcome.NEUTRAL),
        (asyncio.CancelledError(), BreakerOutcome.NEUTRAL),
        (KeyboardInterrupt(), BreakerOutcome.NEUTRAL),
        (SystemExit(1), BreakerOutcome.NEUTRAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_breaker_outcome(exc: BaseException, outcome: BreakerOutcome) -> None:
    assert breaker_outcome(exc) is outcome
    assert is_counted_failure(exc) is (outcome is BreakerOutcome.FAILURE)


def test_every_classified_status_agrees_with_the_breaker() -> None:
    for status in range(100, 600):
        error = classify_status(status, context=CONTEXT)
        if error is None:
            assert 200 <= status <= 299
        elif isinstance(error, Retriable):
            assert is_counted_failure(error), status
        else:
            assert breaker_outcome(error) is BreakerOutcome.HEALTHY, status


def _doc_http_rows() -> list[tuple[str, list[int], str]]:
    """(row label, statuses named or implied by the row, class) from the doc's table."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "failure-classification.md"
    rows = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| HTTP "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        label, klass = cells[0], cells[2]
        statuses = [int(n) for n in re.findall(r"\b([1-5]\d\d)\b", label)]
        for hundred in re.findall(r"\b([1-5])xx\b", label):
            statuses += [int(hundred) * 100 + n for n in (0, 1, 50, 99)]
        rows.append((label, statuses, klass))
    return rows


def test_the_documented_table_matches_classify_status() -> None:
    rows = _doc_http_rows()
    assert len(rows) >= 8
    expected = {"result": type(None), "Retriable": Retriable, "Permanent": Permanent}
    for label, statuses, klass in rows:
        assert statuses, label
        if "2xx" in label and "unreadable" in label:
            continue  # decided by the adapter from the body, not by the status
        if label.startswith("HTTP status outside"):
            continue  # covered by test_statuses_outside_the_standard_ranges_are_retriable
        for status in statuses:
            if any(status in other for lab, other, _ in rows if lab != label and "any other" not in lab):
                continue  # a named status belongs to its own row
            assert isinstance(classify_status(status, context=CONTEXT), expected[klass]), (label, status)
