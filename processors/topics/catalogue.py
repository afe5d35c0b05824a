"""The topic catalogue: every topic the processors use, read from ``topics.yaml``.

The file has five sections (all optional except what the apps refer to)::

    version: 1
    defaults:            # applied to every topic that does not say otherwise
      partitions: 6
      replication_factor: 3
      min_insync_replicas: 2
      retention: 7d
      cleanup_policy: delete
      max_message_bytes: 1048588   # the largest record a topic accepts (Kafka's default)
    inputs:   [ {name, description, partitions?, retention?, cleanup_policy?,
                 max_message_bytes?, config?}, ... ]
    outputs:  [ ... same shape ... ]
    state:    [ ... same shape ... ]
    apps:
      payments:
        sources: [insurance.billing.events]     # topics the app consumes
        outputs: [integrations.payment.results] # topics it writes (optional, for reference)
        state: []                               # state/changelog topics it owns (optional)
        retry_tiers: [5s, 30s, 5m, 30m]
        retry:  {partitions?, retention?, max_message_bytes?, config?}
        dlq:    {partitions?, retention?, max_message_bytes?, config?}
        parked: {partitions?, retention?, max_message_bytes?, config?}
        dedupe: {window, max_message_bytes?, config?}   # optional: drop repeated event ids

Each app generates its failure topics, named by the templates of the optional
``naming`` section (placeholders ``{app}``, ``{index}``, ``{delay}``); the defaults are:

* retry tier *i* with delay *d*: ``integrations.{app}.retry.{index}-{delay}``, where the
  index counts from 0 and the delay is canonical (largest whole unit: ``60s`` is written
  ``1m``).  The index keeps names unique when a delay repeats (``[.., 10h, 10h]``) and
  sorts the tiers in the order a message walks through them:
  ``integrations.payments.retry.0-5s``, ``integrations.payments.retry.1-30s``, ...
  (the template must use ``{app}`` and ``{index}``);
* dead letters: ``integrations.{app}.dlq``;
* parked dead letters (the replay loop guard): ``integrations.{app}.parked``
  (both must use ``{app}``);
* the event ids an app has answered, when it declares ``dedupe`` (see
  :mod:`processors.runtime.dedupe`): ``integrations.{app}.dedupe``, compacted and deleted
  after the window, with the partitions of the app's widest source.

Retry tier and DLQ partitions default to the largest partition count among the app's
sources and may not be set below it.  ``parked`` defaults to the DLQ's partitions and
retention.  Retries default to 7 days of retention, dead letters to 30 days.

**Record sizes agree.**  Every topic states the largest record it accepts
(``max_message_bytes``, Kafka's ``max.message.bytes``; the defaults' value unless the topic
says otherwise).  A record read from a source must fit, whole and with the failure headers, in
each retry tier and in the dead-letter topic: their limit defaults to the app's largest source
limit plus :data:`FAILURE_HEADROOM_BYTES`, may not be set below the largest source limit, and
``parked`` may not be below the DLQ.  (Should a cluster's topics drift from this, a dead letter
too large for its topic is still written, as an excerpt with the original's size and sha256:
:mod:`processors.runtime.failures`.)

Durations are a whole number and a unit (``ms s m h d``); retention also takes
``forever``.  ``config`` holds extra raw Kafka topic configs (``segment.ms: 6h``
is *not* parsed: values are passed to Kafka as written, e.g. ``segment.ms: "21600000"``).
The three configs with their own keys (``cleanup.policy``, ``retention.ms``,
``min.insync.replicas``) may not be set through ``config``.  ``min.insync.replicas`` is
set only on replicated topics (replication factor above 1) and may not exceed it.

Every error names the file and line: ``topics.yaml:42: topic 'x': partitions must be ≥ 1
(got 0)``.

**Which file** :func:`load_catalogue` reads when given no path: the file named by the
environment variable ``PROCESSORS_TOPICS_FILE``; else ``topics.yaml`` in the current
directory; else the ``topics.yaml`` at the root of the source tree this package was
imported from (a checkout or an editable install).  The package ships no copy of its
own, so there is exactly one catalogue.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from processors.errors import ConfigError
from processors.topics._source import DocPath, Problem, Source, SourceError, read_source
from processors.topics.durations import FOREVER, format_duration, parse_duration, parse_retention

__all__ = [
    "DEFAULT_DLQ_TEMPLATE",
    "DEFAULT_FILE_NAME",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PARKED_TEMPLATE",
    "DEFAULT_RETRY_TEMPLATE",
    "ENV_TOPICS_FILE",
    "FAILURE_HEADROOM_BYTES",
    "KNOWN_TOPIC_CONFIGS",
    "MANAGED_CONFIGS",
    "AppTopics",
    "Catalogue",
    "CatalogueError",
    "Problem",
    "RetryTier",
    "TopicKind",
    "TopicSpec",
    "dlq_topic_name",
    "load_catalogue",
    "parked_topic_name",
    "parse_catalogue",
    "retry_topic_name",
]

ENV_TOPICS_FILE = "PROCESSORS_TOPICS_FILE"
DEFAULT_FILE_NAME = "topics.yaml"

TopicKind = Literal["input", "output", "state", "retry", "dlq", "parked", "dedupe"]
CleanupPolicy = Literal["delete", "compact", "compact,delete"]

MANAGED_CONFIGS: Mapping[str, str] = MappingProxyType(
    {
        "cleanup.policy": "cleanup_policy",
        "retention.ms": "retention",
        "min.insync.replicas": "min_insync_replicas",
        "max.message.bytes": "max_message_bytes",
    }
)
"""Kafka configs the catalogue sets from its own keys, and those keys."""

KNOWN_TOPIC_CONFIGS: frozenset[str] = frozenset(
    {
        "cleanup.policy",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.type",
        "compression.zstd.level",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "follower.replication.throttled.replicas",
        "index.interval.bytes",
        "leader.replication.throttled.replicas",
        "local.retention.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "preallocate",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
    }
)
"""Topic-level configs of Apache Kafka 4.x; ``config`` keys outside it are refused as typos,
except vendor extensions (``confluent.*``)."""

_VENDOR_CONFIG_PREFIXES = ("confluent.",)

DEFAULT_RETRY_TEMPLATE = "integrations.{app}.retry.{index}-{delay}"
DEFAULT_DLQ_TEMPLATE = "integrations.{app}.dlq"
DEFAULT_PARKED_TEMPLATE = "integrations.{app}.parked"
DEFAULT_DEDUPE_TEMPLATE = "integrations.{app}.dedupe"
_TEMPLATE_FIELDS = {
    "retry": ({"app", "index"}, {"app", "index", "delay"}),
    "dlq": ({"app"}, {"app"}),
    "parked": ({"app"}, {"app"}),
    "dedupe": ({"app"}, {"app"}),
}  # template -> (required placeholders, allowed placeholders)

DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""Kafka's own default ``max.message.bytes`` (1 MiB plus the record batch overhead)."""

