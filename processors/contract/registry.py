"""Where Avro schema ids come from: ``ids.json`` or a Confluent-compatible Schema Registry.

A :class:`SchemaIdSource` answers two questions for the codec, and the codec caches both
answers, so a source is asked once per schema per process:

* ``id_for(subject, schema)``: the id to put in the Confluent framing of an encoded message;
* ``schema_for(schema_id)``: the writer schema (JSON text) of a message being decoded, or
  ``None`` if the id is unknown.

Subjects follow the RecordNameStrategy: the writer schema's full record name, e.g.
``insurance.events.PremiumDueEvent``.

:class:`SchemaRegistryClient` is a thin adapter over the client that ships with confluent-kafka
(``confluent_kafka.schema_registry.SchemaRegistryClient``, synchronous).  That client speaks
the registry's REST API, holds the HTTP session (basic auth, TLS) and caches every answer
(ids by subject and schema, schemas by id) for its life; the adapter chooses between
registering and looking up and translates its errors into this project's.  It has two modes:

* **auto-register** (``read_only=False``): ``id_for`` registers the writer schema under its
  subject (``POST /subjects/{subject}/versions``; idempotent in the registry: the same schema
  gets the same id).
* **read-only** (``read_only=True``): ``id_for`` only looks the schema up under its subject
  (``POST /subjects/{subject}``) and raises :class:`SchemaNotRegistered`, naming the subject,
  when the registry does not have it: producing never registers anything.  This is the
  default with ``PROCESSORS_ENV=production`` (:class:`SchemaRegistrySettings`).

:meth:`SchemaRegistryClient.register_all` registers every event type's writer schema in
either mode: it is the deliberate act of whoever registers schemas (a deployment step).
``schema_for`` is ``GET /schemas/ids/{id}`` in both modes.

Errors (the codec lets them through; the runtime routes them by type):

* :class:`~processors.errors.Retriable`: the registry cannot be reached, times out, or
  answers 408, 425, 429 or 5xx.  A registry outage delays messages (retry tiers) instead of
  dead-lettering valid ones.
* :class:`~processors.errors.ConfigError`: refused credentials (401/403), an incompatible
  (409) or invalid (422) schema, a redirect or any other 4xx, an answer that is not a
  registry's, and :class:`SchemaNotRegistered`.  The runner resolves every writer schema at
  start-up, so there it stops the process with the reason.  Raised for a record, it is not
  retriable: the record goes to the app's dead-letter topic with the reason (the subject) in
  ``x-error-message``, never dropped, and is replayed once the schema is registered.
* ``None`` from ``schema_for``: an id the registry does not know (the codec's ``DecodeError``).

Calls block only on a cache miss, for at most ``timeout_s``: confluent-kafka's client is told
to make no retries of its own (the runtime's retry tiers are the retry policy).  The basic-auth
password stays a ``SecretStr`` until it is handed to that client; it appears in no repr, log
line or error message of this module.  No network I/O happens in the constructor.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Protocol, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from processors.contract import avro
from processors.contract.events import EVENT_TYPES
from processors.errors import ConfigError, DecodeError, Retriable

if TYPE_CHECKING:
    # Imported where used: the registry client (with its HTTP and OAuth libraries) adds most of
    # a second to every process's start, and only processes with a registry need it.
    from confluent_kafka.schema_registry import Schema, SchemaRegistryError
    from confluent_kafka.schema_registry import SchemaRegistryClient as _ConfluentClient

__all__ = [
    "LocalSchemaIds",
    "SchemaIdSource",
    "SchemaNotRegistered",
    "SchemaRegistryClient",
    "SchemaRegistrySettings",
]

T = TypeVar("T")


class SchemaIdSource(Protocol):
    def id_for(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (JSON text) under ``subject``, registering it if the source may."""
        ...

    def schema_for(self, schema_id: int) -> str | None:
        """The schema (JSON text) with this id, or ``None`` if there is none."""
        ...


