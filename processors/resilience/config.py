"""Per-endpoint resilience settings: circuit breaker, in-place retry and timeouts.

One file, ``resilience.yaml``, keeps the seed's key names::

    defaults:                     # every key optional; missing keys take the seed values
      circuit_breaker: {failure_threshold: 5, success_threshold: 3,
                        timeout_duration_seconds: 30, half_open_requests: 3}
      retry: {max_attempts: 3, initial_delay_ms: 100, max_delay_ms: 5000, multiplier: 2}
      timeout: {connection_timeout_ms: 5000, read_timeout_ms: 30000, deadline_ms: 60000}
    endpoints:
      payment-gateway: {}         # inherits the defaults
      kyc-provider:               # overrides single keys; the others are inherited
        timeout: {read_timeout_ms: 20000}

Each endpoint's values are built key by key: the endpoint's own, else ``defaults``, else the
seed value.  They become an :class:`EndpointPolicy` of :class:`BreakerSettings`,
:class:`~processors.resilience.retry.RetryPolicy` and :class:`TimeoutPolicy`
(``timeout_duration_seconds`` → ``timeout_duration_s``, ``*_timeout_ms`` → ``*_timeout_s``).
An endpoint the file does not name gets the defaults.

**Rules** (each broken rule is a :class:`ResilienceConfigError` line ``file:line: reason``):
unknown keys are refused, with the nearest known key as a hint; numbers must have the right
kind (whole milliseconds, a number of seconds) and range (thresholds and attempts ≥ 1,
delays ≥ 0, timeouts > 0, multiplier ≥ 1); ``success_threshold`` may not exceed
``half_open_requests``; ``deadline_ms`` may not be shorter than ``connection_timeout_ms``.
A deadline shorter than connect + read timeouts is allowed (the deadline then cuts a slow
read short) and reported in :attr:`ResilienceConfig.warnings` and the log.

**Which file** :func:`load_resilience` reads when given no path: the file named by the
environment variable ``PROCESSORS_RESILIENCE_FILE``; else ``resilience.yaml`` in the current
directory; else the ``resilience.yaml`` at the root of the source tree this package was
imported from; else none, and the built-in seed defaults apply.  A file named explicitly or
by the variable must exist.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from processors.errors import ConfigError
from processors.resilience.breaker import BreakerRegistry, BreakerSettings
from processors.resilience.retry import RetryPolicy
from processors.topics._source import DocPath, Problem, Source, SourceError, read_source

if TYPE_CHECKING:
    from processors.adapters.http import TimeoutSettings

__all__ = [
    "DEFAULT_FILE_NAME",
    "ENV_RESILIENCE_FILE",
    "EndpointPolicy",
    "ResilienceConfig",
    "ResilienceConfigError",
    "TimeoutPolicy",
    "load_resilience",
    "parse_resilience",
]

ENV_RESILIENCE_FILE = "PROCESSORS_RESILIENCE_FILE"
DEFAULT_FILE_NAME = "resilience.yaml"

_log = logging.getLogger(__name__)

_ENDPOINT_NAME = re.compile(r"(?=.{1,100}$)[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?")
"""A name, or ``family:member`` for one member of a family (``reinsurer:RE002``)."""


# --------------------------------------------------------------------------- public values


class TimeoutPolicy(BaseModel):
    """Seed defaults: connect 5 s and read 30 s per attempt; 60 s for the whole message.

    ``deadline_s`` bounds every attempt, back-off and retry of one message together; it may
    not be shorter than ``connect_timeout_s``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    read_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    deadline_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _deadline_covers_a_connect(self) -> TimeoutPolicy:
        if self.deadline_s < self.connect_timeout_s:
            raise ValueError(
                f"deadline_s ({self.deadline_s}) must not be shorter than connect_timeout_s "
                f"({self.connect_timeout_s})"
            )
        return self

    def http(self) -> TimeoutSettings:
        """The per-attempt timeouts in the form the HTTP seam takes."""
        from processors.adapters.http import TimeoutSettings  # the seam imports aiohttp

        return TimeoutSettings(connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s)


