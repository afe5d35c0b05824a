"""The partner portal's query store, rebuilt from Kafka (``docs/portal.md``).

Kafka stays the system of record; this package keeps a relational copy of what the portal
queries: partners, webhook subscriptions, the webhook delivery log, bordereaux and their
delivery results.

* :mod:`processors.portal.config` — ``PROCESSORS_PORTAL__*`` (no database import).
* :mod:`processors.portal.records` — a topic record → the row change it means (pure).
* :mod:`processors.portal.schema` — the tables and the column types that keep money exact
  and times in UTC on SQLite and PostgreSQL alike.
* :mod:`processors.portal.migrations` — the ordered schema steps and ``schema_version``.
* :mod:`processors.portal.store` — the store: one transaction per batch, rows and offsets.
* :mod:`processors.portal.projector` — the Kafka side: reads every partition, no group.
* :mod:`processors.portal.metrics` — what the projector did, for ``/metrics``.
* :mod:`processors.portal.cli` — ``processors portal rebuild|project``.
* :mod:`processors.portal.queries` — the owner-scoped reads the GraphQL API answers from.
* :mod:`processors.portal.graphql` — the GraphQL API at ``/graphql``.

Nothing is imported here, so that the settings can use :mod:`~processors.portal.config`
without loading SQLAlchemy.
"""
