"""Kafka stream processors for an insurance company's external integrations."""

__version__ = "0.1.0.dev0"