FAILURE_HEADROOM_BYTES = 64 * 1024
"""What a retry-tier copy or a dead letter may add to the record it carries: the failure
headers (error class and a message of at most 480 characters, provenance, attempts, times)
take about 1 KiB; the rest is margin."""

EXCERPT_FLOOR_BYTES = 64 * 1024
"""The smallest ``max_message_bytes`` the catalogue takes: a dead letter's excerpt (16 KiB) and
its headers must always fit."""

MAX_RECORD_BYTES = 1 << 30
"""The largest: Kafka's ``max.message.bytes`` is a 32-bit int; a GiB is far past any sane record."""

DEFAULT_RETRY_RETENTION_MS = 7 * 86_400_000
DEFAULT_DLQ_RETENTION_MS = 30 * 86_400_000

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_CONFIG_KEY = re.compile(r"[a-z][a-z0-9]*(\.[a-z0-9]+)*")


class CatalogueError(ConfigError):
    """``topics.yaml`` is invalid; ``problems`` lists each ``file:line: reason``."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- public values


def retry_topic_name(app: str, index: int, delay_ms: int, template: str = DEFAULT_RETRY_TEMPLATE) -> str:
    """A retry tier's topic, by default ``integrations.<app>.retry.<index>-<delay>``."""
    return template.format(app=app, index=index, delay=format_duration(delay_ms))


def dlq_topic_name(app: str, template: str = DEFAULT_DLQ_TEMPLATE) -> str:
    """An app's dead-letter topic, by default ``integrations.<app>.dlq``."""
    return template.format(app=app)


def parked_topic_name(app: str, template: str = DEFAULT_PARKED_TEMPLATE) -> str:
    """An app's parking topic, by default ``integrations.<app>.parked``."""
    return template.format(app=app)


def dedupe_topic_name(app: str, template: str = DEFAULT_DEDUPE_TEMPLATE) -> str:
    """An app's answered event ids, by default ``integrations.<app>.dedupe``."""
    return template.format(app=app)


@dataclass(frozen=True)
class RetryTier:
    """One non-blocking retry step: records wait on ``topic`` until ``delay_ms`` has passed."""

    topic: str
    delay_ms: int
    index: int


