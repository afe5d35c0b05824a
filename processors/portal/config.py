"""The portal store's settings (``PROCESSORS_PORTAL__*``); imports no database library."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["DEFAULT_DATABASE_URL", "GraphqlSettings", "LiveFeedSettings", "PortalSettings"]

DEFAULT_DATABASE_URL = "sqlite:///var/portal.db"
"""SQLite in ``var/portal.db`` under the working directory (created on first start)."""


class LiveFeedSettings(BaseModel):
    """The GraphQL ``Subscription.feed`` (:mod:`processors.portal.live`):
    ``PROCESSORS_PORTAL__LIVE__*``.

    ``queue_size``: items one subscription may have waiting; a subscriber that falls that far
    behind is ended with ``LAGGED`` (never an unbounded queue).  ``key_check_interval_s``: how
    often an open feed checks its key again (a revoked, expired or suspended key ends it within
    this, plus a change of the partner registry ends it at once).  ``max_subscriptions_per_partner``:
    open feeds of one partner on this instance, over every connection.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_size: int = Field(default=1_000, ge=1, le=100_000)
    key_check_interval_s: float = Field(default=0.25, gt=0, lt=1.0)
    max_subscriptions_per_partner: int = Field(default=50, ge=1, le=10_000)
    metadata_refresh_s: float = Field(default=30.0, gt=0, le=3_600)
    """How often new partitions of the two topics are looked for (every second while none is
    assigned, or while the cluster does not answer)."""


class GraphqlSettings(BaseModel):
    """The GraphQL API at ``/graphql`` (:mod:`processors.portal.graphql`):
    ``PROCESSORS_PORTAL__GRAPHQL__*``.  Every limit answers a clear error, never a 500
    (``docs/portal.md``, "The GraphQL API")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_depth: int = Field(default=10, ge=2, le=50)
    """Nesting of fields one operation may have (introspection's own fields not counted)."""
    max_tokens: int = Field(default=2_000, ge=50, le=100_000)
    """Lexical tokens one document may have (checked while parsing)."""
    max_aliases: int = Field(default=30, ge=1, le=1_000)
    """Aliases one document may use (an alias asks for a field once more)."""
    max_cost: int = Field(default=5_000, ge=10, le=10_000_000)
    """The estimated cost one operation may have: every field counts once per item the lists
    above it may return (a ``first`` argument's value, the maximum page size for a variable,
    ``list_size`` for a list without ``first``)."""
    list_size: int = Field(default=10, ge=1, le=1_000)
    """Items a list without a ``first`` argument is assumed to return in the cost estimate."""
    max_page_size: int = Field(default=100, ge=1, le=100)
    """The largest ``first`` a paged list accepts."""
    rate_per_s: float = Field(default=50.0, gt=0, le=100_000)
    """Requests (HTTP requests, and operations started on a WebSocket) one partner key may make
    per second, on average, on this instance."""
    rate_burst: int = Field(default=100, ge=1, le=1_000_000)
    """Requests one key may make at once before ``rate_per_s`` applies (the bucket's size)."""
    introspection: bool = False
    """Whether the schema answers introspection (``__schema``, ``__type``).  Off by default: the
    schema is published as ``docs/portal-schema.graphql``; turn it on where a client or an
    explorer needs it (development, a demo)."""
    health_window_h: int = Field(default=24, ge=1, le=24 * 90)
    """The window of ``Endpoint.health``'s success rate, attempts and failures (hours)."""
    query_threads: int = Field(default=8, ge=1, le=256)
    """Threads that run the query store's reads (the event loop never waits on the database)."""
    cursor_secret: SecretStr | None = None
    """The key that signs page cursors.  Unset: a random key per process (a cursor is then
    refused by another instance or after a restart, which only restarts a listing); set the
    same value on every instance behind one address."""
    connection_init_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long a WebSocket may stay open without a ``connection_init`` message."""


class PortalSettings(BaseModel):
    """The partner portal's query store (``docs/portal.md``).

    ``database_url`` chooses the backend: ``sqlite:///path`` (embedded, the default) or
    ``postgresql://user:password@host:5432/db`` (production; ``postgresql+psycopg://`` is the
    same).  It is a secret because a PostgreSQL URL carries a password.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    batch_size: int = Field(default=2_000, ge=1, le=100_000)
    """Records applied per database transaction at most (a transaction also ends as soon as a
    fetch brings fewer)."""
    busy_timeout_s: float = Field(default=30.0, gt=0, le=3_600)
    """How long a write waits for a lock held by another process (SQLite's busy timeout,
    PostgreSQL's connect timeout)."""
    graphql: GraphqlSettings = Field(default_factory=GraphqlSettings)
    """The GraphQL API's limits (``PROCESSORS_PORTAL__GRAPHQL__MAX_DEPTH``, ...)."""
    live: LiveFeedSettings = Field(default_factory=LiveFeedSettings)
    """The live feed of the GraphQL API (``PROCESSORS_PORTAL__LIVE__QUEUE_SIZE``, ...)."""
