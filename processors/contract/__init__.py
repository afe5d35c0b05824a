"""The event contract: envelope and payload models, money, Avro schemas and the codec.

Upstream systems and integration apps speak through these names only::

    from processors.contract import Codec, ContentType, Event, PremiumDue

    event = Event.create("premium.due", subject=data.policy_id, data=data, source="billing-system")
    value, headers = Codec().encode(event)            # Avro, Confluent framing, ids.json
    producer.produce("insurance.billing.events", key=event.key, value=value, headers=headers)

See ``docs/publishing-events.md`` for the contract as upstream teams read it.
"""

from processors.contract.avro import writer_schema, writer_schema_name
from processors.contract.codec import Codec, ContentType, Headers
from processors.contract.events import (
    EVENT_TYPES,
    PII_FIELDS,
    SCHEMA_VERSION,
    Address,
    ClaimClosed,
    ClaimData,
    ClaimPaid,
    ClaimReported,
    ClaimReserved,
    ClaimSettled,
    CountryCode,
    CustomerCreated,
    Event,
    EventData,
    KycConsent,
    KycDocument,
    KycRequested,
    PaymentCompleted,
    PaymentConfirmed,
    PaymentFailed,
    PaymentMethod,
    PaymentPending,
    PaymentResultData,
    PolicyCancelled,
    PolicyChangeData,
    PolicyData,
    PolicyEndorsed,
    PolicyIssued,
    PolicyRenewed,
    PremiumDue,
    RefundRequested,
    UtcDatetime,
    payload_model,
)
from processors.contract.money import (
    MINOR_UNITS,
    CurrencyCode,
    Money,
    NonNegativeMoney,
    PositiveMoney,
    quantize_money,
)
from processors.contract.registry import LocalSchemaIds, SchemaIdSource, SchemaRegistryClient
from processors.contract.topics import EVENT_TOPICS, topic_for

__all__ = [
    "EVENT_TOPICS",
    "EVENT_TYPES",
    "MINOR_UNITS",
    "PII_FIELDS",
    "SCHEMA_VERSION",
    "Address",
    "ClaimClosed",
    "ClaimData",
    "ClaimPaid",
    "ClaimReported",
    "ClaimReserved",
    "ClaimSettled",
    "Codec",
    "ContentType",
    "CountryCode",
    "CurrencyCode",
    "CustomerCreated",
    "Event",
    "EventData",
    "Headers",
    "KycConsent",
    "KycDocument",
    "KycRequested",
    "LocalSchemaIds",
    "Money",
    "NonNegativeMoney",
    "PaymentCompleted",
    "PaymentConfirmed",
    "PaymentFailed",
    "PaymentMethod",
    "PaymentPending",
    "PaymentResultData",
    "PolicyCancelled",
    "PolicyChangeData",
    "PolicyData",
    "PolicyEndorsed",
    "PolicyIssued",
    "PolicyRenewed",
    "PositiveMoney",
    "PremiumDue",
    "RefundRequested",
    "SchemaIdSource",
    "SchemaRegistryClient",
    "UtcDatetime",
    "payload_model",
    "quantize_money",
    "topic_for",
    "writer_schema",
    "writer_schema_name",
]
