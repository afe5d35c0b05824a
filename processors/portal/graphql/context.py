"""What every resolver of the portal's GraphQL API receives as ``info.context``.

The view (:mod:`processors.portal.graphql.view`) builds one :class:`PortalContext` per HTTP
request and one per WebSocket connection, after the partner key was accepted; a resolver never
sees a request without a partner.  :class:`PortalServices` is built once per API process and
shared by every context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from processors.partners.auth import Caller

if TYPE_CHECKING:
    from processors.partners.auth import PartnerAuthenticator
    from processors.partners.table import PartnerTable
    from processors.portal.queries import PortalQueries
    from processors.webhooks.attempts import FetchedRecord, JobRef

__all__ = ["DispatchReader", "PortalContext", "PortalServices", "unknown_breaker_state"]


class DispatchReader(Protocol):
    """Reads dispatch records back by their coordinates
    (:meth:`processors.webhooks.attempts.Redeliverer.read`)."""

    async def read(self, jobs: Sequence[JobRef]) -> list[FetchedRecord]: ...


def unknown_breaker_state(_endpoint_id: str) -> str:
    """The breaker state of an endpoint this process does not deliver for."""
    return "unknown"


@dataclass
class PortalServices:
    """The parts of the API process the portal reads and writes through (one per process).

    ``queries``: owner-scoped reads of the query store; ``partners``: the registry table (the
    caller's partner record, grants); ``keys``: checks a partner key again (an open WebSocket
    feed re-checks its key, so a revoked key ends it); ``endpoints``: the subscription service
    shared with the REST API (create, change, rotate; :mod:`processors.webhooks.service`);
    ``deliveries``: redelivery, recovery and test events through the real delivery path;
    ``live``: the live feed of events and outcomes; ``audit``: where every mutation is recorded
    (``integrations.audit``).  The last four are typed ``Any`` here so this module imports none
    of them; each owner module documents its own interface.

    Read side: ``dispatch`` reads a message's body back from the dispatch topic (None: the
    ``request`` of a message is null); ``breaker_state`` names an endpoint's breaker state
    (``closed``, ``open``, ``half_open``; ``unknown`` when this process does not deliver);
    ``health_window_h`` is the window of ``Endpoint.health``; ``user_agent`` the
    ``User-Agent`` the webhooks app sends; ``max_page_size`` the largest ``first`` a paged
    list takes.
    """

    queries: PortalQueries
    partners: PartnerTable
    keys: PartnerAuthenticator
    endpoints: Any = None
    deliveries: Any = None
    live: Any = None
    audit: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    dispatch: DispatchReader | None = None
    breaker_state: Callable[[str], str] = unknown_breaker_state
    health_window_h: int = 24
    user_agent: str = ""
    max_page_size: int = 100


@dataclass
class PortalContext:
    """One request's (or one WebSocket connection's) caller and the process's services.

    ``key`` is the partner key the caller offered (kept to check it again on a long-lived
    connection; never logged, never returned).  ``request_id`` names the request in audit
    records and logs.
    """

    caller: Caller
    key: SecretStr
    services: PortalServices
    request_id: str
    loaders: dict[str, Any] = field(default_factory=dict)
    """The request's data loaders (:func:`processors.portal.graphql.types.loader`)."""
    connection_params: dict[str, Any] | None = None
    """A WebSocket connection's ``connection_init`` payload (where its key came from)."""

    @property
    def partner_id(self) -> str:
        """The caller's partner id (the view admits partner keys only)."""
        partner_id = self.caller.partner_id
        if partner_id is None:  # pragma: no cover - the view refuses the operator token
            raise RuntimeError("the portal context has no partner")
        return partner_id

    @property
    def reinsurer_key(self) -> str | None:
        """The caller's reinsurer code in upper case (codes ignore case), as the registry shows
        it now; None for a partner that is not a reinsurer or has no code.  The bordereaux it
        sees are those whose ``reinsurer_key`` equals this."""
        partner = self.services.partners.partner(self.partner_id)
        if partner is None or partner.kind != "reinsurer" or not partner.reinsurer_code:
            return None
        return partner.reinsurer_code.upper()