@dataclass(frozen=True)
class TopicSpec:
    """What one topic must look like.

    ``config`` holds the Kafka topic configs the catalogue manages (``cleanup.policy``,
    ``retention.ms`` when the policy deletes, ``min.insync.replicas`` when the topic is
    replicated, and any extra ``config``), as strings, exactly as sent to Kafka.
    ``min_insync_replicas`` is the wanted value should the topic be replicated.
    """

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(hash=False)
    kind: TopicKind
    app: str | None
    description: str
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(sorted(self.config.items()))))

    @property
    def max_message_bytes(self) -> int:
        """The largest record the topic accepts (``max.message.bytes``)."""
        return int(self.config.get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES))

    @property
    def retention_ms(self) -> int | None:
        """``retention.ms`` (``-1`` = forever), or ``None`` when the topic only compacts."""
        value = self.config.get("retention.ms")
        return int(value) if value is not None else None

    def with_replication_factor(self, replication_factor: int) -> TopicSpec:
        """This topic at another replication factor, ``min.insync.replicas`` adjusted.

        Raises :class:`ConfigError` when ``min_insync_replicas`` exceeds a replication
        factor above 1 (a replication factor of 1 simply drops the setting).
        """
        if replication_factor < 1:
            raise ConfigError(f"replication factor must be ≥ 1 (got {replication_factor})")
        config = {k: v for k, v in self.config.items() if k != "min.insync.replicas"}
        if replication_factor > 1:
            if self.min_insync_replicas > replication_factor:
                raise ConfigError(
                    f"topic '{self.name}': min_insync_replicas {self.min_insync_replicas} exceeds "
                    f"replication factor {replication_factor}; choose --replication-factor "
                    f"{self.min_insync_replicas} or more, or 1 for a single-broker cluster"
                )
            config["min.insync.replicas"] = str(self.min_insync_replicas)
        return replace(self, replication_factor=replication_factor, config=config)


@dataclass(frozen=True)
class AppTopics:
    """The topics of one integration app: what it reads and where its failures go."""

    name: str
    sources: tuple[str, ...]
    retry_tiers: tuple[RetryTier, ...]
    dlq: str
    parked: str
    outputs: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    description: str = ""
    dedupe: str | None = None
    """The topic of the event ids the app answered (None: the app does not de-duplicate)."""
    dedupe_window_ms: int = 0
    """How long an answered event id is remembered."""

    @property
    def failure_topics(self) -> tuple[str, ...]:
        """Retry tiers in order, then the DLQ, then the parking topic."""
        return (*(t.topic for t in self.retry_tiers), self.dlq, self.parked)

    def tier_of(self, topic: str) -> RetryTier | None:
        """The retry tier whose topic is ``topic``, if any."""
        for tier in self.retry_tiers:
            if tier.topic == topic:
                return tier
        return None

    def next_tier(self, after: RetryTier | None = None) -> RetryTier | None:
        """The tier a failure goes to next: the first after ``after`` (``None`` = first).

        ``None`` means the tiers are exhausted and the record goes to :attr:`dlq`.
        """
        index = 0 if after is None else after.index + 1
        return self.retry_tiers[index] if index < len(self.retry_tiers) else None