class LocalSchemaIds:
    """Schema ids from ``schemas/ids.json`` (or a given mapping): no registry involved.

    Both sides of a topic must use the same ids, which is what shipping ``ids.json`` with
    the contract guarantees.
    """

    def __init__(self, ids: Mapping[str, int] | None = None) -> None:
        self._ids = dict(avro.local_schema_ids() if ids is None else ids)
        by_id: dict[int, str] = {}
        for name, schema_id in self._ids.items():
            if schema_id in by_id:
                raise ConfigError(f"schema id {schema_id} is given to both {by_id[schema_id]} and {name}")
            by_id[schema_id] = name
        self._names = by_id

    def id_for(self, subject: str, schema: str) -> int:
        try:
            return self._ids[subject]
        except KeyError:
            raise ConfigError(f"no schema id for {subject} in ids.json") from None

    def schema_for(self, schema_id: int) -> str | None:
        name = self._names.get(schema_id)
        event_type = avro.event_type_for_schema(name) if name is not None else None
        return avro.writer_schema_text(event_type) if event_type is not None else None

    def __repr__(self) -> str:
        return f"LocalSchemaIds({len(self._ids)} schemas)"


class SchemaRegistrySettings(BaseModel):
    """How the processors use the Schema Registry (``PROCESSORS_SCHEMA_REGISTRY__*``); its URL is
    ``PROCESSORS_SCHEMA_REGISTRY_URL`` (unset: the ids of ``schemas/ids.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str | None = Field(default=None, min_length=1)
    """Basic-auth user (with ``password``)."""
    password: SecretStr | None = None
    """Basic-auth password: a secret, never printed."""
    ca_file: Path | None = None
    """CA certificates (a PEM file, or a directory of them) that the registry's TLS certificate
    must chain to; unset: the system's (``SSL_CERT_FILE``/``SSL_CERT_DIR``), else certifi's."""
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    """The longest a registry request may take (only on a cache miss)."""
    read_only: bool | None = None
    """True: look writer schemas up and never register them (an unregistered schema is refused,
    naming its subject).  False: register them on first use.  Unset: read-only with
    ``PROCESSORS_ENV=production``, auto-register in development."""

    @field_validator("user")
    @classmethod
    def _user_usable(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or not value.isprintable()):
            raise ValueError("must be printable and contain no ':'")
        return value

    @field_validator("password")
    @classmethod
    def _password_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _user_and_password_together(self) -> Self:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password are set together (basic auth) or not at all")
        return self

    def read_only_in(self, env: str) -> bool:
        """Whether producers only look schemas up, in environment ``env`` (``Settings.env``)."""
        return self.read_only if self.read_only is not None else env == "production"


class SchemaNotRegistered(ConfigError):
    """Read-only mode: the registry has no registration of this writer schema under ``subject``."""

    def __init__(self, subject: str, *, subject_known: bool) -> None:
        what = (
            f"subject {subject} has no version equal to this processor's writer schema"
            if subject_known
            else f"subject {subject} is not registered"
        )
        super().__init__(
            f"schema registry (read-only): {what}; producers never register in read-only mode: "
            "register the writer schemas (SchemaRegistryClient.register_all), then replay what "
            "was dead-lettered meanwhile"
        )
        self.subject = subject


_REGISTRY_NOT_FOUND = range(40400, 40500)
"""The registry's error codes of a 404 (40401 subject, 40402 version, 40403 schema not found)."""

_RETRIABLE_STATUSES = frozenset({408, 425, 429})
"""Statuses below 500 worth trying again (every 5xx is too)."""

_MESSAGE_CHARS = 200


def _http_errors(kind: str) -> tuple[type[Exception], ...]:
    """The exception class ``kind`` (``TimeoutException``, ``TransportError``, ``HTTPError``) of
    the HTTP library confluent-kafka's client uses: ``httpx2`` (Python >= 3.10) or ``httpx``.
    That library is imported by the time its exception propagates, so only ``sys.modules`` is
    read (an ``except`` clause evaluates this only when an exception reaches it)."""
    modules = (sys.modules.get(name) for name in ("httpx2", "httpx"))
    return tuple(getattr(module, kind) for module in modules if module is not None)