class EndpointPolicy(BaseModel):
    """Everything that guards the calls to one external endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: TimeoutPolicy = Field(default_factory=TimeoutPolicy)


@dataclass(frozen=True)
class ResilienceConfig:
    """The validated ``resilience.yaml`` (or the built-in defaults when there is none)."""

    defaults: EndpointPolicy = field(default_factory=EndpointPolicy)
    endpoints: Mapping[str, EndpointPolicy] = field(default_factory=dict, hash=False)
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", MappingProxyType(dict(self.endpoints)))

    def for_endpoint(self, name: str) -> EndpointPolicy:
        """The policy of ``name``; the defaults for an endpoint the file does not name.

        Partner webhook endpoints (``webhook:<subscription id>``) share the ``partner-webhooks``
        entry when the file has one; any other ``<family>:<member>`` name (``reinsurer:RE001``)
        falls back to its family's entry (``reinsurer``).
        """
        policy = self.endpoints.get(name)
        if policy is not None:
            return policy
        if name.startswith("webhook:"):
            return self.endpoints.get("partner-webhooks", self.defaults)
        family, colon, member = name.partition(":")
        if colon:
            # A member (a reinsurer code) is matched without regard to case.
            for entry, entry_policy in self.endpoints.items():
                if entry.partition(":")[0] == family and entry.partition(":")[2].upper() == member.upper():
                    return entry_policy
            return self.endpoints.get(family, self.defaults)
        return self.defaults

    def breakers(self, *, clock: Callable[[], float] = time.monotonic) -> BreakerRegistry:
        """A registry whose breakers take their settings from this configuration."""
        return BreakerRegistry(lambda name: self.for_endpoint(name).breaker, clock=clock)


class ResilienceConfigError(ConfigError):
    """``resilience.yaml`` is invalid; ``problems`` lists each ``file:line: reason``."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- loading


def load_resilience(path: str | Path | None = None) -> ResilienceConfig:
    """Read and validate the resilience settings; see the module doc for which file is read.

    Raises :class:`ResilienceConfigError` (a :class:`ConfigError`) with ``file:line: reason``,
    or :class:`ConfigError` when a named file cannot be read.
    """
    resolved = _resolve(path)
    if resolved is None:
        return ResilienceConfig()
    file_path, display = resolved
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{display}: resilience settings not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{display}: cannot read the resilience settings: {exc}") from exc
    return parse_resilience(text, display, path=file_path)


def parse_resilience(
    text: str, file: str = DEFAULT_FILE_NAME, *, path: Path | None = None
) -> ResilienceConfig:
    """Validate resilience settings text; ``file`` is the name used in error messages."""
    try:
        source = read_source(text, file)
    except SourceError as exc:
        raise ResilienceConfigError(exc.problems) from exc
    if not isinstance(source.data, dict):
        raise ResilienceConfigError(
            [source.problem((), "the top level must be a mapping with 'defaults' and 'endpoints'")]
        )
    try:
        model = _File.model_validate(source.data)
    except ValidationError as exc:
        raise ResilienceConfigError(sorted(_translate(exc, source))) from exc
    return _Assembler(source, model, path).build()


def _resolve(path: str | Path | None) -> tuple[Path, str] | None:
    if path is not None:
        return Path(path), str(path)
    from_env = os.environ.get(ENV_RESILIENCE_FILE, "").strip()
    if from_env:
        return Path(from_env), from_env
    here = Path(DEFAULT_FILE_NAME)
    if here.is_file():
        return here, DEFAULT_FILE_NAME
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_FILE_NAME
    if checkout.is_file():
        return checkout, str(checkout)
    return None


# --------------------------------------------------------------------------- file schema

