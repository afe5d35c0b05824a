"""The Kafka layer both engines stand on: client configuration rendered in one place.

Nothing outside this package writes a librdkafka setting (``tests/unit/test_structure.py``).
"""

from processors.kafka.config import ClientRole, KafkaClients

__all__ = ["ClientRole", "KafkaClients"]
