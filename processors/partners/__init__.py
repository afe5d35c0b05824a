"""Partners: the brokers, reinsurers and service providers the integrations serve.

* :mod:`processors.partners.model` — a partner, its API keys, their records (pure).
* :mod:`processors.partners.keys` — API key generation, hashing and verification (pure).
* :mod:`processors.partners.projection` — what a partner receives of each event type: every
  field classified, personal data only for the data classes granted (pure).
* :mod:`processors.partners.catalogue` — the partner-facing event catalogue: projected JSON
  Schemas and examples per grant set (pure).
* :mod:`processors.partners.table` — the registry topic materialised in memory.
* :mod:`processors.partners.store` — the compacted ``integrations.partners`` topic.
* :mod:`processors.partners.registry` — the operations operators run (API and CLI).
* :mod:`processors.partners.auth` — who a request comes from: the operator or a partner key.
* :mod:`processors.partners.cli` — ``processors partners ...``.

See ``docs/partners.md``.  This package imports nothing at import time so that the webhook
subscription model can use its id grammar without a cycle.
"""