Count = Annotated[int, Field(ge=1)]
Millis = Annotated[int, Field(ge=0)]
PositiveMillis = Annotated[int, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _BreakerKeys(_Model):
    failure_threshold: Count | None = None
    success_threshold: Count | None = None
    timeout_duration_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    half_open_requests: Count | None = None


class _RetryKeys(_Model):
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None
    initial_delay_ms: Millis | None = None
    max_delay_ms: Millis | None = None
    multiplier: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None


class _TimeoutKeys(_Model):
    connection_timeout_ms: PositiveMillis | None = None
    read_timeout_ms: PositiveMillis | None = None
    deadline_ms: PositiveMillis | None = None


class _Section(_Model):
    circuit_breaker: _BreakerKeys = _BreakerKeys()
    retry: _RetryKeys = _RetryKeys()
    timeout: _TimeoutKeys = _TimeoutKeys()


class _File(_Model):
    defaults: _Section = _Section()
    endpoints: dict[str, _Section] = Field(default_factory=dict)


_SEED: dict[str, dict[str, Any]] = {
    "circuit_breaker": {
        "failure_threshold": 5,
        "success_threshold": 3,
        "timeout_duration_seconds": 30,
        "half_open_requests": 3,
    },
    "retry": {"max_attempts": 3, "initial_delay_ms": 100, "max_delay_ms": 5_000, "multiplier": 2},
    "timeout": {"connection_timeout_ms": 5_000, "read_timeout_ms": 30_000, "deadline_ms": 60_000},
}

_SECTION_MODELS: dict[str, type[_Model]] = {
    "circuit_breaker": _BreakerKeys,
    "retry": _RetryKeys,
    "timeout": _TimeoutKeys,
}


# --------------------------------------------------------------------------- error messages


def _translate(exc: ValidationError, source: Source) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: DocPath = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            who, rest = _who(loc)
            reason = f"names must be text (got {loc[-1]!r})"
            problems.append(source.problem(loc, f"{who}: {reason}" if who else reason))
            continue
        who, rest = _who(loc)
        reason = _reason(error, loc, rest)
        if who and not rest:
            problems.append(source.problem(loc, f"{who} {reason}"))
        else:
            problems.append(source.problem(loc, f"{who}: {reason}" if who else reason))
    return problems


def _who(loc: DocPath) -> tuple[str, DocPath]:
    """Who a problem belongs to (``defaults``, ``endpoint 'x'``) and the path inside it."""
    if loc and loc[0] == "defaults":
        return "defaults", loc[1:]
    if len(loc) >= 2 and loc[0] == "endpoints":
        return f"endpoint '{loc[1]}'", loc[2:]
    return "", loc


def _known_keys(parent: DocPath) -> list[str]:
    """The keys allowed in the mapping at ``parent``."""
    if not parent:
        return list(_File.model_fields)
    if parent == ("defaults",) or (len(parent) == 2 and parent[0] == "endpoints"):
        return list(_Section.model_fields)
    model = _SECTION_MODELS.get(str(parent[-1]))
    return list(model.model_fields) if model is not None else []


def _reason(error: Any, loc: DocPath, rest: DocPath) -> str:
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    subject = ".".join(str(p) for p in rest)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = loc[:-1]
        where = ".".join(str(p) for p in rest[:-1])
        message = f"unknown key '{key}'" + (f" in {where}" if where else "")
        close = difflib.get_close_matches(key, _known_keys(parent), n=1)
        if close:
            return f"{message} (did you mean '{close[0]}'?)"
        if not parent:
            return (
                f"{message}; the top level holds 'defaults' and 'endpoints' (endpoints go under 'endpoints')"
            )
        return f"{message}; known keys: {', '.join(_known_keys(parent))}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal"):
        sign = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤"}[kind]
        bound = ctx.get({"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le"}[kind])
        return f"{subject} must be {sign} {_number(bound)} (got {value!r})"
    if kind == "int_type":
        unit = " of milliseconds" if subject.endswith("_ms") else ""
        return f"{subject} must be a whole number{unit} (got {value!r})"
    if kind == "float_type":
        return f"{subject} must be a number (got {value!r})"
    if kind == "finite_number":
        return f"{subject} must be a finite number (got {value!r})"
    if kind in ("dict_type", "model_type"):
        return f"{subject} must be a mapping of keys to values (got {type(value).__name__})".lstrip()
    return f"{subject}: {error.get('msg')}" if subject else str(error.get("msg"))


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _Value:
    value: Any
    at: DocPath | None  # where it was written; None for a seed value
    own: bool  # written in the section being assembled (not inherited)


