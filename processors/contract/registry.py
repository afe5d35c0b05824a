"""Where Avro schema ids come from: ``ids.json`` or a Confluent-compatible Schema Registry.

A :class:`SchemaIdSource` answers two questions for the codec, and the codec caches both
answers, so a source is asked once per schema per process:

* ``id_for(subject, schema)``: the id to put in the Confluent framing of an encoded message;
* ``schema_for(schema_id)``: the writer schema (JSON text) of a message being decoded, or
  ``None`` if the id is unknown.

Subjects follow the RecordNameStrategy: the writer schema's full record name, e.g.
``insurance.events.PremiumDueEvent``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr

from processors.contract import avro
from processors.contract.events import EVENT_TYPES
from processors.errors import ConfigError, DecodeError, Retriable

__all__ = ["LocalSchemaIds", "SchemaIdSource", "SchemaRegistryClient"]

_REGISTRY_JSON = "application/vnd.schemaregistry.v1+json"


class SchemaIdSource(Protocol):
    def id_for(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (JSON text) under ``subject``, registering it if need be."""
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


class SchemaRegistryClient:
    """A client of a Confluent-compatible Schema Registry (the endpoints the codec needs).

    * ``POST /subjects/{subject}/versions`` registers a writer schema (idempotent in the
      registry: the same schema gets the same id) and returns its id;
    * ``GET /schemas/ids/{id}`` fetches the writer schema of a message being decoded.

    Answers are cached for the life of the client.  Calls block for at most ``timeout_s``
    (only on a cache miss); call :meth:`register_all` at start-up to pay for registration
    before the first message.  No network I/O happens in the constructor.

    Errors: refused credentials, an incompatible or invalid schema and other 4xx answers are
    :class:`ConfigError`; an id the registry does not know is ``None`` from
    :meth:`schema_for` (the codec's ``DecodeError``); an unreachable or failing registry
    (connection errors, timeouts, 5xx, 429) is :class:`Retriable`, so a registry outage
    delays messages instead of dead-lettering valid ones.
    """

    def __init__(
        self,
        url: str,
        *,
        basic_auth: tuple[str, SecretStr] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("schema registry url must be an absolute http(s) URL")
        if parts.username or parts.password:
            raise ConfigError("schema registry url must not embed credentials; pass basic_auth")
        if timeout_s <= 0:
            raise ConfigError("schema registry timeout_s must be positive")
        self.url = url.rstrip("/")
        self._basic_auth = basic_auth
        self.timeout_s = timeout_s
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def __repr__(self) -> str:
        user = f", user={self._basic_auth[0]!r}" if self._basic_auth else ""
        return f"SchemaRegistryClient({self.url!r}{user})"

    # -- lifecycle ---------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                auth = None
                if self._basic_auth is not None:
                    user, password = self._basic_auth
                    auth = httpx.BasicAuth(user, password.get_secret_value())
                self._client = httpx.Client(
                    base_url=self.url,
                    auth=auth,
                    timeout=httpx.Timeout(self.timeout_s),
                    headers={"Accept": _REGISTRY_JSON},
                    follow_redirects=False,
                )
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
        cached = self._ids.get((subject, schema))
        if cached is not None:
            return cached
        response = self._request("POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": schema})
        if response.status_code in (401, 403):
            raise ConfigError(f"schema registry refused the credentials (HTTP {response.status_code})")
        if response.status_code == 409:
            raise ConfigError(
                f"schema registry refused {subject}: incompatible with its registered versions "
                f"({_registry_message(response)})"
            )
        if response.status_code == 422:
            raise ConfigError(f"schema registry refused {subject} as invalid ({_registry_message(response)})")
        if response.status_code >= 400:
            raise ConfigError(
                f"schema registry answered HTTP {response.status_code} registering {subject} "
                f"({_registry_message(response)})"
            )
        schema_id = _json_field(response, "id")
        if not isinstance(schema_id, int) or isinstance(schema_id, bool):
            raise ConfigError(f"schema registry returned no schema id for {subject}")
        self._ids[(subject, schema)] = schema_id
        self._schemas.setdefault(schema_id, schema)
        return schema_id

    def schema_for(self, schema_id: int) -> str | None:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        response = self._request("GET", f"/schemas/ids/{schema_id}", None)
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise ConfigError(f"schema registry refused the credentials (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise ConfigError(
                f"schema registry answered HTTP {response.status_code} for schema id {schema_id} "
                f"({_registry_message(response)})"
            )
        schema_type = _json_field(response, "schemaType", required=False) or "AVRO"
        if schema_type != "AVRO":
            raise DecodeError(f"schema id {schema_id} is a {str(schema_type)[:20]} schema, not Avro")
        schema = _json_field(response, "schema")
        if not isinstance(schema, str):
            raise DecodeError(f"schema registry returned no schema text for id {schema_id}")
        self._schemas[schema_id] = schema
        return schema

    def register_all(self) -> dict[str, int]:
        """Register the writer schema of every event type; returns subject → id."""
        ids = {}
        for event_type in EVENT_TYPES:
            subject = avro.writer_schema_name(event_type)
            ids[subject] = self.id_for(subject, avro.writer_schema_text(event_type))
        return ids

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: object | None) -> httpx.Response:
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": _REGISTRY_JSON} if content is not None else None
        try:
            response = self._http().request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise Retriable(f"schema registry timed out after {self.timeout_s} s ({method} {path})") from exc
        except httpx.TransportError as exc:
            raise Retriable(f"schema registry unreachable ({type(exc).__name__}: {method} {path})") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise Retriable(
                f"schema registry answered HTTP {response.status_code} ({method} {path})",
                retry_after_s=_retry_after_s(response),
            )
        return response


def _registry_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:200] if message else f"HTTP {response.status_code}"


def _json_field(response: httpx.Response, name: str, *, required: bool = True) -> object:
    try:
        body = response.json()
    except ValueError:
        raise ConfigError(
            f"schema registry answered HTTP {response.status_code} with a body that is not JSON"
        ) from None
    if not isinstance(body, dict) or (required and name not in body):
        raise ConfigError(f"schema registry answer has no '{name}'")
    return body.get(name)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
