"""What the sandbox's simulated HTTP services share.

* :class:`SandboxConfig`: the base of a service's frozen fault knobs (validation with
  :class:`ConfigError` naming the field, never its value; partial updates; the JSON form the
  control API shows, secrets masked);
* :class:`ControlApi`: configuration state and the control routes every service has
  (``GET config``, ``PUT config`` (partial), ``POST reset``, ``GET requests``, ``GET bounds``);
* :class:`InjectedLatency`: latency drawn per request that ``release_waiting()`` can end early;
* :class:`BoundedDict`: the state a simulator keeps per idempotency key, webhook id or report,
  bounded in size (the least recently used entry makes room, counted); ``GET bounds`` of a
  service's control API shows each bounded structure's size, bound and evictions;
* small HTTP answers (:func:`error_response`, :func:`refusal`) and :func:`wake`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

from aiohttp import web
from pydantic import BaseModel, SecretStr, ValidationError, ValidationInfo, field_validator

from processors.adapters import jsonwire
from processors.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_KEYS",
    "JSON_CONTENT_TYPE",
    "BoundedDict",
    "ControlApi",
    "InjectedLatency",
    "LatencyKnobs",
    "SandboxConfig",
    "config_problems",
    "error_response",
    "refusal",
    "wake",
]

JSON_CONTENT_TYPE: Final = "application/json"

DEFAULT_MAX_KEYS: Final = 1_000_000
"""How many idempotency keys (webhook ids, ...) a simulator remembers by default.  Large on
purpose: a key forgotten while a client still retries it would be charged or verified again."""

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """A dict of at most ``max_size`` entries.

    Storing a key moves it to the newest end; storing a new key when the dict is full first
    evicts the least recently stored or :meth:`touch`-ed entry and counts it in ``evictions``.
    Reading (``d[key]``, ``get``, ``in``) does not reorder.  An evicted key is simply unknown
    afterwards: a simulator that forgets an idempotency key treats its next request as new.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_KEYS) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        super().__init__()
        self.max_size = max_size
        self.evictions = 0
        """Entries dropped to make room since construction (``clear`` keeps the count)."""

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        elif len(self) >= self.max_size:
            self.popitem(last=False)
            self.evictions += 1
        super().__setitem__(key, value)

    def forget(self) -> None:
        """Remove every entry and zero ``evictions`` (a simulator's reset)."""
        self.clear()
        self.evictions = 0

    def touch(self, key: K) -> None:
        """Mark ``key`` as used now (the last to be evicted); nothing when it is unknown."""
        if key in self:
            self.move_to_end(key)

    def copy(self) -> Self:
        clone = type(self)(self.max_size)
        clone.update(self)
        clone.evictions = self.evictions
        return clone

    def stats(self) -> dict[str, int]:
        """``{"size", "max_size", "evictions"}`` (JSON-ready)."""
        return {"size": len(self), "max_size": self.max_size, "evictions": self.evictions}


def wake(waiter: asyncio.Future[None]) -> None:
    """Let a waiting request go on (nothing when it already has)."""
    if not waiter.done():
        waiter.set_result(None)


def error_response(status: int, body: bytes, retry_after: str | None = None) -> web.Response:
    """A JSON error answer with a prepared body, and ``Retry-After`` when given."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return web.Response(status=status, body=body, content_type=JSON_CONTENT_TYPE, headers=headers)


def refusal(status: int, error: str, message: str) -> web.Response:
    """A JSON answer ``{"error": error, "message": message}``."""
    return web.Response(
        status=status,
        body=jsonwire.dumps({"error": error, "message": message}),
        content_type=JSON_CONTENT_TYPE,
    )


def config_problems(exc: ValidationError) -> str:
    """``field: problem; …`` of a failed validation, without the values."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'config'}: "
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors(include_input=False)
    )