class SchemaRegistryClient:
    """A :class:`SchemaIdSource` backed by a Confluent-compatible Schema Registry.

    ``url`` is one absolute http(s) URL, or several separated by commas (tried in order when
    one cannot be reached); credentials go in ``basic_auth``, never in the URL.  ``ca_file``
    replaces the CA certificates the registry's TLS certificate is checked against.  With
    ``read_only`` the client never registers a schema as a side effect of ``id_for`` (see the
    module docstring); :meth:`register` and :meth:`register_all` register in either mode.

    Answers are cached by confluent-kafka's client for the life of this object (:meth:`close`
    drops them with the HTTP session; a later call starts a new one).  Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        basic_auth: tuple[str, SecretStr] | None = None,
        timeout_s: float = 5.0,
        ca_file: Path | str | None = None,
        read_only: bool = False,
    ) -> None:
        urls = [part.strip().rstrip("/") for part in url.split(",")]
        for each in urls:
            parts = urlsplit(each)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    "schema registry url must be an absolute http(s) URL (or several, comma-separated)"
                )
            if parts.username or parts.password:
                raise ConfigError("schema registry url must not embed credentials; pass basic_auth")
        if timeout_s <= 0:
            raise ConfigError("schema registry timeout_s must be positive")
        if basic_auth is not None:
            user, password = basic_auth
            if not user or ":" in user:
                raise ConfigError("schema registry user must be non-empty and contain no ':'")
            if not isinstance(password, SecretStr) or not password.get_secret_value():
                raise ConfigError("schema registry password must be a non-empty SecretStr")
        self.urls = tuple(urls)
        self.url = ",".join(urls)
        self.timeout_s = timeout_s
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.read_only = read_only
        self._basic_auth = basic_auth
        self._lock = threading.Lock()
        # Built now, so a bad CA file or option stops start-up; it opens no connection yet.
        self._client: _ConfluentClient | None = self._build()

    @classmethod
    def from_settings(
        cls, url: str, settings: SchemaRegistrySettings, *, env: str = "development"
    ) -> SchemaRegistryClient:
        """The client for ``url`` with ``settings``; ``env`` decides an unset ``read_only``."""
        basic_auth = None
        if settings.user is not None and settings.password is not None:
            basic_auth = (settings.user, settings.password)
        return cls(
            url,
            basic_auth=basic_auth,
            timeout_s=settings.timeout_s,
            ca_file=settings.ca_file,
            read_only=settings.read_only_in(env),
        )

    def __repr__(self) -> str:
        user = f", user={self._basic_auth[0]!r}" if self._basic_auth else ""
        mode = ", read_only=True" if self.read_only else ""
        return f"SchemaRegistryClient({self.url!r}{user}{mode})"

    # -- lifecycle ---------------------------------------------------------------------------

    def _build(self) -> _ConfluentClient:
        from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentClient

        conf: dict[str, object] = {"url": self.url, "timeout": self.timeout_s, "max.retries": 0}
        if self._basic_auth is not None:
            user, password = self._basic_auth
            conf["basic.auth.user.info"] = f"{user}:{password.get_secret_value()}"
        if self.ca_file is not None:
            conf["ssl.ca.location"] = str(self.ca_file)
        try:
            return ConfluentClient(conf)
        except (ValueError, TypeError, OSError) as exc:  # OSError: ssl.SSLError, a missing CA file
            raise ConfigError(
                f"schema registry client not configured: {type(exc).__name__}: {self._clean(str(exc))}"
            ) from exc

    def _registry(self) -> _ConfluentClient:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- SchemaIdSource ----------------------------------------------------------------------

    def id_for(self, subject: str, schema: str) -> int:
        """The id of ``schema`` under ``subject``: registered (auto-register mode) or looked up
        (read-only mode: :class:`SchemaNotRegistered` when the registry does not have it)."""
        if not self.read_only:
            return self.register(subject, schema)
        what = f"looking up {subject}"

        def not_registered(exc: SchemaRegistryError) -> NoReturn:
            # 40401: no such subject; 40403: the subject exists, this schema is not one of its versions
            raise SchemaNotRegistered(subject, subject_known=exc.error_code != 40401)

        found = self._ask(
            what, lambda client: client.lookup_schema(subject, _avro(schema)), subject, not_registered
        )
        return _schema_id(found.schema_id, what)

    def schema_for(self, schema_id: int) -> str | None:
        def unknown(exc: SchemaRegistryError) -> None:
            return None

        found = self._ask(
            f"fetching schema id {schema_id}", lambda client: client.get_schema(schema_id), None, unknown
        )
        if found is None:
            return None
        schema_type = found.schema_type or "AVRO"
        if schema_type != "AVRO":
            raise DecodeError(f"schema id {schema_id} is a {str(schema_type)[:20]} schema, not Avro")
        if not isinstance(found.schema_str, str):
            raise DecodeError(f"schema registry returned no schema text for id {schema_id}")
        return found.schema_str

    # -- explicit registration ---------------------------------------------------------------

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (JSON text) under ``subject`` and return its id, in either mode."""
        what = f"registering {subject}"
        schema_id = self._ask(what, lambda client: client.register_schema(subject, _avro(schema)), subject)
        return _schema_id(schema_id, what)

    def register_all(self) -> dict[str, int]:
        """Register the writer schema of every event type, in either mode; returns subject → id."""
        ids = {}
        for event_type in EVENT_TYPES:
            subject = avro.writer_schema_name(event_type)
            ids[subject] = self.register(subject, avro.writer_schema_text(event_type))
        return ids

    # -- errors ------------------------------------------------------------------------------

    def _ask(
        self,
        what: str,
        call: Callable[[_ConfluentClient], T],
        subject: str | None = None,
        on_not_found: Callable[[SchemaRegistryError], T] | None = None,
    ) -> T:
        """``call`` on the confluent-kafka client, its failures translated (see the module)."""
        from confluent_kafka.schema_registry import SchemaRegistryError

        client = self._registry()
        answer: SchemaRegistryError
        try:
            return call(client)
        except SchemaRegistryError as exc:
            answer = exc
        except _http_errors("TimeoutException") as exc:
            raise Retriable(f"schema registry timed out after {self.timeout_s} s ({what})") from exc
        except _http_errors("TransportError") as exc:
            raise Retriable(f"schema registry unreachable ({type(exc).__name__}, {what})") from exc
        except _http_errors("HTTPError") as exc:
            raise ConfigError(f"schema registry answer unreadable ({type(exc).__name__}, {what})") from exc
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # a 2xx answer whose body is not JSON, or JSON that is not a registry's answer
            raise ConfigError(f"schema registry answer is not a registry's ({what})") from exc
        # The registry answered with an error.  Handled outside the except clause: its text (which
        # may quote what it was sent) is neither the cause nor the context of the error raised;
        # the status and the cleaned message are in that error's own message.
        if (
            on_not_found is not None
            and answer.http_status_code == 404
            and answer.error_code in _REGISTRY_NOT_FOUND
        ):
            return on_not_found(answer)
        raise self._refusal(answer, what, subject)

    def _refusal(self, exc: SchemaRegistryError, what: str, subject: str | None) -> Exception:
        status = exc.http_status_code
        message = self._clean(str(exc.error_message))
        if status in _RETRIABLE_STATUSES or status >= 500:
            return Retriable(f"schema registry answered HTTP {status} ({what})")
        if status in (401, 403):
            return ConfigError(f"schema registry refused the credentials (HTTP {status}, {what})")
        if 300 <= status <= 399:
            return ConfigError(
                f"schema registry answered HTTP {status} ({what}): redirects are not followed; check the URL"
            )
        if status == 409 and subject is not None:
            return ConfigError(
                f"schema registry refused {subject}: incompatible with its registered versions ({message})"
            )
        if status == 422 and subject is not None:
            return ConfigError(f"schema registry refused {subject} as invalid ({message})")
        return ConfigError(f"schema registry answered HTTP {status} ({what}): {message}")

    def _clean(self, text: str) -> str:
        """Third-party text made fit for an error message: one line, short, no password."""
        if self._basic_auth is not None:
            text = text.replace(self._basic_auth[1].get_secret_value(), "**********")
        text = " ".join(text.split())
        return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _avro(schema: str) -> Schema:
    from confluent_kafka.schema_registry import Schema

    return Schema(schema, "AVRO")


def _schema_id(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"schema registry returned no schema id ({what})")
    return value
