"""Structured logging: one JSON object per line, redacted at the handler.

:func:`configure_logging` installs one handler on the root logger, ahead of any handler
already there.  Its :class:`RedactingFilter` rewrites every record that reaches it, from
any library, before it is formatted:

* the message is formatted (``msg % args``) and run through
  :func:`~processors.observability.redact.redact_text`;
* every ``extra`` field goes through :func:`~processors.observability.redact.redact`;
* the traceback (and stack) is formatted, redacted and kept as ``exc_text``; ``exc_info``
  is dropped so no later formatter can render the unredacted original.

The record is rewritten in place, so handlers that see it later (the root logger's other
handlers) see the redacted version too.  A handler attached elsewhere (to a child logger)
runs before the root's: give it a ``RedactingFilter()`` of its own.

A JSON line::

    {"ts": "2024-01-15T10:30:00.123Z", "level": "INFO", "logger": "processors.audit",
     "msg": "outbound payment-gateway charge: 200 (success) in 41.7 ms", "app": "payments", ...}

plus ``exc_type`` and ``exc`` when an exception is logged.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import IO, Any, Final
from uuid import UUID

from processors.errors import ConfigError
from processors.observability.redact import (
    MASK,
    clear_secrets,
    is_sensitive_key,
    redact,
    redact_text,
    register_secret,
)

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "clear_secrets",
    "configure_logging",
    "log_extras",
    "register_secret",
]

_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_DONE: Final = "_processors_redacted"
EXTRAS_REDACTED: Final = "_processors_extras_redacted"
"""Set (``extra={..., EXTRAS_REDACTED: True}``) by callers whose ``extra`` values already came
out of :func:`redact` (the audit logger's validated :class:`AuditEvent` fields), so the
filter does not walk them twice.  Nothing else may set it."""
EXTRAS_READY: Final = "_processors_extras"
"""Set (``extra={**fields, EXTRAS_READY: fields}``) by callers that already hold their
``extra`` fields as one dict (the audit log line), so :func:`log_extras` returns it instead of
scanning the record.  Nothing else may set it."""
_EXC_TYPE: Final = "_processors_exc_type"
_CORE_KEYS: Final = frozenset({"ts", "level", "logger", "msg", "exc_type", "exc", "stack"})

_exception_formatter = logging.Formatter()


def log_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra={...}`` fields of ``record`` (attributes a plain LogRecord does not have, and
    whose names do not start with ``_``)."""
    ready = record.__dict__.get(EXTRAS_READY)
    if ready is not None:
        return ready  # type: ignore[no-any-return]
    standard = _STANDARD_ATTRS
    return {key: value for key, value in record.__dict__.items() if key not in standard and key[:1] != "_"}


class RedactingFilter(logging.Filter):
    """Redacts a record in place (message, ``extra`` fields, traceback); never drops one.

    Idempotent: a record already redacted by another ``RedactingFilter`` is left as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(_DONE):
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad args: keep the template only (logging would report it too)
            message = f"{record.msg} (unformattable log arguments)"
        record.msg = redact_text(message)
        record.args = None
        if not record.__dict__.get(EXTRAS_REDACTED):
            fields = record.__dict__
            for key, value in log_extras(record).items():
                fields[key] = MASK if value is not None and is_sensitive_key(key) else redact(value)
        if record.exc_info:
            exc_type = record.exc_info[0]
            record.__dict__[_EXC_TYPE] = exc_type.__name__ if exc_type is not None else None
            if not record.exc_text:
                record.exc_text = _exception_formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record.__dict__[_DONE] = True
        return True


_second: tuple[int, str] = (-1, "")  # the last second formatted and its "YYYY-MM-DDTHH:MM:SS"


def _timestamp(record: logging.LogRecord) -> str:
    """``record.created`` as UTC ISO 8601 with milliseconds and ``Z``."""
    global _second
    second, micros = divmod(round(record.created * 1_000_000), 1_000_000)  # as datetime rounds
    cached = _second  # one tuple, replaced whole: threads never see a half-updated pair
    if cached[0] == second:
        prefix = cached[1]
    else:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return f"<{type(value).__name__}>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC), ``level``, ``logger``, ``msg``, the ``extra``
    fields, and ``exc_type``/``exc`` (and ``stack``) when present.

    An ``extra`` field whose name is one of those keys is written as ``extra_<name>``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in log_extras(record).items():
            entry[f"extra_{key}" if key in _CORE_KEYS else key] = value
        exc_text = record.exc_text
        if record.exc_info:  # a record this formatter sees without the filter
            exc_text = exc_text or self.formatException(record.exc_info)
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        elif exc_text:
            entry["exc_type"] = record.__dict__.get(_EXC_TYPE)
        if exc_text:
            entry["exc"] = exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # The standard writer's layout (", " and ": "): operators' tooling may match on it.
        return json.dumps(entry, default=_json_default, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: ``ts LEVEL logger message key=value ...`` then the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name} {record.getMessage()}"
        extras = log_extras(record)
        if extras:
            pairs = " ".join(
                f"{key}={json.dumps(value, default=_json_default, ensure_ascii=False)}"
                for key, value in extras.items()
            )
            line = f"{line} | {pairs}"
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = self.formatException(record.exc_info)
        if exc_text:
            line = f"{line}\n{exc_text}"
        if record.stack_info:
            line = f"{line}\n{record.stack_info}"
        return line


class _ProcessorsHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (recognised when it is called again)."""


def configure_logging(
    level: str = "INFO", *, json_format: bool = True, stream: IO[str] | None = None
) -> None:
    """Send every log record to ``stream`` (default: stderr), redacted, one per line.

    ``level`` is a level name (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``); an unknown one is
    a :class:`~processors.errors.ConfigError`.  ``json_format=False`` writes plain text lines
    for people (still redacted).  Calling it again replaces the handler it installed before;
    handlers installed by others stay, behind it.
    """
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ProcessorsHandler)]:
        root.removeHandler(old)
    handler = _ProcessorsHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    # First in line: the in-place redaction then protects the root's other handlers too.
    root.handlers.remove(handler)
    root.handlers.insert(0, handler)
    root.setLevel(numeric)
    # The SSH library logs every channel open and close at INFO: one SFTP upload is a dozen
    # lines. Its warnings and errors still show; DEBUG shows everything.
    logging.getLogger("asyncssh").setLevel(
        max(numeric, logging.WARNING) if numeric > logging.DEBUG else numeric
    )
