"""Structured logging: JSON lines, plain text, and redaction of every record at the handler."""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from processors.errors import ConfigError
from processors.observability import (
    RedactingFilter,
    clear_secrets,
    configure_logging,
    logs,
    register_secret,
)

CARD_TOKEN = "tok_mastercard_5555"
PASSPORT = "502135326"
NAME = "Jane Q. Doe"
DOB = "1985-03-12"
EMAIL = "jane.doe@example.com"
GATEWAY_TOKEN = "gw_sandbox_T0k3n_9f8e7d"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La"
PII = (CARD_TOKEN, PASSPORT, NAME, DOB, EMAIL, GATEWAY_TOKEN, WEBHOOK_SECRET)

log = logging.getLogger("processors.test.logs")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    clear_secrets()
    yield
    clear_secrets()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    return out


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_core_fields(stream: io.StringIO) -> None:
    log.info("first %s", "message")
    log.warning("second\nspans lines")
    first, second = _lines(stream)
    assert first["level"] == "INFO"
    assert first["logger"] == "processors.test.logs"
    assert first["msg"] == "first message"
    assert first["ts"].endswith("Z")
    assert "T" in first["ts"]
    assert second["msg"] == "second\nspans lines"
    assert second["level"] == "WARNING"


def test_extra_fields_are_written_and_json_ready(stream: io.StringIO) -> None:
    log.info(
        "charged",
        extra={"app": "payments", "amount": Decimal("1185.50"), "attempt": 2, "level": "shadowed"},
    )
    [line] = _lines(stream)
    assert line["app"] == "payments"
    assert line["amount"] == "1185.50"
    assert line["attempt"] == 2
    assert line["level"] == "INFO"
    assert line["extra_level"] == "shadowed"


def test_a_registered_secret_in_a_message_is_masked(stream: io.StringIO) -> None:
    register_secret(GATEWAY_TOKEN)
    log.info("calling the gateway with %s", GATEWAY_TOKEN)
    log.debug("webhook configured with %s", WEBHOOK_SECRET)
    text = stream.getvalue()
    assert GATEWAY_TOKEN not in text
    assert WEBHOOK_SECRET not in text
    first, second = _lines(stream)
    assert first["msg"] == "calling the gateway with ***"
    assert second["msg"] == "webhook configured with ***"


def test_personal_data_in_extra_fields_is_masked(stream: io.StringIO) -> None:
    log.info(
        "kyc request",
        extra={
            "full_name": NAME,
            "request": {"date_of_birth": DOB, "documents": [{"document_number": PASSPORT}]},
            "note": f"card {CARD_TOKEN} of {EMAIL}",
            "customer_id": "CUST-000123",
        },
    )
    text = stream.getvalue()
    for value in PII:
        assert value not in text
    [line] = _lines(stream)
    assert line["full_name"] == "***"
    assert line["request"] == {"date_of_birth": "***", "documents": [{"document_number": "***"}]}
    assert line["note"] == "card *** of ***"
    assert line["customer_id"] == "CUST-000123"


def _fail_with_pii() -> None:
    try:
        raise KeyError(f"no customer with passport {PASSPORT}")
    except KeyError as exc:
        raise ValueError(f"lookup failed for {EMAIL} paying with {CARD_TOKEN}") from exc


def test_an_exception_and_its_cause_are_masked_in_the_traceback(stream: io.StringIO) -> None:
    register_secret(GATEWAY_TOKEN)
    try:
        _fail_with_pii()
    except ValueError:
        log.exception("handler failed (token %s)", GATEWAY_TOKEN)
    text = stream.getvalue()
    for value in PII:
        assert value not in text
    [line] = _lines(stream)
    assert line["exc_type"] == "ValueError"
    assert "Traceback (most recent call last)" in line["exc"]
    assert "The above exception was the direct cause" in line["exc"]
    assert "lookup failed for *** paying with ***" in line["exc"]
    assert "no customer with passport ***" in line["exc"]
    assert line["msg"] == "handler failed (token ***)"


def test_records_of_any_library_are_redacted(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.access").info('"POST /webhooks?token=%s HTTP/1.1" 200', "abc123secret")
    logging.getLogger("confluent_kafka").error("sasl password=%s rejected", "hunter2hunter2")
    text = stream.getvalue()
    assert "abc123secret" not in text
    assert "hunter2hunter2" not in text
    assert [line["logger"] for line in _lines(stream)] == ["aiohttp.access", "confluent_kafka"]


def test_handlers_behind_ours_see_the_redacted_record(stream: io.StringIO) -> None:
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(Collect())
    try:
        raise RuntimeError(f"boom {EMAIL}")
    except RuntimeError:
        log.error("card %s", CARD_TOKEN, exc_info=True, extra={"full_name": NAME})
    [record] = seen
    assert record.getMessage() == "card ***"
    assert record.__dict__["full_name"] == "***"
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "boom ***" in record.exc_text
    assert EMAIL not in logging.Formatter().format(record)


def test_plain_text_mode_is_redacted_too() -> None:
    out = io.StringIO()
    configure_logging("INFO", json_format=False, stream=out)
    register_secret(GATEWAY_TOKEN)
    try:
        raise ValueError(f"passport {PASSPORT}")
    except ValueError:
        log.exception("using %s for %s", GATEWAY_TOKEN, EMAIL, extra={"full_name": NAME, "app": "kyc"})
    text = out.getvalue()
    for value in PII:
        assert value not in text
    first = text.splitlines()[0]
    assert first.endswith('processors.test.logs using *** for *** | full_name="***" app="kyc"')
    assert "ERROR" in first
    assert "ValueError: passport ***" in text


def test_levels_below_the_configured_one_are_dropped() -> None:
    out = io.StringIO()
    configure_logging("warning", stream=out)
    log.info("not written")
    log.warning("written")
    assert [line["msg"] for line in _lines(out)] == ["written"]


def test_an_unknown_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown log level"):
        configure_logging("LOUD")


def test_configuring_again_replaces_our_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first)
    configure_logging("INFO", stream=second)
    log.info("once")
    assert first.getvalue() == ""
    assert [line["msg"] for line in _lines(second)] == ["once"]