class Catalogue:
    """Every topic and app of ``topics.yaml``; immutable."""

    __slots__ = ("_apps", "_by_name", "_path", "_topics")

    def __init__(
        self, topics: Iterable[TopicSpec], apps: Iterable[AppTopics], *, path: Path | None = None
    ) -> None:
        self._topics = tuple(topics)
        self._by_name: dict[str, TopicSpec] = {}
        for spec in self._topics:
            if spec.name in self._by_name:
                raise ConfigError(f"topic '{spec.name}' is defined twice")
            self._by_name[spec.name] = spec
        apps_by_name: dict[str, AppTopics] = {}
        for app in apps:
            if app.name in apps_by_name:
                raise ConfigError(f"app '{app.name}' is defined twice")
            for name in (*app.sources, *app.outputs, *app.state, *app.failure_topics):
                if name not in self._by_name:
                    raise ConfigError(f"app '{app.name}' refers to topic '{name}', which is not defined")
            apps_by_name[app.name] = app
        self._apps: Mapping[str, AppTopics] = MappingProxyType(apps_by_name)
        self._path = path

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """All topics: declared inputs, outputs and state, then each app's failure topics."""
        return self._topics

    @property
    def apps(self) -> Mapping[str, AppTopics]:
        return self._apps

    @property
    def path(self) -> Path | None:
        """The file the catalogue was read from, if any."""
        return self._path

    def topic(self, name: str) -> TopicSpec:
        """The topic called ``name``; :class:`ConfigError` if the catalogue has none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(_not_found("topic", name, self._by_name, self._path)) from None

    def app(self, name: str) -> AppTopics:
        """The app called ``name``; :class:`ConfigError` if the catalogue has none."""
        try:
            return self._apps[name]
        except KeyError:
            raise ConfigError(_not_found("app", name, self._apps, self._path)) from None

    def largest_record_written(self, app: str) -> int:
        """The largest record ``app`` may have to write: the highest ``max.message.bytes`` of
        its outputs, state, failure and dedupe topics (its producer's ``message.max.bytes``)."""
        topics = self.app(app)
        names = (*topics.outputs, *topics.state, *topics.failure_topics)
        names += (topics.dedupe,) if topics.dedupe else ()
        return max(self.topic(name).max_message_bytes for name in names)

    def of_kind(self, kind: TopicKind) -> tuple[TopicSpec, ...]:
        return tuple(t for t in self._topics if t.kind == kind)

    def with_replication_factor(self, replication_factor: int | None) -> Catalogue:
        """The same catalogue with every topic at ``replication_factor`` (``None``: unchanged)."""
        if replication_factor is None:
            return self
        topics = [t.with_replication_factor(replication_factor) for t in self._topics]
        return Catalogue(topics, self._apps.values(), path=self._path)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self._topics)

    def __len__(self) -> int:
        return len(self._topics)

    def __repr__(self) -> str:
        where = f" from {self._path}" if self._path else ""
        return f"<Catalogue{where}: {len(self._topics)} topics, apps {sorted(self._apps)}>"


def _not_found(what: str, name: str, known: Iterable[str], path: Path | None) -> str:
    where = str(path) if path else "the catalogue"
    message = f"no {what} '{name}' in {where}"
    close = difflib.get_close_matches(name, list(known), n=1)
    return message + (f" (did you mean '{close[0]}'?)" if close else "")