class SandboxConfig(BaseModel):
    """Base of a simulated service's knobs.  Subclasses set ``config_name`` and their fields.

    A ``token`` or ``webhook_secret`` field must be non-empty printable ASCII without
    surrounding spaces.
    """

    config_name: ClassVar[str]
    """What :class:`ConfigError` calls it: ``invalid <config_name>: …``."""

    @field_validator("token", "webhook_secret", check_fields=False)
    @classmethod
    def _secret_is_usable(cls, secret: SecretStr, info: ValidationInfo) -> SecretStr:
        value = secret.get_secret_value()
        if not value or not value.isascii() or not value.isprintable() or value != value.strip():
            raise ValueError(
                f"{info.field_name} must be non-empty printable ASCII without surrounding spaces"
            )
        return secret

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Validate ``values``; a bad value raises :class:`ConfigError` naming the field (never its value)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.config_name}: {config_problems(exc)}") from exc

    def updated(self, changes: Mapping[str, Any]) -> Self:
        """A copy with ``changes`` applied and validated (:class:`ConfigError` when invalid)."""
        return self.from_mapping({**self.model_dump(), **changes})

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready, with the secrets masked."""
        return self.model_dump(mode="json")


ConfigT = TypeVar("ConfigT", bound=SandboxConfig)


class ControlApi(Generic[ConfigT]):
    """A simulated service's configuration and its control routes.

    The service sets ``_config`` and ``requests_by_status`` in its constructor and implements
    ``configure`` and ``reset``; ``control_name`` names it in the log lines of ``control_log``.
    A service with state that grows with its requests overrides :meth:`bounds`.
    """

    control_name: ClassVar[str]
    control_log: ClassVar[logging.Logger]
    requests_by_status: dict[int, int]
    _config: ConfigT

    @property
    def config(self) -> ConfigT:
        return self._config

    def configure(self, config: ConfigT) -> None:
        raise NotImplementedError

    def update_config(self, changes: Mapping[str, Any] | None = None, /, **more: Any) -> ConfigT:
        """Apply a partial update (validated; :class:`ConfigError` when invalid) and return the result."""
        config = self._config.updated({**(changes or {}), **more})
        self.configure(config)
        return config

    def reset(self) -> None:
        raise NotImplementedError

    async def _handle_get_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self._config.public_dict())

    async def _handle_put_config(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except ValueError:
            return refusal(400, "validation_error", "body is not valid JSON")
        if not isinstance(changes, dict):
            return refusal(400, "validation_error", "body must be a JSON object of settings to change")
        try:
            config = self.update_config(changes)
        except ConfigError as exc:
            return refusal(400, "validation_error", str(exc))
        self.control_log.info(
            "%s config changed: %s", self.control_name, ", ".join(sorted(changes)) or "nothing"
        )
        return web.json_response(config.public_dict())

    async def _handle_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        self.control_log.info("%s state reset", self.control_name)
        return web.json_response({"reset": True})

    async def _handle_requests(self, _request: web.Request) -> web.Response:
        by_status = {str(status): count for status, count in sorted(self.requests_by_status.items())}
        return web.json_response({"total": sum(self.requests_by_status.values()), "by_status": by_status})

    def bounds(self) -> dict[str, dict[str, int]]:
        """Per bounded structure (by name): its size, bound and evictions (see :class:`BoundedDict`)."""
        return {}

    async def _handle_bounds(self, _request: web.Request) -> web.Response:
        return web.json_response(self.bounds())


class LatencyKnobs(Protocol):
    @property
    def latency_ms(self) -> float: ...
    @property
    def latency_jitter_ms(self) -> float: ...


class InjectedLatency:
    """Latency of ``latency_ms`` plus up to ``latency_jitter_ms``, drawn from ``_rng``.

    The service sets ``_rng`` and ``_sleepers`` (an empty set) in its constructor.
    """

    _rng: random.Random
    _sleepers: set[asyncio.Future[None]]

    def release_waiting(self) -> int:
        """End the injected latency of every request waiting now; returns how many were waiting."""
        sleepers = list(self._sleepers)
        for sleeper in sleepers:
            wake(sleeper)
        return len(sleepers)

    async def _inject_latency(self, config: LatencyKnobs) -> None:
        delay_ms = config.latency_ms
        if config.latency_jitter_ms:
            delay_ms += self._rng.uniform(0.0, config.latency_jitter_ms)
        if delay_ms <= 0:
            return
        # asyncio.sleep's own mechanism, kept in a set so release_waiting() can end it early.
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_ms / 1000.0, wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)
