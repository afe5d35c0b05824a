"""Redaction: the one place where personal data and secrets are taken out.

Every audit event and every log record passes through this module before it is written:
:class:`~processors.observability.audit.AuditEvent` runs its summaries through
:func:`redact` in a validator, and the logging filter
(:class:`~processors.observability.logs.RedactingFilter`) runs messages, ``extra`` fields
and tracebacks through :func:`redact_text` and :func:`redact`.

Two mechanisms, used together:

* **by key** (structured data): the value of a sensitive key is replaced by ``"***"``,
  whatever it is (a string, a number, a whole address object); ``None`` stays ``None``.
  Keys are compared case-insensitively with ``-`` and ``_`` ignored, so ``card_token``,
  ``Card-Token`` and ``cardToken`` are one key.  A key is sensitive if it is one of
  :data:`SENSITIVE_KEYS` (which includes :data:`processors.contract.PII_FIELDS`) or ends
  with one of :data:`SENSITIVE_SUFFIXES` (``x_api_key``, ``client_secret``,
  ``X-Signature``...).  ``name`` is sensitive wherever it appears: a name cannot be told
  from a non-personal one by its key, so fields meant to stay visible carry a specific
  key (``list_name``, ``app``).
* **by pattern** (free text): card tokens (``tok_...``), bearer credentials, webhook
  secrets (``whsec_...``), e-mail addresses, credentials in URLs, ``key=value`` /
  ``"key": "value"`` pairs whose key is sensitive, card numbers, long digit runs
  (passport and card numbers) and every secret registered with :func:`register_secret`.

String values inside structures get the pattern pass too, except the long-digit rule
(which would eat epoch timestamps and gateway references that audits need); card
numbers there are caught by their Luhn check.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Final
from uuid import UUID

from pydantic import BaseModel, SecretBytes, SecretStr

from processors.contract import PII_FIELDS

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "SENSITIVE_KEYS",
    "SENSITIVE_SUFFIXES",
    "clear_secrets",
    "is_sensitive_key",
    "redact",
    "redact_headers",
    "redact_text",
    "register_secret",
]

MASK: Final = "***"
"""What a redacted value becomes."""

MIN_SECRET_LENGTH: Final = 4
"""Shorter registered secrets are refused: masking them would mangle every log line."""

_MAX_DEPTH: Final = 32
_KEY_CACHE_MAX: Final = 8192


def _norm(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


_NAMED_KEYS: Final = frozenset(
    {
        # payment data
        "card_token", "card_number", "pan", "cvv", "cvc", "cvv2", "expiry", "card_expiry",
        # identity documents
        "document_number", "passport_number", "id_number", "national_id", "tax_id", "ssn",
        # names
        "name", "full_name", "first_name", "last_name", "middle_name", "given_name",
        "family_name", "surname", "maiden_name",
        # dates of birth
        "date_of_birth", "dob", "birth_date", "birthdate",
        # addresses and contact details
        "address", "billing_address", "line1", "line2", "street", "postal_code", "zip",
        "zip_code", "email", "phone", "phone_number", "mobile", "mobile_number", "telephone",
        "fax",
        # bank accounts and their holders
        "iban", "account_number", "bank_account", "sort_code", "routing_number", "holder",
        "nino", "ni_number", "national_insurance_number", "social_security_number",
        # images
        "front_image_url", "back_image_url", "image_url", "selfie_url",
        # credentials and secrets
        "authorization", "proxy_authorization", "secret", "webhook_secret", "token",
        "api_key", "password", "passwd", "signature", "cookie", "set_cookie",
        "private_key", "credentials",
        # raw input quoted by validation errors (pydantic's "input_value=...")
        "input_value",
    }
)  # fmt: skip

SENSITIVE_KEYS: Final[frozenset[str]] = frozenset(_norm(k) for k in _NAMED_KEYS | PII_FIELDS)
"""Normalised (lower case, no ``-``/``_``) keys whose values are always masked."""

SENSITIVE_SUFFIXES: Final[tuple[str, ...]] = (
    "token",
    "secret",
    "password",
    "signature",
    "apikey",
    "authorization",
    "cookie",
    "imageurl",
    "address",
    "email",
    "phone",
    "fullname",
    "firstname",
    "lastname",
    "surname",
    "dateofbirth",
    "documentnumber",
    "passportnumber",
    "cardnumber",
    "accountnumber",
    "mobilenumber",
    "phonenumber",
    "holder",
    "holdername",
    "iban",
    "name",
)
"""Normalised key endings that make a key sensitive (``client_secret``, ``X-Api-Key``,
``beneficiary_name``, ``account_holder``)."""

_OPERATIONAL_NAMES: Final = frozenset(
    _norm(k)
    for k in (
        "app_name", "file_name", "filename", "manifest_name", "list_name", "topic_name", "event_name",
        "schema_name", "host_name", "hostname", "table_name", "field_name", "operation_name",
        "endpoint_name", "type_name", "config_name", "treaty_name", "product_name", "step_name",
        "stage_name", "service_name", "queue_name", "bucket_name", "key_name", "class_name",
        "display_name", "dlq_name", "group_name", "channel_name", "partner_name", "reinsurer_name",
        "insurer_name", "company_name", "business_name", "lob_name", "line_of_business_name",
    )
)  # fmt: skip
"""Keys ending in ``name`` that name things, not people, and stay visible."""
_key_cache: dict[str, bool] = {}


def is_sensitive_key(key: str) -> bool:
    """Whether the value under ``key`` is masked (cached per distinct key)."""
    hit = _key_cache.get(key)
    if hit is None:
        normalised = _norm(key)
        hit = normalised in SENSITIVE_KEYS or (
            normalised.endswith(SENSITIVE_SUFFIXES) and normalised not in _OPERATIONAL_NAMES
        )
        if len(_key_cache) < _KEY_CACHE_MAX:
            _key_cache[key] = hit
    return hit


# -- registered secrets ---------------------------------------------------------------------

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(value: str | SecretStr) -> None:
    """Mask ``value`` wherever it appears in logs and audit events from now on.

    Call it at start-up for every credential the process holds (gateway tokens, webhook
    secrets).  Raises ``ValueError`` for values shorter than :data:`MIN_SECRET_LENGTH`.
    """
    global _secrets
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(f"a secret to mask must have at least {MIN_SECRET_LENGTH} characters")
    with _secrets_lock:
        if text not in _secrets:
            # Longest first, so a secret that contains another is masked whole.
            _secrets = tuple(sorted((*_secrets, text), key=len, reverse=True))
            _forget_clean()  # a text found clean may hold the new secret


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets
    with _secrets_lock:
        _secrets = ()
        _forget_clean()


# Short texts scrubbing found nothing in, per ``digit_runs``: the labels of a hot path (names
# of apps, endpoints, operations, statuses, currencies) recur on every record and are scrubbed
# once.  Only texts left unchanged are kept, so nothing here is personal data the patterns
# know; registering a secret empties it.  Bounded: emptied when full.
_CLEAN_MAX: Final = 4096
_CLEAN_TEXT_MAX: Final = 64
_clean: dict[bool, set[str]] = {False: set(), True: set()}


def _forget_clean() -> None:
    for known in _clean.values():
        known.clear()


# -- free text ------------------------------------------------------------------------------

_EMAIL_OR_USERINFO = re.compile(
    r"(?P<userinfo>://)[^/\s:@]+(?::[^/\s@]*)?@"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD_TOKEN = re.compile(r"tok_[A-Za-z0-9_]+")
_WEBHOOK_SECRET = re.compile(r"whsec_[^\s\"',;]+")
_AUTH_SCHEME = re.compile(r"(?i:(\bbearer\s+)[^\s\"',;]+)|(\bBasic\s+)[A-Za-z0-9+/]{8,}={0,2}")
_DIGITS_HINT = re.compile(r"\d{4}[\d -]\d{3}")
_DIGITS_TEXT = re.compile(
    r"\d{4}(?:(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?\b"  # card numbers written in groups
    r"|[ -]\d{6}[ -]\d{5}\b"  # 4-6-5 (American Express)
    r"|\d{4,})"  # 8 digits or more: passport, card and account numbers
)
_ID_TOKEN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-f]{32}"
)
_HEXISH: Final = frozenset("0123456789abcdefABCDEF-")
_PAN_CANDIDATE = re.compile(r"(?<![\d])\d[\d -]{11,34}\d(?!\d)")
_DIGIT_RUN = re.compile(r"\d{13,19}")
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<q>[\"']?)(?P<key>[A-Za-z_][A-Za-z0-9_-]*)(?P=q)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s\"',;&?=(){}\[\]]+)"
)
_NULLS: Final = frozenset({"null", "None"})

# Personal data written in national formats, found wherever it stands (free text and values
# inside structures alike): each is specific enough not to eat timestamps or references.
_NATIONAL = re.compile(
    # US social security numbers: 123-45-6789 (the dashes make it one)
    r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"
    # UK National Insurance numbers: AB123456C, AB 12 34 56 C
    r"|(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
    # IBANs, compact or in groups of four: DE89 3704 0044 0532 0130 00
    r"|(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
    # phone numbers: +44 20 7946 0958, +1 (555) 123-4567, (555) 123-4567, 555-123-4567, 555.123.4567
    r"|(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
    r"|(?<![\w-])\(\d{3}\) ?\d{3}[ .-]\d{4}(?![\w-])"
    r"|(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w.-])"
    # dates written the US way (12/31/1985, 31.12.1985): this product writes ISO 8601 only
    r"|(?<![\w/.])\d{1,2}[/.]\d{1,2}[/.](?:19|20)\d{2}(?![\w/.])"
)
# a date of birth in ISO form, recognised by the words before it
_BIRTH_DATE = re.compile(
    r"(?i:(?P<lead>\b(?:d\.?o\.?b\.?|born(?: on)?|birth ?date|date of birth|geboren|né(?:e)? le)\W{0,3})"
    r"(?:\d{4}-\d{2}-\d{2}|\d{1,2} [A-Za-z]{3,9} \d{4}|[A-Za-z]{3,9} \d{1,2},? \d{4}))"
)
# people named with a title: Mr John Smith, Mrs. Jane Doe, Dr. Anna-Maria Müller
_TITLED_NAME = re.compile(
    r"\b(?P<title>Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Herr|Frau|Mme|Mlle|M|Sr|Sra|Sig|Sig\.ra)\.? "
    r"[A-ZÀ-Ý][\w'’-]+(?: [A-ZÀ-Ý][\w'’-]+){0,2}"
)
# the value of a sensitive key that holds words (a name, an address) runs to the next separator
_KEY_WORDS = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<key>[A-Za-z_][A-Za-z0-9_-]*)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>[^\s\"',;&=:(){}\[\]][^,;&=:\n\"(){}\[\]]*?)(?=\s*(?:[,;&\n]|$|\s[A-Za-z_][A-Za-z0-9_-]*\s*[=:]))"
)


# -- cheap necessary conditions ---------------------------------------------------------------
# The patterns above try every alternative at every position; most values on a hot path (ids,
# names of endpoints, amounts) can hold none of them.  Each test below is implied by a match of
# the pattern it guards (and so never skips one); ``tests/unit/test_redact.py`` compares the
# result with and without them.
_DIGITS_THEN_SEPARATOR = re.compile(r"\d\d\d[.-]\d\d(?:-|\d[.-])")  # SSN, 555-123-4567, 555.123.4567
_DIGIT_DOT_DIGIT = re.compile(r"\d\.\d")  # 31.12.1985
_UPPER_PAIR = re.compile(r"[A-Z][A-Z] ?\d")  # National Insurance numbers, IBANs
_FOUR_DIGITS = re.compile(r"\d\d\d\d")


def _may_hold_national(text: str) -> bool:
    if "+" in text or "(" in text or "/" in text:
        return True
    if text.lower() != text and _UPPER_PAIR.search(text) is not None:
        return True
    if "-" in text or "." in text:
        if _DIGITS_THEN_SEPARATOR.search(text) is not None:
            return True
        if "." in text and _DIGIT_DOT_DIGIT.search(text) is not None:
            return True
    return False


def _may_hold_title(text: str) -> bool:
    return " " in text  # a title is followed by one


def _may_hold_birth_date(text: str) -> bool:
    # Every date form of the pattern has four digits in a row; the lead words are matched
    # ignoring case, which for ASCII text is what lower() gives (other text takes the pattern).
    if _FOUR_DIGITS.search(text) is None:
        return False
    if not text.isascii():
        return True
    lowered = text.lower()
    return (
        "do" in lowered or "d.o" in lowered or "born" in lowered or "birth" in lowered or "geboren" in lowered
    )


def _masked_email(match: re.Match[str]) -> str:
    return "://***@" if match.group("userinfo") else MASK


def _masked_auth(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + MASK


def _masked_digits(match: re.Match[str]) -> str:
    # Digits inside a uuid or a 32-hex trace id are part of an id, not a number: keep them.
    text = match.string
    start, end = match.span()
    while start > 0 and text[start - 1] in _HEXISH:
        start -= 1
    while end < len(text) and text[end] in _HEXISH:
        end += 1
    word = text[start:end].strip("-")
    if (len(word) == 36 or len(word) == 32) and _ID_TOKEN.fullmatch(word):
        return match.group(0)
    return MASK


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = ord(char) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _masked_pan(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = text.replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and _luhn(digits):
        return MASK
    # Several numbers in a row: judge each unbroken run on its own.
    return _DIGIT_RUN.sub(lambda run: MASK if _luhn(run.group(0)) else run.group(0), text)


def _masked_birth(match: re.Match[str]) -> str:
    return match.group("lead") + MASK


def _masked_title(match: re.Match[str]) -> str:
    return match.group("title") + " " + MASK


def _masked_words(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("key")) or match.group("value") in _NULLS:
        return match.group(0)
    return f"{match.group('key')}{match.group('sep')}{MASK}"


def _masked_pair(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("key")) or match.group("value") in _NULLS:
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group('q')}{match.group('key')}{match.group('q')}{match.group('sep')}{quote}{MASK}{quote}"


def _scrub(text: str, *, digit_runs: bool, extra_secrets: Iterable[str] = ()) -> str:
    if extra_secrets or len(text) > _CLEAN_TEXT_MAX:
        return _scrub_patterns(text, digit_runs=digit_runs, extra_secrets=extra_secrets)
    known = _clean[digit_runs]
    if text in known:
        return text
    secrets = _secrets
    scrubbed = _scrub_patterns(text, digit_runs=digit_runs)
    if scrubbed == text:
        if len(known) >= _CLEAN_MAX:
            known.clear()
        known.add(text)
        if secrets is not _secrets:  # a secret was registered meanwhile: judge again next time
            known.discard(text)
    return scrubbed


def _scrub_patterns(text: str, *, digit_runs: bool, extra_secrets: Iterable[str] = ()) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for secret in extra_secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _EMAIL_OR_USERINFO.sub(_masked_email, text)
    if "tok_" in text:
        text = _CARD_TOKEN.sub(MASK, text)
    if "whsec_" in text:
        text = _WEBHOOK_SECRET.sub(MASK, text)
    if "earer" in text or "EARER" in text or "Basic" in text:
        text = _AUTH_SCHEME.sub(_masked_auth, text)
    if _may_hold_national(text):
        text = _NATIONAL.sub(MASK, text)
    if digit_runs:
        if _DIGITS_HINT.search(text):
            text = _DIGITS_TEXT.sub(_masked_digits, text)
    elif len(text) >= 13:
        text = _PAN_CANDIDATE.sub(_masked_pan, text)
    if len(text) > 12:
        if _may_hold_birth_date(text):
            text = _BIRTH_DATE.sub(_masked_birth, text)
        if _may_hold_title(text):
            text = _TITLED_NAME.sub(_masked_title, text)
    if digit_runs:
        if "=" in text or ":" in text:
            text = _KEY_WORDS.sub(_masked_words, text)
            text = _KEY_VALUE.sub(_masked_pair, text)
    elif "=" in text or ": " in text or '":' in text or "':" in text:
        # A value inside a structure: "token=...", "key: value" or quoted pairs (a raw body);
        # a bare "10:30" (a time) does not need the pass.
        text = _KEY_WORDS.sub(_masked_words, text)
        text = _KEY_VALUE.sub(_masked_pair, text)
    return text


def redact_text(text: str, known_secrets: Iterable[str] = ()) -> str:
    """``text`` with personal data and secrets masked (for messages, errors, tracebacks).

    Masks card tokens, bearer and basic credentials, ``whsec_`` secrets, e-mail addresses,
    credentials in URLs, values of sensitive ``key=value`` / ``"key": "value"`` pairs, card
    numbers, digit runs of 8 or more (uuids and 32-hex trace ids are kept whole), every
    registered secret and every string in ``known_secrets``.
    """
    return _scrub(text, digit_runs=True, extra_secrets=known_secrets)


# -- structures -----------------------------------------------------------------------------

_PASS_THROUGH: Final = frozenset(
    {int, float, bool, type(None), Decimal, UUID, datetime, date, time, timedelta}
)


def redact(value: Any) -> Any:
    """A redacted copy of ``value``, made of plain JSON-like values.

    Dicts, mappings, lists, tuples, sets, pydantic models (dumped in JSON mode) and
    dataclasses are walked; the value of every sensitive key is replaced by ``"***"``
    (``None`` stays ``None``); strings are scrubbed by pattern.  Numbers, decimals, uuids
    and dates are kept; ``bytes`` become ``"<n bytes>"``; ``SecretStr`` becomes ``"***"``;
    exceptions become ``"Type: redacted message"``; any other object becomes ``"<Type>"``
    (its ``str()`` might hold anything).  The input is not modified.
    """
    return _walk(value, 0)


def _walk(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return _scrub(value, digit_runs=False)
    if kind is dict:
        return _walk_mapping(value, depth)
    if kind in _PASS_THROUGH:
        return value
    if depth >= _MAX_DEPTH:
        return "<…>"
    if kind is list or kind is tuple:
        return [_walk(item, depth + 1) for item in value]
    if isinstance(value, BaseModel):
        return _walk_mapping(value.model_dump(mode="json"), depth)
    if isinstance(value, Enum):
        return _walk(value.value, depth + 1)
    if isinstance(value, str):
        return _scrub(str(value), digit_runs=False)
    if isinstance(value, Mapping):
        return _walk_mapping(value, depth)
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _walk_mapping({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth)
    if isinstance(value, list | tuple | set | frozenset):
        return [_walk(item, depth + 1) for item in value]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {redact_text(str(value))}"
    if isinstance(value, int | float | Decimal | datetime | date):
        return value
    return f"<{kind.__name__}>"


def _walk_mapping(mapping: Mapping[Any, Any], depth: int) -> dict[Any, Any] | str:
    if depth >= _MAX_DEPTH:
        return "<…>"
    out: dict[Any, Any] = {}
    for key, item in mapping.items():
        if type(key) is str and is_sensitive_key(key):
            out[key] = None if item is None else MASK
        else:
            out[key] = _walk(item, depth + 1)
    return out


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """HTTP headers with the values of sensitive ones (``Authorization``, ``Cookie``,
    ``X-Signature``, ``X-Api-Key``...) masked and the others scrubbed by pattern."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return {
        key: MASK if is_sensitive_key(key) else _scrub(str(value), digit_runs=False) for key, value in pairs
    }