# --------------------------------------------------------------------------- loading


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate the catalogue; see the module doc for which file is read by default.

    Raises :class:`CatalogueError` (a :class:`ConfigError`) with ``file:line: reason``.
    """
    file_path, display = _resolve(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{display}: topic catalogue not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{display}: cannot read the topic catalogue: {exc}") from exc
    return parse_catalogue(text, display, path=file_path)


def parse_catalogue(text: str, file: str = DEFAULT_FILE_NAME, *, path: Path | None = None) -> Catalogue:
    """Validate catalogue text; ``file`` is the name used in error messages."""
    try:
        source = read_source(text, file)
    except SourceError as exc:
        raise CatalogueError(exc.problems) from exc
    if not isinstance(source.data, dict):
        raise CatalogueError(
            [source.problem((), "the top level must be a mapping of defaults, inputs, outputs, state, apps")]
        )
    try:
        model = _File.model_validate(source.data)
    except ValidationError as exc:
        raise CatalogueError(sorted(_translate(exc, source))) from exc
    return _Assembler(source, model, path).build()


def _resolve(path: str | Path | None) -> tuple[Path, str]:
    if path is not None:
        return Path(path), str(path)
    from_env = os.environ.get(ENV_TOPICS_FILE, "").strip()
    if from_env:
        return Path(from_env), from_env
    here = Path(DEFAULT_FILE_NAME)
    if here.is_file():
        return here, DEFAULT_FILE_NAME
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_FILE_NAME
    if checkout.is_file():
        return checkout, str(checkout)
    raise ConfigError(
        f"no topic catalogue: set {ENV_TOPICS_FILE}, pass a path, or run from the directory "
        f"holding {DEFAULT_FILE_NAME} (looked in {Path.cwd()} and {checkout.parent})"
    )


# --------------------------------------------------------------------------- file schema


def _retention(value: object) -> int:
    return parse_retention(value)


def _delay(value: object) -> int:
    return parse_duration(value, what="retry delay")


def _window(value: object) -> int:
    return parse_duration(value, what="dedupe window")


def _cleanup_policy(value: object) -> object:
    if isinstance(value, str):
        parts = sorted({p.strip() for p in value.split(",") if p.strip()})
        return ",".join(parts)
    return value


def _config_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"must be a single value (got {type(value).__name__})")


Count = Annotated[int, Field(ge=1)]
RecordBytes = Annotated[int, Field(ge=EXCERPT_FLOOR_BYTES, le=MAX_RECORD_BYTES)]
Retention = Annotated[int, BeforeValidator(_retention)]
Delay = Annotated[int, BeforeValidator(_delay)]
Window = Annotated[int, BeforeValidator(_window)]
Policy = Annotated[CleanupPolicy, BeforeValidator(_cleanup_policy)]
ConfigValue = Annotated[str, BeforeValidator(_config_value)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Defaults(_Model):
    partitions: Count = 6
    replication_factor: Count = 3
    min_insync_replicas: Count = 2
    retention: Retention = 7 * 86_400_000
    cleanup_policy: Policy = "delete"
    max_message_bytes: RecordBytes = DEFAULT_MAX_MESSAGE_BYTES


class _Topic(_Model):
    name: str
    description: Annotated[str, Field(min_length=1)]
    partitions: Count | None = None
    replication_factor: Count | None = None
    min_insync_replicas: Count | None = None
    retention: Retention | None = None
    cleanup_policy: Policy | None = None
    max_message_bytes: RecordBytes | None = None
    config: dict[str, ConfigValue] = Field(default_factory=dict)


class _Generated(_Model):
    partitions: Count | None = None
    retention: Retention | None = None
    max_message_bytes: RecordBytes | None = None
    config: dict[str, ConfigValue] = Field(default_factory=dict)


class _Dedupe(_Model):
    window: Window
    max_message_bytes: RecordBytes | None = None
    config: dict[str, ConfigValue] = Field(default_factory=dict)


class _App(_Model):
    description: str = ""
    sources: Annotated[list[str], Field(min_length=1)]
    outputs: list[str] = Field(default_factory=list)
    state: list[str] = Field(default_factory=list)
    retry_tiers: list[Delay] = Field(default_factory=list)
    retry: _Generated = _Generated()
    dlq: _Generated = _Generated()
    parked: _Generated = _Generated()
    dedupe: _Dedupe | None = None


class _Naming(_Model):
    retry: str = DEFAULT_RETRY_TEMPLATE
    dlq: str = DEFAULT_DLQ_TEMPLATE
    parked: str = DEFAULT_PARKED_TEMPLATE
    dedupe: str = DEFAULT_DEDUPE_TEMPLATE


class _File(_Model):
    version: Literal[1] = 1
    naming: _Naming = _Naming()
    defaults: _Defaults = _Defaults()
    inputs: list[_Topic] = Field(default_factory=list)
    outputs: list[_Topic] = Field(default_factory=list)
    state: list[_Topic] = Field(default_factory=list)
    apps: dict[str, _App] = Field(default_factory=dict)


_ALL_KEYS = sorted(
    {
        name
        for model in (_Naming, _Defaults, _Topic, _Generated, _Dedupe, _App, _File)
        for name in model.model_fields
    }
)
_SECTIONS: dict[str, TopicKind] = {"inputs": "input", "outputs": "output", "state": "state"}


# --------------------------------------------------------------------------- error messages


def _translate(exc: ValidationError, source: Source) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: DocPath = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        path = loc[:-1] if is_key else loc
        context, rest = _context(path, source.data)
        reason = _reason(error, rest, is_key=is_key)
        problems.append(source.problem(path, f"{context}: {reason}" if context else reason))
    return problems


def _context(path: DocPath, data: object) -> tuple[str, DocPath]:
    if len(path) >= 2 and path[0] in _SECTIONS and isinstance(path[1], int):
        name = _dig(data, (*path[:2], "name"))
        label = f"topic '{name}'" if isinstance(name, str) else f"{path[0]}[{path[1]}]"
        return label, path[2:]
    if len(path) >= 2 and path[0] == "apps":
        return f"app '{path[1]}'", path[2:]
    if path and path[0] == "defaults":
        return "defaults", path[1:]
    return "", path


def _dig(data: object, path: DocPath) -> object:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _label(path: DocPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "." in part or not part:
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text


def _reason(error: Any, rest: DocPath, *, is_key: bool) -> str:
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    label = _label(rest)
    parent = _label(rest[:-1])
    last = rest[-1] if rest else ""
    if is_key:
        return f"key {last!r}{f' in {parent}' if parent else ''} must be a string"
    if kind == "missing":
        return f"missing required key '{last}'" + (f" in {parent}" if parent else "")
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(last), _ALL_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{last}'" + (f" in {parent}" if parent else "") + hint
    subject = label or "value"
    if kind == "greater_than_equal":
        return f"{subject} must be ≥ {ctx.get('ge')} (got {value!r})"
    if kind == "int_type":
        return f"{subject} must be a whole number (got {value!r})"
    if kind == "string_type":
        return f"{subject} must be text (got {value!r})"
    if kind in ("dict_type", "model_type"):
        return f"{subject} must be a mapping of keys to values (got {type(value).__name__})"
    if kind == "list_type":
        return f"{subject} must be a list (got {value!r})"
    if kind == "literal_error":
        return f"{subject} must be one of {ctx.get('expected')} (got {value!r})"
    if kind in ("too_short", "string_too_short"):
        return f"{subject} must not be empty"
    if kind == "value_error":
        message = str(ctx.get("error"))
        return message if message.startswith("bad ") else f"{subject}: {message}"
    return f"{subject}: {error.get('msg')}"


# --------------------------------------------------------------------------- assembly


@dataclass
class _Declared:
    spec: TopicSpec
    at: DocPath


class _Assembler:
    """Cross-field rules and the generated topics, with the line of every problem."""

    def __init__(self, source: Source, model: _File, path: Path | None) -> None:
        self.source = source
        self.model = model
        self.path = path
        self.problems: list[Problem] = []
        self.declared: dict[str, _Declared] = {}
        self.generated: list[TopicSpec] = []
        self._names: dict[str, tuple[str, DocPath]] = {}  # normalised name -> (name, where)

    def fail(self, at: DocPath, reason: str) -> None:
        self.problems.append(self.source.problem(at, reason))

    def build(self) -> Catalogue:
        templates_ok = self._check_templates()
        d = self.model.defaults
        if d.replication_factor > 1 and d.min_insync_replicas > d.replication_factor:
            self.fail(
                ("defaults", "min_insync_replicas"),
                f"defaults: min_insync_replicas ({d.min_insync_replicas}) must not exceed "
                f"replication_factor ({d.replication_factor})",
            )
        for section, kind in _SECTIONS.items():
            for index, entry in enumerate(getattr(self.model, section)):
                self._declare(entry, kind, (section, index))
        apps = [self._app(name, entry) for name, entry in self.model.apps.items()] if templates_ok else []
        if self.problems:
            raise CatalogueError(sorted(self.problems))
        topics = [item.spec for item in self.declared.values()] + self.generated
        return Catalogue(topics, [a for a in apps if a is not None], path=self.path)

    # ---- names

    def _check_templates(self) -> bool:
        ok = True
        for key, (required, allowed) in _TEMPLATE_FIELDS.items():
            template: str = getattr(self.model.naming, key)
            at: DocPath = ("naming", key)
            try:
                parts = list(string.Formatter().parse(template))
            except ValueError as exc:
                self.fail(at, f"naming: {key} template {template!r}: {exc}")
                ok = False
                continue
            fields = [(f, spec, conv) for _, f, spec, conv in parts if f is not None]
            used = {f for f, _, _ in fields}
            odd = any(f not in allowed or spec or conv for f, spec, conv in fields)
            missing = required - used
            if odd or missing:
                places = ", ".join("{" + f + "}" for f in sorted(allowed))
                need = ", ".join("{" + f + "}" for f in sorted(required))
                self.fail(
                    at,
                    f"naming: {key} template {template!r} must use {need} and may use only {places}",
                )
                ok = False
        return ok

    def _claim(self, name: str, at: DocPath, app: str | None = None) -> bool:
        """Reserve a topic name; ``app`` is set for the topics an app generates."""
        prefix = f"app '{app}' generates topic '{name}'; " if app else ""
        what = "it" if app else f"topic '{name}'"
        if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
            self.fail(
                at,
                f"{prefix}invalid topic name '{name}' (use up to 249 letters, digits, '.', '_', '-')",
            )
            return False
        key = name.replace("_", ".")
        taken = self._names.get(key)
        if taken is not None:
            other, other_at = taken
            line = self.source.line(other_at)
            if other == name:
                self.fail(at, f"{prefix}{what} is already defined on line {line}")
            else:
                self.fail(
                    at,
                    f"{prefix}{what} collides with '{other}' (line {line}); "
                    "Kafka treats '.' and '_' alike in metric names",
                )
            return False
        self._names[key] = (name, at)
        return True

    # ---- configs

    def _extra_config(self, raw: Mapping[str, str], at: DocPath, who: str) -> dict[str, str]:
        config: dict[str, str] = {}
        for key, value in raw.items():
            where = (*at, key)
            if key in MANAGED_CONFIGS:
                self.fail(where, f"{who}: set '{MANAGED_CONFIGS[key]}' instead of config '{key}'")
            elif not _CONFIG_KEY.fullmatch(key):
                self.fail(where, f"{who}: '{key}' is not a Kafka config name")
            elif key not in KNOWN_TOPIC_CONFIGS and not key.startswith(_VENDOR_CONFIG_PREFIXES):
                close = difflib.get_close_matches(key, sorted(KNOWN_TOPIC_CONFIGS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(where, f"{who}: unknown Kafka topic config '{key}'{hint}")
            else:
                config[key] = value
        return config

    @staticmethod
    def _config(
        policy: str,
        retention_ms: int | None,
        rf: int,
        min_isr: int,
        extra: Mapping[str, str],
        max_message_bytes: int,
    ) -> dict[str, str]:
        config = {"cleanup.policy": policy, "max.message.bytes": str(max_message_bytes), **extra}
        if retention_ms is not None:
            config["retention.ms"] = str(retention_ms)
        if rf > 1:
            config["min.insync.replicas"] = str(min_isr)
        return config

    # ---- declared topics

    def _declare(self, entry: _Topic, kind: TopicKind, at: DocPath) -> None:
        d = self.model.defaults
        who = f"topic '{entry.name}'"
        claimed = self._claim(entry.name, (*at, "name"))
        rf = entry.replication_factor or d.replication_factor
        min_isr = entry.min_insync_replicas or d.min_insync_replicas
        if rf > 1 and min_isr > rf:
            key = "min_insync_replicas" if entry.min_insync_replicas else "replication_factor"
            self.fail(
                (*at, key) if key in entry.model_fields_set else at,
                f"{who}: min_insync_replicas ({min_isr}) must not exceed replication_factor ({rf})",
            )
        policy = entry.cleanup_policy or d.cleanup_policy
        retention: int | None = entry.retention
        if "delete" not in policy:
            if retention is not None and retention != FOREVER:
                self.fail(
                    (*at, "retention"),
                    f"{who}: retention has no effect with cleanup_policy '{policy}'; "
                    "use 'compact,delete' or remove retention",
                )
            retention = None
        elif retention is None:
            retention = d.retention
        extra = self._extra_config(entry.config, (*at, "config"), who)
        if not claimed:
            return
        spec = TopicSpec(
            name=entry.name,
            partitions=entry.partitions or d.partitions,
            replication_factor=rf,
            config=self._config(
                policy, retention, rf, min_isr, extra, entry.max_message_bytes or d.max_message_bytes
            ),
            kind=kind,
            app=None,
            description=entry.description.strip(),
            min_insync_replicas=min_isr,
        )
        self.declared[entry.name] = _Declared(spec, at)

    # ---- apps

    def _refs(self, names: list[str], at: DocPath, who: str, what: str) -> tuple[str, ...]:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                self.fail((*at, index), f"{who}: {what} topic '{name}' is listed twice")
            elif name not in self.declared:
                close = difflib.get_close_matches(name, list(self.declared), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail((*at, index), f"{who}: unknown {what} topic '{name}'{hint}")
            seen.add(name)
        return tuple(dict.fromkeys(names))

    def _app(self, name: str, entry: _App) -> AppTopics | None:
        at: DocPath = ("apps", name)
        who = f"app '{name}'"
        if not _APP_NAME.fullmatch(name):
            self.fail(at, f"{who}: app names use lower-case letters, digits, '_' and '-' (max 63)")
            return None
        problems_before = len(self.problems)
        sources = self._refs(entry.sources, (*at, "sources"), who, "source")
        outputs = self._refs(entry.outputs, (*at, "outputs"), who, "output")
        state = self._refs(entry.state, (*at, "state"), who, "state")
        known = [self.declared[s].spec for s in sources if s in self.declared]
        widest = max(known, key=lambda s: s.partitions, default=None)
        floor = widest.partitions if widest else 1

        def partitions(block: _Generated, key: str, default: int) -> int:
            if block.partitions is None:
                return default
            if block.partitions < floor and widest is not None:
                self.fail(
                    (*at, key, "partitions"),
                    f"{who}: {key} partitions ({block.partitions}) must be ≥ the partitions of its "
                    f"source '{widest.name}' ({floor})",
                )
            return block.partitions

        d = self.model.defaults
        retry_partitions = partitions(entry.retry, "retry", floor)
        retry_retention = entry.retry.retention or DEFAULT_RETRY_RETENTION_MS
        longest = max(entry.retry_tiers, default=0)
        if retry_retention != FOREVER and retry_retention <= longest:
            self.fail(
                (*at, "retry", "retention") if entry.retry.retention else (*at, "retry_tiers"),
                f"{who}: retry retention ({format_duration(retry_retention)}) must be longer than "
                f"the longest retry delay ({format_duration(longest)})",
            )
        dlq_partitions = partitions(entry.dlq, "dlq", floor)
        dlq_retention = entry.dlq.retention or DEFAULT_DLQ_RETENTION_MS
        parked_partitions = entry.parked.partitions or dlq_partitions
        parked_retention = entry.parked.retention or dlq_retention

        # Record sizes: whatever a source accepted fits in a retry tier and the DLQ, whole.
        largest = max(known, key=lambda s: s.max_message_bytes, default=None)
        source_bytes = largest.max_message_bytes if largest else d.max_message_bytes

        def record_bytes(block: _Generated, key: str, least: int, default: int, than: str) -> int:
            if block.max_message_bytes is None:
                return default
            if block.max_message_bytes < least:
                self.fail(
                    (*at, key, "max_message_bytes"),
                    f"{who}: {key} max_message_bytes ({block.max_message_bytes}) must be ≥ {than} "
                    f"({least}): a record it accepted could not be moved on whole",
                )
            return block.max_message_bytes

        carried = source_bytes + FAILURE_HEADROOM_BYTES
        of_source = f"that of its source '{largest.name}'" if largest else "the default"
        retry_bytes = record_bytes(entry.retry, "retry", source_bytes, carried, of_source)
        dlq_bytes = record_bytes(entry.dlq, "dlq", source_bytes, carried, of_source)
        parked_bytes = record_bytes(entry.parked, "parked", dlq_bytes, dlq_bytes, "the dlq's")

        def make(
            topic: str,
            kind: TopicKind,
            parts: int,
            retention: int,
            extra: dict[str, str],
            text: str,
            max_bytes: int,
        ) -> TopicSpec:
            return TopicSpec(
                name=topic,
                partitions=parts,
                replication_factor=d.replication_factor,
                config=self._config(
                    "delete", retention, d.replication_factor, d.min_insync_replicas, extra, max_bytes
                ),
                kind=kind,
                app=name,
                description=text,
                min_insync_replicas=d.min_insync_replicas,
            )

        retry_extra = self._extra_config(entry.retry.config, (*at, "retry", "config"), who)
        tiers: list[RetryTier] = []
        specs: list[TopicSpec] = []
        for index, delay in enumerate(entry.retry_tiers):
            topic = retry_topic_name(name, index, delay, self.model.naming.retry)
            if self._claim(topic, (*at, "retry_tiers", index), name):
                tiers.append(RetryTier(topic=topic, delay_ms=delay, index=index))
                text = f"{name}: retry tier {index}, redelivered {format_duration(delay)} after failing"
                specs.append(
                    make(topic, "retry", retry_partitions, retry_retention, retry_extra, text, retry_bytes)
                )
        dlq = dlq_topic_name(name, self.model.naming.dlq)
        dlq_extra = self._extra_config(entry.dlq.config, (*at, "dlq", "config"), who)
        if self._claim(dlq, (*at, "dlq"), name):
            text = f"{name}: dead letters (permanent failures, retries exhausted, poison input)"
            specs.append(make(dlq, "dlq", dlq_partitions, dlq_retention, dlq_extra, text, dlq_bytes))
        parked = parked_topic_name(name, self.model.naming.parked)
        parked_extra = self._extra_config(entry.parked.config, (*at, "parked", "config"), who)
        if self._claim(parked, (*at, "parked"), name):
            text = f"{name}: dead letters that failed again after replay (loop guard)"
            specs.append(
                make(parked, "parked", parked_partitions, parked_retention, parked_extra, text, parked_bytes)
            )
        dedupe: str | None = None
        window = 0
        if entry.dedupe is not None:
            window = entry.dedupe.window
            if window <= 0:
                self.fail((*at, "dedupe", "window"), f"{who}: dedupe window must be longer than 0")
            name_ = dedupe_topic_name(name, self.model.naming.dedupe)
            extra = self._extra_config(entry.dedupe.config, (*at, "dedupe", "config"), who)
            if self._claim(name_, (*at, "dedupe"), name):
                dedupe = name_
                text = f"{name}: event ids answered within the last {format_duration(window)} (key event id)"
                specs.append(
                    TopicSpec(
                        name=name_,
                        partitions=floor,
                        replication_factor=d.replication_factor,
                        config=self._config(
                            "compact,delete",
                            window,
                            d.replication_factor,
                            d.min_insync_replicas,
                            extra,
                            entry.dedupe.max_message_bytes or d.max_message_bytes,
                        ),
                        kind="dedupe",
                        app=name,
                        description=text,
                        min_insync_replicas=d.min_insync_replicas,
                    )
                )
        if len(self.problems) > problems_before:
            return None
        self.generated.extend(specs)
        return AppTopics(
            name=name,
            sources=sources,
            retry_tiers=tuple(tiers),
            dlq=dlq,
            parked=parked,
            outputs=outputs,
            state=state,
            description=entry.description.strip(),
            dedupe=dedupe,
            dedupe_window_ms=window,
        )
