"""KYC: customer.kyc_requested → KYC/AML provider → decisions on the KYC results topic."""

from processors.apps.kyc.app import KycApp, KycSettings

__all__ = ["KycApp", "KycSettings"]
