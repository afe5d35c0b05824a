"""Records of the portal's source topics, made with the product's own models and encoders.

Partners and subscriptions are the registry's and the webhooks app's models (``to_record``),
delivery-log lines come from :func:`processors.webhooks.delivery.log_record`, bordereaux from
:func:`processors.bordereaux.reports.premium_report` over the shipped ``treaties.yaml``, and
delivery results from :func:`processors.apps.reinsurance.delivery_result` /
:func:`~processors.apps.reinsurance.app.failed_result`: the formats are the real ones.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from processors.adapters.reinsurer import SubmitResult
from processors.apps.reinsurance import delivery_result
from processors.apps.reinsurance.app import failed_result
from processors.bordereaux.reports import premium_report
from processors.bordereaux.rows import PremiumRow
from processors.bordereaux.treaties import TreatyBook, load_treaty_book
from processors.partners.model import ApiKey, Partner
from processors.webhooks.delivery import DispatchJob, log_record
from processors.webhooks.secrets import SecretBox, StoredSecret
from processors.webhooks.subscriptions import Subscription, new_subscription_id

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOX = SecretBox.ephemeral()
CLEAR_SECRET = "whsec_dGhpcyBpcyBhIHRlc3Qgc2VjcmV0IG9mIDMyIGJ5dGVzIQ=="
TREATY = "TRY-2024-001"
PERIOD = "2024-03"


def partner(name: str = "Reinsurance Corp", kind: str = "reinsurer", **fields: Any) -> Partner:
    if kind == "reinsurer":
        fields.setdefault("reinsurer_code", "re001")
    return Partner.create(name=name, kind=kind, created_at=NOW, updated_at=NOW, **fields)


def api_key(partner_id: str) -> ApiKey:
    return ApiKey.create(id="k3x9q2ma", partner_id=partner_id, digest="sha256:" + "ab" * 32, created_at=NOW)


def subscription(partner_id: str | None, *, sub_id: str | None = None, **fields: Any) -> Subscription:
    sub_id = sub_id or new_subscription_id()
    secret = StoredSecret(ciphertext=BOX.encrypt(CLEAR_SECRET, associated=sub_id), created_at=NOW)
    values: dict[str, Any] = {
        "id": sub_id,
        "partner_id": partner_id,
        "url": "https://user:hunter22@partner.example.com/hooks",
        "events": ["policy.*"],
        "secrets": (secret,),
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(fields)
    return Subscription.create(**values)


def delivery_line(
    sub_id: str,
    n: int,
    *,
    topic: str = "integrations.webhook.deliveries",
    status: str = "delivered",
    attempt: int = 1,
    attempted_at: datetime | None = None,
    excerpt: str | None = "ok",
) -> bytes:
    """One delivery-log value, as the webhooks app writes it."""
    job = DispatchJob(
        subscription_id=sub_id,
        webhook_id=f"msg_{sub_id[3:11]}{n:010d}",
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        event_type="policy.issued" if n % 2 == 0 else "policy.cancelled",
        subject=f"POL-{n}",
        ordered=False,
        body=b"{}",
    )
    record = log_record(
        topic,
        job,
        status=status,  # type: ignore[arg-type]
        attempt=attempt,
        url_host="partner.example.com",
        job_coordinates=("integrations.webhooks.dispatch", n % 3, n),
        http_status=200 if status == "delivered" else 503,
        latency_ms=12.3456,
        response_excerpt=excerpt,
        next_step=None if status == "delivered" else "retry",
        attempted_at=attempted_at or NOW + timedelta(seconds=n),
    )
    assert record.value is not None
    return record.value


def book() -> TreatyBook:
    return load_treaty_book(ROOT / "treaties.yaml")


def _row(event_id: str, policy: str, gross: str, ceded: str, **extra: Any) -> PremiumRow:
    values: dict[str, Any] = {
        "policy_number": policy,
        "transaction_type": "NEW_BUSINESS",
        "event_id": event_id,
        "transaction_date": date(2024, 3, 10),
        "effective_date": date(2024, 3, 1),
        "inception_date": date(2024, 3, 1),
        "expiry_date": date(2025, 2, 28),
        "currency": "USD",
        "gross_premium": Decimal(gross),
        "additional_premium": Decimal("0.00"),
        "return_premium": Decimal("0.00"),
        "ceded_premium": Decimal(ceded),
        "cession_percentage": Decimal("70.00000000"),
        "sum_insured": Decimal("250000.00"),
        "ceded_sum_insured": Decimal("175000.00"),
        **extra,
    }
    return PremiumRow(**values)


def premium_bordereau(period_id: str = PERIOD) -> bytes:
    """A premium bordereau of the shipped book: two rows and one adjustment (a late event)."""
    treaties = book()
    treaty = treaties.treaty(TREATY)
    rows = [
        _row("e-1", "PN-1", "1000.10", "700.07"),
        _row("e-2", "PN-2", "2500.00", "1750.00"),
        _row("e-3", "PN-0", "300.33", "210.23", adjustment_of="2024-02"),
    ]
    return premium_report(treaties, treaty, treaties.treaty(TREATY).period_by_id(period_id), rows)


def report_id(period_id: str = PERIOD) -> str:
    return f"BRD-{TREATY}-{period_id}-P"


def settled_ceded_premium(report: bytes) -> str:
    return str(json.loads(report)["summary"]["settlement"]["total_ceded_premium"])


def accepted(report: str, *, duplicate: bool = False) -> bytes:
    return delivery_result(
        SubmitResult(
            report_id=report,
            status="ACCEPTED",
            acknowledged_at=datetime(2024, 4, 6, 0, 0, 1, 234000, tzinfo=UTC),
            duplicate=duplicate,
            http_status=200,
        )
    )


def failed(report: str) -> bytes:
    return failed_result(report, "ReportConflict", "the reinsurer holds another report", "integrations.dlq")
