"""A corpus of personal data in many countries' formats: none of it reaches a log line, an
audit record or a dead-letter view.

Each sample is a line as it could appear in an error message, a provider's answer or a note
field, with the personal data it holds listed beside it.  The test first proves each string is
in its sample, then that no output carries it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from processors.contract import Codec, LocalSchemaIds
from processors.dlq import DeadLetter, describe_value
from processors.dlq.inspect import show_document
from processors.observability.audit import AuditEvent
from processors.observability.logs import configure_logging
from processors.observability.redact import redact, redact_text


@dataclass(frozen=True)
class Sample:
    kind: str
    text: str
    pii: tuple[str, ...]


NAMES = (
    "John Smith", "María José García", "Jürgen Müller", "Anne-Sophie Lefèvre", "Giulia Bianchi",
    "Olusegun Adeyemi", "Priya Sharma", "Zoë O'Brien", "Lars Øberg", "Wei Zhang",
    "Ngozi Okafor", "Mateus Oliveira", "Siobhan Murphy", "Kateřina Nováková", "Ahmed Hassan",
)  # fmt: skip
SSNS = ("123-45-6789", "078-05-1120", "219-09-9999", "457-55-5462", "536-22-1234")
NINOS = ("AB123456C", "AB 12 34 56 C", "JG103759A", "PE 87 63 45 D", "ZR 01 02 03 B")
DOBS_ISO = ("1985-03-12", "1972-11-30", "2001-07-04", "1990-02-28", "1966-12-01")
DOBS_LOCAL = ("03/12/1985", "11/30/1972", "31.12.1985", "04.07.2001", "7/4/1990")
PHONES = (
    "(555) 123-4567", "555-123-4567", "555.123.4567", "+1 555 123 4567", "+1 (555) 123-4567",
    "+44 20 7946 0958", "+44 7700 900123", "+49 30 1234567", "+33 1 23 45 67 89",
    "+91 98765 43210", "+55 11 91234-5678", "+81 3-1234-5678", "+61 2 9876 5432",
    "+34 612 34 56 78", "+39 06 1234 5678",
)  # fmt: skip
EMAILS = (
    "john.smith@example.com", "maria+claims@example.es", "j.mueller@beispiel.de",
    "a.lefevre@exemple.fr", "priya_sharma@example.co.in",
)  # fmt: skip
IBANS = (
    "DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819",
    "GB29 NWBK 6016 1331 9268 19", "FR1420041010050500013M02606", "NL91ABNA0417164300",
    "ES9121000418450200051332", "IT60X0542811101000000123456", "CH9300762011623852957",
)  # fmt: skip
CARDS = (
    "4111 1111 1111 1111", "4111-1111-1111-1111", "5500000000000004", "3782 822463 10005",
    "4242424242424242", "6011 1111 1111 1117",
)  # fmt: skip
TOKENS = ("tok_visa_4242", "tok_1NqX9c2eZvKYlo2C", "whsec_dGhpcy1pcy1hLXNlY3JldA==")
PASSPORTS = ("X1234567", "C01X00T47", "123456789", "P4366918", "AA1234567")
ACCOUNTS = ("12345678", "00112233", "31926819", "0532013000")


def _samples() -> Iterator[Sample]:
    for name in NAMES:
        # every part of a name is personal data on its own: "*** Smith" still names someone
        parts = (name, *(part for part in name.replace("-", " ").split() if len(part) >= 3))
        yield Sample("name", f"name={name}, policy POL-2024-000001", parts)
        yield Sample("name", f"full_name: {name}; claim CLM-9", parts)
        yield Sample("name", f'{{"customer_name": "{name}", "amount": "100.00"}}', parts)
        yield Sample("name", f"account_holder={name} status=ACTIVE", parts)
        yield Sample("name", f"Beneficiary Mr {name} reported the loss", parts)
    for ssn in SSNS:
        yield Sample("ssn", f"KYC refused: SSN {ssn} does not match", (ssn,))
        yield Sample("ssn", f"ssn={ssn}", (ssn,))
    for nino in NINOS:
        yield Sample("nino", f"National Insurance number {nino} on file", (nino,))
    for dob in DOBS_ISO:
        yield Sample("dob", f"date of birth: {dob}", (dob,))
        yield Sample("dob", f"customer born on {dob} (age check)", (dob,))
        yield Sample("dob", f"DOB {dob}", (dob,))
    for dob in DOBS_LOCAL:
        yield Sample("dob", f"birthday {dob} from the form", (dob,))
    for phone in PHONES:
        yield Sample("phone", f"call back on {phone} after 5pm", (phone,))
        yield Sample("phone", f"mobile_number={phone}", (phone,))
    for email in EMAILS:
        yield Sample("email", f"notify {email} of the decision", (email,))
        yield Sample("email", f'{{"contact": "{email}"}}', (email,))
    for dob in DOBS_LOCAL:
        yield Sample("dob", f"dob={dob}", (dob,))
    for iban in IBANS:
        yield Sample("iban", f"refund to IBAN {iban} requested", (iban,))
        yield Sample("iban", f'{{"iban": "{iban}"}}', (iban,))
    for card in CARDS:
        yield Sample("card", f"gateway echoed card {card} in its error", (card,))
    for token in TOKENS:
        yield Sample("token", f"payment_method token {token} declined", (token,))
    for passport in PASSPORTS:
        yield Sample("document", f"passport_number={passport} expired", (passport,))
        yield Sample("document", f'{{"document_number": "{passport}", "type": "PASSPORT"}}', (passport,))
    for account in ACCOUNTS:
        yield Sample("account", f"account_number: {account}", (account,))
        yield Sample(
            "account", f'{{"bank_account": "{account}", "sort_code": "60-16-13"}}', (account, "60-16-13")
        )
    yield Sample(
        "mixed",
        "Mrs Jane Doe (jane.doe@example.com, +44 7700 900456) born on 1988-08-08, NI QQ 12 34 56 A",
        ("Jane Doe", "jane.doe@example.com", "+44 7700 900456", "1988-08-08"),
    )


SAMPLES = list(_samples())


def test_the_corpus_is_large_and_each_sample_holds_its_personal_data() -> None:
    assert len(SAMPLES) >= 200
    assert len({s.kind for s in SAMPLES}) >= 10
    for sample in SAMPLES:
        for pii in sample.pii:
            assert pii in sample.text


def _leaks(output: str) -> list[str]:
    return [f"{s.kind}: {pii!r}" for s in SAMPLES for pii in s.pii if pii in output]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.kind}:{s.text[:24]}")
def test_free_text_and_values_inside_structures_are_redacted(sample: Sample) -> None:
    free = redact_text(sample.text)
    inside = json.dumps(redact({"note": sample.text, "details": [sample.text]}), ensure_ascii=False)
    for pii in sample.pii:
        assert pii not in free, f"{pii!r} leaked from {sample.text!r} as {free!r}"
        assert pii not in inside, f"{pii!r} leaked from a structure: {inside!r}"


def test_no_log_line_carries_the_corpus() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    log = logging.getLogger("processors.pii-corpus")
    try:
        for sample in SAMPLES:
            log.warning("provider answered: %s", sample.text, extra={"detail": sample.text})
            try:
                raise ValueError(sample.text)
            except ValueError:
                log.exception("handler failed")
    finally:
        configure_logging("WARNING", stream=io.StringIO())
    output = stream.getvalue()
    assert output.count("provider answered") == len(SAMPLES)
    assert _leaks(output) == []


def test_no_audit_record_carries_the_corpus() -> None:
    records = []
    for sample in SAMPLES:
        event = AuditEvent(
            app="payments",
            direction="outbound",
            endpoint="payment-gateway",
            operation="charge",
            status="400",
            outcome="rejected",
            latency_ms=1.0,
            request_summary={"note": sample.text, "customer_name": sample.pii[0]},
            response_summary={"message": sample.text},
            error=f"GatewayRejected: {sample.text}",
        )
        records.append(event.to_json().decode())
    assert _leaks("\n".join(records)) == []


def test_no_dead_letter_view_carries_the_corpus() -> None:
    codec = Codec(LocalSchemaIds())
    shown = []
    for offset, sample in enumerate(SAMPLES):
        body = json.dumps({"event_type": "premium.due", "note": sample.text}).encode()
        record = DeadLetter(
            topic="integrations.payments.dlq",
            partition=0,
            offset=offset,
            key=b"POL-1",
            value=body,
            headers=(("x-error-message", sample.text.encode()), ("content-type", b"application/json")),
        )
        view = describe_value(record.value, record.headers, codec)
        shown.append(json.dumps(show_document(record, view), ensure_ascii=False))
    assert _leaks("\n".join(shown)) == []
