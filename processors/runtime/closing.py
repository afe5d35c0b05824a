"""Closing a group consumer without hanging the process.

librdkafka can block forever in ``close()`` when a rebalance callback runs while the consumer
is closing (the callback asks for the rebalance protocol and never gets the answer; see
librdkafka issue 4041).  ``close()`` of a consumer that still holds an assignment always runs
the revocation callback, so :func:`close_group_consumer` first unsubscribes and serves that
revocation through ``consume()``, where callbacks are safe, and only then closes, in a thread
of its own that it waits for at most ``timeout_s``.  A close that still hangs is logged and
left behind (the group notices the member is gone after its session timeout) instead of
keeping a stopping process alive forever.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import confluent_kafka

__all__ = ["close_group_consumer"]

log = logging.getLogger(__name__)


def close_group_consumer(
    consumer: Any, *, what: str, timeout_s: float = 30.0, revoke_timeout_s: float = 10.0
) -> bool:
    """Leave the group and close ``consumer``; True if it closed within ``timeout_s``.

    Records fetched while the revocation is served are dropped (they were not processed, so
    no offset moves past them).
    """
    try:
        consumer.unsubscribe()
        deadline = time.monotonic() + revoke_timeout_s
        while consumer.assignment() and time.monotonic() < deadline:
            consumer.consume(num_messages=100, timeout=0.1)
    except (confluent_kafka.KafkaException, RuntimeError) as exc:
        log.warning("%s: leaving the group before closing: %s", what, exc)
    done = threading.Event()

    def close() -> None:
        try:
            consumer.close()
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            log.warning("%s: consumer close: %s", what, exc)
        finally:
            done.set()

    threading.Thread(target=close, name=f"close-{what}", daemon=True).start()
    if done.wait(timeout_s):
        return True
    log.error(
        "%s: the consumer did not close within %.0f s; going on without it (the group drops the "
        "member after its session timeout)",
        what,
        timeout_s,
    )
    return False