def test_unformattable_arguments_do_not_break_logging(stream: io.StringIO) -> None:
    log.info("two placeholders %s %s", "only one")
    [line] = _lines(stream)
    assert line["msg"] == "two placeholders %s %s (unformattable log arguments)"


def test_the_filter_can_protect_any_handler() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    child = logging.getLogger("processors.test.logs.child")
    child.addHandler(handler)
    child.propagate = False
    try:
        child.warning("token %s for %s", CARD_TOKEN, EMAIL)
    finally:
        child.removeHandler(handler)
        child.propagate = True
    assert out.getvalue() == "token *** for ***\n"


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Holder:
    card_token: str


def _reference_line(entry: dict[str, Any]) -> dict[str, Any]:
    """What the standard library's ``json`` writes for ``entry`` with the formatter's default."""
    return json.loads(json.dumps(entry, default=logs._json_default, ensure_ascii=False))  # type: ignore[no-any-return]


def test_the_line_is_laid_out_as_the_standard_json_writer_lays_it_out(stream: io.StringIO) -> None:
    # Operators' tooling may match on the layout (``"level": "ERROR"``), not only parse it.
    log.warning("laid out", extra={"app": "payments", "nested": {"a": [1, 2]}})
    [text] = stream.getvalue().splitlines()
    assert text == json.dumps(json.loads(text), ensure_ascii=False)
    assert '"level": "WARNING"' in text


def test_extra_values_are_written_as_the_standard_json_writer_writes_them(stream: io.StringIO) -> None:
    extra: dict[str, Any] = {
        "amount": Decimal("1185.50"),
        "audit_id": UUID("3b2c1d4e-0000-4000-8000-000000000001"),
        "at": datetime(2026, 12, 7, 19, 0, 0, 123456, tzinfo=UTC),
        "naive": datetime(2026, 12, 7, 19, 0),
        "day": date(2026, 12, 7),
        "clock": dt_time(19, 30),
        "colour": _Colour.RED,
        "tags": {"b"},
        "pair": ("a", 1),
        "nested": {"list": [1, 2.5, None, True], "text": "Zürich ✓"},
        "ratio": 0.1,
    }
    log.info("values", extra=extra)
    [line] = _lines(stream)
    assert {key: line[key] for key in extra} == _reference_line(extra)


def test_the_formatter_names_a_dataclass_never_writes_it_field_by_field() -> None:
    # the redacting filter masks it first; the formatter alone must not spill it either
    record = log.makeRecord(
        log.name, logging.INFO, __file__, 1, "holder", None, None,
        extra={"holder": _Holder(card_token=CARD_TOKEN)},
    )  # fmt: skip
    text = logs.JsonFormatter().format(record)
    assert json.loads(text)["holder"] == "<_Holder>"
    assert CARD_TOKEN not in text


@pytest.mark.parametrize(
    "value",
    [{1: "non-text key"}, 2**70, {"deep": {2: "x"}}],
    ids=["int-key", "int-beyond-64-bits", "nested-int-key"],
)
def test_values_beyond_plain_json_are_still_written(stream: io.StringIO, value: Any) -> None:
    log.info("odd", extra={"odd": value})
    [line] = _lines(stream)
    assert line["odd"] == _reference_line({"odd": value})["odd"]
    assert line["msg"] == "odd"


@pytest.mark.parametrize(
    "created",
    [
        1796682771.0,
        1796682771.001,
        1796682771.0005,
        1796682771.999,
        1796682771.9994,
        1796682771.123456,
        1577836799.9990001,  # last millisecond of 2019
        951782400.5,  # 29 February 2000
        *[1796682771 + i / 997 for i in range(0, 997, 37)],
    ],
)
def test_the_timestamp_is_utc_iso_with_milliseconds_as_datetime_writes_it(created: float) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = created
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert logs._timestamp(record) == expected
    assert logs._timestamp(record) == expected  # the cached second gives the same


def test_ready_extras_are_the_fields_given_and_the_record_carries_them_too() -> None:
    fields = {"app": "payments", "attempt": 1}
    record = logging.getLogger("processors.test.logs").makeRecord(
        "processors.test.logs", logging.INFO, __file__, 1, "m", None, None,
        extra={**fields, logs.EXTRAS_READY: fields},
    )  # fmt: skip
    assert logs.log_extras(record) == fields
    assert record.app == "payments"  # type: ignore[attr-defined]
    plain = logging.getLogger("processors.test.logs").makeRecord(
        "processors.test.logs", logging.INFO, __file__, 1, "m", None, None, extra=fields
    )
    assert logs.log_extras(plain) == fields
