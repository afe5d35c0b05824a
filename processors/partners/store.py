"""The partner registry, kept in the compacted ``integrations.partners`` topic.

Like the webhook subscriptions (the same :class:`~processors.webhooks.store.CompactedTableStore`):
every instance reads the whole topic into a :class:`~processors.partners.table.PartnerTable`
at start, then keeps tailing it, so a key revoked or a partner suspended through one instance
is refused by every other one within the tail's delay (a fetch waits at most 100 ms on the
broker)::

    store = PartnerStore(bootstrap, "integrations.partners")
    await store.start()                 # returns once the records written before it are applied
    store.table.key("k3x9q2ma")
    await store.put(partner)            # returns once store.table shows it (read-your-writes)
    await store.stop()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from processors.kafka import KafkaClients
from processors.partners.model import RegistryEntry
from processors.partners.table import PartnerTable
from processors.webhooks.store import CompactedTableStore

__all__ = ["PARTNERS_TOPIC", "PartnerStore"]

log = logging.getLogger(__name__)

PARTNERS_TOPIC: Final = "integrations.partners"


class PartnerStore(CompactedTableStore[RegistryEntry]):
    """The partner registry table and how to change it.  See the module docstring.

    ``kafka``: bootstrap servers (with ``client_overrides`` as in ``Settings.client_overrides``)
    or clients already made (the CLI's, with its ``--client-config``).
    """

    def __init__(
        self,
        kafka: str | KafkaClients,
        topic: str = PARTNERS_TOPIC,
        *,
        client_overrides: Mapping[str, str] | None = None,
        write_timeout_s: float = 30.0,
        start_timeout_s: float = 60.0,
        poll_timeout_s: float = 0.1,
    ) -> None:
        clients = kafka if isinstance(kafka, KafkaClients) else KafkaClients(kafka, client_overrides or {})
        self._table = PartnerTable()
        super().__init__(
            clients,
            topic,
            self._table,
            name="partners",
            label="partners",
            noun="partner record",
            plural="partner records",
            write_timeout_s=write_timeout_s,
            start_timeout_s=start_timeout_s,
            poll_timeout_s=poll_timeout_s,
        )

    @property
    def table(self) -> PartnerTable:
        return self._table

    async def put(self, entry: RegistryEntry) -> None:
        """Write a partner, a key or a key's last use; return once :attr:`table` shows it."""
        await self.write(entry.record_key, entry.to_record())
        log.debug("partners: %s stored", entry.record_key)