class _Assembler:
    def __init__(self, source: Source, model: _File, path: Path | None) -> None:
        self.source = source
        self.model = model
        self.path = path
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def build(self) -> ResilienceConfig:
        defaults = self._policy("defaults", ("defaults",), self.model.defaults, None)
        endpoints: dict[str, EndpointPolicy] = {}
        for name, section in self.model.endpoints.items():
            at: DocPath = ("endpoints", name)
            if not _ENDPOINT_NAME.fullmatch(name):
                self._fail(
                    at,
                    f"endpoint '{name}': names use letters, digits, '.', '_' and '-' (at most 100, "
                    "starting with a letter or digit), or family:member for one member of a family",
                )
                continue
            policy = self._policy(f"endpoint '{name}'", at, section, self.model.defaults)
            if policy is not None:
                endpoints[name] = policy
        if self.problems:
            raise ResilienceConfigError(sorted(self.problems))
        assert defaults is not None
        for warning in self.warnings:
            _log.warning("%s", warning)
        return ResilienceConfig(
            defaults=defaults, endpoints=endpoints, path=self.path, warnings=tuple(self.warnings)
        )

    def _fail(self, at: DocPath, reason: str) -> None:
        self.problems.append(self.source.problem(at, reason))

    def _merge(self, at: DocPath, section: _Section, parent: _Section | None) -> dict[str, dict[str, _Value]]:
        merged: dict[str, dict[str, _Value]] = {}
        for name, seed in _SEED.items():
            own = getattr(section, name).model_dump(exclude_none=True)
            inherited = getattr(parent, name).model_dump(exclude_none=True) if parent else {}
            values: dict[str, _Value] = {}
            for key, seed_value in seed.items():
                if key in own:
                    values[key] = _Value(own[key], (*at, name, key), own=True)
                elif key in inherited:
                    values[key] = _Value(inherited[key], ("defaults", name, key), own=False)
                else:
                    values[key] = _Value(seed_value, None, own=False)
            merged[name] = values
        return merged

    def _where(self, at: DocPath, *values: _Value) -> DocPath | None:
        """Where to report a rule that involves ``values``; ``None`` if only inherited values
        are involved (the problem is reported where they were written, once)."""
        for value in values:
            if value.own and value.at is not None:
                return value.at
        return None if at != ("defaults",) else at

    def _policy(
        self, who: str, at: DocPath, section: _Section, parent: _Section | None
    ) -> EndpointPolicy | None:
        merged = self._merge(at, section, parent)
        cb, retry, timeout = merged["circuit_breaker"], merged["retry"], merged["timeout"]
        ok = True

        success, permits = cb["success_threshold"], cb["half_open_requests"]
        if success.value > permits.value:
            ok = False
            where = self._where(at, success, permits)
            if where is not None:
                self._fail(
                    where,
                    f"{who}: circuit_breaker.success_threshold ({success.value}) must not exceed "
                    f"half_open_requests ({permits.value}): at most half_open_requests probes run "
                    "at once, and that many successes must be able to close the breaker",
                )

        connect, read, deadline = (
            timeout["connection_timeout_ms"],
            timeout["read_timeout_ms"],
            timeout["deadline_ms"],
        )
        if deadline.value < connect.value:
            ok = False
            where = self._where(at, deadline, connect)
            if where is not None:
                self._fail(
                    where,
                    f"{who}: timeout.deadline_ms ({deadline.value}) must not be shorter than "
                    f"connection_timeout_ms ({connect.value})",
                )
        elif deadline.value < connect.value + read.value:
            where = self._where(at, deadline, connect, read)
            if where is not None:
                line = self.source.line(where)
                self.warnings.append(
                    f"{self.source.file}:{line}: {who}: timeout.deadline_ms ({deadline.value}) is "
                    f"shorter than connection_timeout_ms + read_timeout_ms "
                    f"({connect.value} + {read.value}); the deadline will cut slow reads short"
                )
        if not ok:
            return None
        try:
            return EndpointPolicy(
                breaker=BreakerSettings(
                    failure_threshold=cb["failure_threshold"].value,
                    success_threshold=success.value,
                    timeout_duration_s=cb["timeout_duration_seconds"].value,
                    half_open_requests=permits.value,
                ),
                retry=RetryPolicy(
                    max_attempts=retry["max_attempts"].value,
                    initial_delay_ms=retry["initial_delay_ms"].value,
                    max_delay_ms=retry["max_delay_ms"].value,
                    multiplier=retry["multiplier"].value,
                ),
                timeout=TimeoutPolicy(
                    connect_timeout_s=connect.value / 1000,
                    read_timeout_s=read.value / 1000,
                    deadline_s=deadline.value / 1000,
                ),
            )
        except ValidationError as exc:  # the file rules above should have caught it
            self._fail(at, f"{who}: {exc.errors(include_url=False)[0]['msg']}")
            return None
