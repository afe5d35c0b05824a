"""Payments: premium.due and refund.requested → payment gateway → payment results."""

from processors.apps.payments.app import PaymentsApp, PaymentsSettings

__all__ = ["PaymentsApp", "PaymentsSettings"]
