"""Which topic carries which event type (DESIGN.md §4), keyed by the aggregate id."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from processors.contract.events import payload_model

__all__ = ["EVENT_TOPICS", "topic_for"]

EVENT_TOPICS: Mapping[str, str] = MappingProxyType(
    {
        "policy.issued": "insurance.policy.events",
        "policy.renewed": "insurance.policy.events",
        "policy.endorsed": "insurance.policy.events",
        "policy.cancelled": "insurance.policy.events",
        "premium.due": "insurance.billing.events",
        "refund.requested": "insurance.billing.events",
        "customer.created": "insurance.customer.events",
        "customer.kyc_requested": "insurance.customer.events",
        "claim.reported": "insurance.claim.events",
        "claim.reserved": "insurance.claim.events",
        "claim.paid": "insurance.claim.events",
        "claim.settled": "insurance.claim.events",
        "claim.closed": "insurance.claim.events",
        "payment.completed": "integrations.payment.results",
        "payment.pending": "integrations.payment.results",
        "payment.failed": "integrations.payment.results",
        "payment.confirmed": "integrations.payment.results",
        "kyc.approved": "integrations.kyc.results",
        "kyc.review": "integrations.kyc.results",
        "kyc.rejected": "integrations.kyc.results",
        "kyc.pending": "integrations.kyc.results",
        "kyc.refused": "integrations.kyc.results",
    }
)
"""The topic each event type is published to.  The key is always the event's ``subject``."""


def topic_for(event_type: str) -> str:
    """The topic ``event_type`` is published to; ``UnknownEventType`` if there is none."""
    payload_model(event_type)
    return EVENT_TOPICS[event_type]
